"""CUDA checks and timings of Hope on a lent GPU (not part of the suite: CI has no GPU).

Correctness on CUDA (float32): chunk-wise == token-by-token reference; CUDA logits == CPU logits; cached greedy
generation == uncached; bf16 autocast forward/backward finite with float32 memory state. Then training
throughput (forward + backward + AdamW, bf16 autocast) of the `*-tiny` / `*-small` configurations and of the
bench shape beside a same-size Llama, with peak memory.

    python eval/gpu_check.py --json results.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from transformers import LlamaForCausalLM

from hope_hf import HopeConfig, HopeForCausalLM, output_cache
from hope_hf.baselines import count_parameters, matched_llama_config
from hope_hf.model_configs import available_configs, load_config


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def tiny_config(**overrides) -> HopeConfig:
    kwargs = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_heads=4, projection_chunk_size=4,
                  memory_chunk_size=8, cms_levels=[{"intermediate_size": 37, "update_period": 1}],
                  pad_token_id=0, bos_token_id=1, eos_token_id=2)
    kwargs.update(overrides)
    return HopeConfig(**kwargs)


def correctness(device: str) -> dict:
    out = {}
    torch.manual_seed(0)
    for mixer in ("self_modifying", "attention"):
        model = HopeForCausalLM(tiny_config(mixer=mixer)).eval()
        ids = torch.randint(3, 99, (2, 45))
        with torch.no_grad():
            cpu = model(input_ids=ids, use_cache=False).logits
            model.to(device)
            gpu = model(input_ids=ids.to(device), use_cache=False).logits.cpu()
        out[f"{mixer}_cuda_vs_cpu_rel"] = rel_err(gpu, cpu)
        if mixer == "self_modifying":
            for layer in model.model.layers:
                layer.mixer.implementation = "naive"
            with torch.no_grad():
                naive = model(input_ids=ids.to(device), use_cache=False).logits.cpu()
            for layer in model.model.layers:
                layer.mixer.implementation = "chunk"
            out["chunk_vs_naive_rel_cuda"] = rel_err(gpu, naive)
        prompt = ids[:, :13].to(device)
        with torch.no_grad():
            a = model.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=True, pad_token_id=0)
            b = model.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=False, pad_token_id=0)
        out[f"{mixer}_cached_generate_equal"] = bool(torch.equal(a, b))
        model.train()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            result = model(input_ids=ids.to(device), labels=ids.to(device), use_cache=True)
        result.loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        out[f"{mixer}_bf16_loss"] = result.loss.item()
        out[f"{mixer}_bf16_grads_finite"] = all(bool(torch.isfinite(g).all()) for g in grads)
        if mixer == "self_modifying":
            cache = output_cache(result)
            out["bf16_memory_state_dtype"] = str(cache.layers[0].state.memory.w_in.dtype) \
                if hasattr(cache, "layers") else "n/a"
    return out


def train_throughput(model: torch.nn.Module, batch: int, length: int, vocab: int, repeats: int = 5,
                     warmup: int = 2) -> dict:
    model.train()
    ids = torch.randint(0, vocab, (batch, length), device="cuda")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {"batch": batch, "length": length, "step_s": seconds, "tokens_per_s": batch * length / seconds,
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30}


def implementations(batch: int, length: int) -> list[dict]:
    """Eager chunk form vs the compiled chunk step (and memory checkpointing): values, tokens/s, peak memory."""
    rows = []
    torch.manual_seed(0)
    base = load_config("hope-tiny")
    ids = torch.randint(0, base.vocab_size, (2, 100), device="cuda")
    reference = None
    for implementation, every in (("chunk", 0), ("compiled", 0), ("compiled", 8), ("chunk", 8)):
        config = load_config("hope-tiny")
        config.memory_implementation, config.memory_checkpoint_chunks = implementation, every
        torch.manual_seed(0)
        model = HopeForCausalLM(config).cuda()
        start = time.perf_counter()
        with torch.no_grad():
            logits = model(input_ids=ids, use_cache=False).logits.float().cpu()
        first_call_s = time.perf_counter() - start
        reference = logits if reference is None else reference
        row = {"model": "hope-tiny", "implementation": implementation, "checkpoint_chunks": every,
               "logits_rel_err_vs_chunk": rel_err(logits, reference), "first_call_s": first_call_s,
               **train_throughput(model, batch, length, config.vocab_size)}
        rows.append(row)
        print(row, flush=True)
        del model
        torch.cuda.empty_cache()
    return rows


def build(name_or_config, implementation: str = "chunk"):
    config = load_config(name_or_config) if isinstance(name_or_config, str) else name_or_config
    if config.model_type == "hope":
        config.memory_implementation = implementation
    if config.model_type == "llama":
        return LlamaForCausalLM(config).cuda(), config.vocab_size
    return HopeForCausalLM(config).cuda(), config.vocab_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"])
    parser.add_argument("--batches", nargs="+", type=int, default=[16, 64])
    parser.add_argument("--bench-lengths", nargs="+", type=int, default=[2048, 8192])
    parser.add_argument("--sections", nargs="+", default=["correctness", "implementations", "throughput"])
    parser.add_argument("--implementation", default="chunk", help="memory_implementation for the throughput rows")
    args = parser.parse_args()
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    if "correctness" in args.sections:
        report["correctness"] = correctness("cuda")
        print(json.dumps(report, indent=1), flush=True)
    if "implementations" in args.sections:
        report["implementations"] = implementations(32, 512)
    if "throughput" not in args.sections:
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=1)
        return
    rows = []
    names = available_configs()
    for size in args.sizes:
        for family in ("hope", "hope-attention", "titans", "transformer"):
            name = f"{family}-{size}"
            if name not in names:
                continue
            model, vocab = build(name, args.implementation)
            for batch in args.batches:
                row = {"model": name, "params": count_parameters(model), **train_throughput(model, batch, 512, vocab)}
                rows.append(row)
                print(row, flush=True)
            del model
            torch.cuda.empty_cache()
    bench = HopeConfig(vocab_size=8192, hidden_size=256, num_hidden_layers=4, num_heads=4)
    for label, config in (("hope-bench", bench), ("llama-bench", matched_llama_config(bench))):
        model, vocab = build(config, args.implementation)
        for length in args.bench_lengths:
            row = {"model": label, "params": count_parameters(model),
                   **train_throughput(model, max(1, 8192 // length), length, vocab, repeats=3, warmup=1)}
            rows.append(row)
            print(row, flush=True)
        del model
        torch.cuda.empty_cache()
    report["throughput"] = rows
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
