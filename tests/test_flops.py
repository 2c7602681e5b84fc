"""The analytic FLOP counts of `hope_hf.flops` against `torch.utils.flop_counter.FlopCounterMode`, module by module.

FlopCounterMode counts matmuls, linear layers and convolutions at 2 FLOPs per multiply-add, like `flops.py`, so
every part must agree exactly, except two that it cannot see or sees differently:
  - `linalg.solve_triangular` (the delta rule's UT transform) has no formula: `memory_solve` is left out;
  - attention: the fused CPU kernel has no formula either, so the tests run the unfused math kernel, which
    computes the full T × T square; `flops.py` counts the causal half (with the diagonal) by default.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlamaConfig, LlamaForCausalLM

from hope_hf import HopeConfig, HopeForCausalLM
from hope_hf.flops import attention_flops, forward_flops, hope_forward_flops, memory_flops, training_flops

BATCH, LENGTH = 2, 11          # 11 tokens with C_o = 4: chunks of 4, 4 and 3

VARIANTS = {
    "hope": {},
    "hope-gd": {"inner_optimizer": "gd"},
    "no-momentum": {"inner_momentum": False},
    "input-projection": {"input_projection": True},
    "titans-like": {"adaptive_k": False, "adaptive_v": False, "adaptive_rates": False, "inner_optimizer": "gd",
                    "memory_chunk_size": 4},
    "adaptive-q-no-decay": {"adaptive_q": True, "inner_weight_decay": False, "memory_expansion": 1},
    "attention": {"mixer": "attention", "num_key_value_heads": 2},
}


def counted(model: torch.nn.Module, **kwargs) -> dict[str, int]:
    """FlopCounterMode's FLOPs of one forward, summed by the last part of the module name."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
        model(**kwargs)
    by_part: dict[str, int] = {}
    for name, ops in counter.get_flop_counts().items():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("mixer", "cms", "self_attn", "mlp", "lm_head"):
            by_part[leaf] = by_part.get(leaf, 0) + sum(ops.values())
    by_part["total"] = counter.get_total_flops()
    return by_part


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("logits", [None, 1])
def test_hope_forward_matches_flop_counter(tiny_kwargs, variant, logits):
    config = HopeConfig(**tiny_kwargs(**VARIANTS[variant]))
    model = HopeForCausalLM(config)
    ids = torch.randint(3, 99, (BATCH, LENGTH))
    measured = counted(model, input_ids=ids, use_cache=False, logits_to_keep=logits or 0)
    parts = hope_forward_flops(config, BATCH, LENGTH, logits=logits)
    if config.mixer == "attention":
        square = config.num_hidden_layers * attention_flops(BATCH, LENGTH, config.num_heads, config.head_dim,
                                                            causal=False)
        assert parts["memory_matmul"] == parts["memory_solve"] == 0
        assert measured["mixer"] == parts["mixer_linear"] + square
    else:
        assert parts["attention"] == 0 and parts["memory_matmul"] > 0
        assert parts["memory_solve"] > 0 if config.inner_optimizer == "dgd" else parts["memory_solve"] == 0
        assert measured["mixer"] == parts["mixer_linear"] + parts["mixer_conv"] + parts["memory_matmul"]
    assert measured["cms"] == parts["cms"]
    assert measured["lm_head"] == parts["lm_head"] == 2 * BATCH * (logits or LENGTH) * 32 * 99
    assert measured["total"] == measured["mixer"] + measured["cms"] + measured["lm_head"]


def test_llama_forward_matches_flop_counter():
    config = LlamaConfig(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    model = LlamaForCausalLM(config)
    measured = counted(model, input_ids=torch.randint(3, 99, (BATCH, LENGTH)), use_cache=False)
    parts = forward_flops(config, BATCH, LENGTH)
    square = 2 * attention_flops(BATCH, LENGTH, 4, 8, causal=False)
    assert measured["self_attn"] == parts["attention_linear"] + square
    assert measured["mlp"] == parts["mlp"] == 2 * 2 * BATCH * LENGTH * 3 * 32 * 37
    assert measured["total"] == sum(parts.values()) - parts["attention"] + square


def test_memory_count_follows_the_chunks(tiny_kwargs):
    """Chunks are cut at multiples of the chunk sizes: 8 tokens cost two 4-token chunks, and the two passes
    follow their own chunk (the projection memories' cost depends on C_o only, the main memory's on C_m only: a
    model whose projections are all static has the main pass alone)."""
    def count(c_o, c_m, length=8, batch=1, **switches):
        config = HopeConfig(**tiny_kwargs(projection_chunk_size=c_o, memory_chunk_size=c_m, **switches))
        return memory_flops(config, batch, length)["memory_matmul"]

    static = dict(adaptive_k=False, adaptive_v=False, adaptive_rates=False)
    for c in (4, 8):
        assert count(c, c, length=16) == 2 * count(c, c, length=8)
    assert count(4, 4) == 2 * count(4, 4, length=4) and count(4, 4, batch=3) == 3 * count(4, 4)
    assert count(4, 8) != count(4, 4) and count(4, 8) != count(8, 8)
    assert count(4, 8) - count(4, 8, **static) == count(4, 4) - count(4, 4, **static)     # the projection pass
    assert count(8, 8, **static) == count(4, 8, **static) != count(4, 4, **static)        # the main pass


@pytest.mark.parametrize("mixer", ["self_modifying", "attention"])
def test_training_is_about_three_forwards(tiny_kwargs, mixer):
    """`training_flops` takes the backward as two forwards. FlopCounterMode's forward + backward of the tiny
    models lands between 2.5 and 3 forwards (≈ 2.6 for Hope: some memory matmuls need one gradient only),
    so `training_flops` overstates Hope's training work by at most ~15%: stated in the README."""
    config = HopeConfig(**tiny_kwargs(mixer=mixer))
    model = HopeForCausalLM(config)
    ids = torch.randint(3, 99, (BATCH, LENGTH))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as forward:
        model(input_ids=ids, use_cache=False)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as both:
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    assert 2.5 < both.get_total_flops() / forward.get_total_flops() <= 3.0
    assert training_flops(config, BATCH, LENGTH) == 3 * sum(forward_flops(config, BATCH, LENGTH).values())


def test_causal_attention_counts_the_lower_triangle():
    assert attention_flops(1, 4, 1, 1, causal=True) == 4 * (1 + 2 + 3 + 4)
    assert attention_flops(1, 4, 1, 1, causal=False) == 4 * 16
    assert attention_flops(2, 1, 3, 5, past=7) == 4 * 2 * 3 * 8 * 5        # one decoding step reads 8 keys


def test_unknown_config_is_refused():
    with pytest.raises(ValueError, match="HopeConfig and LlamaConfig"):
        forward_flops(object(), 1, 1)
