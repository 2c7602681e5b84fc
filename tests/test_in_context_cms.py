"""In-context CMS (HOPE.md §4, Eq. 71): fast weights ΔW in the cache step every `chunk_size` tokens on the
summed next-token loss; the result does not depend on how the stream is split into calls."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from hope_hf import HopeCache, HopeConfig, HopeForCausalLM, output_cache

from conftest import tiny_config_kwargs

pytestmark = pytest.mark.usefixtures("single_thread")      # many tiny forwards: threads only cost

MIXERS = {"hope": {}, "hope-attention": {"mixer": "attention", "num_key_value_heads": 2}}


def levels(lr0=0.5, lr1=0.3, c0=4, c1=8):
    return [{"intermediate_size": 37, "update_period": 1, "chunk_size": c0, "lr": lr0},
            {"intermediate_size": 19, "update_period": 4, "chunk_size": c1, "lr": lr1}]


def build(mixer="hope", **overrides) -> HopeForCausalLM:
    kwargs = {"in_context_cms": True, "cms_levels": levels(), **MIXERS[mixer], **overrides}
    return HopeForCausalLM(HopeConfig(**tiny_config_kwargs(**kwargs))).eval()


def ids(batch=2, length=22, seed=1):
    return torch.randint(3, 99, (batch, length), generator=torch.Generator().manual_seed(seed))


def deltas(cache: HopeCache) -> list[torch.Tensor]:
    return [t for layer in cache.layers for entry in layer.cms["delta"] if entry is not None for t in entry]


@pytest.mark.parametrize("mixer", list(MIXERS))
def test_pieces_and_token_by_token_equal_one_online_forward(mixer):
    model = build(mixer)
    x = ids()
    with torch.no_grad():
        full = model(x)
        pieces_cache, decode_cache = HopeCache(model.config), HopeCache(model.config)
        pieces = torch.cat([model(x[:, a:b], past_key_values=pieces_cache).logits
                            for a, b in ((0, 3), (3, 13), (13, 22))], 1)
        decoded = torch.cat([model(x[:, t:t + 1], past_key_values=decode_cache).logits for t in range(22)], 1)
        off = model(x, in_context_cms=False)
    assert (full.logits - off.logits).abs().max() > 1e-3                   # the fast weights did change outputs
    assert (pieces - full.logits).abs().max() < 1e-5
    assert (decoded - full.logits).abs().max() < 1e-5
    for a, b, c in zip(deltas(output_cache(full)), deltas(pieces_cache), deltas(decode_cache), strict=True):
        assert torch.allclose(a, b, atol=1e-6) and torch.allclose(a, c, atol=1e-6)


def test_equals_a_plain_reference_loop():
    """The driver against the rule written out with the plain (in-context off) forward and the whole stream known,
    two levels of chunk 4 and 6 (lr 0.5, 0.3): the stream is cut into segments at every step of either level
    (positions 4, 6, 8, 12, 16, 18, 20); each segment runs from the detached state at its start with ΔW as leaves.
    Level j's loss of a segment is Σ CE over the next-token pairs inside it, plus the pair (last token, next
    token) when j does not step at the segment's end, so that pair, which straddles the other level's step, counts
    for j as it should (level 1: (4, 5), (8, 9), (16, 17); level 0: (6, 7), (18, 19)). The gradient is added to
    j's sum; a level due at the segment's end steps ΔW ← ΔW − lr · sum and restarts its sum."""
    chunks, lrs = (4, 6), (0.5, 0.3)
    model = build(cms_levels=levels(c0=4, c1=6))
    x = ids(length=21)
    with torch.no_grad():
        online = model(x)
    cache = HopeCache(model.config)
    model._init_fast_weights(cache, 2, x.device)
    logits, start = [], 0
    for end in (4, 6, 8, 12, 16, 18, 20, 21):
        segment = x[:, start:end]
        leaves = {0: [], 1: []}
        for layer in cache.layers:
            for j in (0, 1):
                layer.cms["delta"][j] = tuple(d.detach().requires_grad_(True) for d in layer.cms["delta"][j])
                leaves[j] += layer.cms["delta"][j]
        out = model(segment, past_key_values=cache, in_context_cms=False).logits
        logits.append(out.detach())
        cache.detach()
        if end == 21:                                        # the last segment is not complete: no step yet
            break
        within = F.cross_entropy(out[:, :-1].flatten(0, 1), segment[:, 1:].flatten(), reduction="sum")
        straddle = F.cross_entropy(out[:, -1], x[:, end], reduction="sum")
        for j in (0, 1):
            loss = within if end % chunks[j] == 0 else within + straddle
            grads = iter(torch.autograd.grad(loss, leaves[j], retain_graph=True))
            for layer in cache.layers:
                summed = tuple(g + next(grads) for g in layer.cms["grad"][j])
                delta = layer.cms["delta"][j]
                if end % chunks[j] == 0:
                    delta = tuple(d - lrs[j] * g for d, g in zip(delta, summed))
                    summed = tuple(0 * g for g in summed)
                layer.cms["delta"][j] = tuple(d.detach() for d in delta)
                layer.cms["grad"][j] = tuple(g.detach() for g in summed)
        start = end
    assert (torch.cat(logits, 1) - online.logits).abs().max() < 1e-5
    for key in ("delta", "grad"):
        got, want = ([t for layer in c.layers for e in layer.cms[key] if e is not None for t in e]
                     for c in (output_cache(online), cache))
        for a, b in zip(got, want, strict=True):
            assert torch.allclose(a, b, atol=1e-6), key


def test_levels_change_only_at_multiples_of_their_chunk_and_lr_zero_never():
    model = build(cms_levels=levels(c0=4, c1=8) + [{"intermediate_size": 11, "update_period": 1,
                                                     "chunk_size": 4, "lr": 0.0}])
    x = ids(length=16)
    cache = HopeCache(model.config)
    previous = None
    with torch.no_grad():
        for t in range(16):
            model(x[:, t:t + 1], past_key_values=cache)
            now = [[tuple(d.clone() for d in e) for e in layer.cms["delta"]] for layer in cache.layers]
            position = t + 1
            for i, layer_now in enumerate(now):
                for j, chunk in enumerate((4, 8, 4)):
                    before = previous[i][j] if previous else tuple(torch.zeros_like(d) for d in layer_now[j])
                    changed = any(not torch.equal(a, b) for a, b in zip(before, layer_now[j]))
                    if j == 2:
                        assert not changed and all(not d.any() for d in layer_now[j])
                    else:
                        assert changed == (position % chunk == 0), (i, j, position)
            previous = now


def test_lr_zero_equals_the_plain_forward():
    model = build(cms_levels=levels(lr0=0.0, lr1=0.0))
    x = ids()
    with torch.no_grad():
        online = model(x).logits
        plain = model(x, in_context_cms=False).logits
    assert torch.equal(online, plain) or (online - plain).abs().max() < 1e-6


def test_off_by_default_and_switches():
    config = HopeConfig(**tiny_config_kwargs())
    assert config.in_context_cms is False and config.in_context_levels == []
    model = HopeForCausalLM(config).eval()
    with torch.no_grad():
        out = model(ids(), use_cache=True)
    assert all(layer.cms is None for layer in output_cache(out).layers)
    with pytest.raises(ValueError, match="chunk_size > 0"):
        model(ids(), in_context_cms=True)
    with pytest.raises(ValueError, match="in_context_cms"):
        HopeConfig(**tiny_config_kwargs(in_context_cms=True))
    with pytest.raises(ValueError, match="in_context_cms"):
        HopeConfig(**tiny_config_kwargs(in_context_cms=1, cms_levels=levels()))


def test_refuses_embeddings_other_positions_and_checkpointing():
    model = build()
    x = ids()
    with pytest.raises(ValueError, match="input_ids"):
        model(inputs_embeds=model.get_input_embeddings()(x))
    with pytest.raises(ValueError, match="position_ids"):
        model(x, position_ids=torch.arange(1, 23).expand(2, 22))
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        model(x, attention_mask=torch.ones(2, 7, dtype=torch.long))
    with torch.no_grad():
        assert torch.equal(model(x, attention_mask=torch.ones_like(x)).logits, model(x).logits)
        assert torch.equal(model(x, position_ids=torch.arange(22).expand(2, 22)).logits, model(x).logits)
        cache = output_cache(model(x[:, :6]))                 # ends inside a chunk of 4
    with pytest.raises(ValueError, match="inside an in-context segment"):
        model(x[:, 6:], past_key_values=cache, in_context_cms=False)
    with torch.no_grad():                           # at a step of level 0 only: the pending pair is dropped
        cache = output_cache(model(x[:, :4]))
        assert bool(cache.pending_segment_rows(2, x.device).all())
        model(x[:, 4:], past_key_values=cache, in_context_cms=False)
        assert cache.segment_ids is None and cache.seen_tokens == 22
    model.model.gradient_checkpointing = True
    with pytest.raises(ValueError, match="gradient checkpointing"):
        model.train()(x)


def padded(rows: list[torch.Tensor], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of different lengths as one batch [B, L_max] padded with 0 on `side`, and its mask."""
    width = max(len(r) for r in rows)
    x, mask = torch.zeros(len(rows), width, dtype=torch.long), torch.zeros(len(rows), width, dtype=torch.long)
    for b, r in enumerate(rows):
        cols = slice(width - len(r), width) if side == "left" else slice(0, len(r))
        x[b, cols], mask[b, cols] = r, 1
    return x, mask


def fast_weights(cache: HopeCache, row: int) -> list[torch.Tensor]:
    return [t[row] for layer in cache.layers for key in ("delta", "grad") for entry in layer.cms[key]
            if entry is not None for t in entry]


@pytest.mark.parametrize("mixer", list(MIXERS))
@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_equals_each_row_alone(mixer, side):
    """Rows of 13, 7 and 10 tokens padded into one batch, then 6 more tokens each (the rows now at different
    positions): every row's logits, fast weights and summed gradients are those it gets alone. Levels of
    chunk 4 and 6, so the rows' steps fall at different columns."""
    model = build(mixer, cms_levels=levels(c0=4, c1=6))
    rows = [ids(batch=1, length=n, seed=n)[0] for n in (13, 7, 10)]
    more = ids(batch=3, length=6, seed=99)
    x, mask = padded(rows, side)
    with torch.no_grad():
        first = model(x, attention_mask=mask)
        cache = output_cache(first)
        second = model(more, past_key_values=cache).logits
        for b, r in enumerate(rows):
            alone = model(r[None])
            real = mask[b].bool()
            assert (first.logits[b, real] - alone.logits[0]).abs().max() < 1e-5, b
            alone_second = model(more[b:b + 1], past_key_values=output_cache(alone)).logits
            assert (second[b] - alone_second[0]).abs().max() < 1e-5, b
            for got, want in zip(fast_weights(cache, b), fast_weights(output_cache(alone), 0), strict=True):
                assert (got - want).abs().max() < 1e-5, b
    assert all(t.abs().max() > 0 for t in fast_weights(cache, 1)[:6])                  # the fast weights did step


@pytest.mark.parametrize("mixer", list(MIXERS))
def test_padded_generate_equals_each_row_alone(mixer):
    """Greedy `generate` on a left-padded batch with in-context CMS: each row's tokens and scores are its own."""
    model = build(mixer)
    rows = [ids(batch=1, length=n, seed=n)[0] for n in (9, 5, 7)]
    x, mask = padded(rows, "left")
    settings = dict(max_new_tokens=7, do_sample=False, pad_token_id=0, output_scores=True,
                    return_dict_in_generate=True)
    with torch.no_grad():
        batch = model.generate(x, attention_mask=mask, **settings)
        for b, r in enumerate(rows):
            alone = model.generate(r[None], **settings)
            assert torch.equal(batch.sequences[b, x.shape[1]:], alone.sequences[0, len(r):]), b
            for got, want in zip(batch.scores, alone.scores, strict=True):
                assert (got[b] - want[0]).abs().max() < 1e-4, b


def test_training_forward_trains_first_order():
    """Training mode with in-context CMS on: the loss reaches every parameter with finite gradients, the fast
    weights in the cache carry no graph, and with lr 0 the gradients are those of the plain forward."""
    model = build().train()
    x = ids()
    out = model(x, labels=x)
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads.values())
    assert all(g.abs().max() > 0 for n, g in grads.items() if ".cms.levels." in n)
    assert not any(t.requires_grad for t in deltas(output_cache(out)))
    still = build(cms_levels=levels(lr0=0.0, lr1=0.0)).train()
    on = torch.autograd.grad(still(x, labels=x).loss, list(still.parameters()))
    off = torch.autograd.grad(still(x, labels=x, in_context_cms=False).loss, list(still.parameters()))
    assert all((a - b).abs().max() < 1e-6 for a, b in zip(on, off, strict=True))


def test_generate_with_in_context_cms_equals_the_online_forward():
    model = build()
    prompt = ids(batch=1, length=6)
    with torch.no_grad():
        generated = model.generate(prompt, max_new_tokens=9, do_sample=False, pad_token_id=0)
        online = model(generated).logits
    assert generated.shape == (1, 15)
    assert torch.equal(online[:, 5:-1].argmax(-1), generated[:, 6:])


def test_fast_weights_stay_out_of_the_parameters():
    model = build()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model(ids(length=30))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
