"""The Continuum Memory System: a chain of SwiGLU levels, each with its own update frequency (HOPE.md §4).

Reference: Nested Learning, Eq. 70-73 (sequential variant). The frequencies live outside `forward`:
`update_period` (training steps) is applied by the outer loop (`hope_hf.training`), `chunk_size`
(in-context steps) by the in-context CMS. Here each level is a plain residual SwiGLU:

    x ← x + down_proj(silu(gate_proj(n)) ⊙ up_proj(n)),   n = RMSNorm_ℓ(x),   ℓ = 1..K

Parameters of level j of layer i are named `model.layers.{i}.cms.levels.{j}.*`.
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.norm(x)
        return x + self.down_proj(F.silu(self.gate_proj(n)) * self.up_proj(n))


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for level in self.levels:
            x = level(x)
        return x
