"""Same-size models: a `LlamaConfig` with the parameter count of a given `HopeConfig`, and the CMS width at which a
Hope variant holds a given count."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from .configuration_hope import HopeConfig
from .modeling_hope import HopeForCausalLM


def count_parameters(model: torch.nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def meta_parameter_count(config: HopeConfig | LlamaConfig) -> int:
    """Parameters of the `HopeForCausalLM` or `LlamaForCausalLM` that `config` builds, counted on the meta device
    (nothing is allocated)."""
    with torch.device("meta"):
        model = HopeForCausalLM(config) if isinstance(config, HopeConfig) else LlamaForCausalLM(config)
    return count_parameters(model)


def with_cms_width(config: HopeConfig, width: int) -> HopeConfig:
    """`config` with every CMS level `width` wide (update periods, in-context chunk sizes and rates kept)."""
    levels = [{**level, "intermediate_size": width} for level in config.cms_levels]
    return HopeConfig(**{**config.to_diff_dict(), "cms_levels": levels})


def cms_width_for(config: HopeConfig, parameters: int) -> int:
    """The common width of `config`'s CMS levels at which the model holds `parameters`, to the nearest unit (the count
    is linear in it: solved from widths 1 and 2). Below 1 when even width 1 holds more."""
    one, two = (meta_parameter_count(with_cms_width(config, w)) for w in (1, 2))
    return round(1 + (parameters - one) / (two - one))


def matched_llama_config(config: HopeConfig, **overrides) -> LlamaConfig:
    """A Llama with the same width, depth, heads, vocabulary and tying as `config`, whose MLP width is
    chosen so that its parameter count matches the Hope model's as closely as possible.
    """
    target = meta_parameter_count(config)
    kwargs = dict(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads,
        rms_norm_eps=config.rms_norm_eps,
        tie_word_embeddings=config.tie_word_embeddings,
        max_position_embeddings=max(config.max_position_embeddings, 8192),
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        initializer_range=config.initializer_range,
    )
    kwargs.update(overrides)
    base = meta_parameter_count(LlamaConfig(intermediate_size=1, **kwargs))
    per_unit = 3 * config.hidden_size * config.num_hidden_layers      # gate, up, down per MLP unit
    intermediate = max(1, round((target - base) / per_unit) + 1)
    return LlamaConfig(intermediate_size=intermediate, **kwargs)


__all__ = ["cms_width_for", "count_parameters", "matched_llama_config", "meta_parameter_count", "with_cms_width"]
