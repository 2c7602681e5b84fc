"""HopeConfig: defaults, serialisation and a clear ValueError for every invalid value."""

from __future__ import annotations

import re

import pytest

from hope_hf import HopeConfig
from hope_hf.configuration_hope import default_cms_levels


def test_defaults_and_derived_sizes():
    config = HopeConfig(hidden_size=64, num_heads=4)
    assert config.model_type == "hope"
    assert config.head_dim == 16
    assert config.memory_expansion == 1 and config.memory_hidden_size == 16      # r = 1 (README, Results)
    assert config.num_attention_heads == 4 and config.num_key_value_heads == 4
    assert config.memory_names == ("k", "v", "eta", "alpha", "mem")
    assert config.cms_levels == default_cms_levels(64)
    assert [level["update_period"] for level in config.cms_levels] == [1, 4, 16]


def test_memory_names_follow_ablation_flags():
    assert HopeConfig(adaptive_q=True).memory_names == ("q", "k", "v", "eta", "alpha", "mem")
    titans = HopeConfig(adaptive_k=False, adaptive_v=False, adaptive_rates=False)
    assert titans.memory_names == ("mem",)
    assert HopeConfig(inner_weight_decay=False).memory_names == ("k", "v", "eta", "mem")


def test_level_defaults_filled_and_input_not_mutated():
    levels = [{"intermediate_size": 8, "update_period": 2}]
    config = HopeConfig(cms_levels=levels)
    assert config.cms_levels == [{"intermediate_size": 8, "update_period": 2, "chunk_size": 0, "lr": 0.0}]
    assert levels == [{"intermediate_size": 8, "update_period": 2}]


def test_round_trip(tmp_path):
    config = HopeConfig(vocab_size=99, hidden_size=32, num_heads=4, mixer="attention", num_key_value_heads=2)
    config.save_pretrained(tmp_path)
    loaded = HopeConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()


BAD = [
    (dict(hidden_size=30, num_heads=4), "num_heads", "4"),
    (dict(num_heads=0), "num_heads", "0"),
    (dict(vocab_size=-1), "vocab_size", "-1"),
    (dict(num_hidden_layers=2.5), "num_hidden_layers", "2.5"),
    (dict(num_key_value_heads=3, num_heads=4, hidden_size=32), "num_key_value_heads", "3"),
    (dict(projection_chunk_size=16, memory_chunk_size=24), "memory_chunk_size", "24"),
    (dict(projection_chunk_size=0), "projection_chunk_size", "0"),
    (dict(conv_window=0), "conv_window", "0"),
    (dict(mixer="mamba"), "mixer", "mamba"),
    (dict(mixer="attention", hidden_size=20, num_heads=4), "num_heads", "head size 5"),
    (dict(inner_optimizer="adam"), "inner_optimizer", "adam"),
    (dict(inner_momentum="yes"), "inner_momentum", "yes"),
    (dict(input_projection=1), "input_projection", "1"),
    (dict(inner_weight_decay=0), "inner_weight_decay", "0"),
    (dict(eta_max=0.0), "eta_max", "0.0"),
    (dict(eta_init=2.0), "eta_init", "2.0"),
    (dict(alpha_init=1.0), "alpha_init", "1.0"),
    (dict(alpha_min=1.0), "alpha_min", "1.0"),
    (dict(momentum_init=1.5), "momentum_init", "1.5"),
    (dict(rms_norm_eps=0.0), "rms_norm_eps", "0.0"),
    (dict(cms_levels=[]), "cms_levels", r"\[\]"),
    (dict(cms_levels=[{"intermediate_size": 8, "update_period": -1}]), r"cms_levels\[0\]\['update_period'\]", "-1"),
    (dict(cms_levels=[{"intermediate_size": 8, "update_period": 0}]), "update_period", "0"),
    (dict(cms_levels=[{"intermediate_size": 0, "update_period": 1}]), "intermediate_size", "0"),
    (dict(cms_levels=[{"intermediate_size": 8, "update_period": 1, "chunk_size": -4}]), "chunk_size", "-4"),
    (dict(cms_levels=[{"intermediate_size": 8, "update_period": 1, "lr": -0.1}]), "lr", "-0.1"),
    (dict(cms_levels=[{"intermediate_size": 8, "update_period": 1, "period": 3}]), "unknown keys", "period"),
    (dict(cms_levels=[{"update_period": 1}]), "intermediate_size", "missing"),
    (dict(cms_levels=["wide"]), r"cms_levels\[0\]", "wide"),
]


@pytest.mark.parametrize("kwargs,field,value", BAD)
def test_invalid_values_name_field_and_value(kwargs, field, value):
    with pytest.raises(ValueError) as info:
        HopeConfig(**kwargs)
    message = str(info.value)
    assert re.search(field, message), message
    assert re.search(value, message), message
