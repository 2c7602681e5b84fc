"""The deep optimisers (HOPE.md §5): torch references in the degenerate settings, twins, resume, convergence."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from hope_hf import HopeConfig, HopeForCausalLM
from hope_hf.optim import (DMGD, M3, PARAM_KINDS, DeltaMomentum, build_param_groups, dmgd_memory,
                           dmgd_memory_gradients, newton_schulz)

from conftest import tiny_config_kwargs

OPTIMIZERS = {
    "delta-momentum": (DeltaMomentum, {"lr": 0.1}),
    "dmgd": (DMGD, {"lr": 1e-2}),
    "dmgd-orthogonal": (DMGD, {"lr": 1e-2, "orthogonalize": True}),
    "m3": (M3, {"lr": 1e-2, "slow_period": 3}),
}
REGRESSION_LR = {"delta-momentum": 0.5, "dmgd": 3e-2, "dmgd-orthogonal": 3e-2, "m3": 3e-2}


def tiny_hope(**overrides) -> HopeForCausalLM:
    return HopeForCausalLM(HopeConfig(**tiny_config_kwargs(num_hidden_layers=1, **overrides)))


def batch(seed=1, length=8):
    return torch.randint(3, 99, (2, length), generator=torch.Generator().manual_seed(seed))


def train_steps(model, optimizer, steps, start=0):
    losses = []
    for i in range(start, start + steps):
        x = batch(seed=i % 3)
        loss = model(x, labels=x).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


class Mixed(nn.Module):
    """Parameters of every shape the optimisers meet: matrix, stacked matrices, vector, embedding."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, 6)
        self.linear = nn.Linear(6, 5)
        self.stack = nn.Parameter(torch.randn(2, 3, 4, 5) * 0.3)

    def forward(self, ids):
        h = self.linear(self.embed(ids))                                  # [B, T, 5]
        return (h.unsqueeze(-2) @ self.stack.sum(dim=(0, 1)).T).pow(2).mean()


def step_side_by_side(pairs, step: int) -> None:
    """One step of each (Mixed model, optimiser) pair on the same batch."""
    ids = torch.randint(0, 11, (3, 4), generator=torch.Generator().manual_seed(step))
    for model, optimizer in pairs:
        model(ids).backward()
        optimizer.step()
        optimizer.zero_grad()


def regression_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 8, generator=g)
    y = torch.tanh(x @ torch.randn(8, 3, generator=g))
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
    return model, x, y


# --------------------------------------------------------------------------------------------------
# DeltaMomentum
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("foreach", [False, True])
def test_delta_momentum_without_erase_is_sgd_with_momentum_bit_for_bit(foreach):
    torch.manual_seed(0)
    ours, ref = Mixed(), Mixed()
    ref.load_state_dict(ours.state_dict())
    opt = DeltaMomentum(ours.parameters(), lr=0.1, momentum=0.8, erase=0.0, foreach=foreach)
    sgd = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.8, foreach=foreach)
    for step in range(6):
        step_side_by_side([(ours, opt), (ref, sgd)], step)
        for a, b in zip(ours.parameters(), ref.parameters()):
            assert torch.equal(a, b), step


def test_delta_momentum_erases_the_old_component_along_the_gradient():
    """One step against the formula b ← μ b − β (b·ĝ) ĝ + g in float64."""
    p = nn.Parameter(torch.zeros(5, dtype=torch.float64))
    opt = DeltaMomentum([p], lr=0.5, momentum=0.9, erase=0.7)
    g1, g2 = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    p.grad = g1.clone()
    opt.step()
    p.grad = g2.clone()
    opt.step()
    unit = g2 / g2.norm()
    expected_b = 0.9 * g1 - 0.7 * (g1 @ unit) * unit + g2
    torch.testing.assert_close(opt.state[p]["momentum_buffer"], expected_b, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(p.detach(), -0.5 * g1 - 0.5 * expected_b, rtol=1e-14, atol=1e-14)
    # with β = μ the new memory has no component along g2 other than g2 itself
    opt_full = DeltaMomentum([q := nn.Parameter(torch.zeros(5, dtype=torch.float64))], momentum=0.9, erase=0.9)
    for g in (g1, g2):
        q.grad = g.clone()
        opt_full.step()
    residual = opt_full.state[q]["momentum_buffer"] - g2
    assert abs(float(residual @ g2)) < 1e-12


def test_delta_momentum_foreach_equals_reference():
    torch.manual_seed(0)
    a, b = Mixed(), Mixed()
    b.load_state_dict(a.state_dict())
    opts = [DeltaMomentum(m.parameters(), lr=0.1, momentum=0.9, erase=0.6, weight_decay=0.01, foreach=f)
            for m, f in ((a, True), (b, False))]
    for step in range(5):
        step_side_by_side(zip((a, b), opts), step)
    for x, y in zip(a.parameters(), b.parameters()):
        assert torch.equal(x, y)


# --------------------------------------------------------------------------------------------------
# M3
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("nesterov", [True, False])
def test_m3_with_one_scale_is_muon(nesterov):
    torch.manual_seed(0)
    shapes = [(7, 5), (5, 9), (6, 6)]
    ours = [nn.Parameter(torch.randn(s)) for s in shapes]
    ref = [nn.Parameter(p.detach().clone()) for p in ours]
    m3 = M3(ours, lr=0.02, momentum=0.9, slow_weight=0.0, second_moment=False, nesterov=nesterov, ns_dtype="bfloat16",
            adjust_lr="original", weight_decay=0.1)
    muon = torch.optim.Muon(ref, lr=0.02, momentum=0.9, nesterov=nesterov, weight_decay=0.1)
    for step in range(5):
        grads = [torch.randn(s, generator=torch.Generator().manual_seed(10 * step + i)) for i, s in enumerate(shapes)]
        for params, opt in ((ours, m3), (ref, muon)):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
        for a, b in zip(ours, ref):
            assert torch.equal(a, b), step


def test_m3_adamw_part_is_adamw():
    torch.manual_seed(0)
    ours, ref = Mixed(), Mixed()
    ref.load_state_dict(ours.state_dict())
    adamw_kinds = [g for g in build_param_groups(ours, 0.1) if g["kind"] in ("embedding", "vector")]
    ref_groups = [g for g in build_param_groups(ref, 0.1) if g["kind"] in ("embedding", "vector")]
    m3 = M3(adamw_kinds, lr=0.01, betas=(0.8, 0.9), eps=1e-6)
    adamw = torch.optim.AdamW(ref_groups, lr=0.01, betas=(0.8, 0.9), eps=1e-6, foreach=False)
    for step in range(4):
        step_side_by_side([(ours, m3), (ref, adamw)], step)
    for (name, a), b in zip(ours.named_parameters(), ref.parameters()):
        if name in ("embed.weight", "linear.bias"):
            assert torch.equal(a, b), name


def test_m3_slow_momentum_refreshes_every_period_from_summed_gradients():
    """float64 reference of Algorithm 1 (EMAs, no Nesterov, no second moment) over two slow periods."""
    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(4, 6, dtype=torch.float64))
    start = p.detach().clone()
    opt = M3([p], lr=0.1, momentum=0.5, slow_momentum=0.7, slow_period=3, slow_weight=0.4, nesterov=False,
             ns_dtype="float64", adjust_lr="none")
    grads = [torch.randn(4, 6, dtype=torch.float64) for _ in range(7)]
    fast, slow, total, slow_dir, expected = (torch.zeros_like(start) for _ in range(5))
    expected = start.clone()
    for t, g in enumerate(grads, start=1):
        fast = 0.5 * fast + 0.5 * g
        total = total + g
        if t % 3 == 0:
            slow = 0.7 * slow + 0.3 * total
            total = torch.zeros_like(total)
            slow_dir = newton_schulz(slow, dtype="float64")
        expected = expected - 0.1 * (newton_schulz(fast, dtype="float64") + 0.4 * slow_dir)
        p.grad = g.clone()
        opt.step()
        torch.testing.assert_close(p.detach(), expected, rtol=1e-10, atol=1e-10)
    assert opt.state[p]["step"] == 7


def test_newton_schulz_orthogonalises_each_matrix_of_a_stack():
    x = torch.randn(3, 2, 5, 8, dtype=torch.float64)
    stacked = newton_schulz(x, dtype="float64")
    for i in range(3):
        for j in range(2):
            torch.testing.assert_close(stacked[i, j], newton_schulz(x[i, j], dtype="float64"), rtol=1e-12, atol=1e-12)
    # Muon's quintic: singular values land in roughly [0.5, 1.5], not on 1 exactly
    singular = torch.linalg.svdvals(newton_schulz(torch.randn(16, 24, dtype=torch.float64), steps=10, dtype="float64"))
    assert singular.min() > 0.5 and singular.max() < 1.5


def test_m3_second_moment_divides_by_root_v():
    p = nn.Parameter(torch.zeros(3, 3, dtype=torch.float64))
    g = torch.randn(3, 3, dtype=torch.float64)
    opt = M3([p], lr=0.1, slow_weight=0.0, second_moment=True, beta2=0.9, nesterov=False, ns_dtype="float64",
             adjust_lr="none", eps=1e-8)
    p.grad = g.clone()
    opt.step()
    expected = -0.1 * newton_schulz(0.05 * g, dtype="float64") / (g.abs() + 1e-8)   # V̂ = g² after one step
    torch.testing.assert_close(p.detach(), expected, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# DMGD
# --------------------------------------------------------------------------------------------------

def test_dmgd_memory_gradients_equal_autograd():
    g = torch.Generator().manual_seed(0)
    u, target = torch.randn(50, 2, generator=g, dtype=torch.float64), torch.randn(50, generator=g, dtype=torch.float64)
    phi = [torch.randn(7, 2, generator=g, dtype=torch.float64), torch.randn(7, generator=g, dtype=torch.float64),
           torch.randn(2, generator=g, dtype=torch.float64)]
    leaves = [t.clone().requires_grad_() for t in phi]
    loss = 0.5 * (dmgd_memory(u, *leaves) - target).pow(2).mean()
    expected = torch.autograd.grad(loss, leaves)
    for ours, ref in zip(dmgd_memory_gradients(u, target, *phi), expected):
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


def test_dmgd_with_a_frozen_memory_is_normalised_momentum():
    p = nn.Parameter(torch.zeros(6, dtype=torch.float64))
    opt = DMGD([p], lr=0.1, momentum=0.8, inner_lr=0.0, eps=1e-8)
    expected, m = torch.zeros(6, dtype=torch.float64), torch.zeros(6, dtype=torch.float64)
    for step in range(4):
        g = torch.randn(6, dtype=torch.float64, generator=torch.Generator().manual_seed(step))
        m = 0.8 * m + 0.2 * g
        expected = expected - 0.1 * m / (g.pow(2).mean().sqrt() + 1e-8)
        p.grad = g.clone()
        opt.step()
        torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=1e-7)   # the memory runs in float32


def test_dmgd_memory_learns_its_inner_objective():
    """On an alternating gradient stream the memory learns to predict the next gradient (−g_prev)."""
    direction = torch.randn(200, generator=torch.Generator().manual_seed(0))
    p = nn.Parameter(torch.zeros(200))
    opt = DMGD([p], lr=0.0, inner_lr=0.5)

    def inner_loss():
        state = opt.state[p]
        u = torch.stack([state["previous_grad"], state["momentum_buffer"]], dim=1) / state["previous_scale"]
        g_next = direction * (-1) ** (state["step"] % 2)
        scale = g_next.pow(2).mean().sqrt()
        return 0.5 * (dmgd_memory(u, state["w_in"], state["w_out"], state["w_skip"]) - g_next / scale).pow(2).mean()

    losses = []
    for step in range(60):
        p.grad = direction * (-1) ** (step % 2)
        opt.step()
        losses.append(float(inner_loss()))
    assert losses[-1] < 0.05 * losses[0], (losses[0], losses[-1])


# --------------------------------------------------------------------------------------------------
# all optimisers: skipping, resume, determinism, convergence, validation
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_a_parameter_without_gradient_is_skipped_entirely(name):
    cls, kwargs = OPTIMIZERS[name]
    a, b = nn.Parameter(torch.randn(4, 3)), nn.Parameter(torch.randn(4, 3))
    before = b.detach().clone()
    opt = cls([{"params": [a, b], "kind": "matrix", "weight_decay": 0.5}], **kwargs)
    a.grad = torch.randn(4, 3)
    opt.step()
    assert torch.equal(b, before) and len(opt.state[b]) == 0
    assert not torch.equal(a, b)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_state_dict_round_trip_resumes_exactly(name):
    """k steps, save with torch.save, reload with weights_only=True (as Trainer), m steps == k + m steps."""
    cls, kwargs = OPTIMIZERS[name]
    torch.manual_seed(0)
    model = tiny_hope()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    opt = cls(build_param_groups(model, 0.01), **kwargs)
    train_steps(model, opt, 3)
    buffer = io.BytesIO()
    torch.save({"optimizer": opt.state_dict(), "model": model.state_dict()}, buffer)
    train_steps(model, opt, 2, start=3)
    straight = {k: v.clone() for k, v in model.state_dict().items()}

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = tiny_hope()
    resumed.load_state_dict(initial)
    resumed.load_state_dict(saved["model"])
    opt2 = cls(build_param_groups(resumed, 0.01), **kwargs)
    opt2.load_state_dict(saved["optimizer"])
    train_steps(resumed, opt2, 2, start=3)
    for key, value in resumed.state_dict().items():
        assert torch.equal(value, straight[key]), key


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_rerun_is_bitwise_deterministic_and_converges_on_a_tiny_hope(name):
    cls, kwargs = OPTIMIZERS[name]
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = tiny_hope(mixer="attention")
        opt = cls(build_param_groups(model, 0.0), **kwargs)
        x = batch()
        losses = []
        for _ in range(12):
            loss = model(x, labels=x).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        runs.append((losses, [p.detach().clone() for p in model.parameters()]))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))
    losses = runs[0][0]
    assert losses[-1] < 0.6 * losses[0], losses


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_converges_on_a_small_regression_problem(name):
    cls, kwargs = OPTIMIZERS[name]
    torch.manual_seed(0)
    model, x, y = regression_problem()
    opt = cls(model.parameters(), **{**kwargs, "lr": REGRESSION_LR[name]})
    first = None
    for _ in range(100):
        loss = (model(x) - y).pow(2).mean()
        first = first if first is not None else loss.item()
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert loss.item() < 0.05 * first, (first, loss.item())


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_closure_is_evaluated_and_returned(name):
    cls, kwargs = OPTIMIZERS[name]
    model, x, y = regression_problem()
    opt = cls(model.parameters(), **kwargs)

    def closure():
        opt.zero_grad()
        loss = (model(x) - y).pow(2).mean()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and math.isfinite(loss.item())


def test_m3_orthogonalises_memory_stacks_matrix_by_matrix_on_a_self_modifying_hope():
    torch.manual_seed(0)
    model = tiny_hope()
    opt = M3(build_param_groups(model), lr=1e-2, slow_weight=0.0, adjust_lr="none", ns_dtype="float32", nesterov=False)
    bank = model.model.layers[0].mixer.memories
    before = bank.w_in.detach().clone()
    x = batch(length=20)
    model(x, labels=x).loss.backward()
    grad = bank.w_in.grad.clone()                               # [H, M, h, d]
    opt.step()
    step = (before - bank.w_in.detach()) / 1e-2                  # NS(0.05 g), one [h, d] matrix at a time
    H, M = grad.shape[:2]
    for i in range(H):
        for j in range(M):
            torch.testing.assert_close(step[i, j], newton_schulz(0.05 * grad[i, j], dtype="float32"),
                                       rtol=1e-4, atol=1e-5)
    singular = torch.linalg.svdvals(step.double())
    assert singular.max() < 1.5 and (singular.amax(dim=-1) > 0.5).sum() > H * M // 2


@pytest.mark.parametrize("cls, bad", [
    (DeltaMomentum, {"lr": -1.0}), (DeltaMomentum, {"momentum": 1.0}), (DeltaMomentum, {"erase": 2.5}),
    (DMGD, {"hidden_size": 0}), (DMGD, {"inner_lr": float("nan")}), (DMGD, {"orthogonalize": "yes"}),
    (M3, {"slow_period": 0}), (M3, {"ns_dtype": "float16"}), (M3, {"adjust_lr": "max"}), (M3, {"betas": (0.9, 1.0)}),
])
def test_bad_hyper_parameters_raise_naming_the_field(cls, bad):
    field, value = next(iter(bad.items()))
    with pytest.raises(ValueError, match=field):
        cls([nn.Parameter(torch.zeros(2, 2))], **bad)


def test_build_param_groups_tags_kind_and_level_and_covers_every_parameter_once():
    model = tiny_hope(cms_levels=[{"intermediate_size": 37, "update_period": 1},
                                  {"intermediate_size": 19, "update_period": 4},
                                  {"intermediate_size": 11, "update_period": 16}])
    model.model.layers[0].mixer.conv.weight.requires_grad_(False)
    groups = build_param_groups(model, weight_decay=0.1)
    names = [n for g in groups for n in g["param_names"]]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(names) == sorted(trainable) and len(names) == len(set(names))
    by_name = {n: g for g in groups for n in g["param_names"]}
    assert by_name["model.embed_tokens.weight"]["kind"] == "embedding"
    assert by_name["lm_head.weight"]["kind"] == "embedding"
    assert by_name["model.layers.0.mixer.memories.w_in"]["kind"] == "memory"
    assert by_name["model.layers.0.mixer.q_proj.weight"]["kind"] == "matrix"
    assert by_name["model.layers.0.mixer.eta_bias"]["kind"] == "vector"
    for j in range(3):
        group = by_name[f"model.layers.0.cms.levels.{j}.up_proj.weight"]
        assert (group["kind"], group["cms_level"], group["weight_decay"]) == ("matrix", j, 0.1)
        assert by_name[f"model.layers.0.cms.levels.{j}.norm.weight"]["weight_decay"] == 0.0
    assert {g["kind"] for g in groups} <= set(PARAM_KINDS)
    with pytest.raises(ValueError, match="weight_decay"):
        build_param_groups(model, weight_decay=-1)


def test_dmgd_state_stays_float32_for_bf16_parameters_across_a_reload():
    def make():
        torch.manual_seed(0)
        return nn.Parameter(torch.randn(6, 5, dtype=torch.bfloat16))

    grads = [torch.randn(6, 5, generator=torch.Generator().manual_seed(s)).bfloat16() for s in range(5)]
    p, q = make(), make()
    opt = DMGD([p], lr=0.1)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    opt_q = DMGD([q], lr=0.1)
    for g in grads[:2]:
        q.grad = g.clone()
        opt_q.step()
    buffer = io.BytesIO()
    torch.save(opt_q.state_dict(), buffer)
    buffer.seek(0)
    reloaded = DMGD([q], lr=0.1)
    reloaded.load_state_dict(torch.load(buffer, weights_only=True))
    assert all(v.dtype == torch.float32 for v in reloaded.state[q].values() if torch.is_tensor(v))
    for g in grads[2:]:
        q.grad = g.clone()
        reloaded.step()
    assert torch.equal(p, q)
