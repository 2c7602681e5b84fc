"""Stability check: a 4-layer Hope trained at long sequence length in bf16 autocast stays finite.

The memory state runs in float32 inside autocast (see `SelfModifyingTitans.forward`). Prints the loss
and the largest fast-weight magnitude every few steps and exits non-zero on a non-finite value.

    .venv/bin/python eval/stability_bf16.py --steps 100 --length 4096     # hours on 2 CPU cores: use a GPU
    .venv/bin/python eval/stability_bf16.py --config titans-tiny --steps 30 --length 1024
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from hope_hf import HopeConfig, HopeForCausalLM
from hope_hf.model_configs import load_config


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="a name from modeling_configs/ or a path (default: 4 layers x 128)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=512)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    if args.config:
        config = load_config(args.config)
        args.vocab_size = config.vocab_size
    else:
        config = HopeConfig(vocab_size=args.vocab_size, hidden_size=args.hidden_size,
                            num_hidden_layers=args.layers, num_heads=args.heads)
    model = HopeForCausalLM(config).to(args.device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    # a learnable stream: a random token sequence repeated with period 97, so memory helps
    period = torch.randint(0, args.vocab_size, (97,))
    stream = period.repeat(args.length // 97 + 2)
    peak = {}

    def record(module, inputs, output):
        peak["w"] = max(peak.get("w", 0.0), output[1].memory.w_in.abs().max().item(),
                        output[1].memory.w_out.abs().max().item())
        peak["dtype"] = output[1].memory.w_in.dtype

    for layer in model.model.layers:
        layer.mixer.register_forward_hook(record)
    start = time.time()
    for step in range(args.steps):
        offset = step % 97
        ids = stream[offset: offset + args.length].unsqueeze(0).to(args.device)
        peak.clear()
        with torch.autocast(args.device, dtype=torch.bfloat16):
            loss = model(ids, labels=ids).loss
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        finite = torch.isfinite(loss).item() and torch.isfinite(grad_norm).item()
        if step % 10 == 0 or not finite or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.4f}  grad-norm {grad_norm.item():.3f}  "
                  f"max|fast weight| {peak['w']:.3g} ({peak['dtype']})  {time.time() - start:.0f} s", flush=True)
        if not finite:
            print("FAIL: non-finite loss or gradient", flush=True)
            return 1
    print(f"OK: {args.steps} steps at {args.length} tokens in bf16 autocast, all finite", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
