"""Ad-hoc level stacking (HOPE.md §4, paper §7.3): turn a pre-trained Llama into a Hope-Attention model.

The Llama's embeddings, attention, norms and head are copied unchanged; each layer's MLP becomes
CMS level 0 of that layer (its `post_attention_layernorm` becomes the level's norm). Further levels
(slower `update_period`s, optional in-context `chunk_size`/`lr`) start as copies of the same MLP with
`down_proj` set to zero, so they add nothing until they learn: the converted model reproduces the
Llama's logits (the test pins it), and with every in-context learning rate at 0 it stays that model.

    Llama block:  h = x + attn(norm₁(x));   y = h + mlp(norm₂(h))
    Hope block:   h = x + attn(mixer_norm(x));   y = level_K(… level_1(level_0(h)))
                  level_j(x) = x + down_j(silu(gate_j(n)) ⊙ up_j(n)),  n = norm_j(x)
    With level_0 = (norm₂, mlp) and down_j = 0 for j ≥ 1, y is the Llama block's output.

Usage:
    hope = HopeForCausalLM.from_llama(llama, levels=[1, 4, 16])        # update periods of the levels
    hope = hope_from_llama(llama, levels=[{"update_period": 1}, {"update_period": 8, "chunk_size": 64, "lr": 1e-3}])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .configuration_hope import HopeConfig
from .modeling_hope import HopeForCausalLM

LevelSpec = int | dict[str, Any]
DEFAULT_LEVELS: tuple[int, ...] = (1, 4, 16)


def _levels(levels: Sequence[LevelSpec] | None, intermediate_size: int) -> list[dict[str, Any]]:
    """CMS level dicts from update periods (ints) or partial level dicts; every level is the MLP's width."""
    specs = DEFAULT_LEVELS if levels is None else levels
    if isinstance(specs, (int, dict)) or len(specs) == 0:
        raise ValueError(f"levels must be a non-empty list of update periods or level dicts, got {levels!r}")
    out = []
    for spec in specs:
        level = {"update_period": spec} if isinstance(spec, int) else dict(spec)
        if level.setdefault("intermediate_size", intermediate_size) != intermediate_size:
            raise ValueError(
                f"levels: every level is initialised from the Llama MLP of width {intermediate_size}, "
                f"got intermediate_size={level['intermediate_size']}"
            )
        out.append({"intermediate_size": intermediate_size, "update_period": level.get("update_period", 1),
                    "chunk_size": level.get("chunk_size", 0), "lr": level.get("lr", 0.0)})
    return out


def hope_config_from_llama(llama_config, levels: Sequence[LevelSpec] | None = None, **overrides) -> HopeConfig:
    """The `HopeConfig` (mixer="attention") of a `LlamaConfig`; raises `ValueError` for what Hope cannot copy.

    Args:
        llama_config: a `transformers.LlamaConfig`.
        levels: CMS levels as update periods or dicts (`update_period`, `chunk_size`, `lr`);
            default `(1, 4, 16)`. Level 0 holds the Llama MLP.
        overrides: other `HopeConfig` fields.
    """
    c = llama_config

    def refuse(field: str, value, why: str):
        raise ValueError(f"cannot convert this Llama: {field}={value!r} ({why})")

    if c.hidden_act != "silu":
        refuse("hidden_act", c.hidden_act, "Hope's CMS levels are SwiGLU with SiLU")
    if getattr(c, "mlp_bias", False):
        refuse("mlp_bias", c.mlp_bias, "CMS levels have no biases")
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    if head_dim * c.num_attention_heads != c.hidden_size:
        refuse("head_dim", head_dim, f"Hope's head size is hidden_size / heads = {c.hidden_size // c.num_attention_heads}")
    rope = dict(getattr(c, "rope_parameters", None) or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        refuse("rope_parameters.rope_type", rope_type, "only plain RoPE is supported")
    rope_theta = rope.get("rope_theta", getattr(c, "rope_theta", 10000.0))
    kwargs = dict(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        num_hidden_layers=c.num_hidden_layers,
        num_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads or c.num_attention_heads,
        mixer="attention",
        attention_bias=bool(c.attention_bias),
        cms_levels=_levels(levels, c.intermediate_size),
        rms_norm_eps=c.rms_norm_eps,
        max_position_embeddings=c.max_position_embeddings,
        rope_theta=float(rope_theta),
        initializer_range=c.initializer_range,
        tie_word_embeddings=bool(c.tie_word_embeddings),
        bos_token_id=c.bos_token_id,
        eos_token_id=c.eos_token_id,
        pad_token_id=c.pad_token_id,
    )
    kwargs.update(overrides)
    return HopeConfig(**kwargs)


def llama_to_hope_state_dict(llama_state: dict[str, torch.Tensor], config: HopeConfig) -> dict[str, torch.Tensor]:
    """Rename a `LlamaForCausalLM` state dict to `HopeForCausalLM` names (HOPE.md §4 names).

    Levels j ≥ 1 of every layer get copies of the layer's MLP with `down_proj.weight` zeroed. Every
    tensor is copied: the Hope model shares no storage with the Llama (or between its levels).
    """
    out = {}
    for name, tensor in llama_state.items():
        if name.startswith("model.layers."):
            _, _, i, rest = name.split(".", 3)
            prefix = f"model.layers.{i}."
            if rest.startswith("self_attn."):
                out[prefix + "mixer." + rest[len("self_attn."):]] = tensor
            elif rest.startswith("input_layernorm."):
                out[prefix + "mixer_norm." + rest[len("input_layernorm."):]] = tensor
            elif rest.startswith("post_attention_layernorm."):
                for j in range(len(config.cms_levels)):
                    out[f"{prefix}cms.levels.{j}.norm." + rest[len("post_attention_layernorm."):]] = tensor.clone()
            elif rest.startswith("mlp."):
                for j in range(len(config.cms_levels)):
                    zero = j > 0 and rest == "mlp.down_proj.weight"
                    out[f"{prefix}cms.levels.{j}." + rest[len("mlp."):]] = (
                        torch.zeros_like(tensor) if zero else tensor.clone())
            else:
                raise ValueError(f"cannot convert this Llama: unexpected parameter {name!r}")
        elif name.startswith("model.rotary_emb."):
            continue                                                  # RoPE buffers are recomputed
        else:
            out[name] = tensor.clone()                                # embed_tokens, norm, lm_head
    return out


def hope_from_llama(llama_model, levels: Sequence[LevelSpec] | None = None, **overrides) -> HopeForCausalLM:
    """A Hope-Attention `HopeForCausalLM` whose attention, embeddings and CMS level 0 come from `llama_model`.

    Args:
        llama_model: a `LlamaForCausalLM` (any dtype; the result has the same dtype and device).
        levels: see `hope_config_from_llama`.
    Returns:
        the converted model; its logits equal the Llama's (float32: within 1e-5, the test pins it).
    """
    config = hope_config_from_llama(llama_model.config, levels, **overrides)
    weight = llama_model.get_input_embeddings().weight
    with torch.device("meta"):
        model = HopeForCausalLM(config)
    state = llama_to_hope_state_dict(llama_model.state_dict(), config)
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    expected = set(model.state_dict()) - ({"lm_head.weight"} if config.tie_word_embeddings else set())
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise ValueError(f"cannot convert this Llama: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
    model.load_state_dict(state, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.tie_weights()
    model.to(device=weight.device, dtype=weight.dtype)
    return model.train(llama_model.training)


__all__ = ["hope_config_from_llama", "hope_from_llama", "llama_to_hope_state_dict"]
