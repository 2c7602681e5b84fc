"""Streaming memory: feed a long stream to a Hope model in pieces and keep all of its memory (HOPE.md §4, §6).

A `MemoryStream` owns one `HopeCache`: the self-modifying layers' fast weights (or Hope-Attention's keys and
values) and, with in-context CMS on, the CMS levels' fast weights ΔW. Every `feed` continues from where the
previous one stopped, so feeding a document, a conversation or a book in pieces gives the logits of one
forward over the whole stream (tested). Around that:

    reset()                 forget everything: the next piece starts from the meta-learned initial states
    detach()                cut the autograd graph held by the memory (truncated backpropagation)
    save(path) / load(path) the whole memory state in one safetensors file, with the position and a
                            fingerprint of the config checked on load (no pickle)
    consolidate(level)      fold a CMS level's fast weights into its parameters: the one place where
                            test-time learning becomes permanent (`HopeForCausalLM.consolidate_cms`)

This is a model file carried by Hub checkpoints (relative imports only).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import fields

import torch
from safetensors.torch import load_file, save_file

from .cache import HopeCache, SelfModifyingLayerCache
from .memory_ops import MemoryState
from .self_modifying import MixerState

FORMAT_VERSION = "1"
# config fields that do not change what a memory state means
_NOT_FINGERPRINTED = ("use_cache", "in_context_cms", "return_dict", "output_hidden_states", "dtype",
                      "transformers_version", "architectures", "_name_or_path", "auto_map")


def config_fingerprint(config) -> str:
    """sha256 of the config fields that shape the memory state (sizes, mixer, memories, CMS levels)."""
    values = {k: v for k, v in sorted(config.to_dict().items()) if k not in _NOT_FINGERPRINTED}
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()


def _layer_state_tensors(prefix: str, state) -> dict[str, torch.Tensor]:
    """Name every tensor of a layer state (`MixerState`, (keys, values) or `None`)."""
    if state is None:
        return {}
    if isinstance(state, tuple):
        return {f"{prefix}.keys": state[0], f"{prefix}.values": state[1]}
    named = {f"{prefix}.conv": state.conv}
    for f in fields(state.memory):
        value = getattr(state.memory, f.name)
        if isinstance(value, int):
            value = torch.full((state.conv.shape[0],), value, dtype=torch.long)
            named[f"{prefix}.memory.position_is_int"] = torch.ones(())
        if value is not None:
            named[f"{prefix}.memory.{f.name}"] = value
    return named


def _layer_state_from(prefix: str, tensors: dict[str, torch.Tensor], self_modifying: bool):
    if self_modifying:
        if f"{prefix}.conv" not in tensors:
            return None
        values = {f.name: tensors.get(f"{prefix}.memory.{f.name}") for f in fields(MemoryState)}
        if f"{prefix}.memory.position_is_int" in tensors:
            values["position"] = int(values["position"][0])
        return MixerState(tensors[f"{prefix}.conv"], MemoryState(**values))
    if f"{prefix}.keys" not in tensors:
        return None
    return tensors[f"{prefix}.keys"], tensors[f"{prefix}.values"]


def cache_to_tensors(cache: HopeCache) -> dict[str, torch.Tensor]:
    """Every tensor of a `HopeCache`, by name (contiguous CPU copies, ready for safetensors)."""
    named = {}
    for i, layer in enumerate(cache.layers):
        named.update(_layer_state_tensors(f"layers.{i}", layer.state))
        if layer.cms is not None:
            for key, entries in layer.cms.items():
                for j, entry in enumerate(entries):
                    if entry is not None:
                        for name, t in zip(("gate", "up", "down"), entry, strict=True):
                            named[f"layers.{i}.cms.{key}.{j}.{name}"] = t
    if cache.attention_mask is not None:
        named["attention_mask"] = cache.attention_mask
    if cache.segment_ids is not None:
        named["segment_ids"], named["segment_mask"] = cache.segment_ids, cache.segment_mask
        for i, state in enumerate(cache.segment_start):
            named.update(_layer_state_tensors(f"segment_start.{i}", state))
        for i, state in enumerate(cache.pending_start or []):
            named.update(_layer_state_tensors(f"pending_start.{i}", state))
    if cache.pending_levels is not None:
        named["pending_levels"] = cache.pending_levels
    return {k: v.detach().cpu().contiguous().clone() for k, v in named.items()}    # no shared storage


def cache_from_tensors(config, tensors: dict[str, torch.Tensor], seen_tokens: int) -> HopeCache:
    """The inverse of `cache_to_tensors`."""
    cache = HopeCache(config)
    self_modifying = isinstance(cache.layers[0], SelfModifyingLayerCache)
    for i, layer in enumerate(cache.layers):
        layer.restore(_layer_state_from(f"layers.{i}", tensors, self_modifying))
        cms = {}
        for key in ("delta", "grad", "pending_delta"):
            entries = []
            for j in range(len(config.cms_levels)):
                names = [f"layers.{i}.cms.{key}.{j}.{p}" for p in ("gate", "up", "down")]
                entries.append(tuple(tensors[n] for n in names) if names[0] in tensors else None)
            cms[key] = entries
        layer.cms = cms if any(e is not None for e in cms["delta"]) else None
    cache.seen_tokens = seen_tokens
    cache.attention_mask = tensors.get("attention_mask")
    if "segment_ids" in tensors:
        cache.segment_ids, cache.segment_mask = tensors["segment_ids"], tensors["segment_mask"]
        cache.segment_start = [_layer_state_from(f"segment_start.{i}", tensors, self_modifying)
                               for i in range(config.num_hidden_layers)]
        if any(k.startswith("pending_start.") for k in tensors) or not self_modifying:
            cache.pending_start = [_layer_state_from(f"pending_start.{i}", tensors, self_modifying)
                                   for i in range(config.num_hidden_layers)]
    cache.pending_levels = tensors.get("pending_levels")
    return cache


class MemoryStream:
    """Feed a stream to `model` (a `HopeForCausalLM`) piece by piece, keeping all memory between pieces.

    Example:
        stream = MemoryStream(model, in_context_cms=True)
        for piece in pieces:                      # [B, T_i] token ids
            logits = stream.feed(piece).logits
        stream.save("memory.safetensors")
    """

    def __init__(self, model, in_context_cms: bool | None = None):
        """`in_context_cms`: step the CMS fast weights while feeding (default: `model.config.in_context_cms`)."""
        self.model = model
        self.in_context_cms = model.config.in_context_cms if in_context_cms is None else in_context_cms
        self.cache = HopeCache(model.config)

    @property
    def position(self) -> int:
        """Tokens fed since the last `reset` (or those of the loaded state)."""
        return self.cache.get_seq_length()

    def feed(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None, **kwargs):
        """Run the model on the next piece [B, T] of the stream; returns its `CausalLMOutputWithPast`."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask, past_key_values=self.cache,
                          use_cache=True, in_context_cms=self.in_context_cms, **kwargs)

    __call__ = feed

    def reset(self) -> None:
        """Forget the stream: the next piece starts from the meta-learned initial states, with ΔW = 0."""
        self.cache.reset()

    def detach(self) -> None:
        """Cut the autograd graph held by the memory, so a backward stops here (truncated backpropagation)."""
        self.cache.detach()

    def save(self, path: str) -> None:
        """Write the memory state (every cache tensor, the position, the config fingerprint) to a safetensors file."""
        metadata = {"format_version": FORMAT_VERSION, "seen_tokens": str(self.position),
                    "config_fingerprint": config_fingerprint(self.model.config),
                    "in_context_cms": str(bool(self.in_context_cms))}
        save_file(cache_to_tensors(self.cache), path, metadata=metadata)

    def load(self, path: str) -> None:
        """Replace the memory by the state saved in `path`; raises `ValueError` if it was saved for another config."""
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
        if metadata.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path} is not a hope-hf memory state (format_version "
                             f"{metadata.get('format_version')!r}, expected {FORMAT_VERSION!r})")
        expected = config_fingerprint(self.model.config)
        if metadata.get("config_fingerprint") != expected:
            raise ValueError(f"{path} holds a memory state of another model config (fingerprint "
                             f"{metadata.get('config_fingerprint')!r}, this model's is {expected!r})")
        device = self.model.lm_head.weight.device
        tensors = {k: v.to(device) for k, v in load_file(path).items()}
        self.cache = cache_from_tensors(self.model.config, tensors, int(metadata["seen_tokens"]))

    def consolidate(self, level: int, row: int | None = None) -> None:
        """Fold CMS level `level`'s fast weights into its parameters (`row=None`: the mean over rows) and zero
        them in the memory: the stream goes on with the same outputs (exactly for a batch of 1)."""
        self.model.consolidate_cms(self.cache, level, row)


__all__ = ["MemoryStream", "cache_from_tensors", "cache_to_tensors", "config_fingerprint"]
