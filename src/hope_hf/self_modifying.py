"""The self-modifying Titans mixer of Hope (HOPE.md §3): every projection is a memory that learns in context.

The layer owns the outer-loop parameters (meta-learned initial states of the memories, static
projections, gates, convolution, output norm and gate); the inner loop (the memory updates) is in
`memory_ops.py`. Shapes: hidden [B, T, D] → [B, T, D], with H heads of size d = D / H.

    x̃ = silu(causal_depthwise_conv(x, window=4))                       §3.1
    q = l2norm(W_q x̃) (static),  k, v, η, α from the memories         §3.2-3.4 (Eq. 79-85)
    o_t = M_mem(q_t),  memories updated by DGD on self-generated targets §3.5-3.8
    y = W_o(RMSNorm(o) ⊙ silu(W_g x̃))                                  §3.9
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from .configuration_hope import HopeConfig
from .memory_ops import (
    MemoryInputs,
    MemoryRule,
    MemoryState,
    chunk_memory_update,
    decode_memory_update,
    naive_memory_update,
    packed_memory_update,
    shared_position,
)
from .normalization import HopeRMSNorm

#: `HopeConfig.memory_implementation` → the function that runs a multi-token call (all compute the same thing).
IMPLEMENTATIONS = {
    "chunk": chunk_memory_update,
    "compiled": partial(chunk_memory_update, compiled=True),
    "naive": naive_memory_update,
}


@dataclass
class MixerState:
    """Recurrent state of one self-modifying layer (what `HopeCache` keeps per layer).

    Attributes:
        conv: [B, D, conv_window − 1] each row's last real inputs of the causal convolution (float32 or wider).
        memory: fast weights of the memories (float32 or wider); `memory.position` counts each row's real
            tokens (an int, or a LongTensor [B] once rows differ).
    """

    conv: torch.Tensor
    memory: MemoryState

    def map_tensors(self, fn) -> "MixerState":
        """A new state with `fn` applied to every tensor (e.g. `index_select` over the batch)."""
        return MixerState(fn(self.conv), self.memory.map_tensors(fn))


def pack_order(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] indices that move each row's real tokens to the front, in order, and its padding to the end."""
    return torch.sort((attention_mask == 0).to(torch.int8), dim=1, stable=True).indices


class FastMemoryBank(nn.Module):
    """Meta-learned initial states A⁰ [H, M, h, d] and B⁰ [H, M, d, h] of the M memories of a layer.

    A module of its own so PEFT can train it (`modules_to_save=["memories"]`) or leave it frozen.
    """

    def __init__(self, num_heads: int, names: tuple[str, ...], head_dim: int, hidden: int):
        super().__init__()
        self.names = names
        self.w_in = nn.Parameter(torch.empty(num_heads, len(names), hidden, head_dim))
        self.w_out = nn.Parameter(torch.empty(num_heads, len(names), head_dim, hidden))

    def init_parameters(self, std: float) -> None:
        """A⁰ keeps σ(A⁰z) of order one for unit z; B⁰ is small so every memory starts near the identity."""
        init.normal_(self.w_in, std=self.w_in.shape[-1] ** -0.5)
        init.normal_(self.w_out, std=std)

    def extra_repr(self) -> str:
        return f"names={self.names}, w_in={tuple(self.w_in.shape)}, w_out={tuple(self.w_out.shape)}"


def logit(p: float) -> float:
    return math.log(p / (1 - p))


class SelfModifyingTitans(nn.Module):
    """Self-modifying Titans sequence mixer.

    `implementation` starts as `config.memory_implementation` (`"chunk"`, `"compiled"` or the token-by-token
    `"naive"` reference); `HopeForCausalLM.set_memory_implementation` changes it for every layer.
    """

    def __init__(self, config: HopeConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        D, H, d = config.hidden_size, config.num_heads, config.head_dim
        self.num_heads, self.head_dim = H, d
        self.implementation = config.memory_implementation
        self.rule = MemoryRule(
            names=config.memory_names,
            projection_chunk=config.projection_chunk_size,
            memory_chunk=config.memory_chunk_size,
            delta=config.inner_optimizer == "dgd",
            momentum=config.inner_momentum,
            eta_max=config.eta_max,
            alpha_min=config.alpha_min,
            normalize_values=config.normalize_values,
            weight_decay=config.inner_weight_decay,
            normalize_inner_step=config.normalize_inner_step,
        )
        if config.input_projection:
            self.input_proj = nn.Linear(D, D, bias=False)          # W_x: mixes the channels the heads read
        self.conv = nn.Conv1d(D, D, kernel_size=config.conv_window, groups=D, bias=False)
        if not config.adaptive_q:
            self.q_proj = nn.Linear(D, D, bias=False)
        if not config.adaptive_k:
            self.k_proj = nn.Linear(D, D, bias=False)
        if not config.adaptive_v:
            self.v_proj = nn.Linear(D, D, bias=False)
        if config.adaptive_rates:
            self.eta_weight = nn.Parameter(torch.empty(H, d))
            self.eta_bias = nn.Parameter(torch.empty(H))
            if config.inner_weight_decay:
                self.alpha_weight = nn.Parameter(torch.empty(H, d))
                self.alpha_bias = nn.Parameter(torch.empty(H))
        else:
            self.eta_proj = nn.Linear(D, H, bias=True)
            if config.inner_weight_decay:
                self.alpha_proj = nn.Linear(D, H, bias=True)
        if config.inner_momentum:
            self.momentum_logit = nn.Parameter(torch.empty(H))
        self.memories = FastMemoryBank(H, config.memory_names, d, config.memory_hidden_size)
        self.o_norm = HopeRMSNorm(d, eps=config.rms_norm_eps)
        self.g_proj = nn.Linear(D, D, bias=False)
        self.o_proj = nn.Linear(D, D, bias=False)

    def init_parameters(self, std: float) -> None:
        """Initialise the parameters this module owns directly (called by `HopePreTrainedModel._init_weights`).

        Uses `transformers.initialization`, which leaves tensors loaded from a checkpoint untouched.
        """
        cfg = self.config
        eta_bias = logit(cfg.eta_init / cfg.eta_max)
        alpha_bias = logit((cfg.alpha_init - cfg.alpha_min) / (1 - cfg.alpha_min))
        if cfg.adaptive_rates:
            init.normal_(self.eta_weight, std=std)
            init.constant_(self.eta_bias, eta_bias)
            if cfg.inner_weight_decay:
                init.normal_(self.alpha_weight, std=std)
                init.constant_(self.alpha_bias, alpha_bias)
        else:
            init.constant_(self.eta_proj.bias, eta_bias)
            if cfg.inner_weight_decay:
                init.constant_(self.alpha_proj.bias, alpha_bias)
        if cfg.inner_momentum:
            init.constant_(self.momentum_logit, logit(cfg.momentum_init))
        if cfg.input_projection:                                   # starts as the model without it
            init.copy_(self.input_proj.weight, torch.eye(cfg.hidden_size))
        # depthwise conv: the current token passes through, neighbours start small
        weight = torch.randn_like(self.conv.weight) * std
        weight[:, 0, -1] += 1.0
        init.copy_(self.conv.weight, weight)

    def initial_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> MixerState:
        """The state before the first token, in float32 (float64 for float64 models) whatever the model's dtype."""
        state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        D, window = self.config.hidden_size, self.config.conv_window
        conv = torch.zeros(batch_size, D, window - 1, device=device, dtype=state_dtype)
        memory = MemoryState.initial(self.memories.w_in, self.memories.w_out, batch_size, self.rule.momentum,
                                     dtype=state_dtype)
        return MixerState(conv, memory)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, D] → [B, H, T, d]."""
        B, T, _ = x.shape
        return x.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None,
                state: MixerState | None = None) -> tuple[torch.Tensor, MixerState]:
        """
        Padding may sit anywhere in a row: each row is packed (real tokens first, in order) so that the
        convolution, the chunk boundaries and the carried state see only its real tokens, exactly as if
        it ran alone, and the outputs are put back in place (outputs at padded positions are unused).

        Memory paths: a call of several tokens with every row at the same position runs
        `self.implementation` (chunk-wise by default; `packed_memory_update` when padded); a one-token
        call, or rows at different positions (after a padded prefill), runs `decode_memory_update`
        (token by token, per-row positions; exact, slower for long calls).

        Args:
            hidden: [B, T, D] normalised input of the block.
            attention_mask: [B, T] 1 for real tokens, 0 for padding (padding writes no memory).
            state: the state before this call (`None`: start of the sequence).
        Returns:
            y [B, T, D] and the state after the call.
        """
        B, T, D = hidden.shape
        if state is None:
            state = self.initial_state(B, hidden.device, hidden.dtype)
        order = lengths = None
        if attention_mask is not None:
            order = pack_order(attention_mask)
            attention_mask = attention_mask.gather(1, order)
            hidden = hidden.gather(1, order[..., None].expand_as(hidden)) * attention_mask[..., None].to(hidden.dtype)
            lengths = (attention_mask != 0).sum(dim=1)                          # real tokens per row [B]
        if self.config.input_projection:
            hidden = self.input_proj(hidden)                               # W_x x (no bias: padding stays 0)
        # causal depthwise convolution over [previous inputs, this call]
        window = state.conv.shape[2]
        conv_in = torch.cat([state.conv.to(hidden.dtype), hidden.transpose(1, 2)], dim=2)
        x = F.silu(self.conv(conv_in).transpose(1, 2))                     # x̃ [B, T, D]
        if lengths is None:
            new_conv = conv_in[:, :, T:]
        else:                                                              # each row's last real inputs
            index = (lengths[:, None] + torch.arange(window, device=hidden.device))[:, None, :]
            new_conv = conv_in.gather(2, index.expand(B, D, window))
        new_conv = new_conv.to(state.conv.dtype)

        static = {}
        for name in ("q", "k", "v"):
            if hasattr(self, f"{name}_proj"):
                static[name] = self._heads(getattr(self, f"{name}_proj")(x))
        if not self.config.adaptive_rates:
            static["eta"] = self.eta_proj(x).transpose(1, 2)               # [B, H, T]
            if self.config.inner_weight_decay:
                static["alpha"] = self.alpha_proj(x).transpose(1, 2)
        # the memories run in (at least) float32, also under bf16 autocast
        mem_dtype = state.memory.w_in.dtype
        with torch.autocast(device_type=hidden.device.type, enabled=False):

            def cast(t: torch.Tensor | None) -> torch.Tensor | None:
                return None if t is None else t.to(mem_dtype)

            inputs = MemoryInputs(
                x=cast(self._heads(x)),
                static={k: cast(v) for k, v in static.items()},
                eta_weight=cast(getattr(self, "eta_weight", None)),
                eta_bias=cast(getattr(self, "eta_bias", None)),
                alpha_weight=cast(getattr(self, "alpha_weight", None)),
                alpha_bias=cast(getattr(self, "alpha_bias", None)),
                momentum=torch.sigmoid(cast(self.momentum_logit)) if self.rule.momentum else None,
                mask=attention_mask,
            )
            position = shared_position(state.memory.position) if T > 1 else None
            if position is None:
                o, memory = decode_memory_update(inputs, state.memory, self.rule)
            else:
                update = IMPLEMENTATIONS[self.implementation]
                if self.implementation != "naive" and self.config.memory_checkpoint_chunks:
                    update = partial(update, checkpoint_chunks=self.config.memory_checkpoint_chunks)
                memory = replace(state.memory, position=position)
                if lengths is None:
                    o, memory = update(inputs, memory, self.rule)
                else:
                    o, memory = packed_memory_update(update, inputs, memory, self.rule, lengths)
        o = self.o_norm(o.to(hidden.dtype)).transpose(1, 2).reshape(B, T, D)
        y = self.o_proj(o * F.silu(self.g_proj(x)))
        if order is not None:
            y = y.gather(1, order.argsort(dim=1)[..., None].expand_as(y))
        return y, MixerState(new_conv, memory)
