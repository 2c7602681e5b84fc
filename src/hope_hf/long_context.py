"""Long context: RULER-style needle-in-a-haystack generated locally, and perplexity by position.

Needle in a haystack (RULER, Hsieh et al. 2024, the tasks of Nested Learning §7 / Titans Table 2):

| task | RULER task | haystack | needle value | keys in the context |
|---|---|---|---|---|
| `passkey` | niah_single_1 | "The grass is green. ..." repeated | 7-digit number | 1 |
| `number` | niah_single_2 | essay | 7-digit number | 1 |
| `uuid` | niah_single_3 | essay | UUID | 1 |
| `multikey` | niah_multikey_1 | essay | 7-digit number | 4 (one asked) |

The needle, question and answer prefix are RULER's (as in lm-eval's `tasks/ruler`). Two local choices,
so that nothing is downloaded: the essay haystack is prose from a local text (default: the Python
standard library's docstrings, as `hope_hf.quickstart` uses; RULER uses Paul Graham's essays), and keys
are `adjective-noun` pairs from a fixed word list (RULER draws them from `wonderwords`). A sample has at
most `length` tokens (prompt and answer, with the model's tokenizer).

Score: **exact match** of greedy decoding: the answer counts when greedy decoding after the prompt
reproduces the answer's tokens. That is one teacher-forced forward pass (every answer token is the
argmax given the prompt and the answer tokens before it), equal to greedy `generate` of that many tokens
(tested), and needs no cache. (RULER's `string_match_all` also accepts the value anywhere in 128
generated tokens.)

Perplexity by position: the mean next-token loss at each position of long documents (default: the
standard library's `.py` sources with at least `length` tokens), averaged in equal-width position bins.

This is not a model file.
"""

from __future__ import annotations

import json
import math
import random
import re
import sysconfig
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
TEMPLATE = ("Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. "
            "I will quiz you about the {type_needle_v} afterwards.\n{context}\n"
            "What are all the special magic {type_needle_v} for {query} mentioned in the provided text?")
REPEAT_HAYSTACK = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
ADJECTIVES = ("ancient", "bitter", "brave", "calm", "clever", "cold", "crisp", "curious", "dark", "eager", "early",
              "fancy", "fierce", "gentle", "golden", "grumpy", "happy", "hollow", "humble", "icy", "jolly", "kind",
              "lazy", "lively", "lucky", "mellow", "misty", "noisy", "odd", "pale", "proud", "quiet", "rapid", "rare",
              "rough", "rusty", "salty", "shiny", "silent", "sleepy", "smooth", "solid", "sour", "steady", "sunny",
              "swift", "tall", "tender", "tiny", "wild")
NOUNS = ("anchor", "apple", "badger", "banner", "basket", "beacon", "bridge", "candle", "canyon", "castle", "cedar",
         "comet", "cradle", "dragon", "falcon", "feather", "forest", "garden", "glacier", "harbor", "helmet",
         "island", "jacket", "kettle", "lantern", "meadow", "mirror", "needle", "orchard", "otter", "pebble",
         "pepper", "planet", "quarry", "river", "saddle", "shadow", "signal", "spider", "summit", "thunder",
         "ticket", "tunnel", "valley", "violin", "wagon", "walnut", "whistle", "window", "zephyr")


@dataclass(frozen=True)
class NeedleTask:
    """One RULER needle-in-a-haystack task: the haystack kind, the value kind and the number of keys."""

    haystack: str          # "repeat" | "essay"
    value: str             # "numbers" | "uuids"
    keys: int = 1


NIAH_TASKS: dict[str, NeedleTask] = {
    "passkey": NeedleTask("repeat", "numbers"),
    "number": NeedleTask("essay", "numbers"),
    "uuid": NeedleTask("essay", "uuids"),
    "multikey": NeedleTask("essay", "numbers", keys=4),
}


@dataclass
class NeedleSample:
    """A prompt (ending with RULER's answer prefix), the answer to score after it, and where the needle is."""

    task: str
    prompt: str
    answer: str
    depth: float           # fraction of the haystack before the queried needle
    tokens: int            # prompt + answer tokens


def essay_sentences(text: str | None = None) -> list[str]:
    """Sentences of `text` (default: the standard library's docstrings), split after `.`, `!` or `?`."""
    if text is None:
        from .data import stdlib_documents

        text = " ".join(stdlib_documents())
    text = re.sub(r"\s+", " ", text).strip()
    return [s for s in re.split(r"(?<=[.!?])\s+", text) if s]


def _random_value(kind: str, rng: random.Random) -> str:
    if kind == "numbers":
        return str(rng.randint(10**6, 10**7 - 1))
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    raise ValueError(f"needle value kind must be 'numbers' or 'uuids', got {kind!r}")


def _format_prompt(task: NeedleTask, context: str, key: str) -> str:
    singular = task.value[:-1]
    template = TEMPLATE.replace("Some", "A").replace("are all", "is").replace("are", "is")   # RULER, one answer
    question = template.format(type_needle_v=singular, context=context, query=key)
    return f"{question} The special magic {singular} for {key} mentioned in the provided text is"


def _build_context(task: NeedleTask, units: Sequence[str], n: int, needles: list[str], depths: list[float]) -> str:
    """`n` haystack units with the needles inserted at the given depth fractions (sorted)."""
    pieces = list(units[:n]) if task.haystack == "essay" else [REPEAT_HAYSTACK] * n
    for needle, depth in sorted(zip(needles, depths), key=lambda pair: -pair[1]):
        pieces.insert(round(depth * n), needle)
    return (" " if task.haystack == "essay" else "\n").join(pieces)


def make_needle_sample(task_name: str, tokenizer, length: int, depth: float, seed: int,
                       sentences: Sequence[str] | None = None) -> NeedleSample:
    """One sample of `task_name` with at most `length` tokens, the queried needle at `depth` ∈ [0, 1].

    The haystack is the largest number of units (sentences, or repeats of the noise text) that fits,
    found by bisection on the exact token count of prompt + answer.
    """
    if task_name not in NIAH_TASKS:
        raise ValueError(f"task must be one of {sorted(NIAH_TASKS)}, got {task_name!r}")
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    task = NIAH_TASKS[task_name]
    rng = random.Random(f"{task_name}-{length}-{seed}")
    keys = rng.sample([f"{a}-{n}" for a in ADJECTIVES for n in NOUNS], task.keys)
    values = [_random_value(task.value, rng) for _ in keys]
    needles = [NEEDLE.format(type_needle_v=task.value, key=k, value=v) for k, v in zip(keys, values)]
    depths = [depth] + [rng.random() for _ in keys[1:]]       # the queried needle is the first
    units = (sentences or essay_sentences()) if task.haystack == "essay" else ()

    def sample(n: int) -> NeedleSample:
        prompt = _format_prompt(task, _build_context(task, units, n, needles, depths), keys[0])
        tokens = len(tokenizer(prompt + " " + values[0], add_special_tokens=False)["input_ids"])
        return NeedleSample(task_name, prompt, " " + values[0], depth, tokens)

    low, high = 0, min(len(units), length) if task.haystack == "essay" else length   # a unit is >= 1 token
    if sample(low).tokens > length:
        raise ValueError(f"length {length} is too short for the {task_name!r} prompt ({sample(low).tokens} tokens "
                         "without any haystack)")
    while low < high:                                         # the largest n with tokens(n) <= length
        mid = (low + high + 1) // 2
        low, high = (mid, high) if sample(mid).tokens <= length else (low, mid - 1)
    return sample(low)


def needle_samples(task_name: str, tokenizer, length: int, count: int, seed: int = 0,
                   sentences: Sequence[str] | None = None) -> list[NeedleSample]:
    """`count` samples with the queried needle at evenly spaced depths 0 … 1."""
    depths = [i / max(count - 1, 1) for i in range(count)]
    return [make_needle_sample(task_name, tokenizer, length, d, seed + i, sentences) for i, d in enumerate(depths)]


def split_answer(tokenizer, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """Token ids of the prompt and of the answer after it (the answer's tokens are those of prompt + answer
    beyond the prompt's, so the split matches how the whole text tokenises)."""
    whole = tokenizer(prompt + answer, add_special_tokens=False)["input_ids"]
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if whole[:len(prompt_ids)] != prompt_ids:
        raise ValueError("the prompt's tokens are not a prefix of prompt + answer's tokens")
    return prompt_ids, whole[len(prompt_ids):]


@torch.no_grad()
def greedy_exact_match(model, prompt_ids: list[int], answer_ids: list[int]) -> bool:
    """Whether greedy decoding after `prompt_ids` produces exactly `answer_ids` (one teacher-forced forward)."""
    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids + answer_ids[:-1]], device=device)
    logits = model(input_ids=ids, logits_to_keep=len(answer_ids), use_cache=False).logits[0]
    return bool((logits.argmax(-1).cpu() == torch.tensor(answer_ids)).all())


def evaluate_needles(model, tokenizer, tasks: Iterable[str], lengths: Iterable[int], samples: int, seed: int = 0,
                     sentences: Sequence[str] | None = None) -> dict[str, dict[int, float]]:
    """Exact-match accuracy in percent, `{task: {length: accuracy}}`."""
    sentences = sentences or essay_sentences()
    model.eval()
    scores: dict[str, dict[int, float]] = {}
    for task in tasks:
        scores[task] = {}
        for length in lengths:
            hits = [greedy_exact_match(model, *split_answer(tokenizer, s.prompt, s.answer))
                    for s in needle_samples(task, tokenizer, length, samples, seed, sentences)]
            scores[task][length] = 100.0 * sum(hits) / len(hits)
            print(f"  niah {task:8s} {length:6d} tokens: {scores[task][length]:5.1f}% of {len(hits)}", flush=True)
    return scores


# ---------------------------------------------------------------------------------------------------------
# perplexity by position


def long_documents(tokenizer, length: int, count: int, source: str | Path | None = None) -> list[list[int]]:
    """`count` documents of at least `length` tokens, cut to `length` (token ids).

    Args:
        source: a folder of `.txt` / `.md` / `.py` files, a `.jsonl` file with a `"text"` field, or `None`
            for the Python standard library's `.py` sources (in sorted order).
    """
    if source is None:
        paths = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
        texts = (p.read_text(encoding="utf-8", errors="replace") for p in paths)
    elif Path(source).is_dir():
        paths = sorted(p for p in Path(source).rglob("*") if p.suffix in {".txt", ".md", ".py"})
        texts = (p.read_text(encoding="utf-8", errors="replace") for p in paths)
    else:
        texts = (json.loads(line)["text"] for line in Path(source).read_text(encoding="utf-8").splitlines() if line)
    docs = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= length:
            docs.append(ids[:length])
            if len(docs) == count:
                return docs
    raise ValueError(f"source {source or 'stdlib'} has {len(docs)} documents of at least {length} tokens, "
                     f"{count} needed")


@torch.no_grad()
def token_losses(model, ids: torch.Tensor, vocab_chunk: int = 1024) -> torch.Tensor:
    """Next-token losses [B, T-1] of `ids` [B, T], the output head applied `vocab_chunk` positions at a time
    (a 16K-token document never holds its full logits). Checked against `model(ids).logits` on a prefix."""
    head = model.get_output_embeddings()
    hidden = model.base_model(input_ids=ids, use_cache=False).last_hidden_state
    probe = min(ids.shape[1], 32)
    if not torch.allclose(head(hidden[:, :probe]), model(input_ids=ids[:, :probe]).logits, rtol=1e-4, atol=1e-4):
        raise ValueError(f"{type(model).__name__}'s logits are not its output head applied to the last hidden state")
    dtype = torch.promote_types(hidden.dtype, torch.float32)          # bf16 / fp16 logits scored in float32
    losses = []
    for start in range(0, ids.shape[1] - 1, vocab_chunk):
        targets = ids[:, start + 1:start + 1 + vocab_chunk]
        logits = head(hidden[:, start:start + targets.shape[1]]).to(dtype)
        losses.append(F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view_as(targets))
    return torch.cat(losses, dim=1)


def perplexity_by_position(model, documents: Sequence[Sequence[int]], bins: int) -> list[dict[str, float]]:
    """Mean loss and perplexity of the tokens at positions [start, end) of the documents, in `bins` equal bins.

    Position `t` is the token predicted from the `t` tokens before it (1 … T-1).
    """
    device = next(model.parameters()).device
    model.eval()
    losses = torch.stack([token_losses(model, torch.tensor([doc], device=device))[0].cpu() for doc in documents])
    mean = losses.mean(0)                                                  # [T-1]
    edges = torch.linspace(0, mean.numel(), bins + 1).round().long().tolist()
    return [{"start": s + 1, "end": e + 1, "loss": float(mean[s:e].mean()), "ppl": math.exp(float(mean[s:e].mean()))}
            for s, e in zip(edges[:-1], edges[1:]) if e > s]


# ---------------------------------------------------------------------------------------------------------
# the benchmark: tables and plots for one or more models


def load_model(model, tokenizer=None, device: str = "cpu", trust_remote_code: bool = False):
    """`(model, tokenizer)` from a folder / Hub name (tokenizer from the same folder) or from objects."""
    if isinstance(model, (str, Path)):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = tokenizer or AutoTokenizer.from_pretrained(str(model), trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(str(model), trust_remote_code=trust_remote_code)
    elif tokenizer is None:
        raise ValueError("tokenizer is required when model is a model object, got tokenizer=None")
    return model.to(device).eval(), tokenizer


def plot_long_context(niah: Mapping[str, Mapping[str, Mapping[int, float]]],
                      positions: Mapping[str, Sequence[Mapping[str, float]]], path: str | Path) -> None:
    """PNG: accuracy against length per task (one line per model), and perplexity against position."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(task for scores in niah.values() for task in scores))
    fig, axes = plt.subplots(1, len(tasks) + 1, figsize=(4 * (len(tasks) + 1), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for name, scores in niah.items():
            if task in scores:
                lengths = sorted(scores[task])
                ax.plot(lengths, [scores[task][n] for n in lengths], marker="o", label=name)
        ax.set(title=f"NIAH {task}", xlabel="context length (tokens)", ylabel="exact match (%)", ylim=(-5, 105))
        ax.set_xscale("log", base=2)
    ax = axes[0][-1]
    for name, rows in positions.items():
        ax.plot([(r["start"] + r["end"]) / 2 for r in rows], [r["ppl"] for r in rows], marker=".", label=name)
    ax.set(title="perplexity by position", xlabel="token position", ylabel="perplexity")
    for ax in axes[0]:
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_long_context(models, tokenizer=None, output_dir: str | Path = "outputs/eval/long_context",
                     tasks: Sequence[str] = tuple(NIAH_TASKS), lengths: Sequence[int] = (4096, 8192, 16384),
                     samples: int = 20, ppl_length: int = 4096, ppl_documents: int = 8, ppl_bins: int = 16,
                     ppl_source: str | Path | None = None, haystack_file: str | Path | None = None, seed: int = 0,
                     device: str = "cpu", trust_remote_code: bool = False) -> dict:
    """NIAH accuracy and perplexity by position for each model; writes `niah.{json,md}`,
    `ppl_by_position.{json,md}` and `long_context.png` in `output_dir`.

    Args:
        models: a folder / model object, or `{name: folder or model}` (all scored on the same samples when
            they share a tokenizer).
        lengths: NIAH context lengths in tokens (the paper: 4K, 8K, 16K).
        samples: NIAH samples per task and length (depths evenly spaced).
        ppl_length, ppl_documents, ppl_bins, ppl_source: perplexity by position (0 documents skips it).
        haystack_file: a text file for the essay haystack (default: the standard library's docstrings).
    Returns:
        `{"niah": {model: {task: {length: %}}}, "ppl_by_position": {model: [bins]}, "markdown": tables}`.
    """
    from .evaluation import _named_models, write_table

    output_dir = Path(output_dir)
    sentences = essay_sentences(Path(haystack_file).read_text(encoding="utf-8") if haystack_file else None)
    niah, positions = {}, {}
    for name, entry in _named_models(models).items():
        model, tok = load_model(entry, tokenizer, device, trust_remote_code)
        print(f"[long context] {name}", flush=True)
        niah[name] = evaluate_needles(model, tok, tasks, lengths, samples, seed, sentences)
        if ppl_documents:
            positions[name] = perplexity_by_position(model, long_documents(tok, ppl_length, ppl_documents, ppl_source),
                                                     ppl_bins)
    niah_rows = {f"{name} / {task}": {str(n): acc for n, acc in scores.items()}
                 for name, per_task in niah.items() for task, scores in per_task.items()}
    settings = {"tasks": list(tasks), "lengths": list(lengths), "samples": samples, "seed": seed,
                "haystack": str(haystack_file or "stdlib docstrings"), "score": "greedy exact match (%)"}
    markdown = "NIAH exact match (%), " + f"{samples} samples per cell\n\n" + write_table(
        niah_rows, [str(n) for n in lengths], output_dir, "niah", "RULER-style needle in a haystack",
        {"settings": settings}, first="model / task")
    if positions:
        bins = next(iter(positions.values()))
        ppl_rows = {name: {f"{r['start']}-{r['end']}": r["ppl"] for r in rows} for name, rows in positions.items()}
        ppl_settings = {"length": ppl_length, "documents": ppl_documents, "source": str(ppl_source or "stdlib .py")}
        markdown += "\nPerplexity by token position\n\n" + write_table(
            ppl_rows, [f"{r['start']}-{r['end']}" for r in bins], output_dir, "ppl_by_position",
            "Perplexity by position", {"settings": ppl_settings, "bins": positions})
    plot_long_context(niah, positions, output_dir / "long_context.png")
    return {"niah": niah, "ppl_by_position": positions, "markdown": markdown,
            "plot": str(output_dir / "long_context.png")}


__all__ = [
    "NIAH_TASKS", "NeedleSample", "NeedleTask", "evaluate_needles", "greedy_exact_match", "long_documents",
    "make_needle_sample", "needle_samples", "perplexity_by_position", "run_long_context", "split_answer",
    "token_losses",
]
