"""Hope as a Hugging Face model: `HopeModel` and `HopeForCausalLM` (HOPE.md §6).

A block is `x ← x + mixer(RMSNorm(x))` then the Continuum Memory System. The mixer is the
self-modifying Titans memory (Hope) or softmax attention (Hope-Attention).

This is a model file carried by Hub checkpoints: it imports only torch, transformers and its
siblings by same-folder relative imports (transformers copies exactly those).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep

from .attention import HopeAttention
from .cache import HopeCache
from .cms import ContinuumMemory, consolidate_level, in_context_step
from .configuration_hope import HopeConfig
from .model_card import write_model_card
from .normalization import HopeRMSNorm
from .self_modifying import IMPLEMENTATIONS, FastMemoryBank, SelfModifyingTitans


class HopeBlock(GradientCheckpointingLayer):
    """One Hope layer: mixer then CMS. Shapes: [B, T, D] → [B, T, D]."""

    def __init__(self, config: HopeConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.mixer_norm = HopeRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        if config.mixer == "attention":
            self.mixer = HopeAttention(config, layer_idx)
        else:
            self.mixer = SelfModifyingTitans(config, layer_idx)
        self.cms = ContinuumMemory(config)

    def forward(self, hidden: torch.Tensor, position_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, layer_state=None, cms_deltas: list | None = None):
        """
        Args:
            hidden: [B, T, D].
            position_ids: [B, T] absolute positions (used by attention).
            attention_mask: [B, T_past + T] (attention) or [B, T] (self-modifying), 1 real / 0 padding.
            layer_state: the layer's state before this call (a `MixerState`, or the attention's
                (keys, values)), or `None` at the start of a sequence.
            cms_deltas: the in-context fast weights of the CMS levels (`HopeCache` layer `cms["delta"]`), or `None`.
        Returns:
            hidden [B, T, D] and the layer's state after the call.
        """
        normed = self.mixer_norm(hidden)
        if isinstance(self.mixer, HopeAttention):
            mixed, new_state = self.mixer(normed, position_ids, attention_mask, layer_state)
        else:
            mixed, new_state = self.mixer(normed, attention_mask, layer_state)
        return self.cms(hidden + mixed, cms_deltas), new_state


class HopePreTrainedModel(PreTrainedModel):
    config_class = HopeConfig
    config: HopeConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["HopeBlock"]
    _supports_sdpa = True
    _can_compile_fullgraph = False

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (SelfModifyingTitans, FastMemoryBank)):
            module.init_parameters(std)
        elif isinstance(module, HopeRMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None and not getattr(module.weight, "_is_hf_initialized", False):
                init.zeros_(module.weight[module.padding_idx])

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """`PreTrainedModel.from_pretrained` restricted to safetensors weights: no pickle is ever loaded."""
        if kwargs.get("use_safetensors") is False:
            raise ValueError("use_safetensors must be True for Hope checkpoints (no pickle loading), got False")
        kwargs["use_safetensors"] = True
        return super().from_pretrained(*args, **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        """`PreTrainedModel.save_pretrained` (safetensors, config, the model's own .py files), then a model
        card `README.md` with the config summary, unless the folder holds a README.md not written by hope-hf."""
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            write_model_card(self, save_directory)

    def set_memory_implementation(self, implementation: str) -> None:
        """Run every self-modifying layer with `"chunk"` (default), `"compiled"` (the chunk step under
        `torch.compile`) or the token-by-token `"naive"` reference; also sets `config.memory_implementation`."""
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {sorted(IMPLEMENTATIONS)}, got {implementation!r}")
        self.config.memory_implementation = implementation
        for module in self.modules():
            if isinstance(module, SelfModifyingTitans):
                module.implementation = implementation


class HopeModel(HopePreTrainedModel):
    """Embeddings, `num_hidden_layers` Hope blocks and a final RMSNorm."""

    def __init__(self, config: HopeConfig):
        super().__init__(config)
        config.validate_hope()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(HopeBlock(config, i) for i in range(config.num_hidden_layers))
        self.norm = HopeRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def _check_inputs(self, input_ids, inputs_embeds, attention_mask, past_length: int) -> None:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if input_ids is not None:
            if input_ids.dim() != 2:
                raise ValueError(f"input_ids must be [batch, seq_len], got shape {tuple(input_ids.shape)}")
            if input_ids.is_floating_point():
                raise ValueError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
            if not torch.compiler.is_compiling() and input_ids.numel() > 0:
                low, high = int(input_ids.min()), int(input_ids.max())
                if low < 0 or high >= self.config.vocab_size:
                    bad = low if low < 0 else high
                    raise ValueError(
                        f"input_ids holds token id {bad}, outside the vocabulary [0, {self.config.vocab_size})"
                    )
        elif inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != self.config.hidden_size:
            raise ValueError(
                f"inputs_embeds must be [batch, seq_len, {self.config.hidden_size}], got {tuple(inputs_embeds.shape)}"
            )
        B, T = tuple((input_ids if input_ids is not None else inputs_embeds).shape[:2])
        if attention_mask is not None and tuple(attention_mask.shape) not in ((B, T), (B, past_length + T)):
            expected = f"[batch, seq_len] = {[B, T]}"
            if past_length:
                expected += f" or [batch, past + seq_len] = {[B, past_length + T]}"
            raise ValueError(f"attention_mask must have shape {expected}, got {list(attention_mask.shape)}")

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast | tuple:
        """
        Args:
            input_ids: [B, T] token ids.
            attention_mask: [B, T] (or [B, T_past + T] with a cache, as `generate` passes it), 1 for real
                tokens and 0 for padding, anywhere in a row (left padding for `generate`, right padding
                for lm-eval): padding writes no state and every row gets the outputs it gets alone.
            position_ids: [B, T] RoPE positions (attention mixer only; default: each row's count of real
                tokens before the column, i.e. the column index without padding).
            past_key_values: a `HopeCache` holding the state after the previous tokens; updated in place.
            inputs_embeds: [B, T, D] instead of `input_ids`.
            use_cache: return the state in a `HopeCache` (default: `config.use_cache`; off while training
                with gradient checkpointing).
            output_hidden_states: also return the input of every block and the final normed output.
        Returns:
            `BaseModelOutputWithPast` with `last_hidden_state` [B, T, D] and `past_key_values`.
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        if self.gradient_checkpointing and self.training:
            use_cache = False
        if past_key_values is not None and not isinstance(past_key_values, HopeCache):
            raise ValueError(
                f"past_key_values must be a HopeCache (Hope is recurrent), got {type(past_key_values).__name__}"
            )
        if use_cache and past_key_values is None:
            past_key_values = HopeCache(self.config)
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        self._check_inputs(input_ids, inputs_embeds, attention_mask, past)
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        B, T, _ = inputs_embeds.shape
        if past_key_values is not None:
            attention_mask = past_key_values.full_attention_mask(attention_mask, B, T, inputs_embeds.device)
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None
        if position_ids is None and attention_mask is not None:                       # [B, past + T]
            # count real tokens only, as `generate` does: a padded row gets the positions it has alone
            position_ids = (attention_mask.long().cumsum(dim=1) - 1).clamp_min(0)[:, -T:]
        elif position_ids is None:
            position_ids = torch.arange(past, past + T, device=inputs_embeds.device).unsqueeze(0).expand(B, T)
        # the attention mixer masks past and new columns; the self-modifying mixer only reads the new ones
        mixer_mask = attention_mask
        if attention_mask is not None and self.config.mixer == "self_modifying":
            mixer_mask = attention_mask[:, -T:]

        hidden = inputs_embeds
        all_hidden = () if output_hidden_states else None
        for i, layer in enumerate(self.layers):
            if output_hidden_states:
                all_hidden += (hidden,)
            layer_cache = past_key_values.layers[i] if past_key_values is not None else None
            deltas = layer_cache.cms["delta"] if layer_cache is not None and layer_cache.cms is not None else None
            hidden, state = layer(hidden, position_ids, mixer_mask, layer_cache.state if layer_cache else None, deltas)
            if layer_cache is not None:
                layer_cache.update(state)
        if past_key_values is not None:
            past_key_values.advance(attention_mask, T)
        hidden = self.norm(hidden)
        if output_hidden_states:
            all_hidden += (hidden,)
        output = BaseModelOutputWithPast(last_hidden_state=hidden, past_key_values=past_key_values if use_cache else None,
                                         hidden_states=all_hidden)
        return output if return_dict else output.to_tuple()


class HopeForCausalLM(HopePreTrainedModel, GenerationMixin):
    """Hope with a language-modelling head."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: HopeConfig):
        super().__init__(config)
        self.model = HopeModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        """Hope's state is fast weights, not a key/value list: `generate` must not build a `DynamicCache`.

        `HopeModel.forward` creates the `HopeCache` itself on the first (prefill) call; the inherited
        `prepare_inputs_for_generation` then feeds one new token per step with that cache.
        """
        return False

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    @classmethod
    def from_llama(cls, llama_model, levels=None, **overrides) -> "HopeForCausalLM":
        """Ad-hoc level stacking: a Hope-Attention model from a `LlamaForCausalLM` (see `conversion.py`).

        `levels`: CMS update periods or level dicts (default `(1, 4, 16)`); level 0 holds each layer's MLP,
        the others start silent (`down_proj = 0`), so the logits equal the Llama's.
        """
        from .conversion import hope_from_llama

        return hope_from_llama(llama_model, levels, **overrides)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        in_context_cms: bool | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast | tuple:
        """
        Args:
            labels: [B, T] next-token targets (shifted inside `self.loss_function`; -100 is ignored).
            logits_to_keep: compute logits for the last `logits_to_keep` positions only (0 = all),
                or for the positions of a 1-D index tensor.
            in_context_cms: run the in-context CMS (default: `config.in_context_cms`): levels with `chunk_size > 0`
                step their fast weights in the cache every `chunk_size` tokens (eval mode, `input_ids`, no
                padding; see the decisions below). Off: fast weights already in the cache are used, not updated.
            Other arguments as `HopeModel.forward`; extra kwargs (e.g. `num_items_in_batch`) reach the loss.
        Returns:
            `CausalLMOutputWithPast` with `logits` [B, T_kept, vocab] and `loss` when `labels` is given.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        in_context_cms = self.config.in_context_cms if in_context_cms is None else in_context_cms
        if in_context_cms:
            if inputs_embeds is not None or output_hidden_states:
                raise ValueError("in-context CMS takes input_ids (the chunk loss reads the next tokens), "
                                 "without inputs_embeds or output_hidden_states")
            if position_ids is not None and input_ids is not None:
                past = past_key_values.get_seq_length() if past_key_values is not None else 0
                default = torch.arange(past, past + input_ids.shape[1], device=position_ids.device)
                if not bool((position_ids == default).all()):
                    raise ValueError("in-context CMS uses the default position_ids (the column index); got others")
            logits, cache = self._in_context_logits(input_ids, attention_mask, past_key_values)
            use_cache = use_cache if use_cache is not None else self.config.use_cache
            outputs = BaseModelOutputWithPast(past_key_values=cache if use_cache else None)
            logits = slice_logits_to_keep(logits, logits_to_keep)
        else:
            if isinstance(past_key_values, HopeCache) and past_key_values.segment_ids is not None:
                raise ValueError(
                    f"in_context_cms=False on a cache inside an in-context segment ({past_key_values.segment_ids.shape[1]}"
                    " tokens since the last in-context step): its tokens would be missing when the segment completes; "
                    "continue with in_context_cms=True up to the next step boundary first"
                )
            outputs = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=past_key_values,
                inputs_embeds=inputs_embeds,
                use_cache=use_cache,
                output_hidden_states=output_hidden_states,
                return_dict=True,
            )
            logits = self.lm_head(slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep))
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        output = CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=outputs.past_key_values,
                                        hidden_states=outputs.hidden_states)
        return output if return_dict else output.to_tuple()

    # --- in-context CMS (HOPE.md §4, Eq. 71): the driver of the fast weights' steps ----------------------------
    #
    # Decisions (docs/FAITHFULNESS.md §4):
    # - Step boundaries are absolute positions: level ℓ steps after every token whose 1-based position is a
    #   multiple of its `chunk_size` c_ℓ (all rows share positions: padding is refused). The tokens between
    #   two consecutive steps of any level form a *segment*; every ΔW is constant inside a segment.
    # - The loss of a segment is the summed cross-entropy of its next-token pairs (t, t+1), both tokens in the
    #   segment, summed over rows (row b's ΔW_b only sees row b's loss). Level ℓ steps on the sum of the
    #   segment gradients of its chunk: with one in-context level that is exactly its chunk's loss; with
    #   several, the pairs that straddle a faster level's step are not counted.
    # - The gradient is taken through the segment's own computation, from the (detached) state at the segment
    #   start: one forward of the whole segment, whatever the calls it arrived in. A call that ends inside a
    #   segment runs without gradients and keeps the segment's tokens and start state in the cache; the call
    #   that completes it re-runs the segment from its start with gradients. So the result does not depend on
    #   how a stream is split into calls, and token-by-token decoding equals one forward.
    # - First order: the step is not differentiated; outputs carry no graph; eval mode only.

    def _in_context_logits(self, input_ids: torch.LongTensor | None, attention_mask: torch.Tensor | None,
                           cache: HopeCache | None) -> tuple[torch.Tensor, HopeCache]:
        """Online forward with in-context CMS: logits [B, T, V] (no graph) and the cache after the call."""
        if not self.config.in_context_levels:
            raise ValueError("in_context_cms=True needs a CMS level with chunk_size > 0, got chunk sizes "
                             f"{[level['chunk_size'] for level in self.config.cms_levels]}")
        if self.training:
            raise ValueError("in-context CMS runs in eval mode only (the outer loop does not differentiate through "
                             "the in-context steps): call model.eval(), or pass in_context_cms=False to train")
        if input_ids is None:
            raise ValueError("in-context CMS needs input_ids (the chunk loss reads the next tokens), got None")
        if cache is not None and not isinstance(cache, HopeCache):
            raise ValueError(f"past_key_values must be a HopeCache (Hope is recurrent), got {type(cache).__name__}")
        cache = cache if cache is not None else HopeCache(self.config)
        padded = attention_mask is not None and not bool(attention_mask.all())
        if padded or cache.attention_mask is not None:
            raise ValueError("in-context CMS does not support padding: attention_mask must be all ones (each row's "
                             "chunk boundaries are absolute positions shared by the batch)")
        self._init_fast_weights(cache, input_ids.shape[0], input_ids.device)
        logits, start, T = [], 0, input_ids.shape[1]
        while start < T:
            boundary = self._next_step_boundary(cache.seen_tokens)
            end = min(T, start + boundary - cache.seen_tokens)
            piece = input_ids[:, start:end]
            if cache.seen_tokens + piece.shape[1] == boundary:
                logits.append(self._complete_segment(piece, cache))
            else:
                logits.append(self._extend_segment(piece, cache))
            start = end
        if not logits:
            return input_ids.new_zeros(input_ids.shape[0], 0, self.config.vocab_size, dtype=self.lm_head.weight.dtype), cache
        return torch.cat(logits, dim=1), cache

    def _next_step_boundary(self, position: int) -> int:
        """The first position > `position` where some in-context level steps."""
        sizes = [self.config.cms_levels[j]["chunk_size"] for j in self.config.in_context_levels]
        return min((position // c + 1) * c for c in sizes)

    def _init_fast_weights(self, cache: HopeCache, batch_size: int, device: torch.device) -> None:
        """ΔW = 0 and summed gradients = 0 for every in-context level, on the first in-context call of a cache."""
        dtype = torch.promote_types(self.lm_head.weight.dtype, torch.float32)
        for block, layer in zip(self.model.layers, cache.layers, strict=True):
            if layer.cms is not None:
                rows = next(d[0].shape[0] for d in layer.cms["delta"] if d is not None)
                if rows != batch_size:
                    raise ValueError(f"input_ids has batch size {batch_size} but the cache's in-context fast weights "
                                     f"hold {rows} rows")
                continue
            zeros = [block.cms.levels[j].zero_delta(batch_size, device, dtype) if j in self.config.in_context_levels
                     else None for j in range(len(block.cms.levels))]
            layer.cms = {"delta": zeros, "grad": [None if z is None else tuple(t.clone() for t in z) for z in zeros]}

    def _segment_logits(self, ids: torch.LongTensor, cache: HopeCache) -> torch.Tensor:
        hidden = self.model(input_ids=ids, past_key_values=cache, use_cache=True, return_dict=True).last_hidden_state
        return self.lm_head(hidden)

    def _extend_segment(self, piece: torch.LongTensor, cache: HopeCache) -> torch.Tensor:
        """A call that stops inside a segment: plain outputs; the segment's tokens and start are remembered."""
        if cache.segment_ids is None:
            cache.segment_start = [layer.state for layer in cache.layers]
            cache.segment_ids = piece
        else:
            cache.segment_ids = torch.cat([cache.segment_ids, piece], dim=1)
        with torch.no_grad():
            return self._segment_logits(piece, cache)

    def _complete_segment(self, piece: torch.LongTensor, cache: HopeCache) -> torch.Tensor:
        """The call that reaches a step boundary: (re-)run the whole segment from its start with gradients, add
        its gradient to every in-context level, step the levels due here, and return the logits of `piece`."""
        ids = piece
        if cache.segment_ids is not None:
            ids = torch.cat([cache.segment_ids, piece], dim=1)
            for layer, state in zip(cache.layers, cache.segment_start, strict=True):
                layer.restore(state)
            cache.seen_tokens -= cache.segment_ids.shape[1]
            cache.segment_ids = cache.segment_start = None
        levels = self.config.in_context_levels
        leaves = []
        for layer in cache.layers:
            for j in levels:
                layer.cms["delta"][j] = tuple(d.detach().requires_grad_(True) for d in layer.cms["delta"][j])
                leaves += layer.cms["delta"][j]
        with torch.enable_grad():
            logits = self._segment_logits(ids, cache)
            if ids.shape[1] > 1:
                loss = nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(),
                                                   reduction="sum")
                grads = torch.autograd.grad(loss, leaves, allow_unused=True)
            else:
                grads = [None] * len(leaves)
        grads = iter(torch.zeros_like(leaf) if g is None else g for leaf, g in zip(leaves, grads))
        position = cache.seen_tokens
        for layer in cache.layers:
            for j in levels:
                delta = layer.cms["delta"][j]
                grad = tuple(acc + next(grads) for acc in layer.cms["grad"][j])
                if position % self.config.cms_levels[j]["chunk_size"] == 0:
                    delta = in_context_step(delta, grad, self.config.cms_levels[j]["lr"])
                    grad = tuple(torch.zeros_like(g) for g in grad)
                layer.cms["delta"][j] = tuple(d.detach() for d in delta)
                layer.cms["grad"][j] = tuple(g.detach() for g in grad)
        cache.detach()
        return logits[:, ids.shape[1] - piece.shape[1]:].detach()

    @torch.no_grad()
    def consolidate_cms(self, cache: HopeCache, level: int, row: int | None = None) -> None:
        """Fold the in-context fast weights of CMS level `level` (every layer) into its parameters, and zero them in
        the cache: `W ← W + ΔW_row` (`row=None`: the mean over rows; exact continuation for a batch of 1).

        The one place where test-time learning becomes permanent (HOPE.md §4).
        """
        if level not in self.config.in_context_levels:
            raise ValueError(f"level must be an in-context CMS level (chunk_size > 0), one of "
                             f"{self.config.in_context_levels}, got {level!r}")
        if cache.layers[0].cms is None:
            raise ValueError("the cache holds no in-context fast weights yet (run an in-context forward first)")
        for block, layer in zip(self.model.layers, cache.layers, strict=True):
            delta = layer.cms["delta"][level]
            if row is not None and not 0 <= row < delta[0].shape[0]:
                raise ValueError(f"row must be in [0, {delta[0].shape[0]}), got {row!r}")
            consolidate_level(block.cms.levels[level], delta, row)
            layer.cms["delta"][level] = tuple(torch.zeros_like(d) for d in delta)


__all__ = ["HopeBlock", "HopeForCausalLM", "HopeModel", "HopePreTrainedModel"]
