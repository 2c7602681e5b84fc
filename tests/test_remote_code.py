"""A saved folder loads with `trust_remote_code=True` where `hope_hf` cannot be imported (Hub sharing)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import torch

from hope_hf import HopeConfig, HopeForCausalLM

from conftest import tiny_config_kwargs


def test_trust_remote_code_load_without_package(tmp_path):
    model = HopeForCausalLM(HopeConfig(**tiny_config_kwargs())).eval()
    model.save_pretrained(tmp_path / "model")
    saved = {p.name for p in (tmp_path / "model").iterdir()}
    assert {"modeling_hope.py", "configuration_hope.py", "memory_ops.py", "self_modifying.py"} <= saved
    ids = torch.randint(3, 99, (2, 19), generator=torch.Generator().manual_seed(0))
    torch.save({"ids": ids, "logits": model(ids).logits}, tmp_path / "expected.pt")
    script = textwrap.dedent(f"""
        import sys
        sys.modules["hope_hf"] = None          # any import of the package now fails
        import torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        assert torch.equal(model(expected["ids"]).logits, expected["logits"])
        print("remote-code load OK")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                            env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HF_HOME": str(tmp_path / "hf")},
                            stdin=subprocess.DEVNULL, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "remote-code load OK" in result.stdout
