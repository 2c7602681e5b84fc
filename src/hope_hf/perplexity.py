"""Held-out perplexity of a causal language model on packed blocks, computed exactly (no download).

`evaluate`'s perplexity metric loads a model from the Hub by name, so it cannot score a model in memory
or run offline; this computes the same quantity directly:

    ppl = exp( Σ_blocks Σ_{t=2..T} −log p(x_t | x_<t) / (N · (T − 1)) )

over `N` blocks of `T` tokens, each block scored on its own (no state carried between blocks; the
first token of a block is context only). Any `AutoModelForCausalLM` works (Hope or a Llama baseline).
This is not a model file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


@torch.no_grad()
def perplexity(model: torch.nn.Module, blocks: torch.Tensor | Sequence[Sequence[int]], batch_size: int = 8,
               progress: bool = False) -> dict[str, float]:
    """Exact token-level perplexity of `model` on `blocks` [N, T].

    Returns:
        `{"perplexity", "loss" (mean NLL in nats per predicted token), "tokens" (predicted tokens), "blocks"}`.
    """
    blocks = torch.as_tensor(blocks, dtype=torch.long)
    if blocks.dim() != 2 or blocks.shape[0] == 0 or blocks.shape[1] < 2:
        raise ValueError(f"blocks must be [N >= 1, T >= 2] token ids, got shape {tuple(blocks.shape)}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    starts = range(0, blocks.shape[0], batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="perplexity", unit="batch")
    total_nll, count = 0.0, 0
    for start in starts:
        batch = blocks[start: start + batch_size].to(device)
        logits = model(input_ids=batch).logits.float()
        nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
                              reduction="sum")
        total_nll += nll.item()
        count += batch[:, 1:].numel()
    model.train(was_training)
    loss = total_nll / count
    return {"perplexity": math.exp(loss), "loss": loss, "tokens": count, "blocks": int(blocks.shape[0])}


__all__ = ["perplexity"]
