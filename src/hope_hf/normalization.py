"""RMSNorm, the only normalisation of Hope (a model file: imports torch only)."""

from __future__ import annotations

import torch
from torch import nn


class HopeRMSNorm(nn.Module):
    """y = x / sqrt(mean(x²) + eps) · weight, computed in float32.

    Args:
        size: size of the last axis.
        eps: added to the mean square.
    """

    def __init__(self, size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"
