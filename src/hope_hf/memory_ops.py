"""The inner loop of Hope: self-modifying memories learning in context with Delta Gradient Descent.

Two implementations of one recurrence (HOPE.md §3 and §8):

* `naive_memory_update`: token by token, written like the equations. The test oracle.
* `chunk_memory_update`: chunk-wise, no Python loop over tokens; the chunk-end state comes from the
  WY/UT form of the gated delta rule (one unit-triangular solve per chunk, then matmuls). Two passes:
  the projection memories over chunks of C_o (`projection_chunk_update`), then the main memory over
  chunks of C_m (`main_chunk_update`).

Notation (shapes are given in this order throughout):
    b  batch                     H  heads                 M  stacked memories (`mem` last)
    t  tokens of the call        c  tokens of one chunk   d  head size
    h  memory hidden width (h = memory_expansion · d)
    A ≡ w_in  [b, H, M, h, d]    input-side fast weights (the matrix that reads k; gets the delta decay)
    B ≡ w_out [b, H, M, d, h]    output-side fast weights
    S_A, S_B                     inner momentum of A and B, same shapes
    M(z) = z + B σ(A z)          every memory is a residual 2-layer MLP, σ = SiLU (Eq. 89/91)

Per token t, with the anchor states A⁰, B⁰ of the chunk (the state at the end of the previous chunk):
    q_t = l2norm(W_q x̃_t)  (or the q memory)            k_t = l2norm(M_k(x̃_t))       (Eq. 79-85)
    v_t = M_v(x̃_t)  (l2-normalised unless `normalize_values=False`)
    η_t = η_max σ(w_η·M_η(x̃_t) + b_η)                   α_t = α_min + (1 − α_min) σ(w_α·M_α(x̃_t) + b_α)
    o_t = M_mem(q_t)                                      read, with the anchor of the main memory
    v̂_t = M(v_t)                                          self-generated target (Eq. 84)
    z = A⁰k, a = σ(z), e = k + B⁰a − v̂                   inner loss ½‖M(k) − v̂‖² (Eq. 86)
    ∇_B = e aᵀ,   ∇_A = u kᵀ with u = (B⁰ᵀe) ⊙ σ'(z)
    normalised inner step (default, `normalize_inner_step`): e ← e / (1 + c) with c = ‖a‖² + ‖B⁰ diag(σ'(z))‖²_F,
    a bound of the inner loss's Gauss-Newton curvature along the step (unit k); so ∇_A, ∇_B are divided by
    1 + c. Literal GD is unstable once η·c > 2(1 + β), and c ≈ 0.35·h at initialisation (h = 64: c ≈ 22).
    DGD (Eq. 56-57, 86-88):  A_t = A_{t−1}(α_t I − η_t k_t k_tᵀ) − η_t ∇_A,   B_t = α_t B_{t−1} − η_t ∇_B
    GD ("w/o DGD"):          A_t = α_t A_{t−1} − η_t ∇_A
    momentum:  S_t = β S_{t−1} − η_t ∇_t, and S_t is added in place of −η_t ∇_t.

Chunks: the k/v/η/α(/q) memories refresh their anchor every `projection_chunk` tokens (C_o), the main
memory every `memory_chunk` tokens (C_m, a multiple of C_o); boundaries are absolute positions, so a
call may start mid-chunk (`state.position`) and a long sequence may be fed in pieces.
Padding (`mask = 0`) writes nothing: η = 0, α = 1, β = 1 and the momentum is not added.

Decoding with a cache (per-row positions, HOPE.md §6):

* `packed_memory_update`: a call whose rows hold their real tokens first, then padding; returns each
  row's state right after its own last real token (rows end up at different positions).
* `decode_memory_update`: token by token with a position per row (padding does not advance it), so
  every row refreshes its anchors at its own chunk boundaries: the generation step.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
import torch.utils.checkpoint


@dataclass(frozen=True)
class MemoryRule:
    """The static description of a layer's inner optimisation (from `HopeConfig`).

    Attributes:
        names: memory names in stacking order; `mem` must be last, the others generate projections.
        projection_chunk: C_o, anchor period of the projection memories (tokens).
        memory_chunk: C_m, anchor period of the main memory (tokens); a multiple of C_o.
        delta: Delta Gradient Descent (`True`) or plain GD (`False`) on the input-side matrix.
        momentum: whether the inner updates use momentum.
        eta_max: upper bound of the inner learning rate.
        alpha_min: lower bound of the retention gate.
        normalize_values: l2-normalise v like k (a deviation for stability, see docs/FAITHFULNESS.md).
        weight_decay: use the retention gate α_t; `False` fixes α ≡ 1 (the "w/o weight decay" ablation).
        normalize_inner_step: divide the gradient steps of A and B by 1 + the curvature bound (NLMS-like);
            see `HopeConfig.normalize_inner_step`.
    """

    names: tuple[str, ...]
    projection_chunk: int
    memory_chunk: int
    delta: bool = True
    momentum: bool = True
    eta_max: float = 1.0
    alpha_min: float = 0.0
    normalize_values: bool = True
    weight_decay: bool = True
    normalize_inner_step: bool = True

    def __post_init__(self):
        if not self.names or self.names[-1] != "mem":
            raise ValueError(f"MemoryRule.names must end with 'mem', got {self.names!r}")
        if self.memory_chunk % self.projection_chunk != 0:
            raise ValueError(
                f"MemoryRule.memory_chunk must be a multiple of projection_chunk={self.projection_chunk}, "
                f"got {self.memory_chunk}"
            )

    @property
    def num_projection_memories(self) -> int:
        return len(self.names) - 1


@dataclass
class MemoryState:
    """Fast state of one layer's memories, per sequence.

    Attributes:
        w_in, w_out: running states A [b, H, M, h, d] and B [b, H, M, d, h].
        anchor_in, anchor_out: the states at the last chunk boundary of each memory (same shapes).
        mom_in, mom_out: inner momentum (same shapes) or `None` without momentum.
        position: tokens consumed so far (chunk boundaries are multiples of the chunk sizes): an int
            shared by the batch, or a LongTensor [b] of real tokens per row after a padded call
            (`packed_memory_update`, `decode_memory_update`). `chunk_memory_update` and
            `naive_memory_update` need an int (see `shared_position`).
    """

    w_in: torch.Tensor
    w_out: torch.Tensor
    anchor_in: torch.Tensor
    anchor_out: torch.Tensor
    mom_in: torch.Tensor | None
    mom_out: torch.Tensor | None
    position: int | torch.Tensor = 0

    @classmethod
    def initial(cls, w_in: torch.Tensor, w_out: torch.Tensor, batch_size: int, momentum: bool,
                dtype: torch.dtype | None = None) -> "MemoryState":
        """The state before the first token: every sequence starts from the meta-learned initial states.

        Args:
            w_in: [H, M, h, d] initial A (an `nn.Parameter`; gradients flow back into it).
            w_out: [H, M, d, h] initial B.
        """
        dtype = dtype or w_in.dtype
        w_in = w_in.to(dtype).unsqueeze(0).expand(batch_size, *w_in.shape)
        w_out = w_out.to(dtype).unsqueeze(0).expand(batch_size, *w_out.shape)
        mom_in = torch.zeros_like(w_in) if momentum else None
        mom_out = torch.zeros_like(w_out) if momentum else None
        return cls(w_in, w_out, w_in, w_out, mom_in, mom_out, 0)

    def map_tensors(self, fn) -> "MemoryState":
        """A new state with `fn` applied to every tensor, the per-row `position` included (e.g. `detach`,
        `index_select` over the batch)."""
        values = {}
        for f in fields(self):
            value = getattr(self, f.name)
            values[f.name] = fn(value) if isinstance(value, torch.Tensor) else value
        return MemoryState(**values)

    def detach(self) -> "MemoryState":
        return self.map_tensors(torch.Tensor.detach)


@dataclass
class MemoryInputs:
    """Per-token inputs of the memories for one call.

    Attributes:
        x: [b, H, t, d] features x̃ read by the projection memories.
        static: projections not generated by a memory, by name: `q`, `k`, `v` [b, H, t, d] (before
            normalisation) and `eta`, `alpha` [b, H, t] (gate logits).
        eta_weight, eta_bias, alpha_weight, alpha_bias: [H, d], [H], [H, d], [H] gates on the outputs
            of the η and α memories (`None` with static rates).
        momentum: [H] inner momentum β in (0, 1), or `None`.
        mask: [b, t] 1 for real tokens, 0 for padding; `None` means all real.
    """

    x: torch.Tensor
    static: dict[str, torch.Tensor]
    eta_weight: torch.Tensor | None = None
    eta_bias: torch.Tensor | None = None
    alpha_weight: torch.Tensor | None = None
    alpha_bias: torch.Tensor | None = None
    momentum: torch.Tensor | None = None
    mask: torch.Tensor | None = None


def memory_apply(z: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor) -> torch.Tensor:
    """M(z) = z + B σ(A z) for a block of rows.

    Args:
        z: [..., n, d] inputs (rows).
        w_in: [..., h, d] A.   w_out: [..., d, h] B.
    Returns:
        [..., n, d]
    """
    return z + F.silu(z @ w_in.transpose(-1, -2)) @ w_out.transpose(-1, -2)


def silu_derivative(z: torch.Tensor) -> torch.Tensor:
    """σ'(z) for σ = SiLU: sigmoid(z) · (1 + z · (1 − sigmoid(z)))."""
    s = torch.sigmoid(z)
    return s * (1 + z * (1 - s))


def projections(memory_out: dict[str, torch.Tensor], inputs: MemoryInputs, rule: MemoryRule
                ) -> tuple[torch.Tensor, ...]:
    """q, k, v, η, log α, β and the write mask of a block of tokens (Eq. 79-85).

    Args:
        memory_out: outputs M_□(x̃) [b, H, n, d] of the projection memories, by name.
        inputs: the inputs of the block only (a piece of `_split_tokens`).
    Returns:
        q, k, v [b, H, n, d]; eta, log_alpha, log_beta, write [b, H, n] (`log_beta` is `None`
        without momentum; `write` is the mask as a float).
    """

    def source(name: str) -> torch.Tensor:
        if name in memory_out:
            return memory_out[name]
        return inputs.static[name]

    q = F.normalize(source("q"), dim=-1)
    k = F.normalize(source("k"), dim=-1)
    v = F.normalize(source("v"), dim=-1) if rule.normalize_values else source("v")
    def gate_logit(name: str) -> torch.Tensor:
        """w·M(x̃) + b from the gate's memory, or the static gate's logit [b, H, n]."""
        if name not in memory_out:
            return source(name)
        weight, bias = getattr(inputs, f"{name}_weight"), getattr(inputs, f"{name}_bias")
        return (memory_out[name] * weight[:, None, :]).sum(-1) + bias[:, None]

    eta = rule.eta_max * torch.sigmoid(gate_logit("eta"))
    if not rule.weight_decay:
        log_alpha = torch.zeros_like(eta)
    else:
        alpha_logit = gate_logit("alpha")
        if rule.alpha_min == 0:
            log_alpha = F.logsigmoid(alpha_logit)
        else:
            log_alpha = torch.log(rule.alpha_min + (1 - rule.alpha_min) * torch.sigmoid(alpha_logit))
    if inputs.mask is None:
        write = torch.ones_like(eta)
    else:
        write = inputs.mask[:, None, :].to(eta.dtype).expand_as(eta)
        eta = eta * write
        log_alpha = log_alpha * write
    log_beta = None
    if rule.momentum:
        log_beta = torch.log(inputs.momentum)[None, :, None] * write
    return q, k, v, eta, log_alpha, log_beta, write


def _refresh_anchors(state: MemoryState, position: int, rule: MemoryRule) -> MemoryState:
    """At a chunk boundary a memory's anchor becomes its running state."""
    if position % rule.memory_chunk == 0:
        return MemoryState(state.w_in, state.w_out, state.w_in, state.w_out, state.mom_in, state.mom_out,
                           state.position)
    if position % rule.projection_chunk == 0:
        p = rule.num_projection_memories
        anchor_in = torch.cat([state.w_in[:, :, :p], state.anchor_in[:, :, p:]], dim=2)
        anchor_out = torch.cat([state.w_out[:, :, :p], state.anchor_out[:, :, p:]], dim=2)
        return MemoryState(state.w_in, state.w_out, anchor_in, anchor_out, state.mom_in, state.mom_out,
                           state.position)
    return state


def _shared_rows_apply(rows: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor):
    """Every memory of a stack applied to the same rows: z = A r, a = σ(z), M(r) = r + B a.

    The first product runs as one matmul against all memories side by side (`[n, d] @ [d, m·h]`).

    Args:
        rows: [b, H, n, d] inputs shared by the memories.
        w_in: [b, H, m, h, d] A.   w_out: [b, H, m, d, h] B.
    Returns:
        z, act [b, H, m, n, h]; M(rows) [b, H, m, n, d].
    """
    b, H, m, h, d = w_in.shape
    n = rows.shape[-2]
    z = (rows @ w_in.reshape(b, H, m * h, d).transpose(-1, -2)).view(b, H, n, m, h).transpose(2, 3)
    act = F.silu(z)
    return z, act, rows.unsqueeze(2) + act @ w_out.transpose(-1, -2)


def _inner_gradients(k: torch.Tensor, v: torch.Tensor, anchor_in: torch.Tensor, anchor_out: torch.Tensor,
                     rule: MemoryRule, q: torch.Tensor | None = None):
    """The inner loss's terms of a block of tokens at the anchor states, for a stack of m memories (Eq. 84-86).

    One pair of matmuls serves the rows k, v (and q, read by the main memory):
        z = A⁰k, a = σ(z), e = M(k) − M(v) (the target v̂ = M(v)), u = (B⁰ᵀe) ⊙ σ'(z), e and u divided by the
        curvature bound 1 + c with `rule.normalize_inner_step` (see the module docstring).

    Args:
        k, v (and q): [b, H, n, d].   anchor_in, anchor_out: A⁰ [b, H, m, h, d], B⁰ [b, H, m, d, h].
    Returns:
        read M(q) [b, H, m, n, d] (`None` without q); z = A⁰k and act [b, H, m, n, h]; e [b, H, m, n, d];
        u [b, H, m, n, h].
    """
    rows = [k, v] if q is None else [q, k, v]
    n = k.shape[-2]
    z_all, act_all, out_all = _shared_rows_apply(torch.cat(rows, dim=-2), anchor_in, anchor_out)
    zs, acts, outs = (t.split(n, dim=-2) for t in (z_all, act_all, out_all))
    z, act = zs[-2], acts[-2]
    e = outs[-2] - outs[-1]
    slope = silu_derivative(z)
    if rule.normalize_inner_step:
        # Gauss-Newton curvature bound of the inner loss per token: ‖a‖² (along B) + ‖B⁰ diag(σ'(z))‖²_F (along A,
        # unit k); dividing the error by 1 + it keeps the step along e below η (both ∇_B and ∇_A are linear in e)
        column_norms = anchor_out.square().sum(-2).unsqueeze(-2)                 # Σ_i B⁰_ij²   [b, H, m, 1, h]
        curvature = act.square().sum(-1, keepdim=True) + (slope.square() * column_norms).sum(-1, keepdim=True)
        e = e / (1 + curvature)
    u = (e @ anchor_out) * slope
    return (outs[0] if q is not None else None), z, act, e, u


def _anchor_terms(inputs: MemoryInputs, anchor_in: torch.Tensor, anchor_out: torch.Tensor, rule: MemoryRule):
    """Everything a block of tokens computes with the anchor states of all M memories (the token-by-token paths).

    Args:
        inputs: the inputs of the block only (a piece of `_split_tokens`); `x` is [b, H, n, d].
        anchor_in, anchor_out: A⁰ [b, H, M, h, d] and B⁰ [b, H, M, d, h].
    Returns:
        o [b, H, n, d] the read; k [b, H, n, d]; eta, log_alpha, log_beta, write [b, H, n];
        act a = σ(A⁰k) [b, H, M, n, h]; e [b, H, M, n, d] the error M(k) − v̂ (divided by the curvature
        bound 1 + c with `rule.normalize_inner_step`); u = (B⁰ᵀe) ⊙ σ'(z) [b, H, M, n, h].
    """
    p = rule.num_projection_memories
    outs = memory_apply(inputs.x.unsqueeze(2), anchor_in[:, :, :p], anchor_out[:, :, :p])
    memory_out = {name: outs[:, :, i] for i, name in enumerate(rule.names[:-1])}
    q, k, v, eta, log_alpha, log_beta, write = projections(memory_out, inputs, rule)
    o = memory_apply(q, anchor_in[:, :, -1], anchor_out[:, :, -1])
    _, _, act, e, u = _inner_gradients(k, v, anchor_in, anchor_out, rule)
    return o, k, eta, log_alpha, log_beta, write, act, e, u


def naive_memory_update(inputs: MemoryInputs, state: MemoryState, rule: MemoryRule
                        ) -> tuple[torch.Tensor, MemoryState]:
    """Token-by-token reference of the self-modifying memory (the oracle of `chunk_memory_update`).

    Args:
        inputs: see `MemoryInputs`; `x` is [b, H, t, d].
        state: the state before the first token of the call.
    Returns:
        o [b, H, t, d], the reads `M_mem(q_t)`; the state after the last token.
    """
    outputs = []
    for token in _split_tokens(inputs, [1] * inputs.x.shape[2]):
        state = _refresh_anchors(state, state.position, rule)
        o, state = _token_step(token, state, rule, state.position + 1)
        outputs.append(o)
    return torch.cat(outputs, dim=2), state


def _token_step(token: MemoryInputs, state: MemoryState, rule: MemoryRule, next_position
                ) -> tuple[torch.Tensor, MemoryState]:
    """Read and update for one token (anchors already refreshed): Eq. 56-57, 86-88 for one token.

    Args:
        token: the inputs of that token only (`x` [b, H, 1, d]).
    Returns:
        o [b, H, 1, d]; the state after the token, with `position = next_position`.
    """
    o, k, eta, log_alpha, log_beta, write, act, e, u = _anchor_terms(token, state.anchor_in, state.anchor_out, rule)
    # one token: drop the token axis; rates broadcast over memories and matrix entries
    k = k[:, :, 0, None, None, :]                     # [b, H, 1, 1, d], a row
    act, e, u = act[:, :, :, 0], e[:, :, :, 0], u[:, :, :, 0]
    eta, alpha, write = (r[:, :, 0, None, None, None] for r in (eta, log_alpha.exp(), write))
    grad_in = u.unsqueeze(-1) * k                     # ∇_A = u kᵀ   [b, H, M, h, d]
    grad_out = e.unsqueeze(-1) * act.unsqueeze(-2)    # ∇_B = e aᵀ   [b, H, M, d, h]
    w_in = alpha * state.w_in
    if rule.delta:                                    # A (αI − η k kᵀ)
        w_in = w_in - eta * (state.w_in @ k.transpose(-1, -2)) @ k
    w_out = alpha * state.w_out
    mom_in, mom_out = state.mom_in, state.mom_out
    if rule.momentum:
        beta = log_beta[:, :, 0, None, None, None].exp()
        mom_in = beta * mom_in - eta * grad_in
        mom_out = beta * mom_out - eta * grad_out
        w_in, w_out = w_in + write * mom_in, w_out + write * mom_out
    else:
        w_in, w_out = w_in - eta * grad_in, w_out - eta * grad_out
    return o, MemoryState(w_in, w_out, state.anchor_in, state.anchor_out, mom_in, mom_out, next_position)


def _segments(position: int, length: int, chunk: int) -> list[tuple[int, int]]:
    """Split `[0, length)` at absolute positions that are multiples of `chunk`."""
    bounds, start = [], 0
    while start < length:
        end = min(length, start + chunk - (position + start) % chunk)
        bounds.append((start, end))
        start = end
    return bounds


def _decay_matrices(log_alpha: torch.Tensor, eta: torch.Tensor, log_beta: torch.Tensor | None,
                    write: torch.Tensor):
    """The scalar coefficients of one chunk (HOPE.md §8), in log space so nothing overflows.

    With Γ(t, i) = Π_{r=i+1..t} α_r, P(i, s) = Π_{r=s+1..i} β_r and `write` m_i, the chunk unrolls to
        A_t = Γ(t, 0) A_0 + c_t S_0 + Σ_{i≤t} Γ(t, i) ω_i k_iᵀ − Σ_{s≤t} G(t, s) u_s k_sᵀ
        G(t, s) = η_s Σ_{i=s..t} Γ(t, i) m_i P(i, s),      c_t = Σ_{i≤t} Γ(t, i) m_i P(i, 0)
    (without momentum: G(t, s) = η_s Γ(t, s), c = 0). Indices t, i, s run over the chunk from 1.

    Args:
        log_alpha, eta, write: [b, H, c];  log_beta: [b, H, c] or `None`.
    Returns:
        gamma [b, H, c, c] Γ(t, i) (lower triangular, diagonal 1), gamma_prev [b, H, c, c] Γ(t−1, i)
        (strictly lower), G and G_prev [b, H, c, c], c and c_prev [b, H, c] (`None` without momentum),
        decay0 [b, H, c] Γ(t, 0), decay0_prev [b, H, c] Γ(t−1, 0), mom_decay [b, H, c] P(c, s),
        mom_decay0 [b, H] P(c, 0) (the last two `None` without momentum).
    """
    n = log_alpha.shape[-1]
    lower = torch.ones(n, n, dtype=torch.bool, device=log_alpha.device).tril()
    strict = lower.clone().fill_diagonal_(False)
    cum = log_alpha.cumsum(-1)
    cum_prev = cum - log_alpha

    def ratio(rows: torch.Tensor, cols: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        diff = rows.unsqueeze(-1) - cols.unsqueeze(-2)
        return torch.where(mask, diff, torch.full_like(diff, float("-inf"))).exp()

    gamma, gamma_prev = ratio(cum, cum, lower), ratio(cum_prev, cum, strict)
    decay0, decay0_prev = cum.exp(), cum_prev.exp()
    if log_beta is None:
        return (gamma, gamma_prev, gamma * eta.unsqueeze(-2), gamma_prev * eta.unsqueeze(-2),
                None, None, decay0, decay0_prev, None, None)
    cum_beta = log_beta.cumsum(-1)
    mom_ratio = ratio(cum_beta, cum_beta, lower)            # P(i, s)
    mom_from_start = cum_beta.exp()                         # P(i, 0)
    written = write.unsqueeze(-2)
    G = ((gamma * written) @ mom_ratio) * eta.unsqueeze(-2)
    G_prev = ((gamma_prev * written) @ mom_ratio) * eta.unsqueeze(-2)
    c = ((gamma * written) @ mom_from_start.unsqueeze(-1)).squeeze(-1)
    c_prev = ((gamma_prev * written) @ mom_from_start.unsqueeze(-1)).squeeze(-1)
    return (gamma, gamma_prev, G, G_prev, c, c_prev, decay0, decay0_prev,
            mom_ratio[..., -1, :], mom_from_start[..., -1])


def _chunk_state_update(k: torch.Tensor, eta: torch.Tensor, log_alpha: torch.Tensor, log_beta: torch.Tensor | None,
                        write: torch.Tensor, act: torch.Tensor, e: torch.Tensor, u: torch.Tensor,
                        start_k: torch.Tensor | None, pair_in: torch.Tensor, pair_out: torch.Tensor,
                        mom_in: torch.Tensor | None, rule: MemoryRule) -> tuple[torch.Tensor, torch.Tensor]:
    """The states of a stack of m memories at the end of a chunk, in closed form (HOPE.md §8).

    The delta terms ω_j = −η_j A_{j−1} k_j solve the unit lower-triangular system (UT transform)
        ω_j + η_j Σ_{i<j} Γ(j−1, i)(k_iᵀk_j) ω_i
            = −η_j [Γ(j−1, 0) A_0 k_j + c_{j−1} S_0 k_j − Σ_{s<j} G(j−1, s)(k_sᵀk_j) u_s],
    then, with P = P(c, ·) the momentum's decays and the coefficient matrix C = [[Γ(c, 0), c_c], [0, P(c, 0)]],
        [A_c; S_c] = C [A_0; S_0] + [Σ_s (γ_s ω_s − G(c, s) u_s) k_sᵀ;  −Σ_s P(c, s) η_s u_s k_sᵀ]
        [B_c; S_c] = C [B_0; S_0] + [−Σ_s G(c, s) e_s a_sᵀ;            −Σ_s P(c, s) η_s e_s a_sᵀ]
    Each line is one matmul for the rank-c sums of both matrices and one `baddbmm` that mixes the chunk-start pair by
    C and adds them: no elementwise pass over the states, forward or backward (without momentum the pairs hold
    A or B alone and C = [[Γ(c, 0)]]).

    Args:
        k [b, H, c, d]; eta, log_alpha, write [b, H, c]; log_beta [b, H, c] or `None`; act [b, H, m, c, h],
            e [b, H, m, c, d], u [b, H, m, c, h]: the inner gradients' terms (`_inner_gradients`).
        start_k: A_0 k [b, H, m, c, h] when already computed (the anchor is the chunk-start state, so it is the
            anchor's z), else `None` (computed here).
        pair_in: [A; S_A] at the chunk start, [b, H, P, m, h, d] (P = 2 with momentum, else 1).
        pair_out: [B; S_B] at the chunk start, [b, H, m, P, d, h].
        mom_in: S_A at the chunk start (a view of `pair_in`) or `None`.
    Returns:
        pair_in and pair_out at the chunk end.
    """
    gamma, gamma_prev, G, G_prev, c, c_prev, decay0, decay0_prev, mom_decay, mom_decay0 = _decay_matrices(
        log_alpha, eta, log_beta, write)
    b, H, P, m, h, d = pair_in.shape
    n = k.shape[-2]
    u_rows = u.transpose(2, 3).reshape(b, H, n, m * h)           # [b, H, c, m·h]: memories side by side
    written_in = -G[..., -1, :, None] * u_rows                  # coefficients of k_sᵀ in A_c
    if rule.delta:
        kk = k @ k.transpose(-1, -2)                            # [b, H, c, c]
        if start_k is None:
            start_k = k @ pair_in[:, :, 0].reshape(b, H, m * h, d).transpose(-1, -2)
        else:
            start_k = start_k.transpose(2, 3).reshape(b, H, n, m * h)
        rhs = decay0_prev[..., None] * start_k
        if rule.momentum:
            rhs = rhs + c_prev[..., None] * (k @ mom_in.reshape(b, H, m * h, d).transpose(-1, -2))
        rhs = -eta[..., None] * (rhs - (G_prev * kk) @ u_rows)
        system = torch.eye(n, dtype=kk.dtype, device=kk.device) + eta.unsqueeze(-1) * gamma_prev * kk
        # one solve for all memories: their right-hand sides side by side
        omega = torch.linalg.solve_triangular(system, rhs, upper=False, unitriangular=True)
        written_in = written_in + gamma[..., -1, :, None] * omega
    written_out = -G[:, :, None, -1, :, None] * e               # [b, H, m, c, d] coefficients of a_sᵀ in B_c
    decay = [decay0[..., -1]]
    if rule.momentum:
        step = -(mom_decay * eta)                                # −P(c, s) η_s  [b, H, c]
        written_in = torch.stack([written_in, step[..., None] * u_rows], dim=2)         # [b, H, 2, c, m·h]
        written_out = torch.stack([written_out, step[:, :, None, :, None] * e], dim=3)  # [b, H, m, 2, c, d]
        zero = torch.zeros_like(decay0[..., -1])
        decay = [decay0[..., -1], c[..., -1], zero, mom_decay0]
    else:
        written_in, written_out = written_in.unsqueeze(2), written_out.unsqueeze(3)
    mix = torch.stack(decay, dim=-1).view(b * H, P, P)          # C per head
    sums_in = written_in.transpose(-1, -2).reshape(b, H, P * m * h, n) @ k             # [b, H, P·m·h, d]
    pair_in = torch.baddbmm(sums_in.view(b * H, P, m * h * d), mix, pair_in.reshape(b * H, P, m * h * d))
    sums_out = written_out.transpose(-1, -2).reshape(b, H, m, P * d, n) @ act          # [b, H, m, P·d, h]
    mix_out = mix.view(b, H, 1, P, P).expand(b, H, m, P, P).reshape(b * H * m, P, P)
    pair_out = torch.baddbmm(sums_out.view(b * H * m, P, d * h), mix_out, pair_out.reshape(b * H * m, P, d * h))
    return pair_in.view(b, H, P, m, h, d), pair_out.view(b, H, m, P, d, h)


def _unpair(pair_in: torch.Tensor, pair_out: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """A, B, S_A, S_B (views; the momenta `None` without momentum) from the pairs [b, H, P, m, h, d], [b, H, m, P, d, h].

    One `unbind` each: its backward stacks the views' gradients once (a `select` per view would zero-fill a gradient
    of the whole pair for each)."""
    ins, outs = pair_in.unbind(2), pair_out.unbind(3)
    return ins[0], outs[0], (ins[1] if len(ins) > 1 else None), (outs[1] if len(outs) > 1 else None)


def projection_chunk_update(chunk: MemoryInputs, anchor_in: torch.Tensor | None, anchor_out: torch.Tensor | None,
                            pair_in: torch.Tensor, pair_out: torch.Tensor, rule: MemoryRule):
    """One chunk (≤ C_o tokens) of the projection memories: the tokens' q, k, v, rates, and the memories' states at the
    chunk end (tensors in, tensors out: `torch.compile` compiles it once per chunk length).

    Args:
        chunk: the chunk's inputs (`x` [b, H, c, d]).
        anchor_in, anchor_out: A⁰, B⁰ of the projection memories [b, H, p, h, d] / [b, H, p, d, h], or `None` when the
            chunk starts at a boundary of C_o (the anchor is then the chunk-start state).
        pair_in, pair_out: [A; S_A] [b, H, P, p, h, d] and [B; S_B] [b, H, p, P, d, h] at the chunk start.
    Returns:
        (q, k, v [b, H, c, d], eta, log_alpha, log_beta, write [b, H, c]) and the pairs at the chunk end.
    """
    w_in, w_out, mom_in, _ = _unpair(pair_in, pair_out)
    aligned = anchor_in is None
    anchor_in, anchor_out = (w_in, w_out) if aligned else (anchor_in, anchor_out)
    _, _, outs = _shared_rows_apply(chunk.x, anchor_in, anchor_out)
    memory_out = {name: outs[:, :, i] for i, name in enumerate(rule.names[:-1])}
    tokens = projections(memory_out, chunk, rule)
    q, k, v = tokens[:3]
    eta, log_alpha, log_beta, write = tokens[3:]
    _, z, act, e, u = _inner_gradients(k, v, anchor_in, anchor_out, rule)
    pairs = _chunk_state_update(k, eta, log_alpha, log_beta, write, act, e, u, z if aligned else None,
                                pair_in, pair_out, mom_in, rule)
    return tokens, *pairs


def main_chunk_update(tokens: tuple, anchor_in: torch.Tensor | None, anchor_out: torch.Tensor | None,
                      pair_in: torch.Tensor, pair_out: torch.Tensor, rule: MemoryRule):
    """One chunk (≤ C_m tokens) of the main memory: the reads o_t = M_mem(q_t) with its anchor, and its state at the
    chunk end (tensors in, tensors out).

    Args:
        tokens: (q, k, v [b, H, c, d], eta, log_alpha, log_beta, write [b, H, c]) of the chunk's tokens.
        anchor_in, anchor_out: A⁰, B⁰ [b, H, 1, h, d] / [b, H, 1, d, h], or `None` at a boundary of C_m (the anchor
            is then the chunk-start state).
        pair_in, pair_out: [A; S_A] [b, H, P, 1, h, d] and [B; S_B] [b, H, 1, P, d, h] at the chunk start.
    Returns:
        (o [b, H, c, d],) and the pairs at the chunk end.
    """
    q, k, v, eta, log_alpha, log_beta, write = tokens
    w_in, w_out, mom_in, _ = _unpair(pair_in, pair_out)
    aligned = anchor_in is None
    anchor_in, anchor_out = (w_in, w_out) if aligned else (anchor_in, anchor_out)
    read, z, act, e, u = _inner_gradients(k, v, anchor_in, anchor_out, rule, q=q)
    pairs = _chunk_state_update(k, eta, log_alpha, log_beta, write, act, e, u, z if aligned else None,
                                pair_in, pair_out, mom_in, rule)
    return (read[:, :, 0],), *pairs


_COMPILED: dict[str, object] = {}


def compiled_chunk_updates():
    """`projection_chunk_update` and `main_chunk_update` under `torch.compile(fullgraph=True, dynamic=False)`, built
    on first use (one graph per chunk length, alignment and rule; the elementwise work of a chunk fuses into a few
    kernels, its backward too)."""
    if not _COMPILED:
        # one graph per (chunk length, batch shape, alignment, rule): allow more than dynamo's default of 8
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        for fn in (projection_chunk_update, main_chunk_update):
            _COMPILED[fn.__name__] = torch.compile(fn, fullgraph=True, dynamic=False)
    return _COMPILED["projection_chunk_update"], _COMPILED["main_chunk_update"]


def _cat_pieces(pieces: list[tuple]) -> tuple:
    """Per field, the pieces' tensors concatenated along the token axis (2); `None` fields stay `None`."""
    return tuple(None if field[0] is None else torch.cat(field, dim=2) for field in zip(*pieces, strict=True))


@dataclass
class _StackState:
    """The state of one stack of memories inside `chunk_memory_update`: the pairs (see `_chunk_state_update`), the
    anchors, and the position. `anchor_in`/`anchor_out` are `None` while the anchor is the pairs' first matrices at
    the start of the last chunk (`anchor_pairs`)."""

    pair_in: torch.Tensor
    pair_out: torch.Tensor
    anchor_in: torch.Tensor | None
    anchor_out: torch.Tensor | None
    anchor_pairs: tuple[torch.Tensor, torch.Tensor] | None
    position: int

    @classmethod
    def of(cls, state: MemoryState, index: slice) -> "_StackState":
        """The memories `index` of `state`'s stack (axis 2), their pairs built once."""
        pick = lambda t: None if t is None else t[:, :, index]                                     # noqa: E731
        w_in, w_out, mom_in, mom_out = (pick(t) for t in (state.w_in, state.w_out, state.mom_in, state.mom_out))
        pair_in = w_in.unsqueeze(2) if mom_in is None else torch.stack([w_in, mom_in], dim=2)
        pair_out = w_out.unsqueeze(3) if mom_out is None else torch.stack([w_out, mom_out], dim=3)
        return cls(pair_in, pair_out, pick(state.anchor_in), pick(state.anchor_out), None, state.position)

    def anchors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A⁰, B⁰ of the stack."""
        if self.anchor_pairs is None:
            return self.anchor_in, self.anchor_out
        return _unpair(*self.anchor_pairs)[:2]

    def memory_state(self) -> MemoryState:
        """The `MemoryState` of the stack (views of the pairs)."""
        w_in, w_out, mom_in, mom_out = _unpair(self.pair_in, self.pair_out)
        return MemoryState(w_in, w_out, *self.anchors(), mom_in, mom_out, self.position)


def _chunk_loop(update, pieces: list, state: _StackState, chunk: int, rule: MemoryRule, checkpoint_chunks: int
                ) -> tuple[tuple, _StackState]:
    """Run `update` over consecutive pieces of a call, chunk by chunk, for one stack of memories.

    A piece that starts at a multiple of `chunk` (absolute position) takes the chunk-start state as its anchor; the
    first piece of a call that starts mid-chunk keeps `state`'s anchors.

    Args:
        update: `projection_chunk_update` or `main_chunk_update` (or their compiled versions).
        pieces: (the inputs of each piece, its length), the pieces cut at multiples of `chunk`.
        state: the stack's state before the call.
        checkpoint_chunks: with gradients on, keep the state only every `checkpoint_chunks` pieces and recompute the
            pieces in between during backward (0 = off).
    Returns:
        the per-token outputs of `update`, concatenated over the call; the state after the call.
    """

    def run(group: list, state: _StackState) -> tuple[tuple, _StackState]:
        outputs = []
        for piece, length in group:
            if state.position % chunk == 0:
                out, pair_in, pair_out = update(piece, None, None, state.pair_in, state.pair_out, rule)
                state = _StackState(pair_in, pair_out, None, None, (state.pair_in, state.pair_out),
                                    state.position + length)
            else:
                anchor_in, anchor_out = state.anchors()
                out, pair_in, pair_out = update(piece, anchor_in, anchor_out, state.pair_in, state.pair_out, rule)
                state = _StackState(pair_in, pair_out, anchor_in, anchor_out, None, state.position + length)
            outputs.append(out)
        return _cat_pieces(outputs), state

    if checkpoint_chunks <= 0 or not torch.is_grad_enabled():
        return run(pieces, state)
    outputs = []
    for i in range(0, len(pieces), checkpoint_chunks):
        group = pieces[i:i + checkpoint_chunks]

        def run_group(pair_in, pair_out, anchor_in, anchor_out, group=group, position=state.position):
            out, end = run(group, _StackState(pair_in, pair_out, anchor_in, anchor_out, None, position))
            return out, end.pair_in, end.pair_out, *end.anchors()

        out, pair_in, pair_out, anchor_in, anchor_out = torch.utils.checkpoint.checkpoint(
            run_group, state.pair_in, state.pair_out, *state.anchors(), use_reentrant=False)
        state = _StackState(pair_in, pair_out, anchor_in, anchor_out, None,
                            state.position + sum(length for _, length in group))
        outputs.append(out)
    return _cat_pieces(outputs), state


def chunk_memory_update(inputs: MemoryInputs, state: MemoryState, rule: MemoryRule, *, compiled: bool = False,
                        checkpoint_chunks: int = 0) -> tuple[torch.Tensor, MemoryState]:
    """Chunk-wise self-modifying memory: the training path, equal to `naive_memory_update`.

    Two passes, each a loop over chunks (never over tokens), each chunk a few batched matmuls and one unit-triangular
    solve shared by the memories of the pass:
      1. the projection memories (k, v, η, α, ...), chunks of C_o: every token's q, k, v and rates;
      2. the main memory, chunks of C_m: the reads o_t = M_mem(q_t) and its updates.
    The main memory reads the projections but they never read it, and its anchor moves only every C_m tokens,
    so its state is computed once per C_m tokens instead of once per C_o. Inside a pass each matrix and its momentum
    travel as one pair tensor (`_chunk_state_update`).

    Args:
        inputs: see `MemoryInputs`; `x` is [b, H, t, d].
        state: the state before the first token of the call.
        compiled: run each chunk with `compiled_chunk_updates()` (same functions, compiled).
        checkpoint_chunks: with gradients on, keep the state only every `checkpoint_chunks` chunks of each pass and
            recompute the chunks in between during backward (activation checkpointing per group of memory chunks;
            0 = off). Saved memory per layer falls from every chunk's intermediates to one state per group.
    Returns:
        o [b, H, t, d], the reads `M_mem(q_t)`; the state after the last token.
    """
    project, read = compiled_chunk_updates() if compiled else (projection_chunk_update, main_chunk_update)
    p, t = rule.num_projection_memories, inputs.x.shape[2]
    lengths = [end - start for start, end in _segments(state.position, t, rule.projection_chunk)]
    if p:
        pieces = list(zip(_split_tokens(inputs, lengths), lengths, strict=True))
        tokens, projection_end = _chunk_loop(project, pieces, _StackState.of(state, slice(0, p)),
                                             rule.projection_chunk, rule, checkpoint_chunks)
    else:                                                   # every projection is static: all tokens at once
        tokens = projections({}, inputs, rule)
    lengths = [end - start for start, end in _segments(state.position, t, rule.memory_chunk)]
    split = [(None,) * len(lengths) if x is None else x.split(lengths, dim=2) for x in tokens]
    pieces = list(zip(zip(*split, strict=True), lengths, strict=True))
    (o,), main_end = _chunk_loop(read, pieces, _StackState.of(state, slice(p, None)), rule.memory_chunk, rule,
                                 checkpoint_chunks)
    main_end = main_end.memory_state()
    if not p:
        return o, main_end
    projection_end = projection_end.memory_state()
    joined = (None if b is None else torch.cat([a, b], dim=2)
              for a, b in zip(_tensor_fields(projection_end), _tensor_fields(main_end), strict=True))
    return o, MemoryState(*joined, position=main_end.position)


def _tensor_fields(state: MemoryState) -> tuple:
    """The tensor fields of a state in constructor order (w_in, w_out, anchor_in, anchor_out, mom_in, mom_out)."""
    return state.w_in, state.w_out, state.anchor_in, state.anchor_out, state.mom_in, state.mom_out


def shared_position(position: int | torch.Tensor) -> int | None:
    """The position as an int when every row is at the same one, else `None` (a tensor costs a host sync)."""
    if isinstance(position, int):
        return position
    first = int(position[0])
    return first if bool((position == first).all()) else None


def _select_rows(rows: torch.Tensor, new: MemoryState, old: MemoryState) -> MemoryState:
    """Per row b: `new` where `rows[b]`, else `old` (every tensor field; `position` is left to the caller)."""

    def pick(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
        if a is None:
            return None
        return torch.where(rows.view(-1, *([1] * (a.dim() - 1))), a, b)

    return MemoryState(*(pick(getattr(new, f.name), getattr(old, f.name)) for f in fields(MemoryState)
                         if f.name != "position"), position=new.position)


def _split_tokens(inputs: MemoryInputs, sizes: list[int]) -> list[MemoryInputs]:
    """The inputs of consecutive pieces of the call, `sizes[i]` tokens each (they sum to the call's length).

    One `torch.split` per tensor: its backward concatenates the pieces' gradients once, where slicing each
    piece on its own would give every piece's backward a zero-filled gradient of the whole call (quadratic
    in the length).
    """
    xs = inputs.x.split(sizes, dim=2)
    static = {name: value.split(sizes, dim=2) for name, value in inputs.static.items()}
    masks = [None] * len(sizes) if inputs.mask is None else inputs.mask.split(sizes, dim=1)
    return [
        MemoryInputs(
            x=xs[i],
            static={name: pieces[i] for name, pieces in static.items()},
            eta_weight=inputs.eta_weight, eta_bias=inputs.eta_bias,
            alpha_weight=inputs.alpha_weight, alpha_bias=inputs.alpha_bias,
            momentum=inputs.momentum,
            mask=masks[i],
        )
        for i in range(len(sizes))
    ]


def packed_memory_update(update, inputs: MemoryInputs, state: MemoryState, rule: MemoryRule,
                         lengths: torch.Tensor) -> tuple[torch.Tensor, MemoryState]:
    """A padded call whose rows are packed (row b: `lengths[b]` real tokens, then padding), with each
    row's own final state.

    Padding writes nothing, but the anchors refresh at absolute positions, so a chunk boundary inside a
    row's padding would refresh its anchors too early. The call is therefore split at the distinct row
    lengths (at most b + 1 calls of `update`) and each row keeps the state after its last real token:
    exactly the state it reaches when run alone.

    Args:
        update: `chunk_memory_update` or `naive_memory_update`.
        inputs: `x` [b, H, t, d]; `mask` [b, t] packed (ones, then zeros) and consistent with `lengths`.
        state: the state before the call; its `position` an int shared by the batch.
        lengths: [b] real tokens per row.
    Returns:
        o [b, H, t, d]; the per-row states, `position` = LongTensor [b] (`state.position + lengths`).
    """
    if not isinstance(state.position, int):
        raise ValueError(f"packed_memory_update needs a position shared by the batch (an int), got {state.position!r}")
    t, first = inputs.x.shape[2], state.position
    cuts = sorted({int(n) for n in lengths.tolist() if 0 < n < t} | {t})
    pieces = _split_tokens(inputs, [end - start for start, end in zip([0, *cuts], cuts)])
    outputs, kept = [], state
    for end, piece in zip(cuts, pieces):
        o, state = update(piece, state, rule)
        outputs.append(o)
        kept = _select_rows(lengths == end, state, kept)
    return torch.cat(outputs, dim=2), replace(kept, position=first + lengths.long())


def _refresh_anchors_rows(state: MemoryState, positions: torch.Tensor, rule: MemoryRule) -> MemoryState:
    """`_refresh_anchors` with a position per row: each row refreshes at its own chunk boundaries."""
    p, M = rule.num_projection_memories, state.w_in.shape[2]
    projection_due = (positions % rule.projection_chunk == 0)[:, None].expand(-1, p)
    memory_due = (positions % rule.memory_chunk == 0)[:, None].expand(-1, M - p)
    due = torch.cat([projection_due, memory_due], dim=1)[:, None, :, None, None]      # [b, 1, M, 1, 1]
    return MemoryState(state.w_in, state.w_out, torch.where(due, state.w_in, state.anchor_in),
                       torch.where(due, state.w_out, state.anchor_out), state.mom_in, state.mom_out, positions)


def _decode_token_step(token: MemoryInputs, state: MemoryState, rule: MemoryRule, next_position
                       ) -> tuple[torch.Tensor, MemoryState]:
    """`_token_step` written for decoding speed: the same update with fused rank-one `addcmul`s, in place on
    freshly allocated tensors (the state-sized passes dominate a decoding step). Tested equal to the reference.

        S_A ← β S_A + (−η u) kᵀ               A ← α A + (−η A k) kᵀ + m S_A       (DGD with momentum)
        S_B ← β S_B + (−η e) aᵀ               B ← α B + m S_B
    """
    o, k, eta, log_alpha, log_beta, write, act, e, u = _anchor_terms(token, state.anchor_in, state.anchor_out, rule)
    k = k[:, :, 0, None, None, :]                                          # [b, H, 1, 1, d]
    a = act[:, :, :, 0].unsqueeze(-2)                                      # [b, H, M, 1, h]
    neg_eta, alpha, write = (r[:, :, 0, None, None, None] for r in (-eta, log_alpha.exp(), write))
    step_in = neg_eta * u[:, :, :, 0].unsqueeze(-1)                        # −η u  [b, H, M, h, 1]
    step_out = neg_eta * e[:, :, :, 0].unsqueeze(-1)                       # −η e  [b, H, M, d, 1]
    w_in, w_out = alpha * state.w_in, alpha * state.w_out
    if rule.delta:
        w_in.addcmul_(neg_eta * (state.w_in @ k.transpose(-1, -2)), k)
    mom_in, mom_out = state.mom_in, state.mom_out
    if rule.momentum:
        beta = log_beta[:, :, 0, None, None, None].exp()
        mom_in = torch.addcmul(beta * mom_in, step_in, k)
        mom_out = torch.addcmul(beta * mom_out, step_out, a)
        w_in.addcmul_(write, mom_in)
        w_out.addcmul_(write, mom_out)
    else:
        w_in.addcmul_(step_in, k)
        w_out.addcmul_(step_out, a)
    return o, MemoryState(w_in, w_out, state.anchor_in, state.anchor_out, mom_in, mom_out, next_position)


def decode_memory_update(inputs: MemoryInputs, state: MemoryState, rule: MemoryRule
                         ) -> tuple[torch.Tensor, MemoryState]:
    """Token by token with a position per row: the generation step of a cached model.

    Each row refreshes its anchors at its own chunk boundaries, and a padded token (`mask = 0`) neither
    writes nor advances its row's position, so a row decodes exactly as it would alone. Cost per token is
    independent of the tokens before it (the state has a fixed size).

    Args:
        inputs: see `MemoryInputs`; `x` is [b, H, t, d] (t is usually 1).
        state: the state before the call; `position` an int or a LongTensor [b].
    Returns:
        o [b, H, t, d]; the state after the call, `position` a LongTensor [b].
    """
    b = inputs.x.shape[0]
    positions = state.position
    if isinstance(positions, int):
        positions = torch.full((b,), positions, dtype=torch.long, device=inputs.x.device)
    outputs = []
    for token in _split_tokens(inputs, [1] * inputs.x.shape[2]):
        state = _refresh_anchors_rows(state, positions, rule)
        if token.mask is not None:
            positions = positions + (token.mask[:, 0] != 0).long()
        else:
            positions = positions + 1
        o, state = _decode_token_step(token, state, rule, positions)
        outputs.append(o)
    return torch.cat(outputs, dim=2), state


__all__ = [
    "MemoryInputs",
    "MemoryRule",
    "MemoryState",
    "chunk_memory_update",
    "decode_memory_update",
    "memory_apply",
    "naive_memory_update",
    "packed_memory_update",
    "shared_position",
]
