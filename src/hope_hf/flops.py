"""Analytic floating-point operation counts of a Hope or Llama forward pass (for FLOP/s and fraction of peak).

Counted: every matrix product the forward runs (linear layers, the depthwise convolution, the memories'
matmuls in `memory_ops`, attention scores and values, the output head) at 2 FLOPs per multiply-add, plus
the triangular solve of the delta rule. Not counted: elementwise work (norms, activations, gates, softmax,
the chunk's exp / cumsum coefficients), which is memory-bound and conventionally left out of FLOP/s.
Training = 3 × forward (each matmul's backward is two matmuls of the same size: the usual approximation;
`tests/test_flops.py` measures how close it is).

Notation (as in `memory_ops.py`):
    B  batch      T  tokens       D  hidden size      V  vocabulary      L  layers
    H  heads      d  head size    h  memory hidden width (memory_expansion · d)
    M  memories of a layer (`mem` last)   p = M − 1 projection memories   n  tokens of one chunk (≤ C_o)

The memories run in two passes (`memory_ops.chunk_memory_update`): the p projection memories over chunks of
C_o tokens, then the main memory over chunks of C_m. Per chunk of n tokens, head and pass over m memories
(`_shared_rows_apply`, `_inner_gradients`, `_decay_matrices`, `_chunk_state_update`; DGD with momentum; a call
from position 0, so every chunk starts at a boundary and its z = A⁰k is the delta rule's A_0 k), in multiply-adds:
    rows           (projection pass) 2m·n·d·h: M(x̃) = x̃ + B σ(A x̃) for the m memories
    inner terms    (2r + 1)·m·n·d·h          z = A⁰ rows, B⁰σ(z) for r rows per token (k, v; main pass: q, k, v),
                                             then u = B⁰ᵀe
    decay matrices 2n³ + 2n²                 Γ·P and Γ·P(·, 0), twice (t and t − 1); momentum only
    k kᵀ           n²·d                      DGD only
    delta rhs      [momentum]·m·n·d·h + m·n²·h               S_A k and (G ⊙ kkᵀ) u; DGD only
    solve          n(n − 1)/2 · m·h          unit lower-triangular, m·h right-hand sides; DGD only
    state updates  (2 + 2·[momentum]) · m·n·d·h             the rank-n sums of A, B (and S_A, S_B) at the chunk end
    state mixing   2·P²·m·d·h                the chunk-start pairs [A; S_A], [B; S_B] times their P×P decay
                                             matrix (`baddbmm`; P = 2 with momentum, else 1)
`FlopCounterMode` (torch.utils.flop_counter) counts the matmuls exactly as here but has no formula for
`linalg.solve_triangular`, and on CPU none for the fused attention kernel: `tests/test_flops.py` compares
everything else with it, module by module.

Not a model file (Hub checkpoints do not carry it); used by `hope_hf.benchmark`.
"""

from __future__ import annotations

from transformers import LlamaConfig, PreTrainedConfig

from .configuration_hope import HopeConfig


def _chunk_lengths(length: int, chunk: int) -> list[int]:
    """Lengths of the chunks a call of `length` tokens from position 0 is cut into (the last may be short)."""
    return [chunk] * (length // chunk) + ([length % chunk] if length % chunk else [])


def attention_flops(batch: int, queries: int, heads: int, head_dim: int, past: int = 0, causal: bool = True) -> int:
    """Scores q kᵀ and the weighted sum of values, for `queries` new tokens after `past` cached ones.

    Causal: query t reads `past + t + 1` keys (the work a masked kernel needs); `causal=False` counts the
    full `queries × (past + queries)` square (what the unfused math kernel computes).
    """
    if causal:
        pairs = queries * past + queries * (queries + 1) // 2
    else:
        pairs = queries * (past + queries)
    return 2 * 2 * batch * heads * pairs * head_dim


def memory_flops(config: HopeConfig, batch: int, length: int) -> dict[str, int]:
    """The memories of one self-modifying layer over `length` tokens from position 0 (see the module docstring).

    Returns:
        {"memory_matmul": FLOPs of the matmuls, "memory_solve": FLOPs of the triangular solves}.
    """
    H, d, h = config.num_heads, config.head_dim, config.memory_hidden_size
    p = len(config.memory_names) - 1
    delta, momentum = config.inner_optimizer == "dgd", config.inner_momentum
    matmul = solve = 0
    passes = [(config.projection_chunk_size, p, 2, True), (config.memory_chunk_size, 1, 3, False)]
    for chunk, m, rows, reads_x in passes:
        if m == 0:
            continue
        for n in _chunk_lengths(length, chunk):
            ndh = n * d * h
            macs = (2 * m * ndh if reads_x else 0) + (2 * rows + 1) * m * ndh      # rows, inner terms
            if momentum:
                macs += 2 * n**3 + 2 * n**2                 # _decay_matrices: G, G_prev, c, c_prev
            if delta:
                macs += n * n * d + momentum * m * ndh + m * n * n * h
                solve += n * (n - 1) // 2 * m * h
            macs += (2 + 2 * momentum) * m * ndh            # chunk-end A, B (S_A, S_B): the rank-n sums
            macs += 2 * (1 + momentum) ** 2 * m * d * h     # ... and the mixing of the chunk-start pairs
            matmul += macs
    return {"memory_matmul": 2 * batch * H * matmul, "memory_solve": 2 * batch * H * solve}


def hope_forward_flops(config: HopeConfig, batch: int, length: int, logits: int | None = None) -> dict[str, int]:
    """FLOPs of `HopeForCausalLM.forward` on `batch × length` tokens without a cache, by part.

    Args:
        logits: positions whose logits are computed (`logits_to_keep`; default all `length`).
    Returns:
        {"mixer_linear", "mixer_conv", "memory_matmul", "memory_solve", "attention", "cms", "lm_head"}: FLOPs
        summed over the layers (the keys of the other mixer are 0).
    """
    D, L, tokens = config.hidden_size, config.num_hidden_layers, batch * length
    parts = dict.fromkeys(("mixer_linear", "mixer_conv", "memory_matmul", "memory_solve", "attention", "cms",
                           "lm_head"), 0)
    if config.mixer == "attention":
        q_out, kv_out = config.num_heads * config.head_dim, config.num_key_value_heads * config.head_dim
        parts["mixer_linear"] = 2 * tokens * (D * q_out + 2 * D * kv_out + q_out * D)
        parts["attention"] = attention_flops(batch, length, config.num_heads, config.head_dim)
    else:
        square = sum(not getattr(config, f"adaptive_{name}") for name in ("q", "k", "v")) + config.input_projection
        rates = 0 if config.adaptive_rates else 1 + config.inner_weight_decay
        parts["mixer_linear"] = 2 * tokens * ((square + 2) * D * D + rates * D * config.num_heads)   # D x D maps + g, o
        parts["mixer_conv"] = 2 * tokens * D * config.conv_window
        parts.update(memory_flops(config, batch, length))
    parts["cms"] = 2 * tokens * sum(3 * D * level["intermediate_size"] for level in config.cms_levels)
    parts = {k: L * v for k, v in parts.items()}
    parts["lm_head"] = 2 * batch * (length if logits is None else logits) * D * config.vocab_size
    return parts


def llama_forward_flops(config: LlamaConfig, batch: int, length: int, logits: int | None = None) -> dict[str, int]:
    """FLOPs of `LlamaForCausalLM.forward` on `batch × length` tokens without a cache, by part.

    Returns:
        {"attention_linear", "attention", "mlp", "lm_head"}: FLOPs summed over the layers.
    """
    D, L, tokens = config.hidden_size, config.num_hidden_layers, batch * length
    d = getattr(config, "head_dim", None) or D // config.num_attention_heads
    q_out, kv_out = config.num_attention_heads * d, config.num_key_value_heads * d
    return {
        "attention_linear": L * 2 * tokens * (D * q_out + 2 * D * kv_out + q_out * D),
        "attention": L * attention_flops(batch, length, config.num_attention_heads, d),
        "mlp": L * 2 * tokens * 3 * D * config.intermediate_size,
        "lm_head": 2 * batch * (length if logits is None else logits) * D * config.vocab_size,
    }


def forward_flops(config: PreTrainedConfig, batch: int, length: int, logits: int | None = None) -> dict[str, int]:
    """`hope_forward_flops` or `llama_forward_flops`, chosen by the configuration's type."""
    if isinstance(config, HopeConfig):
        return hope_forward_flops(config, batch, length, logits)
    if isinstance(config, LlamaConfig):
        return llama_forward_flops(config, batch, length, logits)
    raise ValueError(f"forward_flops counts HopeConfig and LlamaConfig, got {type(config).__name__}")


def training_flops(config: PreTrainedConfig, batch: int, length: int) -> int:
    """Forward + backward of a training step on `batch × length` tokens: 3 × the forward (logits everywhere)."""
    return 3 * sum(forward_flops(config, batch, length).values())


__all__ = ["attention_flops", "forward_flops", "hope_forward_flops", "llama_forward_flops", "memory_flops",
           "training_flops"]
