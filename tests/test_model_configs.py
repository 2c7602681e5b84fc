"""The named configurations of `modeling_configs/` load, and each model holds about its nominal size."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hope_hf import HopeConfig, HopeForCausalLM
from hope_hf.baselines import count_parameters
from hope_hf.model_configs import CONFIG_DIR, available_configs, load_config, nominal_parameters

FAMILIES = ("hope", "hope-attention", "titans", "hope-no-cms", "hope-gd", "transformer")
SIZES = ("tiny", "small", "340m", "760m", "1.3b")
EXPECTED = sorted(f"{family}-{size}" for family in FAMILIES for size in SIZES)


def build_on_meta(config: HopeConfig | LlamaConfig) -> torch.nn.Module:
    """The causal LM of `config` with parameters on the meta device (no memory, no real initialisation)."""
    model_class = HopeForCausalLM if isinstance(config, HopeConfig) else LlamaForCausalLM
    with torch.device("meta"):
        return model_class(config)


def test_available_configs_lists_every_family_and_size():
    assert CONFIG_DIR.is_dir(), CONFIG_DIR
    missing = sorted(set(EXPECTED) - set(available_configs()))
    assert not missing, f"missing configs: {missing}"


@pytest.mark.parametrize("name", EXPECTED)
def test_parameter_count_within_10_percent_of_nominal(name: str):
    config = load_config(name)
    model = build_on_meta(config)
    count = count_parameters(model)
    nominal = nominal_parameters(name)
    assert abs(count - nominal) <= 0.1 * nominal, f"{name}: {count:,} parameters, nominal {nominal:,}"


@pytest.mark.parametrize("name", EXPECTED)
def test_config_matches_its_family(name: str):
    config = load_config(name)
    family = name.rsplit("-", 1)[0]
    if family == "transformer":
        assert isinstance(config, LlamaConfig) and config.model_type == "llama"
        assert config.tie_word_embeddings is False
        return
    assert isinstance(config, HopeConfig) and config.model_type == "hope"
    assert config.tie_word_embeddings is False
    assert config.mixer == ("attention" if family == "hope-attention" else "self_modifying")
    if family in ("titans", "hope-no-cms"):
        assert len(config.cms_levels) == 1 and config.cms_levels[0]["update_period"] == 1
    else:
        assert [level["update_period"] for level in config.cms_levels] == [1, 4, 16]
    if family == "titans":
        assert not (config.adaptive_k or config.adaptive_v or config.adaptive_rates)
        assert config.inner_optimizer == "gd" and config.inner_momentum
        assert config.memory_names == ("mem",)
    elif family == "hope-gd":
        assert config.inner_optimizer == "gd"
    elif family in ("hope", "hope-no-cms"):
        assert config.inner_optimizer == "dgd"


@pytest.mark.parametrize("size", SIZES)
def test_families_of_a_size_share_the_backbone_shape(size: str):
    shapes = set()
    for family in FAMILIES:
        config = load_config(f"{family}-{size}")
        shapes.add((config.vocab_size, config.hidden_size, config.num_hidden_layers, config.num_attention_heads))
    assert len(shapes) == 1, shapes


@pytest.mark.parametrize("name", EXPECTED)
def test_json_loads_with_from_dict(name: str):
    config_dict = json.loads((CONFIG_DIR / f"{name}.json").read_text())
    config_class = {"hope": HopeConfig, "llama": LlamaConfig}[config_dict["model_type"]]
    config = config_class.from_dict(config_dict)
    assert config.hidden_size == config_dict["hidden_size"]


def test_load_config_by_name_file_and_folder(tmp_path: Path):
    by_name = load_config("hope-tiny")
    assert isinstance(by_name, HopeConfig)

    file = tmp_path / "my-config.json"
    shutil.copy(CONFIG_DIR / "hope-tiny.json", file)
    assert load_config(file).to_dict() == by_name.to_dict()
    assert load_config(str(file)).to_dict() == by_name.to_dict()

    folder = tmp_path / "checkpoint"
    by_name.save_pretrained(folder)
    from_folder = load_config(folder)
    assert isinstance(from_folder, HopeConfig)
    assert from_folder.cms_levels == by_name.cms_levels
    assert from_folder.hidden_size == by_name.hidden_size

    llama_folder = tmp_path / "llama"
    load_config("transformer-tiny").save_pretrained(llama_folder)
    assert isinstance(load_config(str(llama_folder)), LlamaConfig)


def test_load_config_unknown_name_lists_available_names():
    with pytest.raises(ValueError, match="hope-999m") as excinfo:
        load_config("hope-999m")
    assert "hope-tiny" in str(excinfo.value) and "transformer-1.3b" in str(excinfo.value)
    with pytest.raises(ValueError, match="hope-999m"):
        nominal_parameters("hope-999m")


def test_load_config_missing_path_and_unsupported_model_type(tmp_path: Path):
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "absent.json")
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path)  # a folder without config.json
    bad = tmp_path / "bert.json"
    bad.write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="bert"):
        load_config(bad)


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_model_runs_forward_and_backward_on_cpu(family: str):
    torch.manual_seed(0)
    config = load_config(f"{family}-tiny")
    model = (HopeForCausalLM if isinstance(config, HopeConfig) else LlamaForCausalLM)(config)
    input_ids = torch.randint(0, config.vocab_size, (2, 80))  # more than one memory chunk (64)
    out = model(input_ids=input_ids, labels=input_ids)
    assert out.logits.shape == (2, 80, config.vocab_size)
    assert torch.isfinite(out.loss), out.loss
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
