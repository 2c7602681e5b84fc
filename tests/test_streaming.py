"""`hope_hf.streaming.MemoryStream`: feed a stream in pieces, reset, detach, save/load (safetensors), consolidate."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors import safe_open

from hope_hf import HopeConfig, HopeForCausalLM, MemoryStream

from conftest import tiny_config_kwargs
from test_in_context_cms import MIXERS, build, deltas, ids

pytestmark = pytest.mark.usefixtures("single_thread")      # many tiny forwards: threads only cost


@pytest.mark.parametrize("mixer", list(MIXERS))
@pytest.mark.parametrize("in_context", [True, False])
@pytest.mark.parametrize("cut", [4, 6, 16])     # a step of level 0 only (a pending pair); inside both; a step of both
def test_save_load_continue_equals_never_stopping(tmp_path, mixer, in_context, cut):
    model = build(mixer)
    x = ids(length=30)
    with torch.no_grad():
        stream = MemoryStream(model, in_context_cms=in_context)
        stream.feed(x[:, :cut])
        stream.save(tmp_path / "memory.safetensors")
        uninterrupted = stream.feed(x[:, cut:]).logits
        resumed = MemoryStream(model, in_context_cms=in_context)
        resumed.load(tmp_path / "memory.safetensors")
        assert resumed.position == cut
        continued = resumed.feed(x[:, cut:]).logits
    assert torch.equal(uninterrupted, continued)
    with safe_open(tmp_path / "memory.safetensors", framework="pt") as f:
        assert f.metadata()["seen_tokens"] == str(cut)
        assert any(".cms.delta." in k for k in f.keys()) == in_context


def test_stream_in_pieces_equals_one_forward():
    model = build()
    x = ids(length=25)
    with torch.no_grad():
        whole = model(x).logits
        stream = MemoryStream(model)
        pieces = torch.cat([stream(x[:, a:b]).logits for a, b in ((0, 1), (1, 9), (9, 10), (10, 25))], 1)
    assert stream.position == 25
    assert (pieces - whole).abs().max() < 1e-5


def test_load_refuses_another_config(tmp_path):
    stream = MemoryStream(build())
    with torch.no_grad():
        stream.feed(ids(length=5))
    stream.save(tmp_path / "m.safetensors")
    other = MemoryStream(build(cms_levels=[{"intermediate_size": 37, "update_period": 1, "chunk_size": 2, "lr": 0.5}]))
    with pytest.raises(ValueError, match="another model config"):
        other.load(tmp_path / "m.safetensors")


def test_reset_forgets_and_detach_cuts_the_graph():
    model = build(in_context_cms=False, cms_levels=[{"intermediate_size": 37, "update_period": 1}])
    x = ids(length=12)
    stream = MemoryStream(model)
    with torch.no_grad():
        first = stream.feed(x).logits
        stream.feed(ids(length=7, seed=5))
        stream.reset()
        assert stream.position == 0
        assert torch.equal(stream.feed(x).logits, first)
    stream.reset()
    stream.feed(x[:, :6])
    held = stream.cache.layers[0].state.memory.w_in
    assert held.requires_grad
    stream.detach()
    assert not stream.cache.layers[0].state.memory.w_in.requires_grad
    loss = stream.feed(x[:, 6:]).logits.sum()
    loss.backward()                                          # reaches the parameters through the second piece only
    assert model.lm_head.weight.grad is not None


@pytest.mark.parametrize("mixer", list(MIXERS))
@pytest.mark.parametrize("cut", [12, 16])                 # a step of level 0 only (a pending pair); of both
def test_consolidate_folds_the_fast_weights_and_the_stream_goes_on_unchanged(mixer, cut):
    model = build(mixer)
    x = ids(batch=1, length=30)
    with torch.no_grad():
        stream = MemoryStream(model)
        stream.feed(x[:, :cut])
        kept = copy.deepcopy(stream.cache)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        reference = stream.feed(x[:, cut:]).logits
        reference_deltas = deltas(stream.cache)
        stream.cache = kept
        stream.consolidate(0)
        stream.consolidate(1)
        continued = stream.feed(x[:, cut:]).logits
    assert (continued - reference).abs().max() < 1e-5
    folded = deltas(stream.cache)                 # ΔW after the fold: the reference's minus what was folded at cut
    assert (folded[0] - reference_deltas[0]).abs().max() > 1e-4
    changed = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
    assert changed == {f"model.layers.{i}.cms.levels.{j}.{p}.weight" for i in range(2) for j in range(2)
                       for p in ("gate_proj", "up_proj", "down_proj")}


def test_consolidate_makes_the_learning_permanent_for_a_plain_forward():
    """Batch 1: after folding, a plain forward (no cache, in-context off) equals the in-context-off forward that
    reads the stream's fast weights from a cache holding nothing else."""
    model = build()
    x, probe = ids(batch=1, length=16), ids(batch=1, length=9, seed=3)
    with torch.no_grad():
        stream = MemoryStream(model)
        stream.feed(x)
        fast_only = copy.deepcopy(stream.cache)
        for layer in fast_only.layers:
            layer.restore(None)
        fast_only.seen_tokens = 0
        with_fast_weights = model(probe, past_key_values=fast_only, in_context_cms=False).logits
        plain_before = model(probe, in_context_cms=False).logits
        stream.consolidate(0)
        stream.consolidate(1)
        plain_after = model(probe, in_context_cms=False).logits
    assert (plain_before - with_fast_weights).abs().max() > 1e-4
    assert (plain_after - with_fast_weights).abs().max() < 1e-5


def test_consolidate_checks_its_arguments():
    model = build(cms_levels=[{"intermediate_size": 37, "update_period": 1, "chunk_size": 4, "lr": 0.5},
                              {"intermediate_size": 19, "update_period": 4}])
    stream = MemoryStream(model)
    with pytest.raises(ValueError, match="no in-context fast weights"):
        stream.consolidate(0)
    with torch.no_grad():
        stream.feed(ids(length=5))
    with pytest.raises(ValueError, match="level must be"):
        stream.consolidate(1)
    with pytest.raises(ValueError, match="row must be"):
        stream.consolidate(0, row=2)
    stream.consolidate(0, row=1)


def test_plain_model_streams_without_in_context_cms():
    model = HopeForCausalLM(HopeConfig(**tiny_config_kwargs())).eval()
    x = ids(length=20)
    with torch.no_grad():
        whole = model(x).logits
        stream = MemoryStream(model)
        assert stream.in_context_cms is False
        pieces = torch.cat([stream(x[:, :7]).logits, stream(x[:, 7:]).logits], 1)
    assert (pieces - whole).abs().max() < 1e-5
