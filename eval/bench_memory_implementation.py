"""Eager vs compiled chunk step (`HopeConfig.memory_implementation`) on one training step at the bench shape.

Hidden 256, 4 layers, 4 heads, vocab 8192, batch 1, one torch thread; prints the first call's wall time (with
compilation) and the CPU time of the next two forward + backward steps.

    .venv/bin/python eval/bench_memory_implementation.py 512 chunk
    .venv/bin/python eval/bench_memory_implementation.py 512 compiled
"""

import sys
import time

import torch

from hope_hf import HopeConfig, HopeForCausalLM


def main() -> None:
    length, implementation = int(sys.argv[1]), sys.argv[2]
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = HopeConfig(vocab_size=8192, hidden_size=256, num_hidden_layers=4, num_heads=4, memory_expansion=2,
                        memory_implementation=implementation)       # r = 2: the setting the README's figures measured
    model = HopeForCausalLM(config)
    ids = torch.randint(0, 8192, (1, length))

    def step():
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()

    start = time.perf_counter()
    step()
    print(f"first step (with compilation) {time.perf_counter() - start:.1f} s", flush=True)
    for _ in range(2):
        start = time.process_time()
        step()
        seconds = time.process_time() - start
        print(f"T={length} {implementation}: {seconds:.2f} CPU-s, {length / seconds:.0f} tokens/s", flush=True)


if __name__ == "__main__":
    main()
