"""Long context: RULER-style needle in a haystack (pass-key, number, UUID, multi-key; exact match) at chosen
lengths, and perplexity by position on long documents, for one or more models. Writes `niah.{json,md}`,
`ppl_by_position.{json,md}` and `long_context.png`.

    # the paper's lengths (4K, 8K, 16K); Hope beside a baseline
    python eval/long_context.py --model hope=runs/hope --model transformer=runs/llama --device cuda
    # CPU smoke
    python eval/long_context.py --model runs/hope --lengths 512 1024 --samples 4 --ppl-length 1024 --ppl-documents 2
"""

from __future__ import annotations

import argparse

from hope_hf.evaluation import parse_models
from hope_hf.long_context import NIAH_TASKS, run_long_context


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="NAME=FOLDER or FOLDER (repeat to compare)")
    parser.add_argument("--tasks", nargs="+", default=list(NIAH_TASKS), choices=list(NIAH_TASKS))
    parser.add_argument("--lengths", nargs="+", type=int, default=[4096, 8192, 16384])
    parser.add_argument("--samples", type=int, default=20, help="samples per task and length (depths 0 … 1)")
    parser.add_argument("--ppl-length", type=int, default=4096)
    parser.add_argument("--ppl-documents", type=int, default=8, help="0 skips perplexity by position")
    parser.add_argument("--ppl-bins", type=int, default=16)
    parser.add_argument("--ppl-source", default=None, help="folder of .txt/.md/.py or a .jsonl with 'text' "
                                                           "(default: the standard library's .py files)")
    parser.add_argument("--haystack-file", default=None, help="essay haystack text (default: stdlib docstrings)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output-dir", default="outputs/eval/long_context")
    parser.add_argument("--trust-remote-code", action="store_true")
    args = parser.parse_args(argv)
    return run_long_context(parse_models(args.model), output_dir=args.output_dir, tasks=args.tasks,
                            lengths=args.lengths, samples=args.samples, ppl_length=args.ppl_length,
                            ppl_documents=args.ppl_documents, ppl_bins=args.ppl_bins, ppl_source=args.ppl_source,
                            haystack_file=args.haystack_file, seed=args.seed, device=args.device,
                            trust_remote_code=args.trust_remote_code)


if __name__ == "__main__":
    main()
