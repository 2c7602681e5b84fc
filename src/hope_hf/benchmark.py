"""Training and inference throughput of Hope beside a same-size Llama, measured in one run.

Both models get the same width, depth, heads and vocabulary; the Llama's MLP width is set so the parameter
counts match (`hope_hf.baselines.matched_llama_config`). Training = forward + backward + AdamW step;
inference = a forward without gradients keeping one logit. Figures are medians of repeated steps after warm-up.

Used by `hope-hf bench` and `eval/bench_throughput.py`. This is not a model file.

CPU smoke (a few minutes on 2 cores):
    hope-hf bench --lengths 512 2048 --repeats 3
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Sequence

import torch
from transformers import LlamaForCausalLM

from .baselines import count_parameters, matched_llama_config
from .configuration_hope import HopeConfig
from .modeling_hope import HopeForCausalLM

#: Hope mixer → the name used in the table.
MIXER_NAMES = {"self_modifying": "hope", "attention": "hope-attention"}


def time_steps(step: Callable[[], None], repeats: int, warmup: int) -> float:
    """Median seconds of `step()` over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(model: torch.nn.Module, batch: int, length: int, vocab: int, repeats: int, warmup: int,
            device: str) -> dict[str, float]:
    """Training (forward + backward + AdamW step) and inference (forward, no grad) tokens/s."""
    ids = torch.randint(0, vocab, (batch, length), device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def synchronize():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def train_step():
        model.train()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize()

    @torch.no_grad()
    def infer_step():
        model.eval()
        model(input_ids=ids, logits_to_keep=1)
        synchronize()

    tokens = batch * length
    return {
        "train_tokens_per_s": tokens / time_steps(train_step, repeats, warmup),
        "infer_tokens_per_s": tokens / time_steps(infer_step, repeats, warmup),
    }


def compare_with_llama(
    *,
    hidden_size: int = 256,
    layers: int = 4,
    heads: int = 4,
    vocab_size: int = 8192,
    lengths: Sequence[int] = (512, 2048),
    batch_size: int = 1,
    repeats: int = 3,
    warmup: int = 1,
    mixers: Sequence[str] = ("self_modifying", "attention"),
    device: str = "cpu",
    on_row: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Measure each Hope mixer beside its same-size Llama at each length.

    Returns:
        One dict per (mixer, length): `model`, `length`, parameter counts, tokens/s of both models for
        training and inference, and the ratios `train_ratio`, `infer_ratio` (Hope / Llama).
    """
    torch.manual_seed(0)
    rows = []
    for mixer in mixers:
        config = HopeConfig(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=layers,
                            num_heads=heads, mixer=mixer)
        hope = HopeForCausalLM(config).to(device)
        llama = LlamaForCausalLM(matched_llama_config(config)).to(device)
        for length in lengths:
            h = measure(hope, batch_size, length, vocab_size, repeats, warmup, device)
            ll = measure(llama, batch_size, length, vocab_size, repeats, warmup, device)
            row = {
                "model": MIXER_NAMES[mixer], "length": length,
                "hope_params": count_parameters(hope), "llama_params": count_parameters(llama),
                **{f"hope_{k}": v for k, v in h.items()}, **{f"llama_{k}": v for k, v in ll.items()},
                "train_ratio": h["train_tokens_per_s"] / ll["train_tokens_per_s"],
                "infer_ratio": h["infer_tokens_per_s"] / ll["infer_tokens_per_s"],
            }
            rows.append(row)
            if on_row is not None:
                on_row(row)
    return rows


def format_row(r: dict) -> str:
    """One line of progress for a measured row."""
    return (f"{r['model']:15s} T={r['length']:5d}  train {r['hope_train_tokens_per_s']:8.0f} tok/s vs llama "
            f"{r['llama_train_tokens_per_s']:8.0f} ({r['train_ratio']:.2f}x)   infer "
            f"{r['hope_infer_tokens_per_s']:8.0f} vs {r['llama_infer_tokens_per_s']:8.0f} ({r['infer_ratio']:.2f}x)")


def markdown_table(rows: Sequence[dict]) -> str:
    """The rows as the Markdown table of the README's Performance section."""
    lines = ["| model | tokens | train tok/s (Hope / Llama) | ratio | inference tok/s (Hope / Llama) | ratio |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['length']} | {r['hope_train_tokens_per_s']:.0f} / "
                     f"{r['llama_train_tokens_per_s']:.0f} | {r['train_ratio']:.2f}x | "
                     f"{r['hope_infer_tokens_per_s']:.0f} / {r['llama_infer_tokens_per_s']:.0f} | {r['infer_ratio']:.2f}x |")
    return "\n".join(lines)


def machine_description(device: str) -> str:
    """Processor, thread count and device, for the record of a measurement."""
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {device}"


__all__ = ["compare_with_llama", "format_row", "machine_description", "markdown_table", "measure", "time_steps"]
