"""Training and inference throughput of Hope, Hope-Attention and Titans beside a same-size Llama.

A thin wrapper: `hope-hf bench --parts train infer memory ...` (the full report, with decoding, is
`hope-hf bench`; the code and what each figure means are in `src/hope_hf/benchmark.py`). Any option of
`hope-hf bench` may follow, e.g. `--lengths`, `--tokens-per-step`, `--repeats`, `--models`, `--json`.

CPU smoke (a minute on 2 cores):
    .venv/bin/python eval/bench_throughput.py --lengths 128 256 --tokens-per-step 256 --repeats 2
"""

from __future__ import annotations

import sys

from hope_hf.cli import bench_script

if __name__ == "__main__":
    sys.exit(bench_script(sys.argv[1:], ["train", "infer", "memory"]))
