"""`HopeCache` and cached decoding (HOPE.md §3 contract 2, §6): prefill + token-by-token decoding equals one
full forward, padded rows decode as if alone, and the cache's batch operations are exact."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from hope_hf import HopeCache, HopeConfig, HopeForCausalLM, output_cache
from hope_hf.memory_ops import (
    MemoryRule,
    chunk_memory_update,
    decode_memory_update,
    naive_memory_update,
    packed_memory_update,
)

from conftest import move_input_projection_off_identity, tiny_config_kwargs
from test_memory_ops import HOPE, TITANS, assert_same, make_case, slice_inputs

# tiny configs: C_o = 4, C_m = 8
VARIANTS = {
    "hope": {},
    "hope-attention": {"mixer": "attention", "num_key_value_heads": 2},
    "titans": {"adaptive_k": False, "adaptive_v": False, "adaptive_rates": False, "inner_optimizer": "gd",
               "cms_levels": [{"intermediate_size": 37, "update_period": 1}]},
}
IN_CONTEXT_CMS = {"in_context_cms": True,
                  "cms_levels": [{"intermediate_size": 37, "update_period": 1, "chunk_size": 4, "lr": 0.1},
                                 {"intermediate_size": 19, "update_period": 4}]}


def build(variant: str = "hope", **overrides) -> HopeForCausalLM:
    return HopeForCausalLM(HopeConfig(**tiny_config_kwargs(**{**VARIANTS[variant], **overrides}))).eval()


def ids(batch=2, length=22, seed=1):
    return torch.randint(3, 99, (batch, length), generator=torch.Generator().manual_seed(seed))


def layer_tensors(cache: HopeCache) -> list[tuple[str, torch.Tensor]]:
    """Every tensor the cache holds, named, in a fixed order (memory states, conv, positions, keys/values, CMS)."""
    named = []
    for i, layer in enumerate(cache.layers):
        if hasattr(layer, "keys"):
            named += [(f"{i}.keys", layer.keys), (f"{i}.values", layer.values)]
        else:
            memory = layer.state.memory
            named += [(f"{i}.conv", layer.state.conv), (f"{i}.position", layer.positions)]
            for name in ("w_in", "w_out", "anchor_in", "anchor_out", "mom_in", "mom_out"):
                if getattr(memory, name) is not None:
                    named.append((f"{i}.{name}", getattr(memory, name)))
        if layer.cms is not None:
            leaves = [t for t in torch.utils._pytree.tree_leaves(layer.cms) if t is not None]
            named += [(f"{i}.cms.{j}", t) for j, t in enumerate(leaves)]
    return named


def assert_caches_close(a: HopeCache, b: HopeCache, rows_a=slice(None), rows_b=slice(None), atol=1e-5):
    for (name, x), (_, y) in zip(layer_tensors(a), layer_tensors(b), strict=True):
        x, y = x[rows_a], y[rows_b]
        assert x.shape == y.shape, name
        assert torch.allclose(x.double(), y.double(), atol=atol, rtol=1e-5), (name, (x - y).abs().max())


def decode(model, tokens: torch.Tensor, cache: HopeCache) -> torch.Tensor:
    """Feed `tokens` [B, N] one column at a time; logits [B, N, V]."""
    return torch.cat([model(tokens[:, t:t + 1], past_key_values=cache).logits for t in range(tokens.shape[1])], 1)


# --- memory ops: the decode paths ---------------------------------------------------------------------------

@pytest.mark.parametrize("names,delta,momentum", [(HOPE, True, True), (HOPE, False, False), (TITANS, True, True)])
def test_decode_update_equals_naive(names, delta, momentum):
    """Without padding, the per-row decode path is the token-by-token reference (shared positions)."""
    rule = MemoryRule(names, 3, 6, delta=delta, momentum=momentum)
    inputs, state = make_case(names, t=17, momentum=momentum)
    out_decode, state_decode = decode_memory_update(inputs, state, rule)
    out_naive, state_naive = naive_memory_update(inputs, state, rule)
    assert torch.equal(state_decode.position, torch.tensor([17, 17]))
    state_decode.position = 17
    assert_same(out_decode, state_decode, out_naive, state_naive, 1e-12)


def test_packed_update_gives_each_row_its_state_alone_and_decodes_on():
    """Rows with 5 and 23 real tokens (then padding): each gets the state it reaches alone, and decoding on
    from those per-row positions (refreshes at each row's own boundaries) continues each row exactly."""
    rule = MemoryRule(HOPE, 4, 8)
    inputs, state = make_case(HOPE, t=30)
    lengths = torch.tensor([5, 23])
    inputs.mask = (torch.arange(30)[None] < lengths[:, None]).double()
    prefill, rest = slice_inputs(inputs, slice(0, 23)), slice_inputs(inputs, slice(23, 30))
    out, packed = packed_memory_update(chunk_memory_update, prefill, state, rule, lengths)
    assert torch.equal(packed.position, lengths)
    rest.mask = None
    out_rest, after = decode_memory_update(rest, packed, rule)
    for row, n in enumerate(lengths.tolist()):
        alone = slice_inputs(inputs, slice(0, n))
        alone.x, alone.mask = alone.x[row:row + 1], None
        alone.static = {k: v[row:row + 1] for k, v in alone.static.items()}
        cont = slice_inputs(inputs, slice(23, 30))
        cont.x, cont.mask = cont.x[row:row + 1], None
        cont.static = {k: v[row:row + 1] for k, v in cont.static.items()}
        start = state.map_tensors(lambda t: t[row:row + 1])
        out_alone, state_alone = chunk_memory_update(alone, start, rule)
        out_cont, state_cont = naive_memory_update(cont, state_alone, rule)
        row_state = packed.map_tensors(lambda t: t[row:row + 1])
        row_state.position = n
        assert_same(out[row:row + 1, :, :n], row_state, out_alone, state_alone, 1e-12)
        row_after = after.map_tensors(lambda t: t[row:row + 1])
        row_after.position = n + 7
        assert_same(out_rest[row:row + 1], row_after, out_cont, state_cont, 1e-12)


# --- the model: prefill then decode == one forward ----------------------------------------------------------

@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("prefill", [2, 4, 6, 8, 13])      # below / at C_o, between, at C_m, above C_m
def test_prefill_then_decode_equals_full_forward(variant, prefill):
    model = build(variant)
    x = ids()
    with torch.no_grad():
        full = model(x, use_cache=True)
        out = model(x[:, :prefill], use_cache=True)
        cache = output_cache(out)
        logits = torch.cat([out.logits, decode(model, x[:, prefill:], cache)], dim=1)
    assert isinstance(cache, HopeCache) and cache.get_seq_length() == x.shape[1]
    assert (logits - full.logits).abs().max() < 1e-5
    assert_caches_close(cache, output_cache(full))


def test_prefill_then_decode_with_input_projection():
    """The convolution's cached inputs are W_x x: decoding after a prefill of 6 (between C_o and C_m) equals one
    forward, with W_x moved off its identity initialisation."""
    model = move_input_projection_off_identity(build("hope", input_projection=True))
    x = ids()
    with torch.no_grad():
        full = model(x, use_cache=True)
        out = model(x[:, :6], use_cache=True)
        cache = output_cache(out)
        logits = torch.cat([out.logits, decode(model, x[:, 6:], cache)], dim=1)
    assert (logits - full.logits).abs().max() < 1e-5
    assert_caches_close(cache, output_cache(full))


@pytest.mark.parametrize("variant", ["hope", "hope-attention"])
def test_prefill_then_decode_with_in_context_cms(variant):
    """Same contract with an in-context CMS level on (chunk 4): the fast weights ΔW in the cache's `cms` slot and
    their summed gradients match too; prefill 6 ends inside a chunk."""
    model = build(variant, **IN_CONTEXT_CMS)
    x = ids()
    with torch.no_grad():
        full = model(x, use_cache=True)
        assert all(layer.cms is not None and layer.cms["delta"][0][0].abs().max() > 0
                   for layer in output_cache(full).layers)
        out = model(x[:, :6], use_cache=True)
        logits = torch.cat([out.logits, decode(model, x[:, 6:], output_cache(out))], dim=1)
    assert (logits - full.logits).abs().max() < 1e-5
    assert_caches_close(output_cache(out), output_cache(full))


def test_prefill_in_pieces_equals_one_prefill():
    """Several multi-token calls on one cache (each starting mid-chunk) equal one call."""
    model = build()
    x = ids(length=27)
    with torch.no_grad():
        full = model(x, use_cache=True)
        cache = HopeCache(model.config)
        logits = torch.cat([model(x[:, a:b], past_key_values=cache).logits for a, b in ((0, 5), (5, 14), (14, 27))], 1)
    assert (logits - full.logits).abs().max() < 1e-5
    assert_caches_close(cache, output_cache(full))


# --- padding -----------------------------------------------------------------------------------------------

def padded_batch(side: str, short: torch.Tensor, long: torch.Tensor):
    pad = torch.zeros(1, long.shape[1] - short.shape[1], dtype=torch.long)
    row = torch.cat([pad, short], 1) if side == "left" else torch.cat([short, pad], 1)
    mask = (row != 0).long()
    return torch.cat([row, long]), torch.cat([mask, torch.ones_like(long)])


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_prefill_then_decode_equals_each_prompt_alone(variant, side):
    """A 3-token and a 40-token prompt, padded, prefilled into one cache, then 10 decoded tokens: every row's
    logits and final states equal those of its prompt run alone (float64)."""
    model = build(variant).double()
    short, long = ids(1, 3, seed=5), ids(1, 40, seed=6)
    batch, mask = padded_batch(side, short, long)
    new = ids(2, 10, seed=7)
    with torch.no_grad():
        out = model(batch, attention_mask=mask, use_cache=True)
        cache = output_cache(out)
        mask = torch.cat([mask, torch.ones_like(new)], 1)
        steps = torch.cat([model(new[:, t:t + 1], attention_mask=mask[:, :41 + t], past_key_values=cache).logits
                           for t in range(10)], 1)
        for row, prompt in enumerate((short, long)):
            alone = model(torch.cat([prompt, new[row:row + 1]], 1), use_cache=True)
            n = prompt.shape[1]
            real = (out.logits[row, -n:] if side == "left" or row == 1 else out.logits[row, :n])
            assert torch.allclose(real, alone.logits[0, :n], atol=1e-10, rtol=1e-8)
            assert torch.allclose(steps[row], alone.logits[0, n:], atol=1e-10, rtol=1e-8)
            if variant != "hope-attention":       # the attention cache keeps the padded columns, by design
                assert_caches_close(cache, output_cache(alone), slice(row, row + 1), slice(0, 1), atol=1e-10)


def test_ragged_multi_token_call_equals_single_tokens():
    """After a padded prefill the rows sit at different positions; a multi-token call then takes the per-row
    token loop and must equal feeding the same tokens one at a time (the documented fallback)."""
    model = build().double()
    batch, mask = padded_batch("left", ids(1, 3, seed=5), ids(1, 11, seed=6))
    new = ids(2, 6, seed=7)
    with torch.no_grad():
        one = output_cache(model(batch, attention_mask=mask, use_cache=True))
        two = output_cache(model(batch, attention_mask=mask, use_cache=True))
        assert one.layers[0].positions.tolist() == [3, 11]
        together = model(new, past_key_values=one).logits
        apart = decode(model, new, two)
    assert torch.allclose(together, apart, atol=1e-12)
    assert_caches_close(one, two, atol=1e-12)


# --- the cache object --------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["hope", "hope-attention"])
def test_batch_operations_equal_a_cache_built_from_the_selected_rows(variant):
    """reorder_cache (beam search), batch_select_indices and batch_repeat_interleave equal a cache built
    directly from the selected rows (checked through the next logits and every state)."""
    model = build(variant)
    x, nxt = ids(3, 10), ids(3, 1, seed=2)

    def prefill(rows):
        with torch.no_grad():
            return output_cache(model(x[rows], use_cache=True))

    cases = [
        ("reorder_cache", torch.tensor([2, 0, 0]), lambda c: c.reorder_cache(torch.tensor([2, 0, 0]))),
        ("batch_select_indices", torch.tensor([1, 2]), lambda c: c.batch_select_indices(torch.tensor([1, 2]))),
        ("batch_repeat_interleave", torch.tensor([0, 0, 1, 1, 2, 2]), lambda c: c.batch_repeat_interleave(2)),
    ]
    for name, rows, operation in cases:
        cache, reference = prefill(slice(None)), prefill(rows)
        operation(cache)
        assert cache.batch_size == len(rows), name
        assert_caches_close(cache, reference, atol=1e-6)
        with torch.no_grad():
            assert torch.allclose(model(nxt[rows], past_key_values=cache).logits,
                                  model(nxt[rows], past_key_values=reference).logits, atol=1e-5), name


def test_cache_counters_reset_and_crop():
    model = build()
    x = ids(1, 10)
    with torch.no_grad():
        cache = output_cache(model(x, use_cache=True))
        assert cache.get_seq_length() == 10 and cache.batch_size == 1
        projection, memory = cache.layers[0].chunk_offsets()
        assert projection.tolist() == [10 % 4] and memory.tolist() == [10 % 8]
        assert all(layer.cms is None for layer in cache.layers)        # the in-context CMS slot, empty
        fresh = model(x[:, :3]).logits
        cache.reset()
        assert cache.get_seq_length() == 0 and cache.layers[0].state is None
        assert torch.allclose(model(x[:, :3], past_key_values=cache).logits, fresh, atol=1e-6)
    with pytest.raises(NotImplementedError, match="cannot be cropped"):
        cache.crop(1)


def test_states_stay_float32_in_bf16():
    model = build().to(torch.bfloat16)
    x = ids(2, 12)
    with torch.no_grad():
        out = model(x, use_cache=True)
        step = model(ids(2, 1, seed=3), past_key_values=output_cache(out))
    state = output_cache(out).layers[0].state
    assert state.conv.dtype == torch.float32
    assert all(t.dtype == torch.float32 for t in (state.memory.w_in, state.memory.anchor_out, state.memory.mom_in))
    assert torch.isfinite(step.logits).all()


def test_bad_cache_inputs_raise():
    model = build()
    x = ids(2, 6)
    with pytest.raises(ValueError, match="HopeCache"):
        model(x, past_key_values=DynamicCache())
    cache = output_cache(model(x, use_cache=True))
    with pytest.raises(ValueError, match=r"attention_mask must have shape .*past \+ seq_len"):
        model(x[:, :1], attention_mask=torch.ones(2, 3), past_key_values=cache)


def test_the_cache_under_either_argument_name():
    """transformers >= 5.24 passes the cache as `cache=` (`generate` included), earlier versions as
    `past_key_values=`: both reach the model, giving the same continuation; two different caches raise."""
    from hope_hf.modeling_hope import CACHE_FIELD

    for variant in ("hope", "hope-attention"):
        model = build(variant)
        x = ids(2, 6)
        with torch.no_grad():
            full = model(x).logits
            old, new = model(x[:, :4], use_cache=True), model(x[:, :4], use_cache=True)
            assert isinstance(getattr(old, CACHE_FIELD), HopeCache)
            by_old = model(x[:, 4:], past_key_values=getattr(old, CACHE_FIELD)).logits
            by_new = model(x[:, 4:], cache=getattr(new, CACHE_FIELD)).logits
            by_model = model.model(x[:, 4:], cache=getattr(model(x[:, :4], use_cache=True), CACHE_FIELD))
        assert torch.equal(by_old, by_new)
        assert (by_new - full[:, 4:]).abs().max() < 1e-5
        assert getattr(by_model, CACHE_FIELD).get_seq_length() == 6
    with pytest.raises(ValueError, match="not both"):
        model(x, past_key_values=HopeCache(model.config), cache=HopeCache(model.config))


def test_no_cache_while_training_with_checkpointing():
    model = build().train()
    assert output_cache(model(ids(), use_cache=False)) is None
    model.activation_checkpointing_enable()
    assert output_cache(model(ids())) is None


@pytest.mark.parametrize("variant", ["hope", "hope-attention"])
def test_padding_in_the_middle_of_a_row(variant):
    """Padding anywhere in a row (here columns 2-5) is skipped: the real tokens get the logits they get alone."""
    model = build(variant).double()
    x = ids(1, 16, seed=4)
    mask = torch.ones_like(x)
    mask[0, 2:6] = 0
    with torch.no_grad():
        padded = model(x, attention_mask=mask).logits[0, mask[0].bool()]
        alone = model(x[:, mask[0].bool()]).logits[0]
    assert torch.allclose(padded, alone, atol=1e-10, rtol=1e-8)
