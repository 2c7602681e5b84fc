"""The chunk-wise memory (UT form) equals the token-by-token reference (HOPE.md §3 contracts)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from hope_hf.memory_ops import MemoryInputs, MemoryRule, MemoryState, chunk_memory_update, naive_memory_update

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "eval"))
import chunk_step_stability  # noqa: E402

HOPE = ("k", "v", "eta", "alpha", "mem")
HOPE_Q = ("q", "k", "v", "eta", "alpha", "mem")
TITANS = ("mem",)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def make_case(names, *, b=2, H=3, d=5, h=7, t=23, momentum=True, mask=False, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    M = len(names)
    w_in = randn(H, M, h, d, scale=d**-0.5)
    w_out = randn(H, M, d, h, scale=0.1)
    static = {n: randn(b, H, t, d) for n in ("q", "k", "v") if n not in names}
    if "eta" not in names:
        static["eta"], static["alpha"] = randn(b, H, t) - 2, randn(b, H, t) + 2
    inputs = MemoryInputs(
        x=randn(b, H, t, d, scale=0.3),
        static=static,
        eta_weight=randn(H, d, scale=0.3),
        eta_bias=randn(H) - 2,
        alpha_weight=randn(H, d, scale=0.3),
        alpha_bias=randn(H) + 2,
        momentum=(torch.rand(H, generator=g, dtype=torch.float64) * 0.9 + 0.05).to(dtype) if momentum else None,
        mask=(torch.rand(b, t, generator=g) > 0.3).to(dtype) if mask else None,
    )
    return inputs, MemoryState.initial(w_in, w_out, b, momentum)


def slice_inputs(inputs: MemoryInputs, sl: slice) -> MemoryInputs:
    return MemoryInputs(
        x=inputs.x[:, :, sl],
        static={k: v[:, :, sl] for k, v in inputs.static.items()},
        eta_weight=inputs.eta_weight, eta_bias=inputs.eta_bias,
        alpha_weight=inputs.alpha_weight, alpha_bias=inputs.alpha_bias,
        momentum=inputs.momentum,
        mask=None if inputs.mask is None else inputs.mask[:, sl],
    )


def assert_same(out_a, state_a, out_b, state_b, tol):
    assert rel(out_a, out_b) < tol
    for name in ("w_in", "w_out", "anchor_in", "anchor_out", "mom_in", "mom_out"):
        a, b = getattr(state_a, name), getattr(state_b, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert rel(a, b) < tol, (name, rel(a, b))
    assert state_a.position == state_b.position


CASES = [
    # names, delta, momentum, C_o, C_m, mask
    (HOPE, True, True, 4, 8, False),
    (HOPE, True, False, 4, 8, False),
    (HOPE, False, True, 3, 9, False),
    (HOPE, False, False, 5, 5, False),
    (HOPE_Q, True, True, 4, 8, True),
    (TITANS, False, True, 5, 5, False),
    (TITANS, True, True, 2, 6, True),
    (HOPE, True, True, 64, 64, False),   # the whole sequence is shorter than a chunk
    (HOPE, True, True, 1, 3, False),     # one-token chunks
    (HOPE, True, True, 23, 23, True),    # one exact chunk
]


@pytest.mark.parametrize("names,delta,momentum,c_o,c_m,mask", CASES)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("normalize_values", [True, False])
def test_chunked_equals_naive(names, delta, momentum, c_o, c_m, mask, dtype, tol, normalize_values):
    rule = MemoryRule(names, c_o, c_m, delta=delta, momentum=momentum, eta_max=1.0, normalize_values=normalize_values)
    inputs, state = make_case(names, momentum=momentum, mask=mask, dtype=dtype)
    out_naive, state_naive = naive_memory_update(inputs, state, rule)
    out_chunk, state_chunk = chunk_memory_update(inputs, state, rule)
    assert torch.isfinite(out_chunk).all()
    assert_same(out_chunk, state_chunk, out_naive, state_naive, tol)


@pytest.mark.parametrize("alpha_min", [0.0, 0.6])
def test_alpha_min_and_eta_max(alpha_min):
    rule = MemoryRule(HOPE, 4, 8, eta_max=1.7, alpha_min=alpha_min)
    inputs, state = make_case(HOPE)
    assert_same(*chunk_memory_update(inputs, state, rule), *naive_memory_update(inputs, state, rule), 1e-10)


@pytest.mark.parametrize("split", [1, 3, 4, 8, 13])
def test_pieces_equal_one_call(split):
    """Feeding a sequence in two calls (the state carried, the second call starting mid-chunk) is exact."""
    rule = MemoryRule(HOPE, 4, 8)
    inputs, state = make_case(HOPE, mask=True)
    out_full, state_full = chunk_memory_update(inputs, state, rule)
    out_a, state_a = chunk_memory_update(slice_inputs(inputs, slice(0, split)), state, rule)
    out_b, state_b = chunk_memory_update(slice_inputs(inputs, slice(split, None)), state_a, rule)
    assert_same(torch.cat([out_a, out_b], dim=2), state_b, out_full, state_full, 1e-12)


def test_token_by_token_calls_equal_one_call():
    rule = MemoryRule(HOPE, 3, 6)
    inputs, state = make_case(HOPE, t=14)
    out_full, state_full = chunk_memory_update(inputs, state, rule)
    outs = []
    for t in range(14):
        out, state = chunk_memory_update(slice_inputs(inputs, slice(t, t + 1)), state, rule)
        outs.append(out)
    assert_same(torch.cat(outs, dim=2), state, out_full, state_full, 1e-12)


def test_padding_writes_nothing():
    """A padded token leaves every state (running, momentum) untouched."""
    rule = MemoryRule(HOPE, 4, 8)
    inputs, state = make_case(HOPE, t=9, mask=True)
    inputs.mask = torch.ones_like(inputs.mask)
    inputs.mask[:, 5:] = 0
    _, state_all = chunk_memory_update(inputs, state, rule)
    _, state_real = chunk_memory_update(slice_inputs(inputs, slice(0, 5)), state, rule)
    for name in ("w_in", "w_out", "mom_in", "mom_out"):
        assert rel(getattr(state_all, name), getattr(state_real, name)) < 1e-12, name


def test_anchor_read_ignores_current_chunk():
    """The read o_t = M_mem^anchor(q_t): within a memory chunk, later tokens do not change earlier reads
    and the reads of a chunk only see the state at its start (HOPE.md §3.8)."""
    rule = MemoryRule(HOPE, 4, 8)
    inputs, state = make_case(HOPE, t=20)
    out, _ = chunk_memory_update(inputs, state, rule)
    changed = slice_inputs(inputs, slice(None))
    changed.x = inputs.x.clone()
    changed.x[:, :, 9] += 1.0                     # a token in the second memory chunk (8..15)
    out_changed, _ = chunk_memory_update(changed, state, rule)
    assert out.shape[2] == 20
    assert torch.equal(out[:, :, :16], out_changed[:, :, :16])
    assert not torch.equal(out[:, :, 16:], out_changed[:, :, 16:])


def test_gradients_reach_all_inputs():
    rule = MemoryRule(HOPE, 4, 8)
    inputs, state = make_case(HOPE, t=19)
    w_in = state.w_in[0].clone().requires_grad_(True)
    w_out = state.w_out[0].clone().requires_grad_(True)
    leaves = [inputs.x, inputs.eta_weight, inputs.eta_bias, inputs.alpha_weight, inputs.alpha_bias, inputs.momentum]
    for leaf in leaves:
        leaf.requires_grad_(True)
    out, final = chunk_memory_update(inputs, MemoryState.initial(w_in, w_out, 2, True), rule)
    (out.square().sum() + final.w_in.sum() + final.w_out.sum()).backward()
    for leaf in [w_in, w_out, *leaves]:
        assert leaf.grad is not None and torch.isfinite(leaf.grad).all() and leaf.grad.abs().sum() > 0
    # every one of the five memories receives gradient in its initial state
    assert (w_in.grad.abs().sum(dim=(0, 2, 3)) > 0).all()
    assert (w_out.grad.abs().sum(dim=(0, 2, 3)) > 0).all()


def test_finite_differences():
    """torch.autograd.gradcheck through the chunked path (float64, tiny)."""
    rule = MemoryRule(HOPE, 2, 4)
    inputs, state = make_case(HOPE, b=1, H=1, d=3, h=4, t=7)
    w_in = state.w_in[0].clone().requires_grad_(True)
    w_out = state.w_out[0].clone().requires_grad_(True)
    x = inputs.x.clone().requires_grad_(True)
    beta = inputs.momentum.clone().requires_grad_(True)

    def fn(w_in, w_out, x, beta):
        inputs.x, inputs.momentum = x, beta
        out, final = chunk_memory_update(inputs, MemoryState.initial(w_in, w_out, 1, True), rule)
        return out, final.w_in, final.w_out

    assert torch.autograd.gradcheck(fn, (w_in, w_out, x, beta), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_rule_validation():
    with pytest.raises(ValueError, match="names"):
        MemoryRule(("k", "v"), 4, 8)
    with pytest.raises(ValueError, match="memory_chunk"):
        MemoryRule(HOPE, 4, 6)


def test_inner_gradients_are_the_gradients_of_the_inner_loss():
    """The closed-form ∇_A = u kᵀ and ∇_B = e aᵀ equal autograd of ½‖M(k) − v̂‖² with v̂ held constant (Eq. 86),
    so the oracle shares no unchecked algebra with the chunk form."""
    from hope_hf.memory_ops import _anchor_terms, memory_apply

    rule = MemoryRule(HOPE, 4, 8, normalize_inner_step=False)
    inputs, state = make_case(HOPE, b=1, t=1)
    o, k, eta, log_alpha, log_beta, write, act, e, u = _anchor_terms(inputs, state.anchor_in, state.anchor_out, rule)
    for m in range(len(HOPE)):
        w_in = state.anchor_in[0, :, m].clone().requires_grad_(True)      # [H, h, d]
        w_out = state.anchor_out[0, :, m].clone().requires_grad_(True)
        key = k[0]                                                       # [H, 1, d]
        # v as the projections produced it: recompute M_v(x) at the anchor, normalised
        v_raw = memory_apply(inputs.x[0], state.anchor_in[0, :, 1], state.anchor_out[0, :, 1])
        v = torch.nn.functional.normalize(v_raw, dim=-1)
        target = memory_apply(v, w_in, w_out).detach()
        loss = 0.5 * (memory_apply(key, w_in, w_out) - target).square().sum()
        grad_in, grad_out = torch.autograd.grad(loss, (w_in, w_out))
        closed_in = u[0, :, m].transpose(-1, -2) @ key                 # Σ u kᵀ  [H, h, d]
        closed_out = e[0, :, m].transpose(-1, -2) @ act[0, :, m]        # Σ e aᵀ  [H, d, h]
        assert rel(closed_in, grad_in) < 1e-12 and rel(closed_out, grad_out) < 1e-12, m


@pytest.mark.parametrize("names", [("k", "v", "eta", "mem"), TITANS])
def test_without_weight_decay(names):
    """α ≡ 1 (the "w/o weight decay" ablation): chunked == naive, and no retention gate is read."""
    rule = MemoryRule(names, 4, 8, weight_decay=False)
    inputs, state = make_case(names, mask=True)
    inputs.static.pop("alpha", None)
    inputs.alpha_weight = inputs.alpha_bias = None
    assert_same(*chunk_memory_update(inputs, state, rule), *naive_memory_update(inputs, state, rule), 1e-10)


def test_normalized_inner_step_divides_the_error_by_the_curvature_bound():
    """With `normalize_inner_step` (the default) the error that drives ∇_A = u kᵀ and ∇_B = e aᵀ is the raw
    error divided by 1 + ‖a‖² + ‖B⁰ diag(σ'(A⁰k))‖²_F, computed here from the definitions."""
    from hope_hf.memory_ops import _anchor_terms, silu_derivative

    inputs, state = make_case(HOPE, b=2, t=3)
    raw = _anchor_terms(inputs, state.anchor_in, state.anchor_out, MemoryRule(HOPE, 4, 8, normalize_inner_step=False))
    scaled = _anchor_terms(inputs, state.anchor_in, state.anchor_out, MemoryRule(HOPE, 4, 8))
    k, act, e_raw, u_raw = raw[1], raw[6], raw[7], raw[8]
    z = k.unsqueeze(2) @ state.anchor_in.transpose(-1, -2)
    for bi in range(2):
        for h in range(3):
            for m in range(len(HOPE)):
                for t in range(3):
                    a = act[bi, h, m, t]
                    jac = state.anchor_out[bi, h, m] * silu_derivative(z[bi, h, m, t])[None, :]     # B⁰ diag(σ')
                    c = a.square().sum() + jac.square().sum()
                    torch.testing.assert_close(scaled[7][bi, h, m, t], e_raw[bi, h, m, t] / (1 + c))
                    torch.testing.assert_close(scaled[8][bi, h, m, t], u_raw[bi, h, m, t] / (1 + c))


def test_normalized_inner_step_stays_finite_at_the_largest_rate():
    """The literal step diverges once η·c > 2(1 + β) (c ≈ 0.35·h): with the normalised step a long sequence at
    η ≈ eta_max stays finite and bounded, for DGD (Hope) and plain GD (Titans). (With `normalize_inner_step=False`
    this case overflows: checked when the test was written.)"""
    for names, delta in ((HOPE, True), (TITANS, False)):
        inputs, state = make_case(names, b=1, H=2, d=16, h=64, t=200, dtype=torch.float32)
        inputs.eta_bias = torch.full_like(inputs.eta_bias, 8.0)                      # η = σ(8 + …) ≈ 1
        if "eta" in inputs.static:
            inputs.static["eta"] = torch.full_like(inputs.static["eta"], 8.0)
        g = torch.Generator().manual_seed(1)
        w_in = torch.randn(2, len(names), 64, 16, generator=g) * 0.25                 # A⁰k of unit scale
        w_out = torch.randn(2, len(names), 16, 64, generator=g) * 0.3
        state = MemoryState.initial(w_in, w_out, 1, True)
        o, end = chunk_memory_update(inputs, state, MemoryRule(names, 4, 8, delta=delta, normalize_inner_step=True))
        assert torch.isfinite(o).all() and o.abs().max() < 1e3
        assert end.w_out.abs().max() < 1e3 and end.w_in.abs().max() < 1e3


@pytest.mark.parametrize("seed", range(3))
def test_gd_chunk_steps_from_one_anchor_overshoot_on_similar_keys_and_eta_max_two_over_c_bounds_them(seed):
    """Plain GD in chunks: every token of a chunk steps from the chunk's anchor, so C tokens with similar keys and η
    near eta_max add up to C normalised steps, and GD with momentum overshoots without bound (the normalised step
    bounds one token's step, not the chunk's sum). `eta_max = 2 / C` (lm_comparison's titans-bounded) bounds the sum,
    and the same tokens leave the state where it started (`eval/chunk_step_stability.py` prints the wider table)."""
    inputs, state = chunk_step_stability.similar_keys_case(seed, similarity=0.7, length=256, eta=0.95)
    grown = {eta_max: chunk_step_stability.growth(inputs, state, 16, delta=False, eta_max=eta_max)
             for eta_max in (1.0, 2 / 16)}
    assert grown[1.0] > 1e6                      # measured: 2e54, 3e40, 3e20 (seeds 0-2) over 256 tokens
    assert grown[2 / 16] < 2                     # measured: 0.81, 0.87, 0.79
