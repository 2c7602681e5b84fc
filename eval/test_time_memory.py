"""Forgetting and recall at test time: stream task A, then task B, then ask for task A (HOPE.md §4).

A task is a random key → value mapping (8 keys, disjoint key sets for A and B). Its stream is the pairs
`k v` repeated `--repeats` times in random order. After streaming A then B (B of growing length), each
A key is asked from a copy of the memory (so probes do not teach each other); recall = the fraction of A
keys whose argmax next token is A's value. Compared:

    hope, in-context CMS on     level 0 of every layer steps its fast weights every `--chunk` tokens
    hope, in-context CMS off    only the self-modifying memories carry the stream
    transformer, window W       Hope-Attention (softmax attention + CMS) that sees the last W tokens

The two models are first trained for the same number of AdamW steps (`--train-steps`, same batches, fixed
seed) on in-context key → value recall (random mappings per sequence), so they know the format; the table
records the steps and each model's training wall time. Everything is tiny; the numbers say what this scale
shows, nothing more. Prints a markdown table and writes a PNG.

    .venv/bin/python eval/test_time_memory.py                   # about 3 minutes on 2 quiet CPU cores
    .venv/bin/python eval/test_time_memory.py --device cuda     # on a GPU
    .venv/bin/python eval/test_time_memory.py --train-in-context-lr 0.1   # Hope trained with in-context CMS on

Measured runs and their tables: README, "Test-time learning".
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from hope_hf import HopeConfig, HopeForCausalLM, MemoryStream

NUM_KEYS, KEYS_PER_TASK = 32, 8
KEY0, VALUE0 = 2, 2 + NUM_KEYS                     # ids: 0 pad, 1 bos, keys, then values
VOCAB = VALUE0 + NUM_KEYS


def model_config(mixer: str) -> HopeConfig:
    extra = {"mixer": "attention"} if mixer == "attention" else {}
    return HopeConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_heads=4, projection_chunk_size=8,
                      memory_chunk_size=16, memory_expansion=2, pad_token_id=0, max_position_embeddings=2048,
                      cms_levels=[{"intermediate_size": 96, "update_period": 1},
                                  {"intermediate_size": 64, "update_period": 1}], **extra)


def task(generator: torch.Generator, keys: torch.Tensor) -> dict[int, int]:
    values = torch.randint(VALUE0, VOCAB, (len(keys),), generator=generator)
    return dict(zip(keys.tolist(), values.tolist()))


def stream_of(mapping: dict[int, int], repeats: int, generator: torch.Generator) -> torch.Tensor:
    """[1, 2 · len(mapping) · repeats] the pairs `k v`, every pair `repeats` times, in random order."""
    pairs = torch.tensor(list(mapping.items())).repeat(repeats, 1)
    pairs = pairs[torch.randperm(len(pairs), generator=generator)]
    return pairs.reshape(1, -1)


def train(mixer: str, steps: int, seed: int, device: str, in_context: tuple[int, float] | None = None
          ) -> tuple[HopeForCausalLM, float]:
    """`steps` AdamW steps on in-context recall: each sequence a fresh random mapping of 8 keys, every pair 3
    times (batches drawn from `seed`, the same for every model). `in_context` (chunk, lr): train with in-context
    CMS on level 0 (first order), so the model learns to use it. Returns the model and the wall time (s)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    config = model_config(mixer)
    if in_context is not None:
        config.cms_levels[0].update(chunk_size=in_context[0], lr=in_context[1])
        config.in_context_cms = True
    model = HopeForCausalLM(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    start = time.perf_counter()
    for _ in range(steps):
        batch = []
        for _ in range(8):
            keys = torch.randperm(NUM_KEYS, generator=generator)[:KEYS_PER_TASK] + KEY0
            batch.append(stream_of(task(generator, keys), 3, generator))
        x = torch.cat(batch)
        values_only = torch.where(torch.arange(x.shape[1]) % 2 == 1, x, -100)   # predict each value from its key
        loss = model(x.to(device), labels=values_only.to(device)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    model.config.in_context_cms = False                 # each row of the table says how it reads the stream
    return model.eval(), time.perf_counter() - start


@torch.no_grad()
def recall(model: HopeForCausalLM, stream: torch.Tensor, mapping: dict[int, int], in_context: bool,
           window: int | None = None) -> float:
    """Fraction of `mapping`'s keys answered right after `stream` (each probe from a copy of the memory)."""
    device = model.lm_head.weight.device
    stream = stream.to(device)
    if window is not None:                          # a Transformer sees its last `window` tokens only
        hits = 0
        for key, value in mapping.items():
            x = torch.cat([stream[:, -window + 1:] if window > 1 else stream[:, :0],
                           torch.tensor([[key]], device=device)], 1)
            hits += int(model(x).logits[0, -1].argmax()) == value
        return hits / len(mapping)
    memory = MemoryStream(model, in_context_cms=in_context)
    memory.feed(stream)
    hits = 0
    for key, value in mapping.items():
        probe = copy.deepcopy(memory.cache)
        logits = model(torch.tensor([[key]], device=device), past_key_values=probe, in_context_cms=in_context).logits
        hits += int(logits[0, -1].argmax()) == value
    return hits / len(mapping)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-steps", type=int, default=1000, help="AdamW steps, the same for both models")
    parser.add_argument("--seed", type=int, default=0, help="initialisation and training batches")
    parser.add_argument("--repeats", type=int, default=4, help="times each pair of A (and B) is streamed")
    parser.add_argument("--b-lengths", type=int, nargs="+", default=[0, 64, 192], help="tokens of B")
    parser.add_argument("--window", type=int, default=64, help="the Transformer's context window (tokens)")
    parser.add_argument("--chunk", type=int, default=16, help="in-context CMS chunk_size of level 0")
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.01, 0.1], help="in-context CMS lr of level 0")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--png", default="test_time_memory.png")
    parser.add_argument("--device", default="cpu", help="cpu (2 threads) or cuda")
    parser.add_argument("--train-in-context-lr", type=float, default=0.0,
                        help="> 0: train Hope with in-context CMS on (level 0, chunk --chunk, this lr; first order)")
    args = parser.parse_args()
    if args.train_steps < 0:
        raise ValueError(f"--train-steps must be >= 0, got {args.train_steps}")
    if args.device == "cpu":
        torch.set_num_threads(2)

    in_context = (args.chunk, args.train_in_context_lr) if args.train_in_context_lr > 0 else None
    hope, hope_seconds = train("self_modifying", args.train_steps, args.seed, args.device, in_context)
    transformer, transformer_seconds = train("attention", args.train_steps, args.seed, args.device)
    trained = {"hope": hope_seconds, "transformer": transformer_seconds}
    print(f"trained {args.train_steps} steps each (seed {args.seed}, {args.device}): hope {hope_seconds:.0f} s"
          f"{f' (in-context CMS on, lr {args.train_in_context_lr:g})' if in_context else ''}, "
          f"transformer {transformer_seconds:.0f} s")

    rows = {f"hope, in-context CMS on (lr {lr:g}, chunk {args.chunk})": ("on", lr) for lr in args.lrs}
    rows["hope, in-context CMS off"] = ("off", 0.0)
    rows[f"transformer, window {args.window}"] = ("window", 0.0)
    results = {name: [] for name in rows}
    for b_length in args.b_lengths:
        scores = {name: 0.0 for name in rows}
        for trial in range(args.trials):
            generator = torch.Generator().manual_seed(1000 + trial)
            keys = torch.randperm(NUM_KEYS, generator=generator) + KEY0
            task_a, task_b = task(generator, keys[:KEYS_PER_TASK]), task(generator, keys[KEYS_PER_TASK:2 * KEYS_PER_TASK])
            b_stream = stream_of(task_b, 1 + b_length // (2 * KEYS_PER_TASK), generator)[:, :b_length]
            stream = torch.cat([stream_of(task_a, args.repeats, generator), b_stream], 1)
            for name, (kind, lr) in rows.items():
                if kind == "window":
                    scores[name] += recall(transformer, stream, task_a, False, args.window)
                    continue
                level = hope.config.cms_levels[0]
                level["chunk_size"], level["lr"] = (args.chunk, lr) if kind == "on" else (0, 0.0)
                scores[name] += recall(hope, stream, task_a, kind == "on")
        for name in rows:
            results[name].append(scores[name] / args.trials)

    a_tokens = 2 * KEYS_PER_TASK * args.repeats
    print(f"\nTask-A recall (fraction of {KEYS_PER_TASK} keys, mean of {args.trials} trials) after {a_tokens} tokens "
          f"of A then the B tokens of each column; chance ≈ 1/{NUM_KEYS}\n")
    print("| model | training steps | training time (s) | " + " | ".join(f"B = {b}" for b in args.b_lengths) + " |")
    print("|---|---|---|" + "---|" * len(args.b_lengths))
    for name, values in results.items():
        seconds = trained["transformer" if name.startswith("transformer") else "hope"]
        print(f"| {name} | {args.train_steps} | {seconds:.0f} | " + " | ".join(f"{v:.2f}" for v in values) + " |")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, values in results.items():
        ax.plot(args.b_lengths, values, marker="o", label=name)
    ax.set_xlabel("tokens of task B streamed after task A")
    ax.set_ylabel("task-A recall")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.png, dpi=120)
    print(f"\nwrote {args.png}")


if __name__ == "__main__":
    main()
