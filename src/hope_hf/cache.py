"""`HopeCache`: the recurrent state of a Hope model between calls (HOPE.md §6), a `transformers.Cache`.

Hope is recurrent: a self-modifying layer carries fast weights, not a key/value list, so its cost per
generated token does not grow with the context. Per layer the cache holds:

    self-modifying layer (`SelfModifyingLayerCache.state`, a `MixerState`):
        conv                     [B, D, conv_window − 1]  each row's last real inputs of the convolution
        memory.w_in, w_out       [B, H, M, h, d], [B, H, M, d, h]  running fast weights of the M memories
        memory.anchor_in/out     same shapes: the states at each memory's last chunk boundary
        memory.mom_in/out        same shapes: inner momentum (`None` without momentum)
        memory.position          real tokens per row: an int, or a LongTensor [B] after a padded call;
                                 the position-within-chunk counters are `position % C_o` and
                                 `position % C_m` (`chunk_offsets`)
    attention layer (`AttentionLayerCache`): keys, values [B, H_kv, T_seen, d] (RoPE applied)
    every layer: `cms`, the in-context CMS fast weights (HOPE.md §4), `None` until the first in-context call,
        then `{"delta": [...], "grad": [...]}` with one entry per CMS level: `None` for a level with
        `chunk_size = 0`, else (gate, up, down) tensors [B, out, in] (float32): the fast weights ΔW, and
        the gradient summed over the segments of the level's current chunk (see `modeling_hope.py`)

and for the whole model `attention_mask` [B, T_seen] of the past columns (or `None` when all were real),
`get_seq_length()`, the columns seen (padding included, as `generate` counts them), and for in-context
CMS the open segment (since the last in-context step of any level): `segment_ids` [B, n] its tokens and
`segment_start` the layer states at its start (one `state` per layer), so the segment can be re-run with
gradients when it completes; both `None` at a step boundary.
Memory and conv states are float32 (float64 for float64 models), also when the model runs in bf16;
keys/values are in the model's dtype, as a full forward computes them.

This is a model file carried by Hub checkpoints (relative imports only).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache

from .configuration_hope import HopeConfig
from .self_modifying import MixerState


def map_cms(cms: dict | None, fn) -> dict | None:
    """A layer's `cms` slot with `fn` applied to every tensor."""
    if cms is None:
        return None
    return {key: [None if entry is None else tuple(fn(t) for t in entry) for entry in value]
            for key, value in cms.items()}


def map_layer_state(state, fn):
    """A layer `state` (a `MixerState`, (keys, values) or `None`) with `fn` applied to every tensor."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(fn(t) for t in state)
    return state.map_tensors(fn)


class SelfModifyingLayerCache:
    """The state of one self-modifying layer (see the module docstring); empty until the first call."""

    is_compileable = False
    is_croppable = False
    is_sliding = False
    supports_early_init = False

    def __init__(self, projection_chunk: int, memory_chunk: int):
        self.projection_chunk, self.memory_chunk = projection_chunk, memory_chunk
        self.state: MixerState | None = None
        self.cms = None

    def update(self, state: MixerState) -> None:
        self.state = state

    @property
    def positions(self) -> torch.Tensor | None:
        """[B] real tokens consumed per row (`None` before the first call)."""
        if self.state is None:
            return None
        position = self.state.memory.position
        if isinstance(position, int):
            return torch.full((self.state.conv.shape[0],), position, dtype=torch.long, device=self.state.conv.device)
        return position

    def chunk_offsets(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Per row, the position inside the current C_o chunk and inside the current C_m chunk ([B] each)."""
        positions = self.positions
        if positions is None:
            return None
        return positions % self.projection_chunk, positions % self.memory_chunk

    @property
    def batch_size(self) -> int | None:
        return None if self.state is None else self.state.conv.shape[0]

    def map_tensors(self, fn) -> None:
        """Apply `fn` to every tensor of the layer's state, in place of the state (batch operations)."""
        if self.state is not None:
            self.state = self.state.map_tensors(fn)
        self.cms = map_cms(self.cms, fn)

    def restore(self, state: MixerState | None) -> None:
        """Put back a state taken earlier from `.state` (in-context CMS re-runs a segment from its start)."""
        self.state = state

    def reset(self) -> None:
        self.state, self.cms = None, None


class AttentionLayerCache:
    """The keys and values of one Hope-Attention layer, [B, H_kv, T_seen, d]; empty until the first call."""

    is_compileable = False
    is_croppable = False
    is_sliding = False
    supports_early_init = False

    def __init__(self):
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.cms = None

    @property
    def state(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        return None if self.keys is None else (self.keys, self.values)

    def update(self, state: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.keys, self.values = state

    @property
    def batch_size(self) -> int | None:
        return None if self.keys is None else self.keys.shape[0]

    def map_tensors(self, fn) -> None:
        if self.keys is not None:
            self.keys, self.values = fn(self.keys), fn(self.values)
        self.cms = map_cms(self.cms, fn)

    def restore(self, state: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        """Put back the keys and values taken earlier from `.state` (`None`: empty)."""
        self.keys, self.values = state if state is not None else (None, None)

    def reset(self) -> None:
        self.keys = self.values = self.cms = None


class HopeCache(Cache):
    """Recurrent cache of a `HopeModel`: one entry per layer (see the module docstring).

    Created by `HopeModel.forward` when `use_cache=True` and no cache is given (so `generate` needs no
    `DynamicCache`), or by hand: `HopeCache(model.config)`. Filled lazily by the first forward.

    Supports what `generate` and users need: `get_seq_length`, `reorder_cache` (beam search),
    `batch_select_indices`, `batch_repeat_interleave`, `reset`. `crop` is not possible for a recurrent
    state (it would need the states of earlier positions) and raises.
    """

    def __init__(self, config: HopeConfig):
        if config.mixer == "attention":
            layers = [AttentionLayerCache() for _ in range(config.num_hidden_layers)]
        else:
            layers = [SelfModifyingLayerCache(config.projection_chunk_size, config.memory_chunk_size)
                      for _ in range(config.num_hidden_layers)]
        super().__init__(layers=layers)
        self.seen_tokens = 0
        self.attention_mask: torch.Tensor | None = None
        self.segment_ids: torch.Tensor | None = None
        self.segment_start: list | None = None

    def __repr__(self) -> str:
        kind = type(self.layers[0]).__name__ if self.layers else "none"
        return f"HopeCache(layers={len(self.layers)} × {kind}, seen_tokens={self.seen_tokens})"

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Columns consumed so far (padding included), the same for every layer."""
        return self.seen_tokens

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.seen_tokens + query_length, 0

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return -1

    def full_attention_mask(self, attention_mask: torch.Tensor | None, batch_size: int, query_length: int,
                            device: torch.device) -> torch.Tensor | None:
        """[B, T_seen + T] mask of the past and new columns from the new columns' mask ([B, T] or
        [B, T_seen + T] as `generate` passes it), or `None` when every column is real."""
        if attention_mask is not None and attention_mask.shape[1] == self.seen_tokens + query_length:
            return attention_mask
        if attention_mask is None and self.attention_mask is None:
            return None
        past = self.attention_mask
        if past is None:
            past = torch.ones(batch_size, self.seen_tokens, dtype=torch.long, device=device)
        new = attention_mask if attention_mask is not None else past.new_ones(batch_size, query_length)
        return torch.cat([past, new.to(past.dtype)], dim=1)

    def advance(self, attention_mask: torch.Tensor | None, query_length: int) -> None:
        """Record `query_length` new columns; `attention_mask` is the full [B, T_seen + T] mask or `None`."""
        self.seen_tokens += query_length
        self.attention_mask = attention_mask

    def _map_batch(self, fn) -> None:
        for layer in self.layers:
            layer.map_tensors(fn)
        if self.attention_mask is not None:
            self.attention_mask = fn(self.attention_mask)
        if self.segment_ids is not None:
            self.segment_ids = fn(self.segment_ids)
            self.segment_start = [map_layer_state(state, fn) for state in self.segment_start]

    def detach(self) -> None:
        """Cut the autograd graph of every tensor held (truncated backpropagation through a stream)."""
        for layer in self.layers:
            layer.map_tensors(torch.Tensor.detach)
        if self.attention_mask is not None:
            self.attention_mask = self.attention_mask.detach()
        if self.segment_ids is not None:
            self.segment_start = [map_layer_state(state, torch.Tensor.detach) for state in self.segment_start]

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search: row i of the new cache is row `beam_idx[i]` of the old one."""
        self._map_batch(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map_batch(lambda t: t[indices.to(t.device)])

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map_batch(lambda t: t.repeat_interleave(repeats, dim=0))

    def reset(self) -> None:
        """Back to an empty cache: the next call starts a new sequence from the meta-learned initial states."""
        for layer in self.layers:
            layer.reset()
        self.seen_tokens = 0
        self.attention_mask = None
        self.segment_ids = self.segment_start = None

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError(
            "HopeCache cannot be cropped: a recurrent state does not keep the states of earlier positions "
            "(assisted / speculative decoding needs this)"
        )

    @property
    def batch_size(self) -> int:
        sizes = {layer.batch_size for layer in self.layers if layer.batch_size is not None}
        return sizes.pop() if sizes else -1


__all__ = ["AttentionLayerCache", "HopeCache", "SelfModifyingLayerCache", "map_cms", "map_layer_state"]
