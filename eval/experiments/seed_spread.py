"""How much a result moves with the initialisation seed: the same runs of a study trained from other seeds.

Train the runs again with `--seed N` into another results folder (the tokens and their order stay the same: they
follow the settings' separate `data_seed`), then compare the folders:

    python eval/experiments/lm_comparison.py --only hope-tiny@embedded --seed 1 \\
        --results-dir eval/experiments/results/cpu-seed1 --checkpoint-dir eval/experiments/checkpoints/seed1
    python eval/experiments/seed_spread.py lm_comparison eval/experiments/results/cpu eval/experiments/results/cpu-seed1

Prints one row per run found in at least two folders: the validation perplexity of each seed, the mean and the
spread (max / min − 1). A difference between two single-seed runs smaller than the spread is not a result.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", help="the study's folder name under each results folder, e.g. lm_comparison")
    parser.add_argument("results_dirs", nargs="+", type=Path, help="results folders, one training per run each")
    args = parser.parse_args(argv)
    table = common.seed_spread_table(args.results_dirs, args.study)
    if len(table.splitlines()) == 2:
        print(f"no run of {args.study} has results in two of {[str(d) for d in args.results_dirs]}")
        return 1
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
