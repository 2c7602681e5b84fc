"""Class-incremental continual learning: the same task sequence learned by a same-size Transformer
(plain fine-tuning, EWC, LwF), Hope without and with the CMS schedule. Reports average accuracy,
average forgetting and backward transfer; writes `continual_table.{json,md}` and `accuracy_matrices.png`.

    # the full setting (synthetic tasks, no download): GPU recommended for the Hope methods
    python eval/continual_learning.py --setting full --device cuda
    # CLINC150 / Banking77 / DBpedia-14: a Hub name, or a local folder with train.jsonl / test.jsonl
    python eval/continual_learning.py --setting full --set dataset=banking77 num_tasks=7 classes_per_task=10
    # the tiny setting of the test suite (seconds)
    python eval/continual_learning.py --setting tiny
"""

from __future__ import annotations

import argparse
import dataclasses

from hope_hf.continual import METHODS, SETTINGS, Setting, run_benchmark


def parse_overrides(pairs: list[str]) -> dict:
    """`["lr=1e-3", "dataset=banking77"]` → typed `Setting` field values."""
    types = {f.name: f.type for f in dataclasses.fields(Setting)}
    overrides = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in types or not value:
            raise SystemExit(f"--set takes FIELD=VALUE with FIELD one of {sorted(types)}, got {pair!r}")
        overrides[key] = {"int": int, "float": float}.get(types[key], str)(value)
    return overrides


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", default="full", choices=sorted(SETTINGS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE", help="override Setting fields")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output-dir", default="outputs/eval/continual")
    args = parser.parse_args(argv)
    return run_benchmark(args.methods, args.setting, args.output_dir, device=args.device, **parse_overrides(args.set))


if __name__ == "__main__":
    main()
