"""How large a trained study model's fast weights grow over a long input (docs/FAITHFULNESS.md, Known risks 2).

Feeds a run's model long inputs through its cache, in pieces, and prints after each piece the largest fast weight
(max |A|, |B| over the memories of each layer) and whether the logits so far are finite; then the held-out loss by
position over rows of that length (does the model degrade past its training length?), and the held-out loss at
the training length with and without memory writes (what the inner loop is worth), and per layer the rates the
model learned to use there (η_t, its sum over a main-memory chunk, 1 − α_t: `rate_statistics`). Three inputs
from the run's own corpus: the held-out text, its first 40 tokens repeated, and one token repeated (the last
two are the self-similar keys under which a chunk's inner steps add up). The cached, piecewise forward equals one
full forward (`tests/test_generation.py`), so this is the state a full forward of that length would end in.

    python eval/experiments/probe_state.py --study lm_comparison --run hope-small@embedded            # final model
    python eval/experiments/probe_state.py --study ablations --run expansion-1@embedded --length 1024 \\
        --json eval/experiments/results/cpu/probes/ablations/expansion-1@embedded.state.json      # also as JSON
    python eval/experiments/probe_state.py --study lm_comparison --run titans-small@embedded \\
        --checkpoint eval/experiments/checkpoints/lm_comparison/titans-small@embedded.diverged.pt --length 4096

The model is the run's finished model (`checkpoints/<study>/<run>.final/`, kept by the runner) or, with
`--checkpoint`, a training checkpoint (`<run>.pt` or `<run>.diverged.pt`).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

#: study name -> its runs (the study names of the result and checkpoint folders).
STUDIES = {
    "lm_comparison": lambda: importlib.import_module("lm_comparison").runs(),
    "ablations": lambda: importlib.import_module("ablations").runs(size="tiny"),
    "ablations_small": lambda: importlib.import_module("ablations").runs(size="small"),
    "cms_schedule": lambda: importlib.import_module("cms_schedule").runs(),
}


def load_model(run: common.Run, checkpoint: Path | None, checkpoint_dir: Path, study: str):
    """The run's model from a training checkpoint, or from its saved final model; with the step it holds. Ready to
    probe: in eval mode, and a Hope model's memories eager (`frozen_memories` swaps an eager function)."""
    from transformers import AutoModelForCausalLM

    if checkpoint is not None:
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        model = common.build_model(common.build_config(run))
        model.load_state_dict(state["model"])
        step = state["step"]
    else:
        final = common.final_model_path(checkpoint_dir, study, run.name)
        if not final.is_dir():
            raise SystemExit(f"no final model of {run.name} at {final}: train the run, or pass --checkpoint")
        model, step = AutoModelForCausalLM.from_pretrained(final), "final"
    model.eval()
    if hasattr(model.config, "memory_implementation"):
        model.set_memory_implementation("chunk")
    return model, step


def largest_fast_weights(cache) -> list[float]:
    """Per self-modifying layer, max |A|, |B| over its memories (NaN where a value is not finite)."""
    out = []
    for layer in cache.layers:
        memory = layer.state.memory
        peak = max(float(memory.w_in.abs().max()), float(memory.w_out.abs().max()))
        out.append(peak if math.isfinite(peak) else float("nan"))
    return out


def probe(model, ids: torch.Tensor, piece: int) -> list[tuple[int, bool, list[float]]]:
    """Feed `ids` [1, T] in pieces of `piece` tokens through a cache; after each piece: (tokens so far, every logit
    so far finite, largest fast weight per layer)."""
    from hope_hf import HopeCache

    cache, finite, rows = HopeCache(model.config), True, []
    with torch.no_grad():
        for start in range(0, ids.shape[1], piece):
            logits = model(ids[:, start:start + piece], past_key_values=cache, use_cache=True).logits
            finite = finite and bool(torch.isfinite(logits).all())
            rows.append((min(start + piece, ids.shape[1]), finite, largest_fast_weights(cache)))
    return rows


@contextlib.contextmanager
def frozen_memories():
    """Inside: no memory writes (η = 0, α = β = 1 for every token, as for padding), so every memory stays at its
    meta-learned initial state and acts as a static MLP; the causal convolution is then a Hope layer's only mixing
    of tokens. For the eager memory paths (`memory_implementation` "chunk" or "naive"): it swaps
    `memory_ops.projections`, which a compiled graph has already traced."""
    from hope_hf import memory_ops

    original = memory_ops.projections

    def no_writes(memory_out, inputs, rule):
        q, k, v, eta, log_alpha, log_beta, write = original(memory_out, inputs, rule)
        zero = torch.zeros_like(eta)
        return q, k, v, zero, zero, None if log_beta is None else zero, zero

    memory_ops.projections = no_writes
    try:
        yield
    finally:
        memory_ops.projections = original


@contextlib.contextmanager
def recorded_rates(model):
    """Inside: every self-modifying layer's per-token rates η_t and log α_t (the `projections` of each chunk, eager
    memory paths) are recorded; yields {layer index: list of (eta, log_alpha) [b, H, n]} in call order."""
    from hope_hf import memory_ops
    from hope_hf.self_modifying import SelfModifyingTitans

    original, current, record = memory_ops.projections, [None], {}
    layers = [m for m in model.modules() if isinstance(m, SelfModifyingTitans)]
    handles = [layer.register_forward_pre_hook(lambda _m, _a, i=i: current.__setitem__(0, i))
               for i, layer in enumerate(layers)]

    def recording(memory_out, inputs, rule):
        out = original(memory_out, inputs, rule)
        eta, log_alpha = out[3:5]
        record.setdefault(current[0], []).append((eta.detach(), log_alpha.detach()))
        return out

    memory_ops.projections = recording
    try:
        yield record
    finally:
        memory_ops.projections = original
        for handle in handles:
            handle.remove()


def rate_statistics(model, blocks: torch.Tensor, batch_size: int = 16) -> list[dict[str, float]]:
    """Per self-modifying layer, what its learned rates are on `blocks` [N, T] (every token, head and block):
    the inner learning rate η_t (mean, 90th percentile, max), the summed step of a main-memory chunk
    Σ_{t in chunk} η_t (mean, max; the quantity whose size decides whether a chunk's inner steps overshoot,
    docs/FAITHFULNESS.md Known risks 2), the forgetting per token 1 − α_t (mean) and the retention over one block
    of T tokens, the mean over heads and blocks of Π_t α_t (how much of the block-start state survives the block).
    Needs T to be a multiple of the main memory's chunk C_m."""
    chunk, T = model.config.memory_chunk_size, blocks.shape[1]
    if T % chunk:
        raise ValueError(f"blocks of {T} tokens are not a multiple of memory_chunk_size={chunk}")
    per_layer: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    with torch.no_grad():
        for i in range(0, len(blocks), batch_size):
            with recorded_rates(model) as record:
                model(blocks[i: i + batch_size], use_cache=False)
            for layer, calls in record.items():
                eta, log_alpha = (torch.cat(parts, dim=2) for parts in zip(*calls))      # [b, H, T] each
                per_layer.setdefault(layer, []).append((eta, log_alpha))
    rows = []
    for layer in sorted(per_layer):
        eta = torch.cat([e for e, _ in per_layer[layer]]).double()
        log_alpha = torch.cat([a for _, a in per_layer[layer]]).double()
        chunk_sum = eta.unflatten(2, (T // chunk, chunk)).sum(-1)
        rows.append({"eta_mean": float(eta.mean()), "eta_p90": float(eta.flatten().quantile(0.9)),
                     "eta_max": float(eta.max()), "chunk_step_mean": float(chunk_sum.mean()),
                     "chunk_step_max": float(chunk_sum.max()), "forget_mean": float((-log_alpha.expm1()).mean()),
                     "block_retention": float(log_alpha.sum(-1).exp().mean())})
    return rows


def loss_by_position(model, rows: torch.Tensor, bins: list[tuple[int, int]]) -> list[float]:
    """Mean next-token loss of `rows` [N, T] over the predicted positions [a, b) of each bin (position p predicts
    token p + 1): whether the model degrades past its training length."""
    with torch.no_grad():
        logits = model(rows, use_cache=False).logits
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2).float(), rows[:, 1:], reduction="none")
    per_position = loss.mean(0)
    return [float(per_position[a:b].mean()) for a, b in bins]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", required=True, choices=sorted(STUDIES))
    parser.add_argument("--run", required=True, help="a run name of the study (`<study>.py --list`)")
    parser.add_argument("--checkpoint", type=Path, help="a training checkpoint instead of the final model")
    parser.add_argument("--checkpoint-dir", type=Path, default=common.CHECKPOINT_DIR)
    parser.add_argument("--length", type=int, default=4096, help="tokens of each input (default 4096)")
    parser.add_argument("--piece", type=int, default=512, help="tokens per call (default 512)")
    parser.add_argument("--rows", type=int, default=4, help="held-out rows of --length tokens for the loss by "
                        "position (default 4; 0 skips it)")
    parser.add_argument("--blocks", type=int, default=48, help="held-out blocks for the with / without memory "
                        "writes comparison (default 48)")
    parser.add_argument("--block-size", type=int, default=common.TrainSettings().block_size,
                        help="tokens per block (default: the studies' training length)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write every figure printed to this JSON file (with the "
                        "command, the git commit and the versions), to commit beside the results")
    args = parser.parse_args(argv)
    for name in ("length", "piece", "threads", "blocks", "block_size"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.rows < 0:
        raise SystemExit(f"--rows must be >= 0, got {args.rows}")
    torch.set_num_threads(args.threads)
    runs = {run.name: run for run in STUDIES[args.study]()}
    if args.run not in runs:
        raise SystemExit(f"unknown run {args.run!r}; runs of {args.study}: {sorted(runs)}")
    run = runs[args.run]
    model, step = load_model(run, args.checkpoint, args.checkpoint_dir, args.study)
    if getattr(model.config, "mixer", None) != "self_modifying":
        raise SystemExit(f"{args.run} has no self-modifying memory to probe (model_type {model.config.model_type})")
    corpus = common.load_corpus(run.data, model.config.vocab_size)
    text = corpus.validation.long()
    if len(text) < args.length:
        raise SystemExit(f"--length {args.length} exceeds the held-out text ({len(text)} tokens)")
    inputs = {"held-out text": text[: args.length],
              "40 tokens repeated": text[:40].repeat(args.length // 40 + 1)[: args.length],
              "one token repeated": text[5:6].repeat(args.length)}
    report = {"study": args.study, "run": args.run, "step": step, "checkpoint": None if args.checkpoint is None
              else str(args.checkpoint), "fast_weights": {}}
    print(f"{args.run} (step {step}): largest fast weight per layer after each {args.piece} tokens")
    for label, ids in inputs.items():
        print(f"\n{label}:\n\n| tokens | finite logits | " + " | ".join(
            f"layer {i}" for i in range(model.config.num_hidden_layers)) + " |")
        print("|---:|---|" + "---:|" * model.config.num_hidden_layers)
        report["fast_weights"][label] = []
        for tokens, finite, peaks in probe(model, ids[None], args.piece):
            print(f"| {tokens} | {'yes' if finite else 'no'} | " + " | ".join(f"{p:.2g}" for p in peaks) + " |")
            report["fast_weights"][label].append({"tokens": tokens, "finite_logits": finite, "largest": peaks})
    blocks = corpus.blocks("validation", args.block_size)[: args.blocks]
    with_writes = common.evaluate(model, blocks, 16, torch.device("cpu"))
    with frozen_memories():
        without = common.evaluate(model, blocks, 16, torch.device("cpu"))
    print(f"\nheld-out loss on {len(blocks)} blocks of {args.block_size} tokens: {with_writes:.4f} as trained, "
          f"{without:.4f} with no memory writes (every memory at its initial state): the inner loop is worth "
          f"{without - with_writes:+.4f} nats")
    report["held_out"] = {"blocks": len(blocks), "block_size": args.block_size, "loss_with_writes": with_writes,
                          "loss_without_writes": without, "inner_loop_worth_nats": without - with_writes}
    print(f"\nlearned rates on those blocks, per layer (every token and head; chunk step = sum of eta over a "
          f"main-memory chunk of {model.config.memory_chunk_size}; retention = product of alpha over a block):\n")
    print("| layer | eta mean | eta p90 | eta max | chunk step mean | chunk step max | 1 - alpha mean "
          "| block retention |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    report["rates"] = rate_statistics(model, blocks)
    for i, row in enumerate(report["rates"]):
        print(f"| {i} | " + " | ".join(f"{row[key]:.3g}" for key in (
            "eta_mean", "eta_p90", "eta_max", "chunk_step_mean", "chunk_step_max", "forget_mean",
            "block_retention")) + " |")
    if args.rows:
        if len(text) < args.rows * args.length:
            raise SystemExit(f"--rows {args.rows} x --length {args.length} exceeds the held-out text ({len(text)})")
        edges = [0] + [e for e in (64, 256, 512, 1024, 2048, 4096, 8192, 16384) if e < args.length - 1]
        bins = list(zip(edges, edges[1:] + [args.length - 1]))
        losses = loss_by_position(model, text[: args.rows * args.length].view(args.rows, args.length), bins)
        print(f"\nheld-out loss by position ({args.rows} rows of {args.length} tokens):\n")
        print("| " + " | ".join(f"{a}-{b}" for a, b in bins) + " |\n|" + "---:|" * len(bins))
        print("| " + " | ".join(f"{loss:.3f}" for loss in losses) + " |")
        report["loss_by_position"] = {"rows": args.rows, "length": args.length, "bins": [
            {"from": a, "to": b, "loss": loss} for (a, b), loss in zip(bins, losses, strict=True)]}
    if args.json is not None:
        write_report(args.json, report, "probe_state.py", argv)
    return 0


def write_report(path: Path, report: dict, script: str, argv: list[str] | None) -> None:
    """A probe's figures as JSON, with what made them (the command line, git commit, versions and CPU)."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    report = {**report, "command": " ".join(["python", f"eval/experiments/{script}", *arguments]),
              "git_commit": common.git_commit(), "torch": torch.__version__,
              "transformers": common._transformers_version(),
              "device": common.device_name(torch.device("cpu"))}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\n-> {path}")


if __name__ == "__main__":
    raise SystemExit(main())
