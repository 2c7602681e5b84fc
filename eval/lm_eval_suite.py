"""The paper's zero-shot suite (Nested Learning Table 2 columns) with lm-evaluation-harness, for Hope and
baselines on the same tasks; prints the table and writes `lm_eval_table.{json,md}` and raw results.

    # online (the Hub datasets); one row per model
    python eval/lm_eval_suite.py --model hope=runs/hope --model transformer=runs/llama --output-dir outputs/eval
    # offline: local copies of the upstream files, DATA/<task>/<split>.jsonl (see README, "Evaluation")
    python eval/lm_eval_suite.py --model runs/hope --offline-dir DATA
    # write DATA on a machine with Hub access
    python eval/lm_eval_suite.py --export-offline DATA

Hope folders run with `HopeLM` (`--model hope`), other models with lm-eval's `HFLM`. `--limit 20` for a smoke.
"""

from __future__ import annotations

import argparse

from hope_hf.evaluation import PAPER_SUITE, export_offline_data, parse_models, run_lm_eval_suite


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=[], help="NAME=FOLDER or FOLDER (repeat to compare)")
    parser.add_argument("--tasks", nargs="+", default=None, choices=[t.name for t in PAPER_SUITE],
                        help="a subset of the suite (default: all nine)")
    parser.add_argument("--offline-dir", default=None, help="local upstream files DATA/<task>/<split>.jsonl")
    parser.add_argument("--export-offline", metavar="DATA", default=None,
                        help="download each task's evaluation split into DATA (needs Hub access) and exit")
    parser.add_argument("--output-dir", default="outputs/eval/lm_eval")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--limit", type=float, default=None, help="examples per task (smoke runs)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-length", type=int, default=None,
                        help="rolling-perplexity window / context limit (set it to compare models on equal windows)")
    parser.add_argument("--trust-remote-code", action="store_true")
    args = parser.parse_args(argv)
    if args.export_offline:
        written = export_offline_data(args.export_offline, args.tasks)
        for task, path in written.items():
            print(f"{task}: {path}")
        return {"exported": {task: str(path) for task, path in written.items()}}
    if not args.model:
        parser.error("--model is required (or --export-offline)")
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    return run_lm_eval_suite(parse_models(args.model), tasks=args.tasks, offline_dir=args.offline_dir,
                             output_dir=args.output_dir, batch_size=args.batch_size, limit=limit, device=args.device,
                             max_length=args.max_length, trust_remote_code=args.trust_remote_code)


if __name__ == "__main__":
    main()
