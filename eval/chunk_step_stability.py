"""How far a chunk of inner steps taken from one anchor can push a memory (docs/FAITHFULNESS.md, Known risks 2).

In the chunk form every token of a chunk computes its inner gradient at the chunk's anchor state, so C tokens with
similar keys and a large η add up to about C normalised steps in one direction; with momentum, GD overshoots and the
fast weights grow without bound (titans-small@embedded diverged this way at step 96). This script feeds one main
memory (no projection memories, static q/k/v) keys of a given mean cosine similarity at a fixed η for every token,
and prints max|A| at the end divided by max|A| at the start, for plain GD and DGD, with eta_max 1 and 2 / C.

    .venv/bin/python eval/chunk_step_stability.py                       # a few seconds on one core
    .venv/bin/python eval/chunk_step_stability.py --similarities 0.3 0.7 0.9 --lengths 256 512 1024 --seeds 3
"""

from __future__ import annotations

import argparse
import math

import torch

from hope_hf.memory_ops import MemoryInputs, MemoryRule, MemoryState, chunk_memory_update


def similar_keys_case(seed: int, similarity: float, length: int, eta: float, *, batch: int = 2, heads: int = 2,
                      head_size: int = 8, hidden: int = 16, momentum: float = 0.5):
    """Inputs and the initial state of one main memory: keys of mean cosine `similarity` (a shared direction plus
    noise), random q and v, η = `eta` (as a fraction of eta_max) and α ≈ 0.999 on every token, momentum β."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    b, H, t, d = batch, heads, length, head_size
    shared = randn(b, H, 1, d)
    direction = shared / shared.norm(dim=-1, keepdim=True)
    keys = (similarity * d) ** 0.5 * direction + (1 - similarity) ** 0.5 * randn(b, H, t, d)
    logit = math.log(eta / (1 - eta))
    static = {"q": randn(b, H, t, d), "k": keys, "v": randn(b, H, t, d),
              "eta": torch.full((b, H, t), logit, dtype=torch.float64),
              "alpha": torch.full((b, H, t), 7.0, dtype=torch.float64)}
    inputs = MemoryInputs(x=randn(b, H, t, d), static=static, momentum=torch.full((H,), momentum, dtype=torch.float64))
    state = MemoryState.initial(randn(H, 1, hidden, d) * d**-0.5, randn(H, 1, d, hidden) * 0.1, b, True)
    return inputs, state


def growth(inputs: MemoryInputs, state: MemoryState, chunk: int, delta: bool, eta_max: float) -> float:
    """max|A| after the sequence / max|A| before (inf or nan when it overflowed)."""
    rule = MemoryRule(("mem",), chunk, chunk, delta=delta, momentum=True, eta_max=eta_max)
    with torch.no_grad():
        _, end = chunk_memory_update(inputs, state, rule)
    return float(end.w_in.abs().max()) / float(state.w_in.abs().max())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--similarities", type=float, nargs="+", default=[0.3, 0.7, 0.9])
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=16, help="C: the chunk of the memory (default 16, titans-*)")
    parser.add_argument("--eta", type=float, default=0.95, help="η / eta_max on every token (default 0.95)")
    args = parser.parse_args(argv)
    if not 0 < args.eta < 1:
        raise SystemExit(f"--eta must be in (0, 1), got {args.eta}")
    torch.set_num_threads(1)
    bound = 2 / args.chunk
    rows = (("GD, eta_max 1", False, 1.0), (f"GD, eta_max 2/C = {bound:g}", False, bound), ("DGD, eta_max 1", True, 1.0),
            ("DGD, eta_max 2/C", True, bound))
    print(f"max|A| end / start; C = {args.chunk}, eta = {args.eta} eta_max on every token, momentum 0.5, seeds "
          f"0-{args.seeds - 1}")
    print("| similarity | tokens | " + " | ".join(name for name, _, _ in rows) + " |")
    print("|---|---|" + "---|" * len(rows))
    for similarity in args.similarities:
        for length in args.lengths:
            cells = []
            for _, delta, eta_max in rows:
                values = []
                for seed in range(args.seeds):
                    inputs, state = similar_keys_case(seed, similarity, length, args.eta)
                    values.append(growth(inputs, state, args.chunk, delta, eta_max))
                cells.append(" / ".join(f"{v:.2g}" for v in values))
            print(f"| {similarity} | {length} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
