"""Per-token decoding latency and cache size of Hope, Hope-Attention and Titans beside a same-size Llama.

A thin wrapper: `hope-hf bench --parts decode ...` (the full report is `hope-hf bench`; the code and what
each figure means are in `src/hope_hf/benchmark.py`). For each model and context length T: prefill T random
tokens into the cache, then time greedy one-token steps (batch 1; median after warm-up, round robin over every
model and context so a change of load hits all alike). Hope's recurrent cache has a fixed size, so its latency
should not grow with T; a Llama's key/value cache grows linearly, and so does its per-token attention cost.

CPU smoke (seconds):  .venv/bin/python eval/bench_decode.py --lengths 64 256 --decode-steps 8
Full run (minutes on 2 cores):  .venv/bin/python eval/bench_decode.py --lengths 512 2048 8192
"""

from __future__ import annotations

import sys

from hope_hf.cli import bench_script

if __name__ == "__main__":
    sys.exit(bench_script(sys.argv[1:], ["decode"]))
