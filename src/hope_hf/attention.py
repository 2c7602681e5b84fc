"""Hope-Attention's mixer: causal softmax attention with rotary positions (SDPA).

Same names and maths as Llama's attention (`q_proj`, `k_proj`, `v_proj`, `o_proj`, RoPE with
`rope_theta`, grouped-query heads), so a Llama's attention can be loaded into it unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_hope import HopeConfig


def rotary_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [B, T, head_dim] of RoPE for `position_ids` [B, T] (computed in float32)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=position_ids.device)
                                .float() / head_dim))
    freqs = position_ids.float().unsqueeze(-1) * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, d]; cos, sin [B, T, d]."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + rotate_half(x) * sin


class HopeAttention(nn.Module):
    """Causal multi-head (grouped-query) softmax attention with RoPE.

    Shapes: hidden [B, T, D] → [B, T, D]; `attention_mask` [B, T_past + T] (1 real, 0 padding).
    """

    def __init__(self, config: HopeConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.rope_theta = config.rope_theta
        D, bias = config.hidden_size, config.attention_bias
        self.q_proj = nn.Linear(D, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(D, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(D, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, D, bias=bias)

    def forward(self, hidden: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                kv_cache: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Returns the output and the keys/values of all positions so far ([B, H_kv, T_all, d] each)."""
        B, T, _ = hidden.shape
        q = self.q_proj(hidden).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(hidden).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(hidden).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = rotary_cos_sin(position_ids, self.head_dim, self.rope_theta, q.dtype)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if kv_cache is not None:
            k, v = torch.cat([kv_cache[0], k], dim=2), torch.cat([kv_cache[1], v], dim=2)
        past = k.shape[2] - T
        if attention_mask is None and past == 0:
            mask, causal = None, True
        elif attention_mask is None and T == 1:          # one new query sees every column: no mask at all
            mask, causal = None, False
        else:
            allowed = torch.ones(T, past + T, dtype=torch.bool, device=hidden.device).tril(diagonal=past)
            allowed = allowed[None, None]
            if attention_mask is not None:
                allowed = allowed & attention_mask[:, None, None, :].bool()
                # a fully padded query row would give NaN; let it attend to itself (its output is unused)
                rows = torch.arange(T, device=hidden.device)[:, None] + past
                allowed = allowed | (rows == torch.arange(past + T, device=hidden.device)[None, :])[None, None]
            mask, causal = allowed, False
        groups = self.num_heads // self.num_kv_heads
        keys, values = (k, v) if groups == 1 else (k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1))
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, is_causal=causal)
        out = out.transpose(1, 2).reshape(B, T, -1)
        return self.o_proj(out), (k, v)
