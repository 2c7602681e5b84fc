"""The main job (`bash run.sh`): a tiny Hope trained, checked, saved, reloaded and sampled on a CPU.

Steps, each printed as it runs:
1. build an English corpus from the docstrings of the Python standard library (every Python has it:
   no download), split into train / held-out;
2. train a byte-level BPE tokenizer on the train split (`tokenizers`);
3. train a tiny Hope for `--steps` AdamW steps on fixed-length blocks;
4. measure held-out perplexity before and after training;
5. save model + tokenizer with `save_pretrained` (safetensors), reload with `AutoModelForCausalLM`
   and check the reloaded logits are identical;
6. generate a greedy sample with `generate` (it re-runs the prefix per token until the recurrent cache lands);
7. write `report.md` and `metrics.json` and print their paths.

    .venv/bin/python -m hope_hf.quickstart --steps 150 --output-dir outputs/quickstart
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import math
import pkgutil
import time
import warnings
from pathlib import Path

import torch

from .baselines import count_parameters
from .configuration_hope import HopeConfig
from .modeling_hope import HopeForCausalLM

# Standard-library modules whose docstrings make a deterministic English corpus.
CORPUS_MODULES = (
    "abc", "argparse", "array", "ast", "asyncio", "base64", "bisect", "calendar", "cmd", "codecs",
    "collections", "colorsys", "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal",
    "difflib", "doctest", "email", "enum", "filecmp", "fnmatch", "fractions", "ftplib", "functools",
    "getopt", "gettext", "glob", "gzip", "hashlib", "heapq", "hmac", "html", "http", "imaplib",
    "inspect", "io", "ipaddress", "itertools", "json", "logging", "mailbox", "math", "mimetypes",
    "numbers", "operator", "optparse", "os", "pathlib", "pdb", "pickle", "pkgutil", "platform",
    "plistlib", "poplib", "pprint", "profile", "queue", "random", "re", "reprlib", "sched",
    "secrets", "selectors", "shelve", "shlex", "shutil", "signal", "smtplib", "socket",
    "socketserver", "statistics", "string", "struct", "subprocess", "tarfile", "tempfile",
    "textwrap", "threading", "timeit", "tokenize", "trace", "traceback", "types", "typing",
    "unittest", "urllib", "uuid", "warnings", "wave", "weakref", "xml", "zipfile", "zoneinfo",
)


def stdlib_documents(min_chars: int = 200) -> list[str]:
    """Docstrings of the modules above and of their public classes, functions and methods, in a fixed order."""
    seen, docs = set(), []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in CORPUS_MODULES:
            try:
                module = importlib.import_module(name)
            except ImportError:
                continue
            objects = [module]
            for attr in sorted(dir(module)):
                if attr.startswith("_"):
                    continue
                obj = getattr(module, attr, None)
                if inspect.isclass(obj) or inspect.isfunction(obj):
                    objects.append(obj)
                    if inspect.isclass(obj):
                        objects += [getattr(obj, m) for m in sorted(vars(obj)) if not m.startswith("_")
                                    and inspect.isfunction(getattr(obj, m, None))]
            for obj in objects:
                doc = inspect.getdoc(obj)
                if doc and len(doc) >= min_chars and doc not in seen:
                    seen.add(doc)
                    docs.append(doc.strip())
    return docs


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE trained on `texts`, wrapped as a `PreTrainedTokenizerFast`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def pack(token_lists: list[list[int]], eos_id: int, block: int) -> torch.Tensor:
    """Concatenate documents with EOS between them and cut into [N, block] blocks (the tail is dropped)."""
    stream = [t for tokens in token_lists for t in (*tokens, eos_id)]
    n = len(stream) // block
    return torch.tensor(stream[: n * block]).view(n, block)


@torch.no_grad()
def perplexity(model: HopeForCausalLM, blocks: torch.Tensor, batch_size: int) -> float:
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(blocks), batch_size):
        batch = blocks[i: i + batch_size]
        loss = model(batch, labels=batch).loss
        n = batch.shape[0] * (batch.shape[1] - 1)
        total, count = total + loss.item() * n, count + n
    return math.exp(total / count)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="outputs/quickstart")
    parser.add_argument("--steps", type=int, default=150, help="AdamW steps (about 1 s each on 2 CPU cores)")
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    start = time.time()

    docs = stdlib_documents()
    held_out, train_docs = docs[::20], [d for i, d in enumerate(docs) if i % 20]
    print(f"[1/7] corpus: {len(docs)} standard-library docstrings, {sum(map(len, docs)) / 1e6:.2f} MB "
          f"({len(train_docs)} train / {len(held_out)} held out)", flush=True)

    tokenizer = train_tokenizer(train_docs, args.vocab_size)
    print(f"[2/7] tokenizer: byte-level BPE, {len(tokenizer)} tokens", flush=True)
    encode = lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"]  # noqa: E731
    train_blocks = pack(encode(train_docs), tokenizer.eos_token_id, args.block_size)
    eval_blocks = pack(encode(held_out), tokenizer.eos_token_id, args.block_size)

    config = HopeConfig(
        vocab_size=len(tokenizer), hidden_size=128, num_hidden_layers=4, num_heads=4,
        projection_chunk_size=16, memory_chunk_size=32, tie_word_embeddings=True,
        cms_levels=[{"intermediate_size": 128, "update_period": 1}, {"intermediate_size": 128, "update_period": 1}],
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    model = HopeForCausalLM(config)
    n_params = count_parameters(model)
    ppl_before = perplexity(model, eval_blocks, args.batch_size)
    print(f"[3/7] model: Hope, {n_params:,} parameters; training {args.steps} steps on "
          f"{len(train_blocks)} blocks of {args.block_size} tokens", flush=True)

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    order = torch.randperm(len(train_blocks), generator=torch.Generator().manual_seed(args.seed))
    losses = []
    model.train()
    for step in range(args.steps):
        idx = order[(step * args.batch_size + torch.arange(args.batch_size)) % len(order)]
        batch = train_blocks[idx]
        loss = model(batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % 10 == 0 or step == args.steps - 1:
            print(f"      step {step:4d}  loss {loss.item():.3f}  ({time.time() - start:.0f} s)", flush=True)
    ppl_after = perplexity(model, eval_blocks, args.batch_size)
    print(f"[4/7] held-out perplexity: {ppl_before:.1f} before training, {ppl_after:.1f} after", flush=True)

    model_dir = out / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reloaded = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    reloaded_tok = AutoTokenizer.from_pretrained(model_dir)
    probe = eval_blocks[:2]
    model.eval()
    identical = torch.equal(model(probe).logits, reloaded(probe).logits)
    print(f"[5/7] saved to {model_dir} ({', '.join(sorted(p.name for p in model_dir.iterdir()))}); "
          f"reloaded logits identical: {identical}", flush=True)
    if not identical:
        raise SystemExit("reloaded model differs from the saved one")

    prompt = "Return a new list"
    ids = torch.tensor([reloaded_tok(prompt, add_special_tokens=False)["input_ids"]])
    generated = reloaded.generate(ids, max_new_tokens=40, do_sample=False, pad_token_id=reloaded_tok.pad_token_id)
    sample = reloaded_tok.decode(generated[0], skip_special_tokens=True)
    print(f"[6/7] greedy sample: {sample!r}", flush=True)

    metrics = {
        "parameters": n_params, "steps": args.steps, "tokens_trained": args.steps * args.batch_size * args.block_size,
        "first_loss": losses[0], "last_loss": losses[-1], "held_out_ppl_before": ppl_before,
        "held_out_ppl_after": ppl_after, "reload_identical": identical, "sample": sample,
        "seconds": time.time() - start, "config": config.to_diff_dict(),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    report = out / "report.md"
    report.write_text(
        "# hope-hf quickstart report\n\n"
        f"- model: Hope, {n_params:,} parameters ({config.num_hidden_layers} layers, hidden {config.hidden_size}, "
        f"{len(config.cms_levels)} CMS levels)\n"
        f"- data: Python standard-library docstrings, {len(train_docs)} train / {len(held_out)} held-out documents\n"
        f"- training: {args.steps} AdamW steps x {args.batch_size} x {args.block_size} tokens, "
        f"loss {losses[0]:.3f} -> {losses[-1]:.3f}\n"
        f"- held-out perplexity: {ppl_before:.1f} -> {ppl_after:.1f}\n"
        f"- checkpoint: `{model_dir}` (safetensors), reload identical: {identical}\n"
        f"- greedy sample: `{sample}`\n"
        f"- wall time: {metrics['seconds']:.0f} s\n\n"
        "| step | loss |\n|---|---|\n" + "".join(f"| {i} | {l:.3f} |\n" for i, l in enumerate(losses) if i % 10 == 0)
    )
    print(f"[7/7] report: {report}\n      metrics: {out / 'metrics.json'}\n      checkpoint: {model_dir}", flush=True)
    return metrics


if __name__ == "__main__":
    main()
