"""Hub sharing: a saved folder (model, tokenizer, model card) loads with `trust_remote_code=True` where `hope_hf`
cannot be imported, gives the same logits and generates with its cache; weights load from safetensors only."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from hope_hf import HopeConfig, HopeForCausalLM
from hope_hf.model_card import CARD_MARKER

from conftest import tiny_config_kwargs, tiny_tokenizer


@pytest.mark.parametrize("mixer", ["self_modifying", "attention"])
def test_trust_remote_code_load_without_package(tmp_path, mixer):
    model = HopeForCausalLM(HopeConfig(**tiny_config_kwargs(mixer=mixer, num_key_value_heads=2))).eval()
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    saved = {p.name for p in folder.iterdir()}
    assert {"modeling_hope.py", "configuration_hope.py", "memory_ops.py", "self_modifying.py", "cache.py",
            "model_card.py", "model.safetensors", "tokenizer.json", "README.md"} <= saved
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in saved), saved
    ids = torch.randint(3, 99, (2, 19), generator=torch.Generator().manual_seed(0))
    generated = model.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)
    torch.save({"ids": ids, "logits": model(ids).logits, "generated": generated}, tmp_path / "expected.pt")
    script = textwrap.dedent(f"""
        import sys
        sys.modules["hope_hf"] = None          # any import of the package now fails
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        folder = {str(folder)!r}
        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        tokenizer = AutoTokenizer.from_pretrained(folder)
        assert tokenizer("w5 w6").input_ids == [5, 6], tokenizer("w5 w6")
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        assert torch.equal(model(expected["ids"]).logits, expected["logits"])
        out = model.generate(expected["ids"], max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0,
                             return_dict_in_generate=True)
        cache = getattr(out, "cache" if "cache" in type(out).__dataclass_fields__ else "past_key_values")
        assert type(cache).__name__ == "HopeCache", type(cache)
        assert torch.equal(out.sequences, expected["generated"])
        print("remote-code load OK")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                            env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HF_HOME": str(tmp_path / "hf")},
                            stdin=subprocess.DEVNULL, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "remote-code load OK" in result.stdout


def test_model_card_has_the_config_summary_and_keeps_a_users_readme(tmp_path):
    model = HopeForCausalLM(HopeConfig(**tiny_config_kwargs()))
    model.save_pretrained(tmp_path / "a")
    card = (tmp_path / "a" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\n") and CARD_MARKER in card
    for row in ("| hidden_size | 32 |", "| num_hidden_layers | 2 |", "| projection_chunk_size (C_o) | 4 |",
                "| memories per layer | k, v, eta, alpha, mem |", "trust_remote_code=True"):
        assert row in card, row
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "README.md").write_text("my own card\n")
    model.save_pretrained(tmp_path / "b")
    assert (tmp_path / "b" / "README.md").read_text() == "my own card\n"


def test_weights_load_from_safetensors_only(tmp_path):
    """A pickle checkpoint (pytorch_model.bin) is never loaded, even if asked."""
    model = HopeForCausalLM(HopeConfig(**tiny_config_kwargs()))
    model.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(OSError, match="model.safetensors"):
        HopeForCausalLM.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="use_safetensors must be True"):
        HopeForCausalLM.from_pretrained(tmp_path, use_safetensors=False)
