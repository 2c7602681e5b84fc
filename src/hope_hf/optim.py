"""Deep optimisers of Nested Learning and the parameter groups they take (HOPE.md §5).

Optimisers are memories too: momentum compresses the stream of gradients. This file is the outer
loop's optimiser half (the CMS schedule is `schedule.py`, the Trainer glue `training.py`); it is
tooling, not a model file, and is not copied into checkpoints.

Notation (per parameter tensor `p` with gradient `g`):
    lr       learning rate;  wd  decoupled weight decay (p ← p · (1 − lr · wd))
    b        momentum buffer in PyTorch's convention: b ← μ b + g,  p ← p − lr · b
    ĝ        g / ‖g‖ (Frobenius norm of the whole tensor)
    NS(X)    Newton–Schulz orthogonalisation of a matrix (quintic, 5 steps): ≈ U Vᵀ for X = U S Vᵀ
    u        per-element gradient features of DMGD, [N, F] for a tensor of N elements

    DeltaMomentum (Eq. 48-49):  b ← μ b − β (b·ĝ) ĝ + g,   p ← p − lr · b
    DMGD          (Eq. 50-52):  p ← p − lr · σ(m_φ(u)),    φ ← φ − η_φ ∇_φ ½ mean (m_φ(u_prev) − g/s)²
    M3            (§7.2, Alg. 1): M₁ ← EMA_β₁(g), M₂ ← EMA_β₃(Σ_period g) every `slow_period` steps,
                  V ← EMA_β₂(g²),  p ← p − lr · (NS(M₁) + α NS(M₂)) / (√V̂ + ε)

All three are `torch.optim.Optimizer`s: param groups, closures, `state_dict` holding only tensors and
plain Python values (Trainer reloads it with `weights_only=True`), and parameters whose `.grad` is
`None` are skipped entirely (no moment update, no weight decay), which the CMS schedule relies on.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.optim import Optimizer

from .self_modifying import FastMemoryBank

# ---------------------------------------------------------------------------------------------------
# Parameter groups
# ---------------------------------------------------------------------------------------------------

#: What a parameter is, for the optimisers: how it is updated and whether it decays.
#:   matrix     weights of `nn.Linear` layers (projections, CMS levels, LoRA factors): orthogonalised by M3
#:   memory     meta-learned initial states A⁰ [H, M, h, d], B⁰ [H, M, d, h]: stacks of matrices, M3 batched
#:   embedding  input embeddings and the output head: AdamW inside M3 (as Muon does)
#:   vector     everything else (norm weights, biases, gates, per-head scalars, the depthwise conv):
#:              AdamW inside M3, never weight-decayed
PARAM_KINDS = ("matrix", "memory", "embedding", "vector")
DECAYED_KINDS = ("matrix", "embedding")
_CMS_LEVEL = re.compile(r"(?:^|\.)cms\.levels\.(\d+)\.")


def cms_level_of(name: str) -> int | None:
    """The CMS level `j` of a parameter named `...cms.levels.{j}....`, else `None`."""
    match = _CMS_LEVEL.search(name)
    return int(match.group(1)) if match else None


def parameter_kinds(model: nn.Module) -> dict[str, str]:
    """Kind (one of `PARAM_KINDS`) of every parameter of `model`, by qualified name.

    Decided by the module that owns the parameter, so PEFT wrappers (LoRA layers are `nn.Linear`s,
    `modules_to_save` copies keep their type) are classified like the plain model.
    """
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    kinds = {}
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            name = f"{module_name}.{param_name}" if module_name else param_name
            if isinstance(module, nn.Embedding) or (output is not None and module is output):
                kinds[name] = "embedding"
            elif isinstance(module, FastMemoryBank):
                kinds[name] = "memory"
            elif isinstance(module, nn.Linear) and param_name == "weight":
                kinds[name] = "matrix"
            else:
                kinds[name] = "vector"
    return kinds


def build_param_groups(model: nn.Module, weight_decay: float = 0.0, *,
                       decayed_kinds: Iterable[str] = DECAYED_KINDS) -> list[dict]:
    """Split the trainable parameters of `model` into groups tagged by kind and CMS level.

    One group per (kind, CMS level) pair present, in first-seen order. Each group holds `params`,
    `param_names`, `kind` (see `PARAM_KINDS`), `cms_level` (`j` for `...cms.levels.{j}...`, else `None`)
    and `weight_decay` (`weight_decay` for `decayed_kinds`, 0 otherwise). The CMS schedule reads
    `cms_level` (per-level learning-rate scales need a level per group); M3 reads `kind`.

    Raises:
        ValueError: for a negative `weight_decay` or an unknown kind in `decayed_kinds`.
        AssertionError: if a trainable parameter would land in no group or in two (a bug).
    """
    if not (isinstance(weight_decay, (int, float)) and math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    decayed_kinds = tuple(decayed_kinds)
    unknown = sorted(set(decayed_kinds) - set(PARAM_KINDS))
    if unknown:
        raise ValueError(f"decayed_kinds must be among {PARAM_KINDS}, got unknown {unknown}")
    kinds = parameter_kinds(model)
    groups: dict[tuple[str, int | None], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        kind, level = kinds[name], cms_level_of(name)
        group = groups.setdefault((kind, level), {
            "params": [], "param_names": [], "kind": kind, "cms_level": level,
            "weight_decay": float(weight_decay) if kind in decayed_kinds else 0.0,
        })
        group["params"].append(param)
        group["param_names"].append(name)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    grouped = [id(p) for group in groups.values() for p in group["params"]]
    assert len(grouped) == len(set(grouped)), "a parameter landed in two optimiser groups"
    assert set(grouped) == trainable, "a trainable parameter landed in no optimiser group"
    return list(groups.values())


# ---------------------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------------------

def _check(name: str, value: float, low: float, high: float = math.inf, *, high_inclusive: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and low <= value and (value <= high if high_inclusive else value < high)
    if not ok:
        bracket = "]" if high_inclusive else ")"
        raise ValueError(f"{name} must be a finite number in [{low}, {high}{bracket}, got {value!r}")


def _grad_of(p: torch.Tensor, optimizer: str) -> torch.Tensor:
    if p.grad.is_sparse:
        raise NotImplementedError(f"{optimizer} does not support sparse gradients")
    return p.grad


NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)     # Keller Jordan's quintic (as torch.optim.Muon)
NS_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}


def newton_schulz(x: torch.Tensor, steps: int = 5, dtype: str = "bfloat16", eps: float = 1e-7,
                  coefficients: tuple[float, float, float] = NS_COEFFICIENTS) -> torch.Tensor:
    """Orthogonalise each matrix of x [..., m, n]: ≈ U S' Vᵀ with S' ≈ 1 (Muon's quintic iteration).

    Each matrix is scaled to Frobenius norm ≤ 1, then `X ← a X + (b A + c A²) X`, `A = X Xᵀ`, `steps`
    times, in `dtype` (bf16 by default, as Muon). A 2-D input runs exactly torch.optim.Muon's ops.
    Returns a tensor of `dtype`.
    """
    a, b, c = coefficients
    X = x.to(NS_DTYPES[dtype])
    transpose = x.shape[-2] > x.shape[-1]
    if transpose:
        X = X.mT
    if X.dim() == 2:
        X = X.div(X.norm().clamp(min=eps))
        for _ in range(steps):
            gram = X @ X.T
            X = torch.addmm(X, torch.addmm(gram, gram, gram, beta=b, alpha=c), X, beta=a)
    else:
        batch_shape = X.shape[:-2]
        X = X.reshape(-1, *X.shape[-2:])
        X = X / torch.linalg.matrix_norm(X, keepdim=True).clamp(min=eps)
        for _ in range(steps):
            gram = X @ X.mT
            X = torch.baddbmm(X, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), X, beta=a)
        X = X.reshape(*batch_shape, *X.shape[-2:])
    return X.mT if transpose else X


def _closure_loss(closure: Callable | None):
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


# ---------------------------------------------------------------------------------------------------
# DeltaMomentum
# ---------------------------------------------------------------------------------------------------

class DeltaMomentum(Optimizer):
    r"""Momentum whose memory is updated by the delta rule (Nested Learning Eq. 48-49, HOPE.md §5).

        b ← μ b − β (b·ĝ) ĝ + g,   ĝ = g / ‖g‖ (per tensor)
        p ← p · (1 − lr·wd) − lr · b

    The old momentum's component along the new gradient is erased (scaled by `μ − β`) before the
    gradient is added: momentum as an associative memory with an L2 instead of a dot-product
    objective. With `erase=0` this is exactly `torch.optim.SGD(momentum=μ)` (PyTorch's convention
    `p ← p − lr·b`; the paper's `m = −lr·b` for a constant lr), bit for bit.

    Args:
        params: parameters or param groups.
        lr: learning rate.
        momentum: `μ` in [0, 1).
        erase: `β` in [0, 1 + μ] (so the erased direction keeps a factor |μ − β| ≤ 1). The default
            `β = μ = 0.9` removes the decayed memory's whole component along the new gradient.
        weight_decay: decoupled weight decay (0 by default).
        foreach: use the multi-tensor path (`torch._foreach_*`); `None` = on. Same result as the
            per-tensor reference, bit for bit (tested).
    """

    def __init__(self, params, lr: float = 1e-2, momentum: float = 0.9, erase: float = 0.9,
                 weight_decay: float = 0.0, foreach: bool | None = None):
        _check("lr", lr, 0.0)
        _check("momentum", momentum, 0.0, 1.0)
        _check("erase", erase, 0.0, 1.0 + momentum, high_inclusive=True)
        _check("weight_decay", weight_decay, 0.0)
        defaults = dict(lr=lr, momentum=momentum, erase=erase, weight_decay=weight_decay, foreach=foreach)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = _closure_loss(closure)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [_grad_of(p, "DeltaMomentum") for p in params]
            first = [("momentum_buffer" not in self.state[p]) for p in params]
            for p, g, is_first in zip(params, grads, first):
                if is_first:
                    self.state[p]["momentum_buffer"] = g.clone()
            rest = [i for i, f in enumerate(first) if not f]
            update = self._foreach_update if group["foreach"] in (None, True) else self._reference_update
            update([params[i] for i in rest], [grads[i] for i in rest], group)
            bufs = [self.state[p]["momentum_buffer"] for p in params]
            if group["weight_decay"]:
                torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
            torch._foreach_add_(params, bufs, alpha=-group["lr"])
        return loss

    def _reference_update(self, params: list[torch.Tensor], grads: list[torch.Tensor], group: dict) -> None:
        """b ← μ b − β (b·ĝ) ĝ + g, one tensor at a time (the readable twin of `_foreach_update`)."""
        momentum, erase = group["momentum"], group["erase"]
        for p, g in zip(params, grads):
            b = self.state[p]["momentum_buffer"]
            if erase == 0:
                b.mul_(momentum).add_(g)
                continue
            coefficient = self._gradient_coefficient((b * g).sum(), (g * g).sum(), erase)
            b.mul_(momentum).add_(g * coefficient)

    def _foreach_update(self, params: list[torch.Tensor], grads: list[torch.Tensor], group: dict) -> None:
        if not params:
            return
        momentum, erase = group["momentum"], group["erase"]
        bufs = [self.state[p]["momentum_buffer"] for p in params]
        if erase == 0:
            torch._foreach_mul_(bufs, momentum)
            torch._foreach_add_(bufs, grads)
            return
        dots = [t.sum() for t in torch._foreach_mul(bufs, grads)]
        squares = [t.sum() for t in torch._foreach_mul(grads, grads)]
        torch._foreach_mul_(bufs, momentum)
        for b, g, dot, square in zip(bufs, grads, dots, squares):
            b.add_(g * self._gradient_coefficient(dot, square, erase))

    @staticmethod
    def _gradient_coefficient(dot: torch.Tensor, square: torch.Tensor, erase: float) -> torch.Tensor:
        """1 − β (b·g)/‖g‖²: μ b − β (b·ĝ)ĝ + g = μ b + (1 − β (b·g)/‖g‖²) g (0-d; 1 where g = 0)."""
        safe = torch.where(square > 0, square, torch.ones_like(square))
        return torch.where(square > 0, 1 - erase * dot / safe, torch.ones_like(dot))


# ---------------------------------------------------------------------------------------------------
# DMGD
# ---------------------------------------------------------------------------------------------------

DMGD_FEATURES = 2     # per element: the gradient and the linear momentum, both divided by rms(g)


def dmgd_memory(u: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor, w_skip: torch.Tensor) -> torch.Tensor:
    """The deep momentum m_φ(u) = u·w_skip + w_outᵀ silu(W_in u), applied to every element.

    Shapes: u [N, F], w_in [h, F], w_out [h], w_skip [F] → [N].
    """
    return u @ w_skip + torch.nn.functional.silu(u @ w_in.T) @ w_out


def dmgd_memory_gradients(u: torch.Tensor, target: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor,
                          w_skip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Closed-form ∇φ of the inner objective ½ mean_e (m_φ(u_e) − target_e)² (tested against autograd).

    With z = u W_inᵀ [N, h], a = silu(z), r = (m_φ(u) − target) / N [N]:
    ∇w_skip = uᵀ r,  ∇w_out = aᵀ r,  ∇W_in = ((r w_outᵀ) ⊙ silu'(z))ᵀ u.
    """
    z = u @ w_in.T
    s = torch.sigmoid(z)
    a = z * s
    r = (u @ w_skip + a @ w_out - target) / target.numel()
    grad_in = ((r[:, None] * w_out[None, :]) * (s * (1 + z * (1 - s)))).T @ u
    return grad_in, a.T @ r, u.T @ r


def _initial_memory(hidden: int, dtype: torch.dtype, device: torch.device):
    """φ₀: W_in rows spread evenly on the unit circle (deterministic, no RNG), w_out = 0, w_skip = [0, 1].

    The memory starts as the normalised linear momentum m/s and learns from there.
    """
    angles = torch.arange(hidden, dtype=torch.float64) * (2 * math.pi / max(hidden, 1))
    w_in = torch.stack([angles.cos(), angles.sin()], dim=1).to(device=device, dtype=dtype)
    w_out = torch.zeros(hidden, device=device, dtype=dtype)
    w_skip = torch.tensor([0.0, 1.0], device=device, dtype=dtype)
    return w_in, w_out, w_skip


class DMGD(Optimizer):
    r"""Deep Momentum Gradient Descent (Nested Learning Eq. 50-52, HOPE.md §5).

    The momentum is a small MLP memory `m_φ` applied to per-element gradient features, trained
    online: at every step it takes one gradient step on its inner objective, then produces the update.
    For a tensor with gradient g (N elements) at step t:

        s_t = rms(g_t) + ε,          M_t = μ M_{t−1} + (1 − μ) g_t          (linear momentum, a feature)
        u_t = [g_t, M_t] / s_t       [N, 2]
        φ  ← φ − η_φ ∇_φ ½ mean_e (m_φ(u_{t−1,e}) − g_{t,e}/s_t)²           (inner objective: the memory's
                                                                             output predicts the next gradient)
        p  ← p · (1 − lr·wd) − lr · σ(m_φ(u_t))                              σ = identity, or NS for matrices

    `m_φ(u) = u·w_skip + w_outᵀ silu(W_in u)` with one φ per parameter tensor (`W_in [h, 2]`, `w_out [h]`,
    `w_skip [2]`), kept in float32 and started as `m_φ(u) = M/s` (normalised momentum). The update is
    scale-free (like Adam's), so `lr` has Adam's scale. With `inner_lr=0` the memory stays at φ₀ and
    DMGD is normalised momentum (with `orthogonalize=True`: Muon without Nesterov, up to the scale).

    Args:
        lr: learning rate.
        momentum: `μ` of the linear-momentum feature, in [0, 1).
        hidden_size: `h`, hidden width of the memory MLP.
        inner_lr: `η_φ`, learning rate of the memory's own gradient step (0 freezes the memory).
        orthogonalize: `σ = NS` for parameters of kind `matrix`/`memory` (else identity).
        weight_decay: decoupled weight decay.
        eps: `ε` in `s`.
    """

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.9, hidden_size: int = 8,
                 inner_lr: float = 1e-2, orthogonalize: bool = False, weight_decay: float = 0.0,
                 eps: float = 1e-8):
        _check("lr", lr, 0.0)
        _check("momentum", momentum, 0.0, 1.0)
        _check("inner_lr", inner_lr, 0.0)
        _check("weight_decay", weight_decay, 0.0)
        _check("eps", eps, 0.0)
        if isinstance(hidden_size, bool) or not isinstance(hidden_size, int) or hidden_size < 1:
            raise ValueError(f"hidden_size must be an integer >= 1, got {hidden_size!r}")
        if not isinstance(orthogonalize, bool):
            raise ValueError(f"orthogonalize must be a bool, got {orthogonalize!r}")
        defaults = dict(lr=lr, momentum=momentum, hidden_size=hidden_size, inner_lr=inner_lr,
                        orthogonalize=orthogonalize, weight_decay=weight_decay, eps=eps)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = _closure_loss(closure)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, _grad_of(p, "DMGD"), group)
        return loss

    def _update(self, p: torch.Tensor, grad: torch.Tensor, group: dict) -> None:
        state = self.state[p]
        g = grad.reshape(-1).float()
        scale = g.pow(2).mean().sqrt() + group["eps"]
        if not state:
            w_in, w_out, w_skip = _initial_memory(group["hidden_size"], torch.float32, p.device)
            state.update(step=0, momentum_buffer=torch.zeros_like(g), previous_grad=torch.zeros_like(g),
                         previous_scale=torch.ones((), device=p.device), w_in=w_in, w_out=w_out, w_skip=w_skip)
        momentum = state["momentum_buffer"]
        w_in, w_out, w_skip = state["w_in"], state["w_out"], state["w_skip"]
        if state["step"] > 0 and group["inner_lr"] > 0:
            previous = torch.stack([state["previous_grad"], momentum], dim=1) / state["previous_scale"]
            grads = dmgd_memory_gradients(previous, g / scale, w_in, w_out, w_skip)
            torch._foreach_add_([w_in, w_out, w_skip], list(grads), alpha=-group["inner_lr"])
        momentum.mul_(group["momentum"]).add_(g, alpha=1 - group["momentum"])
        output = dmgd_memory(torch.stack([g, momentum], dim=1) / scale, w_in, w_out, w_skip).view_as(p)
        if group["orthogonalize"] and group.get("kind", "matrix" if p.dim() >= 2 else "vector") in ("matrix", "memory"):
            output = newton_schulz(output, dtype="float32")
        state["previous_grad"].copy_(g)
        state["previous_scale"].copy_(scale)
        state["step"] += 1
        if group["weight_decay"]:
            p.mul_(1 - group["lr"] * group["weight_decay"])
        p.add_(output.to(p.dtype), alpha=-group["lr"])


# ---------------------------------------------------------------------------------------------------
# M3
# ---------------------------------------------------------------------------------------------------

ADJUST_LR = ("original", "match_rms_adamw", "none")
MATRIX_KINDS = ("matrix", "memory")


def _adjusted_lr(lr: float, adjust: str, shape: torch.Size) -> float:
    """Muon's per-matrix learning-rate factor for matrices of shape [..., A, B] (torch.optim.Muon's rule)."""
    A, B = shape[-2], shape[-1]
    if adjust == "original":
        return lr * math.sqrt(max(1, A / B))
    if adjust == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(A, B))
    return lr


class M3(Optimizer):
    r"""Multi-scale Momentum Muon (Nested Learning §7.2, Algorithm 1; HOPE.md §5).

    Matrices (`kind` `matrix` or `memory`; without a `kind`, tensors of ≥ 2 dims) at step t:

        M₁ ← β₁ M₁ + (1 − β₁) g                      fast momentum, every step
        O₁ = NS(g + β₁ (M₁ − g))  (Nesterov)  or NS(M₁)
        G  ← G + g;  every `slow_period` steps:  M₂ ← β₃ M₂ + (1 − β₃) G,  O₂ = NS(M₂),  G ← 0
        V  ← β₂ V + (1 − β₂) g²,  V̂ = V / (1 − β₂ᵗ)  (if `second_moment`)
        p  ← p · (1 − lr·wd) − lr_adj · (O₁ + α O₂) / (√V̂ + ε)      (without `second_moment`: no division)

    `O₂` is kept between its refreshes (it is used at every step). `lr_adj` is Muon's per-shape factor
    (`adjust_lr`); `memory` tensors [H, M, h, d] are orthogonalised matrix by matrix. Embeddings, the
    output head and vectors (kinds `embedding`, `vector`; without a kind, tensors of < 2 dims) take
    AdamW with `betas`, `eps` and the group's `lr`, `weight_decay`, exactly as `torch.optim.AdamW`.

    With `slow_weight=0` and `second_moment=False` (one scale) a matrix step equals `torch.optim.Muon`
    with the same `momentum`, `nesterov`, `adjust_lr` (tested). *[decision]* EMAs rather than the
    paper's raw sums for M₁, M₂ (HOPE.md §5).

    `second_moment` is off by default (a deviation, docs/FAITHFULNESS.md): the paper's division by
    `√V̂ + ε` makes the step inversely proportional to the gradient's scale (an orthogonal matrix has
    entries of order 1/√n, √V̂ those of |g|), and any element with a zero gradient gets a step of 1/ε.
    A tiny Hope went NaN within 5 steps at every lr from 1e-6 to 1e-3 (ε = 1e-8).

    Args:
        lr: learning rate (matrices after `adjust_lr`; AdamW parameters as is).
        momentum: `β₁`.  slow_momentum: `β₃`.  slow_period: steps between slow-momentum updates.
        slow_weight: `α`, weight of the slow direction (0 disables the slow memory).
        second_moment: divide by `√V̂ + ε` as Algorithm 1 (off by default, see above); `beta2` is `β₂`.
        nesterov: Nesterov form of the fast momentum (as Muon).
        ns_steps, ns_dtype: Newton–Schulz iterations and their dtype (`"bfloat16"` as Muon, `"float32"`).
        adjust_lr: `"original"` (√max(1, A/B), Keller Jordan's), `"match_rms_adamw"` (0.2·√max(A, B),
            Moonlight's: the same lr suits AdamW parameters) or `"none"`.
        weight_decay: decoupled weight decay (the group's value wins).
        betas, eps: AdamW's for the `embedding`/`vector` parameters; `eps` is also `ε` above.
    """

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.95, slow_momentum: float = 0.99,
                 slow_period: int = 16, slow_weight: float = 1.0, second_moment: bool = False,
                 beta2: float = 0.999, nesterov: bool = True, ns_steps: int = 5, ns_dtype: str = "bfloat16",
                 adjust_lr: str = "match_rms_adamw", weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8):
        _check("lr", lr, 0.0)
        _check("momentum", momentum, 0.0, 1.0)
        _check("slow_momentum", slow_momentum, 0.0, 1.0)
        _check("slow_weight", slow_weight, 0.0)
        _check("beta2", beta2, 0.0, 1.0)
        _check("weight_decay", weight_decay, 0.0)
        _check("eps", eps, 0.0)
        for name, value in (("slow_period", slow_period), ("ns_steps", ns_steps)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name, value in (("second_moment", second_moment), ("nesterov", nesterov)):
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be a bool, got {value!r}")
        if ns_dtype not in NS_DTYPES:
            raise ValueError(f"ns_dtype must be one of {tuple(NS_DTYPES)}, got {ns_dtype!r}")
        if adjust_lr not in ADJUST_LR:
            raise ValueError(f"adjust_lr must be one of {ADJUST_LR}, got {adjust_lr!r}")
        if len(betas) != 2:
            raise ValueError(f"betas must be a pair, got {betas!r}")
        for i, beta in enumerate(betas):
            _check(f"betas[{i}]", beta, 0.0, 1.0)
        defaults = dict(lr=lr, momentum=momentum, slow_momentum=slow_momentum, slow_period=slow_period,
                        slow_weight=slow_weight, second_moment=second_moment, beta2=beta2, nesterov=nesterov,
                        ns_steps=ns_steps, ns_dtype=ns_dtype, adjust_lr=adjust_lr, weight_decay=weight_decay,
                        betas=tuple(betas), eps=eps)
        super().__init__(params, defaults)
        for group in self.param_groups:
            kind = group.get("kind")
            if kind is not None and kind not in PARAM_KINDS:
                raise ValueError(f"param group kind must be one of {PARAM_KINDS}, got {kind!r}")
            if kind in MATRIX_KINDS:
                for p in group["params"]:
                    if p.dim() < 2:
                        raise ValueError(f"a param group of kind {kind!r} holds a tensor of shape {tuple(p.shape)}")

    @staticmethod
    def uses_m3(p: torch.Tensor, group: dict) -> bool:
        """True when `p` takes the orthogonalised M3 step, False when it takes AdamW."""
        kind = group.get("kind")
        return kind in MATRIX_KINDS if kind is not None else p.dim() >= 2

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = _closure_loss(closure)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = _grad_of(p, "M3")
                if self.uses_m3(p, group):
                    self._matrix_step(p, grad, group)
                else:
                    self._adamw_step(p, grad, group)
        return loss

    def _matrix_step(self, p: torch.Tensor, g: torch.Tensor, group: dict) -> None:
        state = self.state[p]
        slow = group["slow_weight"] > 0
        if not state:
            state["step"] = 0
            state["fast_momentum"] = torch.zeros_like(p)
            if slow:
                state["slow_momentum"] = torch.zeros_like(p)
                state["slow_gradient_sum"] = torch.zeros_like(p)
                state["slow_direction"] = torch.zeros_like(p)
            if group["second_moment"]:
                state["second_moment"] = torch.zeros_like(p)
        state["step"] += 1
        step = state["step"]
        fast = state["fast_momentum"]
        fast.lerp_(g, 1 - group["momentum"])
        direction = g.lerp(fast, group["momentum"]) if group["nesterov"] else fast
        update = newton_schulz(direction, group["ns_steps"], group["ns_dtype"])
        if slow:
            state["slow_gradient_sum"].add_(g)
            if step % group["slow_period"] == 0:
                state["slow_momentum"].lerp_(state["slow_gradient_sum"], 1 - group["slow_momentum"])
                state["slow_gradient_sum"].zero_()
                state["slow_direction"].copy_(newton_schulz(state["slow_momentum"], group["ns_steps"],
                                                            group["ns_dtype"]))
            update = update.to(p.dtype) + group["slow_weight"] * state["slow_direction"]
        if group["second_moment"]:
            second = state["second_moment"]
            second.mul_(group["beta2"]).addcmul_(g, g, value=1 - group["beta2"])
            denominator = (second / (1 - group["beta2"] ** step)).sqrt_().add_(group["eps"])
            update = update.to(p.dtype) / denominator
        p.mul_(1 - group["lr"] * group["weight_decay"])
        p.add_(update.to(p.dtype), alpha=-_adjusted_lr(group["lr"], group["adjust_lr"], p.shape))

    def _adamw_step(self, p: torch.Tensor, g: torch.Tensor, group: dict) -> None:
        """AdamW, the same ops as torch.optim.AdamW's single-tensor path."""
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        state["step"] += 1
        beta1, beta2 = group["betas"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        p.mul_(1 - group["lr"] * group["weight_decay"])
        exp_avg.lerp_(g, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        bias_correction1 = 1 - beta1 ** state["step"]
        bias_correction2_sqrt = (1 - beta2 ** state["step"]) ** 0.5
        denominator = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(group["eps"])
        p.addcdiv_(exp_avg, denominator, value=-group["lr"] / bias_correction1)


__all__ = ["DMGD", "DeltaMomentum", "M3", "PARAM_KINDS", "build_param_groups", "cms_level_of", "newton_schulz",
           "parameter_kinds"]
