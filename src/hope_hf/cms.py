"""The Continuum Memory System: a chain of SwiGLU levels, each with its own update frequency (HOPE.md §4).

Reference: Nested Learning, Eq. 70-73 (sequential variant). The frequencies live outside `forward`:
`update_period` (training steps) is applied by the outer loop (`hope_hf.training`), `chunk_size`
(in-context steps) by the in-context CMS. Here each level is a plain residual SwiGLU:

    x ← x + down_proj(silu(gate_proj(n)) ⊙ up_proj(n)),   n = RMSNorm_ℓ(x),   ℓ = 1..K

Parameters of level j of layer i are named `model.layers.{i}.cms.levels.{j}.*`.

In-context CMS (HOPE.md §4, Eq. 71). Notation:

    W_p            a projection's parameter (p ∈ gate, up, down), [out, in]
    ΔW_p,b         row b's fast weight of that projection (a per-sequence delta), [B, out, in], float32
    c_ℓ, lr_ℓ      the level's `chunk_size` (tokens) and in-context learning rate
    L_ℓ            the summed next-token loss of the level's chunk (see `modeling_hope.py`)

    proj_p(n)_b = n_b W_pᵀ + n_b ΔW_p,bᵀ                    (the level reads W + ΔW, `CMSLevel.forward`)
    ΔW_p ← ΔW_p − lr_ℓ · ∂L_ℓ/∂ΔW_p   every c_ℓ tokens      (`in_context_step`; first order: not differentiated)

The deltas live in `HopeCache` (layer.cms), never in the `nn.Parameter`s; `consolidate_level` is the one
place that folds them into the parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_hope import HopeConfig
from .normalization import HopeRMSNorm


class CMSLevel(nn.Module):
    """One level: pre-norm residual SwiGLU of width `intermediate_size`.

    Shapes: x [B, T, D] → [B, T, D].
    """

    def __init__(self, hidden_size: int, intermediate_size: int, eps: float):
        super().__init__()
        self.norm = HopeRMSNorm(hidden_size, eps=eps)
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor, delta: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
                ) -> torch.Tensor:
        """
        Args:
            x: [B, T, D].
            delta: `None`, or the fast weights (ΔW_gate, ΔW_up, ΔW_down), [B, I, D], [B, I, D], [B, D, I]:
                row b then computes with `W + ΔW_b` (HOPE.md §4).
        """
        n = self.norm(x)
        if delta is None:
            return x + self.down_proj(F.silu(self.gate_proj(n)) * self.up_proj(n))
        d_gate, d_up, d_down = (d.to(n.dtype) for d in delta)
        gate = self.gate_proj(n) + n @ d_gate.transpose(1, 2)
        up = self.up_proj(n) + n @ d_up.transpose(1, 2)
        hidden = F.silu(gate) * up
        return x + self.down_proj(hidden) + hidden @ d_down.transpose(1, 2)

    def projections(self) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
        """The three projections in the order of a delta: (gate, up, down)."""
        return self.gate_proj, self.up_proj, self.down_proj

    def zero_delta(self, batch_size: int, device: torch.device, dtype: torch.dtype = torch.float32
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ΔW = 0 for `batch_size` rows: [B, out, in] per projection (float32 unless the model is wider)."""
        return tuple(torch.zeros(batch_size, *p.weight.shape, device=device, dtype=dtype) for p in self.projections())


class ContinuumMemory(nn.Module):
    """The sequential chain of CMS levels that replaces a block's feed-forward.

    Shapes: x [B, T, D] → [B, T, D].
    """

    def __init__(self, config: HopeConfig):
        super().__init__()
        self.levels = nn.ModuleList(
            CMSLevel(config.hidden_size, level["intermediate_size"], config.rms_norm_eps)
            for level in config.cms_levels
        )

    def forward(self, x: torch.Tensor, deltas: list | None = None) -> torch.Tensor:
        """`deltas`: `None`, or one entry per level, `None` or that level's (ΔW_gate, ΔW_up, ΔW_down)."""
        for j, level in enumerate(self.levels):
            x = level(x, deltas[j] if deltas is not None else None)
        return x


def in_context_step(delta: tuple[torch.Tensor, ...], grad: tuple[torch.Tensor, ...], lr: float
                    ) -> tuple[torch.Tensor, ...]:
    """One in-context step of a level, ΔW_p ← ΔW_p − lr · g_p for p = gate, up, down (shapes [B, out, in])."""
    return tuple((d - lr * g).detach() for d, g in zip(delta, grad, strict=True))


@torch.no_grad()
def consolidate_level(level: CMSLevel, delta: tuple[torch.Tensor, ...], row: int | None = None
                      ) -> tuple[torch.Tensor, ...]:
    """Fold a level's fast weights into its parameters: W_p ← W_p + ΔW_p,row (or the mean over rows).

    The one place where test-time learning becomes permanent (HOPE.md §4). `delta` [B, out, in] per projection.
    Returns the folded ΔW_p [out, in] per projection.
    """
    folded = tuple(d.mean(0) if row is None else d[row] for d in delta)
    for proj, f in zip(level.projections(), folded, strict=True):
        proj.weight.add_(f.to(proj.weight.dtype))
    return folded
