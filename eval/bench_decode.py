"""Per-token decoding latency and memory of Hope beside a same-size Llama, at several context lengths.

For each model and context length T: prefill T random tokens into the cache, then time single-token
decoding steps (median after warm-up). Hope's recurrent cache has a fixed size, so its latency should
not grow with T; a Llama's key/value cache grows linearly, and so does its per-token attention cost.
Printed per cell:
  - latency: median milliseconds per generated token (batch 1);
  - cache MiB: bytes held by the cache after the prefill (what every decoding step reads);
  - peak MiB: on CUDA, `torch.cuda.max_memory_allocated` during the decoding steps; on CPU, the largest
    resident set size of the process seen after a decoding step (includes the model and the allocator's
    leftovers, so compare it across contexts, not across machines).
Then Hope / Llama ratios per context, and each model's latency at its longest context over its shortest.

Both models get the same width, depth, heads and vocabulary; the Llama's MLP width is chosen so the
parameter counts match (`hope_hf.baselines.matched_llama_config`).

CPU smoke (seconds):  .venv/bin/python eval/bench_decode.py --lengths 64 256 --steps 8
Full run (minutes on 2 cores):  .venv/bin/python eval/bench_decode.py --lengths 512 2048 8192
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch
from transformers import LlamaForCausalLM

from hope_hf import HopeConfig, HopeForCausalLM
from hope_hf.baselines import count_parameters, matched_llama_config


def cache_bytes(cache) -> int:
    """Bytes of every tensor a cache holds (HopeCache or a transformers cache), counted once each."""
    seen, stack = {}, [cache]
    while stack:
        obj = stack.pop()
        if isinstance(obj, torch.Tensor):
            seen[obj.data_ptr(), obj.dtype, tuple(obj.shape)] = obj.numel() * obj.element_size()
        elif isinstance(obj, (list, tuple)):
            stack.extend(obj)
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif hasattr(obj, "__dict__") and not isinstance(obj, (type, torch.nn.Module)):
            stack.extend(vars(obj).values())
    return sum(seen.values())


def resident_mib() -> float:
    """Current resident set size of this process (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def measure_decode(model: torch.nn.Module, context: int, steps: int, warmup: int, vocab: int, device: str
                   ) -> dict[str, float]:
    """Prefill `context` tokens, then time `steps` single-token decoding steps after `warmup` ones."""
    model.eval()
    ids = torch.randint(0, vocab, (1, context), device=device)
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    cache = out.past_key_values
    token = out.logits[:, -1:].argmax(-1)
    cached = cache_bytes(cache) / 2**20
    del out
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, peak = [], 0.0
    for step in range(warmup + steps):
        sync(device)
        start = time.perf_counter()
        out = model(input_ids=token, past_key_values=cache, use_cache=True, logits_to_keep=1)
        token = out.logits[:, -1:].argmax(-1)
        sync(device)
        if step >= warmup:
            times.append(time.perf_counter() - start)
        if device != "cuda":
            peak = max(peak, resident_mib())
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    return {"latency_ms": 1000 * statistics.median(times), "cache_mib": cached, "peak_mib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 8192])
    parser.add_argument("--steps", type=int, default=32, help="timed decoding steps per cell")
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--mixers", nargs="+", default=["self_modifying"],
                        help="Hope mixers to measure (add 'attention' for Hope-Attention)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    models = {}
    for mixer in args.mixers:
        config = HopeConfig(vocab_size=args.vocab_size, hidden_size=args.hidden_size, num_hidden_layers=args.layers,
                            num_heads=args.heads, mixer=mixer, max_position_embeddings=max(args.lengths) + 1024)
        models["hope" if mixer == "self_modifying" else "hope-attention"] = HopeForCausalLM(config)
    llama_config = matched_llama_config(next(iter(models.values())).config,
                                        max_position_embeddings=max(args.lengths) + 1024)
    models["llama"] = LlamaForCausalLM(llama_config)
    results = {name: {} for name in models}
    for name, model in models.items():
        model.to(args.device)
        for length in args.lengths:
            r = results[name][length] = measure_decode(model, length, args.steps, args.warmup, args.vocab_size,
                                                       args.device)
            print(f"{name:15s} context {length:6d}: {r['latency_ms']:7.2f} ms/token  cache {r['cache_mib']:8.2f} MiB"
                  f"  peak {r['peak_mib']:8.1f} MiB", flush=True)
        model.to("cpu")

    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {args.device}"
    params = ", ".join(f"{name} {count_parameters(m):,}" for name, m in models.items())
    print(f"\nmachine: {machine}; torch {torch.__version__}; parameters: {params}")
    peak = "peak MiB (CUDA allocated)" if args.device == "cuda" else "peak RSS MiB"
    print(f"| model | context | ms / token | vs llama | cache MiB | {peak} |")
    print("|---|---|---|---|---|---|")
    for name in models:
        for length in args.lengths:
            r = results[name][length]
            ratio = r["latency_ms"] / results["llama"][length]["latency_ms"]
            print(f"| {name} | {length} | {r['latency_ms']:.2f} | {ratio:.2f}x | {r['cache_mib']:.2f} | "
                  f"{r['peak_mib']:.0f} |")
    first, last = min(args.lengths), max(args.lengths)
    for name in models:
        growth = results[name][last]["latency_ms"] / results[name][first]["latency_ms"]
        print(f"{name}: latency at {last} / latency at {first} = {growth:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "args": vars(args),
                       "results": {n: {str(k): v for k, v in r.items()} for n, r in results.items()}}, f, indent=2)


if __name__ == "__main__":
    main()
