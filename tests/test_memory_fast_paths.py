"""The fast paths of the chunk-wise memory compute the same function as the eager chunk form.

* `compiled=True`: the per-chunk closed form under `torch.compile` (HOPE.md §8 fast path).
* `checkpoint_chunks=n`: activation checkpointing per group of memory chunks (same values, same gradients).
"""

from __future__ import annotations

import pytest
import torch

from hope_hf import HopeConfig, HopeForCausalLM
from hope_hf.memory_ops import MemoryRule, chunk_memory_update

from conftest import tiny_config_kwargs
from test_memory_ops import HOPE, TITANS, assert_same, make_case


def grads_of(inputs, state, rule, **kwargs):
    leaves = [inputs.x, state.w_in, state.w_out, *inputs.static.values()]
    for t in leaves:
        t.requires_grad_(True)
    o, end = chunk_memory_update(inputs, state, rule, **kwargs)
    loss = (o * torch.linspace(-1, 1, o.shape[2], dtype=o.dtype)[:, None]).sum() + end.w_in.square().sum()
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return o.detach(), grads


@pytest.mark.parametrize("names,every,t", [(HOPE, 1, 23), (HOPE, 2, 23), (HOPE, 3, 9), (TITANS, 2, 17)])
def test_chunk_checkpointing_gives_the_same_values_and_gradients(names, every, t):
    rule = MemoryRule(names, 4, 8)
    inputs, state = make_case(names, t=t)
    state = state.map_tensors(lambda x: x.detach().clone())
    o_ref, g_ref = grads_of(inputs, state, rule)
    inputs, state = make_case(names, t=t)
    state = state.map_tensors(lambda x: x.detach().clone())
    o, g = grads_of(inputs, state, rule, checkpoint_chunks=every)
    assert torch.equal(o, o_ref)
    assert sum(a is not None for a in g) >= 3
    for a, b in zip(g, g_ref, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_chunk_checkpointing_state_equals_plain_state():
    rule = MemoryRule(HOPE, 4, 8)
    inputs, state = make_case(HOPE, t=21)
    with torch.enable_grad():
        o_a, a = chunk_memory_update(inputs, state, rule, checkpoint_chunks=2)
    o_b, b = chunk_memory_update(inputs, state, rule)
    assert_same(o_a, a, o_b, b, 1e-14)
    assert a.position == b.position == 21


def test_model_with_memory_checkpointing_matches_plain_model():
    torch.manual_seed(0)
    plain = HopeForCausalLM(HopeConfig(**tiny_config_kwargs()))
    checkpointed = HopeForCausalLM(HopeConfig(**tiny_config_kwargs(memory_checkpoint_chunks=2)))
    checkpointed.load_state_dict(plain.state_dict())
    ids = torch.randint(3, 99, (2, 19))
    losses = []
    for model in (plain, checkpointed):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        losses.append(loss.detach())
    assert torch.equal(losses[0], losses[1])
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_compiled_chunk_matches_eager(monkeypatch):
    """The compiled chunk steps (projection and main memory) each trace as ONE graph (`fullgraph=True`) and gives the eager values and gradients.

    The suite compiles with the `aot_eager` backend (traces forward and backward like Inductor, no C++ build, a few
    seconds on CPU); `eval/gpu_check.py` checks the Inductor build on a GPU."""
    from hope_hf import memory_ops

    for fn in (memory_ops.projection_chunk_update, memory_ops.main_chunk_update):
        compiled = torch.compile(fn, backend="aot_eager", fullgraph=True, dynamic=False)
        monkeypatch.setitem(memory_ops._COMPILED, fn.__name__, compiled)
    torch._dynamo.reset()
    rule = MemoryRule(HOPE, 4, 8)
    inputs, state = make_case(HOPE, t=10, dtype=torch.float32)
    o_ref, g_ref = grads_of(inputs, state, rule)
    inputs, state = make_case(HOPE, t=10, dtype=torch.float32)
    o, g = grads_of(inputs, state, rule, compiled=True)
    torch.testing.assert_close(o, o_ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(g, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_memory_implementation_config_field():
    config = HopeConfig(**tiny_config_kwargs(memory_implementation="compiled"))
    model = HopeForCausalLM(config)
    assert {layer.mixer.implementation for layer in model.model.layers} == {"compiled"}
    model.set_memory_implementation("chunk")
    assert model.config.memory_implementation == "chunk"
    with pytest.raises(ValueError, match="memory_implementation"):
        HopeConfig(**tiny_config_kwargs(memory_implementation="fast"))
    with pytest.raises(ValueError, match="memory_checkpoint_chunks"):
        HopeConfig(**tiny_config_kwargs(memory_checkpoint_chunks=-1))
