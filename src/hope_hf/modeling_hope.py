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
from .cache import HopeCache, pick_rows
from .cms import ContinuumMemory, consolidate_level, in_context_step
from .configuration_hope import HopeConfig
from .model_card import write_model_card
from .normalization import HopeRMSNorm
from .self_modifying import IMPLEMENTATIONS, FastMemoryBank, SelfModifyingTitans, pack_order


# transformers 5.24 renamed the cache everywhere from `past_key_values` to `cache`: `generate` passes `cache=` to
# `forward` and reads `outputs["cache"]`, and the output classes declare a `cache` field (`past_key_values` is kept
# only as a deprecated alias). Up to 5.23 both are `past_key_values`. The forwards below take either name, and the
# outputs are built with the field the installed version declares, so a cache returned by one step reaches the next.
CACHE_FIELD = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"


def output_cache(outputs):
    """The cache of a model output (any transformers output with a cache, e.g. a `generate` result), read under the
    installed version's field name: no deprecation warning on >= 5.24, no `AttributeError` on <= 5.23."""
    return getattr(outputs, CACHE_FIELD)


def cache_argument(cache) -> dict:
    """`{name: cache}` with the installed version's argument name, for `model(**cache_argument(c))` and `generate` of
    models that take only one of the two names (a Llama on 5.23 ignores `cache=`; on 5.24+ it warns on the other)."""
    return {CACHE_FIELD: cache}


def resolve_cache_argument(past_key_values, cache):
    """The cache a forward was given, under the old name `past_key_values` or the new `cache` (not both)."""
    if past_key_values is not None and cache is not None and past_key_values is not cache:
        raise ValueError("pass the cache as `cache` or as `past_key_values`, not both")
    return cache if cache is not None else past_key_values


def segment_loss(logits: torch.Tensor, ids: torch.LongTensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The in-context loss of segments: Σ over rows and over consecutive real tokens (t, t') of a row of
    CE(logits_t, ids_t'), in float32. logits [S, n, V]; ids, mask [S, n] (`mask` 1 real, `None`: all real)."""
    if mask is not None and not bool(mask.all()):          # consecutive real tokens: pack them to the front
        order = pack_order(mask)
        ids, logits = ids.gather(1, order), logits.gather(1, order[..., None].expand_as(logits))
        valid = torch.arange(1, ids.shape[1], device=ids.device)[None, :] < mask.long().sum(dim=1, keepdim=True)
    else:
        valid = torch.ones(ids.shape[0], ids.shape[1] - 1, dtype=torch.bool, device=ids.device)
    pairs = nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), ids[:, 1:], reduction="none")
    return pairs[valid].sum()


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
        cache=None,
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
                `cache` is the same argument under its transformers >= 5.24 name (`generate` passes that one).
            inputs_embeds: [B, T, D] instead of `input_ids`.
            use_cache: return the state in a `HopeCache` (default: `config.use_cache`; off while training
                with gradient checkpointing).
            output_hidden_states: also return the input of every block and the final normed output.
        Returns:
            `BaseModelOutputWithPast` with `last_hidden_state` [B, T, D] and the cache (`past_key_values`; the
            field is `cache` from transformers 5.24, with `past_key_values` as its alias).
        """
        past_key_values = resolve_cache_argument(past_key_values, cache)
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
        output = BaseModelOutputWithPast(last_hidden_state=hidden, hidden_states=all_hidden,
                                         **{CACHE_FIELD: past_key_values if use_cache else None})
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
        cache=None,
        **kwargs,
    ) -> CausalLMOutputWithPast | tuple:
        """
        Args:
            labels: [B, T] next-token targets (shifted inside `self.loss_function`; -100 is ignored).
            logits_to_keep: compute logits for the last `logits_to_keep` positions only (0 = all),
                or for the positions of a 1-D index tensor.
            in_context_cms: run the in-context CMS (default: `config.in_context_cms`): levels with `chunk_size > 0`
                step each row's fast weights in the cache every `chunk_size` real tokens of the row (`input_ids`;
                padding anywhere; training mode trains first order; see the decisions below). Off: fast weights
                already in the cache are used, not updated.
            Other arguments as `HopeModel.forward`; extra kwargs (e.g. `num_items_in_batch`) reach the loss.
        Returns:
            `CausalLMOutputWithPast` with `logits` [B, T_kept, vocab] and `loss` when `labels` is given.
        """
        past_key_values = resolve_cache_argument(past_key_values, cache)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        in_context_cms = self.config.in_context_cms if in_context_cms is None else in_context_cms
        if in_context_cms:
            if inputs_embeds is not None or output_hidden_states:
                raise ValueError("in-context CMS takes input_ids (the chunk loss reads the next tokens), "
                                 "without inputs_embeds or output_hidden_states")
            if position_ids is not None and input_ids is not None:
                self._check_default_positions(position_ids, input_ids, attention_mask, past_key_values)
            logits, stepped_cache = self._in_context_logits(input_ids, attention_mask, past_key_values)
            use_cache = use_cache if use_cache is not None else self.config.use_cache
            outputs = BaseModelOutputWithPast(**{CACHE_FIELD: stepped_cache if use_cache else None})
            logits = slice_logits_to_keep(logits, logits_to_keep)
        else:
            if isinstance(past_key_values, HopeCache) and past_key_values.segment_ids is not None:
                rows = past_key_values.segment_ids.shape[0]
                if bool(past_key_values.open_segment_rows(rows, past_key_values.segment_ids.device).any()):
                    raise ValueError(
                        "in_context_cms=False on a cache inside an in-context segment (some row has tokens since its "
                        "last in-context step): they would be missing when the segment completes; continue with "
                        "in_context_cms=True up to the next step boundary first"
                    )
                # at a step: the pending last pairs would take their targets from tokens not learned from; dropped
                past_key_values.resolve_pending(torch.ones(rows, dtype=torch.bool, device=past_key_values.segment_ids.device))
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
        output = CausalLMOutputWithPast(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                        **{CACHE_FIELD: output_cache(outputs)})
        return output if return_dict else output.to_tuple()

    # --- in-context CMS (HOPE.md §4, Eq. 71): the driver of the fast weights' steps ----------------------------
    #
    # Decisions (docs/FAITHFULNESS.md §4):
    # - Step boundaries are each row's real-token positions: level ℓ steps row b's ΔW_b after the row's real
    #   token whose 1-based position is a multiple of its `chunk_size` c_ℓ. Padding counts for nothing, so the
    #   rows of a padded batch step at different columns, each where it would step alone. A row's real tokens
    #   between two consecutive steps of any in-context level form a *segment*; ΔW_b is constant inside it.
    # - Level ℓ's chunk loss is the summed cross-entropy of the pairs (t, t') of consecutive real tokens both in
    #   the chunk; row b's ΔW_b only sees row b's loss. A pair's gradient is taken through the computation of
    #   the segment of t, from the detached state at that segment's start, and added to ℓ's summed gradient;
    #   ℓ steps on the sum (first order). A pair inside a segment counts for every level; the pair (last token
    #   of a segment, next token) counts for the levels that do not step there: its target arrives after the
    #   segment closed, so the segment stays *pending* (its tokens, start state and ΔW kept) until it does.
    # - A call runs as the plain forward does (same outputs, same cache) with the current ΔW, cut at the
    #   columns where some row steps. Each row's open segment is kept in the cache; when it completes, it is
    #   re-run from its start with the row's ΔW as leaves for the gradient (and a pending one once more, for its
    #   last pair). So the result does not depend on how a stream is split into calls or padded, and
    #   token-by-token decoding equals one forward.
    # - First order: ΔW enters every forward as a constant and the step is not differentiated. In training
    #   mode the outputs carry the usual graph into the parameters, so the outer loop can train with it on.

    def _in_context_logits(self, input_ids: torch.LongTensor | None, attention_mask: torch.Tensor | None,
                           cache: HopeCache | None) -> tuple[torch.Tensor, HopeCache]:
        """Online forward with in-context CMS: logits [B, T, V] and the cache after the call.

        `attention_mask`: [B, T] or [B, T_past + T] (as `generate` passes it), 1 real / 0 padding, anywhere.
        """
        if not self.config.in_context_levels:
            raise ValueError("in_context_cms=True needs a CMS level with chunk_size > 0, got chunk sizes "
                             f"{[level['chunk_size'] for level in self.config.cms_levels]}")
        if self.training and self.model.gradient_checkpointing:
            raise ValueError("in-context CMS does not run with gradient checkpointing (a segment's gradient is "
                             "taken with torch.autograd.grad): disable it, or pass in_context_cms=False")
        if input_ids is None:
            raise ValueError("in-context CMS needs input_ids (the chunk loss reads the next tokens), got None")
        if cache is not None and not isinstance(cache, HopeCache):
            raise ValueError(f"past_key_values must be a HopeCache (Hope is recurrent), got {type(cache).__name__}")
        cache = cache if cache is not None else HopeCache(self.config)
        self.model._check_inputs(input_ids, None, attention_mask, cache.get_seq_length())
        B, T = input_ids.shape
        mask = None if attention_mask is None else attention_mask[:, -T:].long()        # the new columns
        if mask is not None and bool(mask.all()):
            mask = None
        self._init_fast_weights(cache, B, input_ids.device)
        real = torch.ones_like(input_ids) if mask is None else mask
        positions = cache.real_tokens(B, input_ids.device)[:, None] + real.cumsum(dim=1)   # [B, T] after each column
        steps = real.bool() & self._is_step(positions)                                     # [B, T] row steps here
        ends = (steps.any(dim=0).nonzero().flatten() + 1).tolist()
        if not ends or ends[-1] != T:
            ends.append(T)
        logits, start = [], 0
        for end in ends:
            if end == start:                                                                # T = 0
                continue
            ids, piece_mask = input_ids[:, start:end], None if mask is None else mask[:, start:end]
            self._resolve_pending(cache, ids, piece_mask)
            cache.extend_segments(ids, piece_mask, lambda: self._current_states(cache, B, input_ids.device))
            hidden = self.model(input_ids=ids, attention_mask=piece_mask, past_key_values=cache, use_cache=True,
                                return_dict=True).last_hidden_state
            logits.append(self.lm_head(hidden))
            if bool(steps[:, end - 1].any()):
                self._step_rows(cache, steps[:, end - 1], positions[:, end - 1])
            start = end
        if not logits:
            return input_ids.new_zeros(B, 0, self.config.vocab_size, dtype=self.lm_head.weight.dtype), cache
        return torch.cat(logits, dim=1), cache

    @staticmethod
    def _check_default_positions(position_ids: torch.Tensor, input_ids: torch.LongTensor,
                                 attention_mask: torch.Tensor | None, cache: HopeCache | None) -> None:
        """In-context CMS counts real tokens: `position_ids` must be the default ones at every real column (each
        row's count of real tokens before it, as `generate` passes them; padded columns are not checked)."""
        B, T = input_ids.shape
        full = attention_mask
        if cache is not None:
            full = cache.full_attention_mask(attention_mask, B, T, input_ids.device)
        if full is None:
            past = cache.get_seq_length() if cache is not None else 0
            default = torch.arange(past, past + T, device=input_ids.device).expand(B, T)
            real = torch.ones(B, T, dtype=torch.bool, device=input_ids.device)
        else:
            default, real = (full.long().cumsum(dim=1) - 1)[:, -T:], full[:, -T:].bool()
        if not bool((position_ids.expand(B, T) == default)[real].all()):
            raise ValueError("in-context CMS uses the default position_ids (each row's count of real tokens before "
                             "the column); got others")

    def _is_step(self, positions: torch.Tensor) -> torch.Tensor:
        """Bool, same shape as `positions` (1-based real-token counts): some in-context level steps there."""
        sizes = [self.config.cms_levels[j]["chunk_size"] for j in self.config.in_context_levels]
        return torch.stack([positions % c == 0 for c in sizes]).any(dim=0)

    def _current_states(self, cache: HopeCache, batch_size: int, device: torch.device) -> list:
        """Each layer's state now, detached (the initial state on an empty cache; `None` for attention layers)."""
        states = []
        for block, layer in zip(self.model.layers, cache.layers, strict=True):
            if isinstance(block.mixer, HopeAttention):
                states.append(None)
                continue
            state = layer.state
            if state is None:
                state = block.mixer.initial_state(batch_size, device, self.model.embed_tokens.weight.dtype)
            states.append(state.map_tensors(torch.Tensor.detach))
        return states

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
            layer.cms = {key: [None if z is None else tuple(t.clone() for t in z) for z in zeros]
                         for key in ("delta", "grad", "pending_delta")}

    def _step_rows(self, cache: HopeCache, rows: torch.Tensor, positions: torch.Tensor) -> None:
        """Rows [B] (bool) whose open segment just completed, at real positions `positions` [B]: re-run each one's
        segment from its start with its ΔW as leaves, add the gradient of its loss to every in-context level,
        and step the levels due at the row's position (`ΔW ← ΔW − lr · summed gradient`, the sum restarts at 0).
        A row where some level is not due keeps the segment as its pending segment, with the ΔW it ran with."""
        index = rows.nonzero().flatten()
        levels = self.config.in_context_levels
        grads = self._segment_gradients(cache, index, pending=False, loss_fn=segment_loss)
        due = {j: rows & (positions % self.config.cms_levels[j]["chunk_size"] == 0) for j in levels}
        self._add_gradients(cache, index, grads, {j: rows for j in levels})
        pending = rows & ~torch.stack([due[j] for j in levels]).all(dim=0)
        if bool(pending.any()):
            flags = torch.zeros(rows.shape[0], len(self.config.cms_levels), dtype=torch.bool, device=rows.device)
            for j in levels:
                flags[:, j] = ~due[j]
            old = cache.pending_levels if cache.pending_levels is not None else flags
            cache.pending_levels = pick_rows(pending, flags, old)
        for layer in cache.layers:
            for j in levels:
                delta, summed = layer.cms["delta"][j], layer.cms["grad"][j]
                layer.cms["pending_delta"][j] = tuple(pick_rows(pending, d, p) for d, p in
                                                      zip(delta, layer.cms["pending_delta"][j], strict=True))
                stepped = in_context_step(delta, summed, self.config.cms_levels[j]["lr"])
                layer.cms["delta"][j] = tuple(pick_rows(due[j], new, old) for new, old in
                                              zip(stepped, delta, strict=True))
                layer.cms["grad"][j] = tuple(pick_rows(due[j], torch.zeros_like(g), g) for g in summed)
        cache.close_segments(rows, pending)

    def _resolve_pending(self, cache: HopeCache, ids: torch.LongTensor, mask: torch.Tensor | None) -> None:
        """Before the call's columns `ids` [B, T] (`mask` [B, T]): for every row with a pending segment and a real
        token here, add the gradient of the pair (the segment's last token, this first real token) to the levels
        that still count it (`pending_levels`), through the segment re-run with the ΔW it ran with."""
        real = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
        rows = cache.pending_segment_rows(ids.shape[0], ids.device) & real.any(dim=1)
        if not bool(rows.any()):
            return
        index = rows.nonzero().flatten()
        targets = ids[index].gather(1, real[index].long().argmax(dim=1, keepdim=True)).squeeze(1)   # first real

        def last_pair_loss(logits, segment_ids, segment_mask):
            last = segment_mask.shape[1] - 1 - segment_mask.flip(1).argmax(dim=1)         # last real column
            return nn.functional.cross_entropy(logits[torch.arange(len(last)), last].float(), targets, reduction="sum")

        grads = self._segment_gradients(cache, index, pending=True, loss_fn=last_pair_loss)
        self._add_gradients(cache, index, grads, {j: rows & cache.pending_levels[:, j]
                                                  for j in self.config.in_context_levels})
        cache.resolve_pending(rows)

    def _segment_gradients(self, cache: HopeCache, index: torch.Tensor, pending: bool, loss_fn) -> list:
        """Re-run the open (or pending) segment of rows `index` [S] from its start, with the ΔW it runs with as
        leaves; returns per layer a dict {level: (g_gate, g_up, g_down)} of ∂ loss_fn(logits, ids, mask)/∂ΔW."""
        start = cache.segment_start_cache(self.config, index, pending)
        ids = cache.segment_ids[index]
        mask = (cache.segment_mask[index] == (cache.PENDING if pending else cache.OPEN)).long()
        levels, key = self.config.in_context_levels, "pending_delta" if pending else "delta"
        leaves = []
        for layer, target in zip(cache.layers, start.layers, strict=True):
            delta = [None] * len(self.config.cms_levels)
            for j in levels:
                delta[j] = tuple(d[index].detach().requires_grad_(True) for d in layer.cms[key][j])
                leaves += delta[j]
            target.cms = {"delta": delta}
        with torch.enable_grad():
            hidden = self.model(input_ids=ids, attention_mask=mask, past_key_values=start, use_cache=True,
                                return_dict=True).last_hidden_state
            loss = loss_fn(self.lm_head(hidden), ids, mask)
            grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        grads = iter(torch.zeros_like(leaf) if g is None else g for leaf, g in zip(leaves, grads, strict=True))
        return [{j: tuple(next(grads) for _ in range(3)) for j in levels} for _ in cache.layers]

    @staticmethod
    def _add_gradients(cache: HopeCache, index: torch.Tensor, grads: list, rows_of_level: dict) -> None:
        """Add the gradients of rows `index` [S] (`_segment_gradients`) to the summed gradients of each level j,
        for the rows `rows_of_level[j]` [B] bool only."""
        for layer, layer_grads in zip(cache.layers, grads, strict=True):
            for j, level_grads in layer_grads.items():
                summed = []
                for acc, g in zip(layer.cms["grad"][j], level_grads, strict=True):
                    full = torch.zeros_like(acc)
                    full[index] = g.to(acc.dtype)
                    summed.append((acc + full * rows_of_level[j].view(-1, 1, 1).to(acc.dtype)).detach())
                layer.cms["grad"][j] = tuple(summed)

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
            folded = consolidate_level(block.cms.levels[level], delta, row)
            layer.cms["delta"][level] = tuple(torch.zeros_like(d) for d in delta)
            # a pending segment re-runs with W + ΔW_pending: keep that sum for the new W
            layer.cms["pending_delta"][level] = tuple(p - f for p, f in zip(layer.cms["pending_delta"][level], folded,
                                                                            strict=True))


__all__ = ["HopeBlock", "HopeForCausalLM", "HopeModel", "HopePreTrainedModel"]
