"""Training and inference throughput of Hope beside a same-size Llama, measured in one run.

Prints tokens/s for each model and sequence length, and Hope / Llama as ratios (medians of repeated
steps after warm-up). Both models get the same width, depth, heads and vocabulary; the Llama's MLP
width is set so the parameter counts match (`hope_hf.baselines.matched_llama_config`).

CPU smoke (a few minutes on 2 cores):
    .venv/bin/python eval/bench_throughput.py --lengths 512 2048 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from transformers import LlamaForCausalLM

from hope_hf import HopeConfig, HopeForCausalLM
from hope_hf.baselines import count_parameters, matched_llama_config


def time_steps(step, repeats: int, warmup: int) -> float:
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

    def train_step():
        model.train()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()

    @torch.no_grad()
    def infer_step():
        model.eval()
        model(input_ids=ids, logits_to_keep=1)
        if device == "cuda":
            torch.cuda.synchronize()

    tokens = batch * length
    return {
        "train_tokens_per_s": tokens / time_steps(train_step, repeats, warmup),
        "infer_tokens_per_s": tokens / time_steps(infer_step, repeats, warmup),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--mixers", nargs="+", default=["self_modifying", "attention"],
                        help="Hope mixers to measure (each beside the same-size Llama)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()

    torch.manual_seed(0)
    rows = []
    for mixer in args.mixers:
        config = HopeConfig(vocab_size=args.vocab_size, hidden_size=args.hidden_size,
                            num_hidden_layers=args.layers, num_heads=args.heads, mixer=mixer)
        hope = HopeForCausalLM(config).to(args.device)
        llama = LlamaForCausalLM(matched_llama_config(config)).to(args.device)
        name = "hope" if mixer == "self_modifying" else "hope-attention"
        for length in args.lengths:
            h = measure(hope, args.batch_size, length, args.vocab_size, args.repeats, args.warmup, args.device)
            ll = measure(llama, args.batch_size, length, args.vocab_size, args.repeats, args.warmup, args.device)
            rows.append({
                "model": name, "length": length,
                "hope_params": count_parameters(hope), "llama_params": count_parameters(llama),
                **{f"hope_{k}": v for k, v in h.items()}, **{f"llama_{k}": v for k, v in ll.items()},
                "train_ratio": h["train_tokens_per_s"] / ll["train_tokens_per_s"],
                "infer_ratio": h["infer_tokens_per_s"] / ll["infer_tokens_per_s"],
            })
            r = rows[-1]
            print(f"{name:15s} T={length:5d}  train {r['hope_train_tokens_per_s']:8.0f} tok/s vs llama "
                  f"{r['llama_train_tokens_per_s']:8.0f} ({r['train_ratio']:.2f}x)   infer "
                  f"{r['hope_infer_tokens_per_s']:8.0f} vs {r['llama_infer_tokens_per_s']:8.0f} "
                  f"({r['infer_ratio']:.2f}x)", flush=True)

    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {args.device}"
    print(f"\nmachine: {machine}; torch {torch.__version__}; params hope={rows[0]['hope_params']:,} "
          f"llama={rows[0]['llama_params']:,}")
    print("| model | tokens | train tok/s (Hope / Llama) | ratio | inference tok/s (Hope / Llama) | ratio |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['length']} | {r['hope_train_tokens_per_s']:.0f} / {r['llama_train_tokens_per_s']:.0f} "
              f"| {r['train_ratio']:.2f}x | {r['hope_infer_tokens_per_s']:.0f} / {r['llama_infer_tokens_per_s']:.0f} "
              f"| {r['infer_ratio']:.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "args": vars(args), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
