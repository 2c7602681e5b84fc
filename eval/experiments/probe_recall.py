"""In-context recall of trained study models: how much better a model predicts a passage the second time it reads it.

Each input is a held-out passage of L tokens followed by the same passage again (2L tokens; L ≤ 128 keeps the input
inside the studies' 256-token training length, so no model is asked to extrapolate). The same L − 1 target tokens
(the passage's tokens 1 … L−1) are predicted twice: in the first copy from the passage so far, in the second also
from the whole first copy. The **copy gain** = loss(first copy) − loss(second copy), nats per token, and the
top-1 accuracy on the second copy say how much of what the model read it can retrieve: a Transformer can look the
passage up (attention), a recurrent memory only has what it stored in its state. For models with self-modifying
memories also the same with no memory writes (`probe_state.frozen_memories`): the stacked causal convolutions are
then the only mixing of tokens, so what remains of the gain is theirs, and the difference is the memory's.

This complements `probe_state.py` (what the inner loop is worth on ordinary held-out text): ordinary text needs
little recall at this length, a repeated passage needs all of it.

    python eval/experiments/probe_recall.py --study lm_comparison \\
        --runs hope-tiny@rust_books titans-tiny@rust_books transformer-tiny@rust_books
    python eval/experiments/probe_recall.py --study ablations --runs eta-init-0.1@embedded --lengths 64 128 \\
        --json eval/experiments/results/cpu/probes/ablations/eta-init-0.1@embedded.recall.json    # also as JSON

Each run's model is its finished model (`checkpoints/<study>/<run>.final/`, kept by the runner) or, with
`--checkpoint` (one run), a training checkpoint (`<run>.pt` or `<run>.diverged.pt`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from hope_hf.baselines import count_parameters

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import probe_state  # noqa: E402


def copy_inputs(text: torch.Tensor, length: int, count: int) -> torch.Tensor:
    """[count, 2·length] int64: consecutive passages of `text` (1-D), each followed by itself."""
    if count * length > len(text):
        raise ValueError(f"{count} passages of {length} tokens need {count * length} tokens; the text has {len(text)}")
    passages = text[: count * length].view(count, length).long()
    return torch.cat([passages, passages], dim=1)


def copy_losses(model, inputs: torch.Tensor, batch_size: int = 16) -> dict[str, float]:
    """Mean next-token loss on the first and on the second copy of `inputs` [N, 2L] (`copy_inputs`), over the same
    targets (tokens 1 … L−1 of the passage), and the top-1 accuracy on each copy.

    Position p predicts token p + 1: the first copy's targets are predicted at positions 0 … L−2, the second's at
    L … 2L−2 (the second copy's token 0, predicted at the end of the first copy, is left out of both)."""
    length = inputs.shape[1] // 2
    first, second = slice(0, length - 1), slice(length, 2 * length - 1)
    sums = {"first": 0.0, "second": 0.0, "first_accuracy": 0.0, "second_accuracy": 0.0}
    with torch.no_grad():
        for i in range(0, len(inputs), batch_size):
            ids = inputs[i: i + batch_size]
            logits = model(ids, use_cache=False).logits.float()
            for name, where in (("first", first), ("second", second)):
                predicted = logits[:, where]
                targets = ids[:, where.start + 1: where.stop + 1]
                sums[name] += float(torch.nn.functional.cross_entropy(
                    predicted.transpose(1, 2), targets, reduction="sum"))
                sums[f"{name}_accuracy"] += float((predicted.argmax(-1) == targets).sum())
    count = len(inputs) * (length - 1)
    return {name: value / count for name, value in sums.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", required=True, choices=sorted(probe_state.STUDIES))
    parser.add_argument("--runs", nargs="+", required=True, help="run names of the study (`<study>.py --list`)")
    parser.add_argument("--checkpoint", type=Path, help="a training checkpoint instead of the final model (one run)")
    parser.add_argument("--checkpoint-dir", type=Path, default=common.CHECKPOINT_DIR)
    parser.add_argument("--lengths", nargs="+", type=int, default=[32, 64, 128], help="passage lengths L")
    parser.add_argument("--passages", type=int, default=64, help="held-out passages per length (default 64)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write every row printed to this JSON file (with the command, "
                        "the git commit and the versions), to commit beside the results")
    args = parser.parse_args(argv)
    if min(args.lengths) < 2:
        raise SystemExit(f"--lengths must be >= 2, got {args.lengths}")
    for name in ("passages", "threads"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name} must be >= 1, got {getattr(args, name)}")
    torch.set_num_threads(args.threads)
    runs = {run.name: run for run in probe_state.STUDIES[args.study]()}
    unknown = [name for name in args.runs if name not in runs]
    if unknown:
        raise SystemExit(f"unknown run(s) {unknown}; runs of {args.study}: {sorted(runs)}")
    if args.checkpoint is not None and len(args.runs) != 1:
        raise SystemExit(f"--checkpoint is one run's; got {len(args.runs)} runs")
    rows = []
    print("| run | step | params | L | loss, first copy | loss, second copy | copy gain (nats) | accuracy, second copy "
          "| copy gain with no memory writes |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.runs:
        run = runs[name]
        model, step = probe_state.load_model(run, args.checkpoint, args.checkpoint_dir, args.study)
        self_modifying = getattr(model.config, "mixer", None) == "self_modifying"
        text = common.load_corpus(run.data, model.config.vocab_size).validation
        params = count_parameters(model)
        for length in args.lengths:
            inputs = copy_inputs(text, length, args.passages)
            losses = copy_losses(model, inputs)
            frozen, without = "–", None
            if self_modifying:
                with probe_state.frozen_memories():
                    without = copy_losses(model, inputs)
                frozen = f"{without['first'] - without['second']:+.3f}"
            rows.append({"run": name, "step": step, "parameters": params, "length": length, "passages": args.passages,
                         **{f"loss_{k}" if "accuracy" not in k else k: v for k, v in losses.items()},
                         "copy_gain": losses["first"] - losses["second"],
                         "copy_gain_without_writes": None if without is None else without["first"] - without["second"]})
            print(f"| {name} | {step} | {params:,} | {length} | {losses['first']:.3f} | {losses['second']:.3f} "
                  f"| {losses['first'] - losses['second']:+.3f} | {losses['second_accuracy']:.3f} | {frozen} |")
    if args.json is not None:
        probe_state.write_report(args.json, {"study": args.study, "rows": rows}, "probe_recall.py", argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
