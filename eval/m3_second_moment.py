"""Why M3's division by √V̂ + ε (Algorithm 1) is off by default: train a tiny Hope with and without it.

Prints, for each learning rate, the first step whose loss is non-finite and the loss before / after.

    .venv/bin/python eval/m3_second_moment.py          # about a minute on 2 CPU cores
"""

from __future__ import annotations

import math

import torch

from hope_hf import HopeConfig, HopeForCausalLM
from hope_hf.optim import M3, build_param_groups

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_heads=4, memory_expansion=2,
            projection_chunk_size=4, memory_chunk_size=8, pad_token_id=0,
            cms_levels=[{"intermediate_size": 37, "update_period": 1}, {"intermediate_size": 19, "update_period": 4}])


def main(steps: int = 20) -> None:
    x = torch.randint(3, 99, (2, 24), generator=torch.Generator().manual_seed(0))
    for second_moment in (True, False):
        for lr in (1e-6, 1e-5, 1e-4, 1e-3, 3e-3):
            torch.manual_seed(0)
            model = HopeForCausalLM(HopeConfig(**TINY))
            optimizer = M3(build_param_groups(model), lr=lr, second_moment=second_moment)
            first_bad, losses = None, []
            for step in range(1, steps + 1):
                loss = model(x, labels=x).loss
                if not math.isfinite(loss.item()):
                    first_bad = step
                    break
                losses.append(loss.item())
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
            print(f"second_moment={second_moment} lr={lr:g}: first non-finite loss at step {first_bad}, "
                  f"loss {losses[0]:.3f} -> {losses[-1]:.3f} over {len(losses)} finite steps")


if __name__ == "__main__":
    main()
