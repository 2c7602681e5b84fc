"""Training and inference throughput of Hope beside a same-size Llama, measured in one run.

Prints tokens/s for each model and sequence length, and Hope / Llama as ratios (medians of repeated
steps after warm-up). The measuring code is `hope_hf.benchmark`; `hope-hf bench` takes the same options.

CPU smoke (a few minutes on 2 cores):
    .venv/bin/python eval/bench_throughput.py --lengths 512 2048 --repeats 3
"""

from __future__ import annotations

import sys

from hope_hf.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
