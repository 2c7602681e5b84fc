"""Configuration of Hope, the self-modifying continual learner of *Nested Learning* (HOPE.md §3-4).

This file is one of the model files carried by Hub checkpoints: it imports only torch, transformers
and its siblings (by relative import).
"""

from __future__ import annotations

import math
from typing import Any

from transformers import PreTrainedConfig

MIXERS = ("self_modifying", "attention")
INNER_OPTIMIZERS = ("dgd", "gd")
FAST_MEMORY_IMPLEMENTATIONS = ("chunk", "compiled")          # for training and timing; "naive" is the reference
MEMORY_IMPLEMENTATIONS = (*FAST_MEMORY_IMPLEMENTATIONS, "naive")
CMS_LEVEL_KEYS = ("intermediate_size", "update_period", "chunk_size", "lr")
#: The fields only the self-modifying mixer reads: a Hope-Attention model (`mixer="attention"`) is the same model,
#: weight for weight and output for output, whatever they hold (tested).
SELF_MODIFYING_FIELDS = (
    "memory_expansion", "projection_chunk_size", "memory_chunk_size", "conv_window", "input_projection",
    "inner_optimizer", "inner_momentum", "adaptive_q", "adaptive_k", "adaptive_v", "adaptive_rates",
    "inner_weight_decay", "normalize_values", "normalize_inner_step", "eta_max", "eta_init", "alpha_init",
    "alpha_min", "momentum_init", "memory_implementation", "memory_checkpoint_chunks",
)


def default_cms_levels(hidden_size: int) -> list[dict[str, Any]]:
    """Three SwiGLU levels of width `hidden_size`, updated every 1, 4 and 16 training steps.

    Together they hold as many parameters as one Llama MLP of width `3 * hidden_size`.
    In-context (test-time) learning is off (`chunk_size=0`).
    """
    return [
        {"intermediate_size": hidden_size, "update_period": period, "chunk_size": 0, "lr": 0.0}
        for period in (1, 4, 16)
    ]


class HopeConfig(PreTrainedConfig):
    r"""Configuration of a [`HopeModel`] / [`HopeForCausalLM`].

    Each layer is `x ← x + mixer(norm(x))` followed by the Continuum Memory System (CMS): a chain of
    SwiGLU levels `x ← x + MLP_ℓ(norm_ℓ(x))`. The mixer is either the self-modifying Titans memory
    (`mixer="self_modifying"`, Hope) or causal softmax attention with RoPE (`mixer="attention"`,
    Hope-Attention). Ablations (Titans-like, no CMS, plain GD) are settings of the same fields.

    Args:
        vocab_size: size of the token vocabulary.
        hidden_size: model width `D`.
        num_hidden_layers: number of blocks.
        num_heads: heads `H` of the mixer; the head size is `d = D / H`.
        num_key_value_heads: key/value heads of the attention mixer (grouped-query attention);
            defaults to `num_heads`. Unused by the self-modifying mixer.
        mixer: `"self_modifying"` or `"attention"`.
        memory_expansion: `r`, the hidden width of every memory MLP is `h = r * d` (the paper gives no value).
            Default 1: against r = 2 at the same parameter count (the weights r = 2 puts in the memories'
            initial states go to the CMS instead), r = 1 gave the same validation perplexity at ~2M and ~6M (two
            seeds each) and trains 1.6x faster on a CPU (README, Results). `modeling_configs/hope-r2-*` keep r = 2.
        projection_chunk_size: `C_o`, the chunk of the k/v/η/α memories (tokens).
        memory_chunk_size: `C_m`, the chunk of the main memory; a multiple of `C_o`.
        conv_window: window of the causal depthwise convolution before the memories.
        input_projection: a static linear map `W_x` (D×D, no bias, initialised to the identity) before the
            convolution, `x̃ = silu(conv(W_x x))`, so that each head's memories read a learned mixture of all `D`
            channels. Without it (the default, HOPE.md §3) the per-head memories of head `i` see only channels
            `i·d .. (i+1)·d` of the block input: the depthwise convolution and the per-head memories mix no
            channels, where the paper's full-width memories (and a static `W_k`) do. Costs `D²` parameters per
            layer. Measured at ~2M on two seeds: no gain beyond the seed spread (README, Results), hence off.
        inner_optimizer: `"dgd"` (Delta Gradient Descent, Eq. 56-57) or `"gd"` (plain gradient
            descent with weight decay: the "w/o DGD" ablation).
        inner_momentum: momentum on the inner updates, `S_t = β S_{t-1} − η_t ∇_t`.
        adaptive_q: generate q with a memory (the paper's ablation; off: q is static).
        adaptive_k, adaptive_v: generate k / v with self-modifying memories (off: static linear
            projections, as in Titans).
        adaptive_rates: generate η and α with memories (off: static linear gates).
        inner_weight_decay: the retention gate α_t of the inner updates (off: α ≡ 1, the "w/o weight
            decay" ablation; no α memory or gate is built).
        normalize_values: l2-normalise v like k. The paper leaves v unnormalised; with self-generated
            targets `v̂ = M(v)` that diverges at initialisation (v grows, so the targets grow), so the
            default normalises it. `False` gives the literal form.
        normalize_inner_step: the error that drives both inner gradients is divided by `1 + c`,
            `c = ‖a_t‖² + ‖B⁰ diag(σ'(z_t))‖²_F` (z = A⁰k, a = σ(z)), a bound of the inner loss's
            Gauss-Newton curvature along the step (unit keys), so `∇_A` and `∇_B` both take the normalised
            step instead of the paper's literal one. `c ≈ 0.35·h` at initialisation, and the literal step
            diverges once `η_t·c > 2(1 + β)`: with `h = 64` a forward at initialisation turns NaN for
            `η ≥ 0.3` (Titans-like, GD) or `η ≥ 0.9` (Hope, DGD), and training that raises `η_t` reached NaN
            in all 4 Titans and 8 of 15 Hope runs on an H100 (`eval/experiments/results/`). `False` gives
            the literal form.
        eta_max: upper bound of the inner learning rate `η_t = eta_max · sigmoid(·)`.
        eta_init: value of `η_t` at initialisation (sets the gate bias).
        alpha_init: value of the retention gate `α_t` at initialisation (sets the gate bias).
        alpha_min: lower bound of `α_t = alpha_min + (1 − alpha_min) · sigmoid(·)`.
        momentum_init: value of the inner momentum `β` at initialisation.
        cms_levels: list of dicts, one per CMS level, with keys `intermediate_size` (width of the
            SwiGLU), `update_period` (training steps between optimiser updates of the level),
            `chunk_size` (tokens between in-context updates; 0 disables them) and `lr` (in-context
            learning rate). Defaults to three levels of width `hidden_size` with periods 1, 4, 16.
        memory_implementation: how the self-modifying memories run a multi-token call: `"chunk"` (chunk-wise
            closed form, eager PyTorch), `"compiled"` (the same per-chunk function under `torch.compile`, one
            graph per chunk length: fewer, fused kernels, the fast path on GPU; needs a working
            `torch.compile` backend) or `"naive"` (the token-by-token reference, slow). All three compute the
            same function.
        memory_checkpoint_chunks: activation checkpointing inside the memory: with gradients on, keep its
            state only every `memory_checkpoint_chunks` chunks of `projection_chunk_size` tokens and recompute
            the chunks in between during backward (0 = off). Trades one extra forward of the memory for
            activation memory; combine with `gradient_checkpointing_enable()` (per block) for long sequences.
        rms_norm_eps: epsilon of every RMSNorm.
        initializer_range: standard deviation of the normal initialisation of linear layers.
        max_position_embeddings: longest sequence the attention mixer's RoPE is meant for.
        rope_theta: RoPE base.
        attention_bias: biases in the attention projections.
        tie_word_embeddings: tie the output head to the input embeddings.
        in_context_cms: turn in-context (test-time) CMS learning on (HOPE.md §4): levels with
            `chunk_size > 0` then take a step of their fast weights every `chunk_size` tokens during
            `HopeForCausalLM.forward` (eval mode, `input_ids`, no padding). Off by default (pre-training
            speed); `forward(..., in_context_cms=...)` overrides it per call. Needs a level with
            `chunk_size > 0`.
    """

    model_type = "hope"
    # the cache's output key: `past_key_values` up to transformers 5.23, `cache` from 5.24
    keys_to_ignore_at_inference = ["past_key_values", "cache"]
    attribute_map = {"num_attention_heads": "num_heads"}

    vocab_size: int = 32000
    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_heads: int = 16
    num_key_value_heads: int | None = None
    mixer: str = "self_modifying"
    memory_expansion: int = 1
    projection_chunk_size: int = 16
    memory_chunk_size: int = 64
    conv_window: int = 4
    input_projection: bool = False
    inner_optimizer: str = "dgd"
    inner_momentum: bool = True
    adaptive_q: bool = False
    adaptive_k: bool = True
    adaptive_v: bool = True
    adaptive_rates: bool = True
    inner_weight_decay: bool = True
    normalize_values: bool = True
    normalize_inner_step: bool = True
    eta_max: float = 1.0
    eta_init: float = 0.03
    alpha_init: float = 0.999
    alpha_min: float = 0.0
    momentum_init: float = 0.5
    memory_implementation: str = "chunk"
    memory_checkpoint_chunks: int = 0
    cms_levels: list[dict[str, Any]] | None = None
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0
    attention_bias: bool = False
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    tie_word_embeddings: bool = False
    in_context_cms: bool = False

    def __post_init__(self, **kwargs):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_heads
        if self.cms_levels is None:
            self.cms_levels = default_cms_levels(self.hidden_size)
        elif isinstance(self.cms_levels, (list, tuple)):
            self.cms_levels = [
                {"chunk_size": 0, "lr": 0.0, **level} if isinstance(level, dict) else level for level in self.cms_levels
            ]
        super().__post_init__(**kwargs)
        self.validate_hope()

    @property
    def head_dim(self) -> int:
        """Head size `d = hidden_size / num_heads`."""
        return self.hidden_size // self.num_heads

    @property
    def memory_hidden_size(self) -> int:
        """Hidden width `h = memory_expansion · d` of every memory MLP."""
        return self.memory_expansion * self.head_dim

    @property
    def memory_names(self) -> tuple[str, ...]:
        """The self-modifying memories of a layer, in the order they are stacked; `mem` is last."""
        names = []
        if self.adaptive_q:
            names.append("q")
        if self.adaptive_k:
            names.append("k")
        if self.adaptive_v:
            names.append("v")
        if self.adaptive_rates:
            names += ["eta", "alpha"] if self.inner_weight_decay else ["eta"]
        return (*names, "mem")

    def validate_hope(self) -> None:
        """Raise `ValueError` naming the field and the value for any invalid setting."""

        def fail(field: str, value: Any, expected: str) -> None:
            raise ValueError(f"HopeConfig.{field} must be {expected}, got {value!r}")

        def check_int(field: str, minimum: int) -> None:
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                fail(field, value, f"an integer >= {minimum}")

        for field in ("vocab_size", "hidden_size", "num_hidden_layers", "num_heads", "num_key_value_heads"):
            check_int(field, 1)
        for field in ("memory_expansion", "projection_chunk_size", "memory_chunk_size", "conv_window"):
            check_int(field, 1)
        check_int("max_position_embeddings", 1)
        check_int("memory_checkpoint_chunks", 0)
        if self.memory_implementation not in MEMORY_IMPLEMENTATIONS:
            fail("memory_implementation", self.memory_implementation, f"one of {MEMORY_IMPLEMENTATIONS}")
        if self.hidden_size % self.num_heads != 0:
            fail("num_heads", self.num_heads, f"a divisor of hidden_size={self.hidden_size}")
        if self.num_heads % self.num_key_value_heads != 0:
            fail("num_key_value_heads", self.num_key_value_heads, f"a divisor of num_heads={self.num_heads}")
        if self.mixer not in MIXERS:
            fail("mixer", self.mixer, f"one of {MIXERS}")
        if self.mixer == "attention" and self.head_dim % 2:
            fail("num_heads", self.num_heads, f"such that hidden_size / num_heads is even for RoPE "
                 f"(hidden_size={self.hidden_size} gives head size {self.head_dim})")
        if self.inner_optimizer not in INNER_OPTIMIZERS:
            fail("inner_optimizer", self.inner_optimizer, f"one of {INNER_OPTIMIZERS}")
        if self.memory_chunk_size % self.projection_chunk_size != 0:
            fail(
                "memory_chunk_size",
                self.memory_chunk_size,
                f"a multiple of projection_chunk_size={self.projection_chunk_size}",
            )
        for field in ("input_projection", "inner_momentum", "adaptive_q", "adaptive_k", "adaptive_v", "adaptive_rates",
                      "inner_weight_decay", "normalize_values", "normalize_inner_step", "attention_bias", "tie_word_embeddings",
                      "in_context_cms"):
            if not isinstance(getattr(self, field), bool):
                fail(field, getattr(self, field), "a bool")
        if not (math.isfinite(self.eta_max) and self.eta_max > 0):
            fail("eta_max", self.eta_max, "a finite number > 0")
        if not 0 < self.eta_init < self.eta_max:
            fail("eta_init", self.eta_init, f"in (0, eta_max={self.eta_max})")
        if not 0 <= self.alpha_min < 1:
            fail("alpha_min", self.alpha_min, "in [0, 1)")
        if not self.alpha_min < self.alpha_init < 1:
            fail("alpha_init", self.alpha_init, f"in (alpha_min={self.alpha_min}, 1)")
        if not 0 < self.momentum_init < 1:
            fail("momentum_init", self.momentum_init, "in (0, 1)")
        if not (self.rms_norm_eps > 0):
            fail("rms_norm_eps", self.rms_norm_eps, "> 0")
        if not (self.initializer_range >= 0):
            fail("initializer_range", self.initializer_range, ">= 0")
        if not (self.rope_theta > 0):
            fail("rope_theta", self.rope_theta, "> 0")
        self._validate_cms_levels()

    def _validate_cms_levels(self) -> None:
        levels = self.cms_levels
        if not isinstance(levels, list) or len(levels) == 0:
            raise ValueError(f"HopeConfig.cms_levels must be a non-empty list of level dicts, got {levels!r}")
        for j, level in enumerate(levels):
            where = f"HopeConfig.cms_levels[{j}]"
            if not isinstance(level, dict):
                raise ValueError(f"{where} must be a dict, got {level!r}")
            unknown = sorted(set(level) - set(CMS_LEVEL_KEYS))
            if unknown:
                raise ValueError(f"{where} has unknown keys {unknown}; allowed keys are {list(CMS_LEVEL_KEYS)}")
            for key, minimum in (("intermediate_size", 1), ("update_period", 1), ("chunk_size", 0)):
                if key not in level:
                    raise ValueError(f"{where} is missing {key!r}")
                value = level[key]
                if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                    raise ValueError(f"{where}['{key}'] must be an integer >= {minimum}, got {value!r}")
            lr = level["lr"]
            if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr < 0:
                raise ValueError(f"{where}['lr'] must be a finite number >= 0, got {lr!r}")
        if self.in_context_cms and not self.in_context_levels:
            raise ValueError(f"HopeConfig.in_context_cms=True needs a CMS level with chunk_size > 0, got "
                             f"chunk sizes {[level['chunk_size'] for level in levels]}")

    @property
    def in_context_levels(self) -> list[int]:
        """Indices of the CMS levels that learn in context (`chunk_size > 0`)."""
        return [j for j, level in enumerate(self.cms_levels) if level["chunk_size"] > 0]


__all__ = ["HopeConfig", "default_cms_levels"]
