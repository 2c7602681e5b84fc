"""A training step of `hope-hf bench`'s Hope with this checkout's memory beside another git revision's, in one run.

Loads `src/hope_hf/memory_ops.py` as it was at `--against` (any revision whose `chunk_memory_update` takes
`(inputs, state, rule, compiled=...)`) and times the same Hope model (the bench shape: hidden 256, 4 layers,
4 heads, vocab 8192, the switches of `modeling_configs/hope-tiny.json`) with each version's chunk-wise memory,
and the same-size Llama, round robin (one step each, then the next round, so a change of load hits all alike).
A step is forward + backward + AdamW on batch x `--length` tokens (batch = 2048 // length, at least 1), one torch thread.
Prints the medians, tokens/s, and the ratios. `--compiled` runs both versions' compiled chunk steps (each
compiles during the warm-up). `--layer` times one self-modifying layer's forward + backward instead (no Llama).

    .venv/bin/python eval/bench_memory_ab.py --against 2cc90ad --length 2048
    .venv/bin/python eval/bench_memory_ab.py --against 2cc90ad --length 2048 --layer --compiled
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

import torch

from hope_hf import self_modifying
from hope_hf.benchmark import REFERENCE, Subject, bench_configs, build_model, time_round_robin, training_step

ROOT = Path(__file__).resolve().parents[1]


def load_revision(revision: str):
    """`memory_ops.py` of `revision` as a module of its own."""
    source = subprocess.run(["git", "show", f"{revision}:src/hope_hf/memory_ops.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "memory_ops_then.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("hope_hf.memory_ops_then", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module                      # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", required=True, help="git revision to compare with (e.g. a commit hash)")
    parser.add_argument("--length", type=int, default=2048, help="tokens of a sequence")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (the median is printed)")
    parser.add_argument("--compiled", action="store_true", help="both versions' compiled chunk steps")
    parser.add_argument("--layer", action="store_true", help="one self-modifying layer, forward + backward of sum(y²)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    then = load_revision(args.against)
    implementation = "compiled" if args.compiled else "chunk"
    memories = {args.against: partial(then.chunk_memory_update, compiled=args.compiled),
                "this checkout": self_modifying.IMPLEMENTATIONS[implementation]}
    configs = bench_configs(["hope"])
    configs["hope"].memory_implementation = implementation
    torch.manual_seed(0)
    batch = max(1, 2048 // args.length)
    ids = torch.randint(0, configs["hope"].vocab_size, (batch, args.length))
    if args.layer:
        layer = self_modifying.SelfModifyingTitans(configs["hope"], 0)
        layer.init_parameters(configs["hope"].initializer_range)
        x = torch.randn(batch, args.length, configs["hope"].hidden_size, requires_grad=True)

        def hope_step():
            y, _ = layer(x)
            y.square().sum().backward()
        reference = {}
    else:
        hope_step = training_step(Subject("hope", configs["hope"], build_model(configs["hope"])), ids, torch.float32)
        reference = {REFERENCE: training_step(Subject(REFERENCE, configs[REFERENCE], build_model(configs[REFERENCE])),
                                              ids, torch.float32)}

    def with_memory(name: str):
        def step():
            self_modifying.IMPLEMENTATIONS[implementation] = memories[name]
            hope_step()
        return step

    # two warm-up rounds: the compiled steps compile in the first
    medians = time_round_robin({**{name: with_memory(name) for name in memories}, **reference}, args.repeats,
                               warmup=2)
    what = "one self-modifying layer, fwd + bwd" if args.layer else "training step, fwd + bwd + AdamW"
    print(f"{what}; memory: {implementation}; batch {batch} x {args.length} tokens; medians of {args.repeats}")
    for name, seconds in medians.items():
        ratio = f", {medians[REFERENCE] / seconds:.3f}x the Llama's tokens/s" if REFERENCE in medians else ""
        label = f"hope, memory of {name}" if name != REFERENCE else "llama"
        print(f"{label:>30s}: {seconds:.3f} s, {batch * args.length / seconds:7.0f} tokens/s{ratio}")
    print(f"speed-up of this checkout's memory: {medians[args.against] / medians['this checkout']:.2f}x")


if __name__ == "__main__":
    main()
