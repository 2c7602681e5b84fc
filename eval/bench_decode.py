"""Per-token decoding latency and memory of Hope beside a same-size Llama, at several context lengths.

For each model and context length T: prefill T random tokens into the cache, then time single-token
decoding steps (median after warm-up; the steps go round robin over the contexts, so a change of load on
a shared machine hits all of them alike). Hope's recurrent cache has a fixed size, so its latency should
not grow with T; a Llama's key/value cache grows linearly, and so does its per-token attention cost.
Printed per cell:
  - latency: median milliseconds per generated token (batch 1);
  - cache MiB: bytes held by the cache after the prefill (what every decoding step reads);
  - peak MiB: on CUDA, `torch.cuda.max_memory_allocated` during the warm-up decoding steps; on CPU, the
    largest resident set size of the process seen after one of them (includes the model, the allocator's
    leftovers and the caches of the shorter contexts, which stay alive: compare across contexts and models
    of one run, not across machines).
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


def decode_step(model: torch.nn.Module, token: torch.Tensor, cache, device: str) -> tuple[torch.Tensor, float]:
    """One greedy decoding step; returns the next token and the seconds it took."""
    sync(device)
    start = time.perf_counter()
    out = model(input_ids=token, past_key_values=cache, use_cache=True, logits_to_keep=1)
    token = out.logits[:, -1:].argmax(-1)
    sync(device)
    return token, time.perf_counter() - start


@torch.no_grad()
def measure_decode(model: torch.nn.Module, lengths: list[int], steps: int, warmup: int, vocab: int, device: str
                   ) -> dict[int, dict[str, float]]:
    """Per context length: prefill, memory over `warmup` decoding steps, then `steps` timed steps.

    The timed steps go round robin over the contexts (one step each in turn), so a change of load on a
    shared machine hits every context alike. The memory of a context is measured right after its prefill,
    while the caches of the shorter contexts (measured before it) are alive.
    """
    model.eval()
    cells = {}
    for length in sorted(lengths):
        ids = torch.randint(0, vocab, (1, length), device=device)
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        del out
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        peak = 0.0
        for _ in range(warmup):
            token, _ = decode_step(model, token, cache, device)
            peak = max(peak, torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else resident_mib())
        cells[length] = {"cache": cache, "token": token, "times": [], "cache_mib": cache_bytes(cache) / 2**20,
                         "peak_mib": peak}
    for _ in range(steps):
        for cell in cells.values():
            cell["token"], seconds = decode_step(model, cell["token"], cell["cache"], device)
            cell["times"].append(seconds)
    return {length: {"latency_ms": 1000 * statistics.median(cell["times"]), "cache_mib": cell["cache_mib"],
                     "peak_mib": cell["peak_mib"]} for length, cell in cells.items()}


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
    results = {}
    for name, model in models.items():
        model.to(args.device)
        results[name] = measure_decode(model, args.lengths, args.steps, args.warmup, args.vocab_size, args.device)
        for length, r in results[name].items():
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
