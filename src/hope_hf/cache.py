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
        then `{"delta": [...], "grad": [...], "pending_delta": [...]}` with one entry per CMS level: `None`
        for a level with `chunk_size = 0`, else (gate, up, down) tensors [B, out, in] (float32): the fast
        weights ΔW, the gradient summed over the level's current chunk, and the ΔW of the row's pending
        segment (see below and `modeling_hope.py`)

and for the whole model `attention_mask` [B, T_seen] of the past columns (or `None` when all were real),
`get_seq_length()`, the columns seen (padding included, as `generate` counts them), and for in-context
CMS each row's open segment (its real tokens since its last in-context step; rows may be at different
positions after padding), so the segment can be re-run with gradients when it completes, and its pending
segment (the one just closed by a step that some level did not take: the pair of its last token and the
row's next real token still counts for those levels, once that token arrives):

    segment_ids, segment_mask   [B, n] the last n columns, and per row 1 (`OPEN`) / 2 (`PENDING`) where the
                                column is a real token of the row's open / pending segment, else 0
    segment_start, pending_start  per layer, each row's detached state at the start of its open / pending
                                segment (self-modifying: a `MixerState`; attention: `None`, the keys before
                                the segment are in the cache and `segment_start_cache` masks its columns out)
    pending_levels              [B, K] bool: the CMS levels that still count the pending segment's last pair

(`None` when no row has an open or pending segment).
Memory and conv states are float32 (float64 for float64 models), also when the model runs in bf16;
keys/values are in the model's dtype, as a full forward computes them.

This is a model file carried by Hub checkpoints (relative imports only).
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass, replace

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


def pick_rows(rows: torch.Tensor, new, old):
    """Per row b: `new` where `rows[b]`, else `old` ([B] bool `rows`; tensors, ints (per-row positions) and
    dataclasses of them, e.g. a `MixerState`, field by field)."""
    if new is None:
        return None
    if is_dataclass(new):
        return replace(new, **{f.name: pick_rows(rows, getattr(new, f.name), getattr(old, f.name)) for f in fields(new)})
    if isinstance(new, int) and isinstance(old, int) and (new == old or bool(rows.all()) or not bool(rows.any())):
        return new if bool(rows.any()) else old
    new, old = (torch.as_tensor(v, device=rows.device).expand(rows.shape[0]) if isinstance(v, int) else v
                for v in (new, old))
    return torch.where(rows.view(-1, *([1] * (new.dim() - 1))), new, old)


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
        self.segment_mask: torch.Tensor | None = None
        self.segment_start: list | None = None
        self.pending_start: list | None = None
        self.pending_levels: torch.Tensor | None = None

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

    def real_tokens(self, batch_size: int, device: torch.device) -> torch.Tensor:
        """[B] real tokens seen per row (columns minus padding)."""
        if self.attention_mask is None:
            return torch.full((batch_size,), self.seen_tokens, dtype=torch.long, device=device)
        return self.attention_mask.long().sum(dim=1).to(device)

    # --- in-context CMS: each row's open and pending segment (see the module docstring and `modeling_hope.py`) --

    OPEN, PENDING = 1, 2                     # `segment_mask` values of a row's open / pending segment tokens

    def open_segment_rows(self, batch_size: int, device: torch.device) -> torch.Tensor:
        """[B] bool: the rows with an open segment (at least one real token since their last step)."""
        return self._rows_with(self.OPEN, batch_size, device)

    def pending_segment_rows(self, batch_size: int, device: torch.device) -> torch.Tensor:
        """[B] bool: the rows with a pending segment (closed at a step, its last next-token pair awaits a target)."""
        return self._rows_with(self.PENDING, batch_size, device)

    def _rows_with(self, value: int, batch_size: int, device: torch.device) -> torch.Tensor:
        if self.segment_mask is None:
            return torch.zeros(batch_size, dtype=torch.bool, device=device)
        return (self.segment_mask == value).any(dim=1)

    def extend_segments(self, ids: torch.LongTensor, mask: torch.Tensor | None, current_states) -> None:
        """Before a call of new columns `ids` [B, T] (`mask` [B, T] or `None`: all real): rows without an open
        segment start one here, from `current_states()` (each layer's current state, detached; `None` for an
        attention layer), called only when some row starts."""
        B = ids.shape[0]
        starting = ~self.open_segment_rows(B, ids.device)
        if self.segment_start is None or bool(starting.all()):
            self.segment_start = list(current_states())
        elif bool(starting.any()):
            self.segment_start = [pick_rows(starting, new, old) for new, old in
                                  zip(current_states(), self.segment_start, strict=True)]
        mask = torch.ones_like(ids) if mask is None else mask.long()
        if self.segment_ids is None:
            self.segment_ids, self.segment_mask = ids, mask * self.OPEN
        else:
            self.segment_ids = torch.cat([self.segment_ids, ids], dim=1)
            self.segment_mask = torch.cat([self.segment_mask, mask * self.OPEN], dim=1)

    def close_segments(self, rows: torch.Tensor, pending: torch.Tensor) -> None:
        """Rows [B] bool stepped: their open segments end; those of `pending` [B] bool (a subset) become the rows'
        pending segments (their start state moves to `pending_start`), the others are dropped."""
        if bool(pending.any()):
            self.pending_start = [new if old is None else pick_rows(pending, new, old)
                                  for new, old in zip(self.segment_start, self.pending_start or self.segment_start,
                                                      strict=True)]
        open_tokens = self.segment_mask == self.OPEN
        self.segment_mask = torch.where(open_tokens & rows[:, None],
                                        torch.where(pending[:, None], self.PENDING, 0), self.segment_mask)
        self._trim()

    def resolve_pending(self, rows: torch.Tensor) -> None:
        """Rows [B] bool: their pending segments are done with (the last pair was counted, or is dropped)."""
        self.segment_mask = torch.where((self.segment_mask == self.PENDING) & rows[:, None], 0, self.segment_mask)
        self._trim()

    def _trim(self) -> None:
        """Drop the leading columns that no row's open or pending segment needs (everything, when none is left)."""
        needed = self.segment_mask.bool().any(dim=0).nonzero()
        if len(needed) == 0:
            self.segment_ids = self.segment_mask = self.segment_start = self.pending_start = None
            self.pending_levels = None
            return
        first = int(needed[0])
        self.segment_ids, self.segment_mask = self.segment_ids[:, first:], self.segment_mask[:, first:]

    def segment_start_cache(self, config: HopeConfig, rows: torch.Tensor, pending: bool = False) -> HopeCache:
        """A new cache of the rows `rows` ([S] indices) at the start of each one's open (or pending) segment,
        detached: feeding it `segment_ids[rows]` with the rows' segment tokens as mask re-runs each row's segment
        exactly as it ran (a row has an open or a pending segment, never both)."""
        start = HopeCache(config)
        n = self.segment_ids.shape[1]
        states = self.pending_start if pending else self.segment_start
        for layer, state, target in zip(self.layers, states, start.layers, strict=True):
            if isinstance(target, AttentionLayerCache):           # the keys before the segment are in the cache
                state = (layer.keys, layer.values)
            target.restore(map_layer_state(state, lambda t: t[rows].detach()))
        past = self.attention_mask
        if past is None:
            past = torch.ones(self.segment_ids.shape[0], self.seen_tokens, dtype=torch.long,
                              device=self.segment_ids.device)
        past = past[rows].long()
        segment = self.segment_mask[rows] == (self.PENDING if pending else self.OPEN)
        past[:, past.shape[1] - n:] *= (~segment).long()                         # the segment's own columns
        start.seen_tokens = self.seen_tokens
        start.attention_mask = None if bool(past.all()) else past
        return start

    def _map_batch(self, fn) -> None:
        for layer in self.layers:
            layer.map_tensors(fn)
        if self.attention_mask is not None:
            self.attention_mask = fn(self.attention_mask)
        if self.segment_ids is not None:
            self.segment_ids, self.segment_mask = fn(self.segment_ids), fn(self.segment_mask)
            self.segment_start = [map_layer_state(state, fn) for state in self.segment_start]
            if self.pending_start is not None:
                self.pending_start = [map_layer_state(state, fn) for state in self.pending_start]
        if self.pending_levels is not None:
            self.pending_levels = fn(self.pending_levels)

    def detach(self) -> None:
        """Cut the autograd graph of every tensor held (truncated backpropagation through a stream)."""
        for layer in self.layers:
            layer.map_tensors(torch.Tensor.detach)
        if self.attention_mask is not None:
            self.attention_mask = self.attention_mask.detach()
        if self.segment_ids is not None:
            self.segment_start = [map_layer_state(state, torch.Tensor.detach) for state in self.segment_start]
            if self.pending_start is not None:
                self.pending_start = [map_layer_state(state, torch.Tensor.detach) for state in self.pending_start]

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
        self.segment_ids = self.segment_mask = self.segment_start = self.pending_start = self.pending_levels = None

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError(
            "HopeCache cannot be cropped: a recurrent state does not keep the states of earlier positions "
            "(assisted / speculative decoding needs this)"
        )

    @property
    def batch_size(self) -> int:
        sizes = {layer.batch_size for layer in self.layers if layer.batch_size is not None}
        return sizes.pop() if sizes else -1


__all__ = ["AttentionLayerCache", "HopeCache", "SelfModifyingLayerCache", "map_cms", "map_layer_state", "pick_rows"]
