"""Exact held-out perplexity: equals exp of the model's own mean loss, batching does not change it."""

from __future__ import annotations

import math

import pytest
import torch

from hope_hf import HopeConfig, HopeForCausalLM
from hope_hf.perplexity import perplexity


def test_perplexity_is_exp_of_the_mean_token_loss(tiny_kwargs):
    model = HopeForCausalLM(HopeConfig(**tiny_kwargs())).eval()
    blocks = torch.randint(3, 99, (5, 12))
    with torch.no_grad():
        losses = [model(blocks[i: i + 1], labels=blocks[i: i + 1]).loss.item() for i in range(5)]
    mean = sum(losses) / len(losses)            # equal-length blocks: every block predicts 11 tokens
    result = perplexity(model, blocks, batch_size=2)
    assert result["tokens"] == 5 * 11 and result["blocks"] == 5
    assert result["loss"] == pytest.approx(mean, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(mean), rel=1e-5)
    assert perplexity(model, blocks, batch_size=5)["loss"] == pytest.approx(result["loss"], rel=1e-6)


def test_perplexity_rejects_blocks_it_cannot_score(tiny_kwargs):
    model = HopeForCausalLM(HopeConfig(**tiny_kwargs()))
    with pytest.raises(ValueError, match=r"blocks must be \[N >= 1, T >= 2\]"):
        perplexity(model, torch.zeros(3, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="shape"):
        perplexity(model, torch.zeros(0, 8, dtype=torch.long))
