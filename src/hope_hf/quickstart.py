"""The main job (`bash run.sh`): Hope against a same-size Transformer on a CPU, from nothing to a report.

Steps, each printed as it runs (training goes through `hope-hf train`, the same code users run):
1. train `hope-tiny` (modeling_configs/hope-tiny.json) on the embedded corpus (Python standard-library
   docstrings and language reference, built at run time, no download) with a byte-level BPE trained on
   its training split: AdamW, cosine LR, the CMS update schedule;
2. train a Llama with the same width, depth, heads, vocabulary and parameter count
   (`hope_hf.baselines.matched_llama_config`) identically: same tokenizer, blocks, order, steps, LR;
3. reload the saved Hope folder and recompute its held-out perplexity (`hope-hf eval`): it must equal the
   one measured at the end of training (the checkpoint is exact);
4. generate a greedy sample from each model;
5. write `report.md` with a PNG of both loss curves, and `metrics.json`; print their paths.

    .venv/bin/python -m hope_hf.quickstart --steps 150 --output-dir outputs/quickstart
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .cli import RESULTS_FILE, main as hope_hf

PROMPT = "Return the number of"


def loss_curve(run_dir: Path) -> tuple[list[int], list[float]]:
    """Logged training losses of a `hope-hf train` folder: (steps, losses)."""
    state = json.loads((run_dir / "trainer_state.json").read_text())
    entries = [entry for entry in state["log_history"] if "loss" in entry]
    return [entry["step"] for entry in entries], [entry["loss"] for entry in entries]


def plot_losses(runs: dict[str, Path], results: dict[str, dict], path: Path) -> None:
    """One PNG with the training-loss curve of each run; the legend gives the held-out perplexity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for name, run_dir in runs.items():
        steps, losses = loss_curve(run_dir)
        ppl = results[name]["validation"]["perplexity"]
        ax.plot(steps, losses, label=f"{name} ({results[name]['parameters']:,} params, held-out ppl {ppl:.1f})")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("training loss (nats/token)")
    ax.set_title("hope-tiny vs a same-size Transformer on Python docstrings")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def greedy_sample(model_dir: Path, prompt: str, max_new_tokens: int) -> str:
    """A greedy continuation of `prompt` by the saved model in `model_dir`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import hope_hf  # noqa: F401  (registers the Hope Auto classes)

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0], skip_special_tokens=True)


def run(argv: list[str], what: str) -> None:
    print(f"\n$ hope-hf {' '.join(argv)}", flush=True)
    code = hope_hf(argv)
    if code != 0:
        raise SystemExit(f"{what} failed (exit status {code})")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="outputs/quickstart", help="replaced on every run")
    parser.add_argument("--steps", type=int, default=150, help="optimiser steps of each model")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup-steps", type=int, default=10)
    parser.add_argument("--sample-tokens", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads. 1 by default: on a machine shared with other jobs, two threads per "
                             "process on two busy cores made a hope-tiny step 10x slower (oversubscription); "
                             "--threads 2 is faster on an idle two-core machine")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    out = Path(args.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    hope_dir, llama_dir = out / "hope-tiny", out / "transformer-tiny"
    threads = ["--threads", str(args.threads)]
    common = ["--data", "embedded", "--max-steps", str(args.steps), "--batch-size", str(args.batch_size),
              "--block-size", str(args.block_size), "--lr", str(args.lr), "--warmup-steps", str(args.warmup_steps),
              "--logging-steps", "5", "--save-steps", str(args.steps), "--save-total-limit", "1",
              "--seed", str(args.seed), "--overwrite"]

    print(f"[1/5] Hope: hope-tiny on the embedded corpus, {args.steps} steps of {args.batch_size} x "
          f"{args.block_size} tokens", flush=True)
    run([*threads, "train", "--config", "hope-tiny", *common, "--output-dir", str(hope_dir)], "training Hope")
    hope_seconds = time.time() - start

    from transformers import AutoConfig

    import hope_hf  # noqa: F401

    from .baselines import matched_llama_config

    llama_config = matched_llama_config(AutoConfig.from_pretrained(hope_dir))
    llama_config_path = out / "transformer-tiny.json"
    llama_config.to_json_file(llama_config_path)
    print(f"\n[2/5] Transformer: a Llama of the same width, depth, heads, vocabulary and size "
          f"(MLP width {llama_config.intermediate_size}), trained identically", flush=True)
    run([*threads, "train", "--config", str(llama_config_path), "--tokenizer", str(hope_dir), *common,
         "--output-dir", str(llama_dir)], "training the Transformer")
    llama_seconds = time.time() - start - hope_seconds

    results = {name: json.loads((d / RESULTS_FILE).read_text())
               for name, d in (("hope-tiny", hope_dir), ("transformer-tiny", llama_dir))}
    print("\n[3/5] reload check: held-out perplexity of the saved Hope folder, recomputed", flush=True)
    eval_file = out / "hope-tiny-eval.json"
    run([*threads, "eval", str(hope_dir), "--data", "embedded", "--block-size", str(args.block_size),
         "--batch-size", str(args.batch_size), "--output", str(eval_file)], "evaluating the saved Hope")
    reloaded_ppl = json.loads(eval_file.read_text())["perplexity"]["perplexity"]
    trained_ppl = results["hope-tiny"]["validation"]["perplexity"]
    reload_exact = abs(reloaded_ppl - trained_ppl) <= 1e-9 * trained_ppl
    print(f"      after training {trained_ppl:.6f}, reloaded {reloaded_ppl:.6f}: "
          f"{'identical' if reload_exact else 'DIFFERENT'}", flush=True)
    if not reload_exact:
        raise SystemExit("the reloaded Hope scores differently from the trained one")

    print(f"\n[4/5] greedy samples, prompt {PROMPT!r}", flush=True)
    samples = {name: greedy_sample(d, PROMPT, args.sample_tokens)
               for name, d in (("hope-tiny", hope_dir), ("transformer-tiny", llama_dir))}
    for name, text in samples.items():
        print(f"      {name}: {text!r}", flush=True)

    plot = out / "loss_curves.png"
    plot_losses({"hope-tiny": hope_dir, "transformer-tiny": llama_dir}, results, plot)
    metrics = {
        "steps": args.steps, "batch_size": args.batch_size, "block_size": args.block_size, "lr": args.lr,
        "tokens_trained_per_model": args.steps * args.batch_size * args.block_size,
        "results": results, "reloaded_hope_perplexity": reloaded_ppl, "reload_exact": reload_exact,
        "prompt": PROMPT, "samples": samples,
        "seconds": {"hope_training": hope_seconds, "transformer_training": llama_seconds, "total": time.time() - start},
        "paths": {"hope_model": str(hope_dir), "transformer_model": str(llama_dir), "plot": str(plot)},
    }
    metrics_file = out / "metrics.json"
    metrics_file.write_text(json.dumps(metrics, indent=2))
    report = out / "report.md"
    report.write_text(_report_markdown(metrics, plot.name))
    print(f"\n[5/5] report: {report}\n      plot: {plot}\n      metrics: {metrics_file}\n"
          f"      Hope checkpoint (model + tokenizer, loads with AutoModelForCausalLM): {hope_dir}\n"
          f"      Transformer checkpoint: {llama_dir}\n      total {metrics['seconds']['total']:.0f} s", flush=True)
    return metrics


def _report_markdown(m: dict, plot_name: str) -> str:
    hope, llama = m["results"]["hope-tiny"], m["results"]["transformer-tiny"]
    rows = "".join(
        f"| {name} | {r['parameters']:,} | {r['first_loss']:.3f} | {r['last_loss']:.3f} | "
        f"{r['validation']['perplexity']:.2f} | {r['train_seconds']:.0f} |\n"
        for name, r in (("hope-tiny (Hope)", hope), ("transformer-tiny (Llama)", llama)))
    samples = "".join(f"{name}:\n\n```text\n{text.rstrip()}\n```\n\n" for name, text in m["samples"].items())
    return (
        "# hope-hf main job: Hope vs a same-size Transformer\n\n"
        f"Both trained with `hope-hf train` on the embedded corpus (Python standard-library docstrings and "
        f"language reference), the same byte-level BPE tokenizer, {m['steps']} AdamW steps of "
        f"{m['batch_size']} x {m['block_size']} tokens ({m['tokens_trained_per_model']:,} tokens each), "
        f"cosine LR peaking at {m['lr']}, seed 0. Hope uses the CMS update schedule (levels every 1, 4 and 16 "
        "steps). Held-out perplexity is exact (every held-out block scored on its own), not `evaluate`'s metric, "
        "which downloads a model.\n\n"
        "| model | parameters | first loss | last logged loss | held-out perplexity | training s |\n"
        "|---|---|---|---|---|---|\n" + rows +
        f"\n![training loss of both models]({plot_name})\n\n"
        f"Reloaded Hope checkpoint: held-out perplexity {m['reloaded_hope_perplexity']:.4f} "
        f"({'identical to' if m['reload_exact'] else 'DIFFERENT from'} the one measured after training).\n\n"
        f"Greedy samples for the prompt `{m['prompt']}` (trailing blank lines cut):\n\n{samples}"
        f"Checkpoints (model.safetensors, config, the model's .py files, tokenizer): `{m['paths']['hope_model']}`, "
        f"`{m['paths']['transformer_model']}`.\n\nWall time: {m['seconds']['total']:.0f} s "
        f"(Hope training {m['seconds']['hope_training']:.0f} s, Transformer training "
        f"{m['seconds']['transformer_training']:.0f} s, including data, tokenizer and evaluation).\n"
    )


if __name__ == "__main__":
    main()
