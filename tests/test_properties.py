"""Property-based tests (hypothesis): random valid configs and inputs give finite outputs, and the
chunk-wise memory equals the token-by-token reference."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hope_hf import HopeConfig, HopeForCausalLM

SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def configs(draw):
    heads = draw(st.sampled_from([1, 2, 3]))
    mixer = draw(st.sampled_from(["self_modifying", "self_modifying", "attention"]))
    head_dim = draw(st.sampled_from([2, 4] if mixer == "attention" else [2, 4, 5]))
    c_o = draw(st.integers(1, 6))
    adaptive = draw(st.booleans())
    return HopeConfig(
        vocab_size=draw(st.integers(5, 40)),
        hidden_size=heads * head_dim,
        num_heads=heads,
        num_hidden_layers=draw(st.integers(1, 2)),
        memory_expansion=draw(st.integers(1, 3)),
        projection_chunk_size=c_o,
        memory_chunk_size=c_o * draw(st.integers(1, 3)),
        conv_window=draw(st.integers(1, 4)),
        inner_optimizer=draw(st.sampled_from(["dgd", "gd"])),
        inner_momentum=draw(st.booleans()),
        adaptive_q=draw(st.booleans()),
        adaptive_k=adaptive,
        adaptive_v=adaptive or draw(st.booleans()),
        adaptive_rates=draw(st.booleans()),
        inner_weight_decay=draw(st.booleans()),
        normalize_values=draw(st.booleans()),
        mixer=mixer,
        cms_levels=[{"intermediate_size": draw(st.integers(1, 9)), "update_period": draw(st.integers(1, 5))}
                    for _ in range(draw(st.integers(1, 3)))],
        tie_word_embeddings=draw(st.booleans()),
    )


@SETTINGS
@given(config=configs(), length=st.integers(1, 19), batch=st.integers(1, 2), seed=st.integers(0, 2**16))
def test_random_configs_forward_finite_and_chunked_equals_naive(config, length, batch, seed):
    torch.manual_seed(seed)
    model = HopeForCausalLM(config).double().eval()
    ids = torch.randint(0, config.vocab_size, (batch, length))
    out = model(ids, labels=ids)
    assert out.logits.shape == (batch, length, config.vocab_size)
    assert torch.isfinite(out.logits).all()
    if config.mixer == "self_modifying":
        hidden = torch.randn(batch, length, config.hidden_size, dtype=torch.float64) * 0.5
        mixer = model.model.layers[0].mixer
        y_chunk, s_chunk = mixer(hidden)
        mixer.implementation = "naive"
        y_naive, s_naive = mixer(hidden)
        scale = y_naive.norm().clamp_min(1e-12)
        assert (y_chunk - y_naive).norm() / scale < 1e-10
        assert (s_chunk.memory.w_out - s_naive.memory.w_out).norm() / s_naive.memory.w_out.norm() < 1e-10
