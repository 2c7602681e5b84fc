"""Shared machinery of the small-scale studies (`lm_comparison.py`, `ablations.py`): data, training, results.

A study is a list of `Run`s (a name and a model configuration). Every run of a study trains on the same
tokens in the same order with the same optimiser and schedule; only the model differs:

- **data** (`load_corpus`): documents from the embedded corpus (`hope_hf.data.stdlib_documents`) or a local
  `.txt` / `.md` file or folder (documents separated by blank lines) or `.jsonl` (a `"text"` field); every
  `HELD_OUT_EVERY`-th document is held out for validation; a byte-level BPE (`hope_hf.data.train_bpe_tokenizer`)
  trained on the training documents; each split becomes one token stream (EOS after every document) cut
  into blocks of `block_size`. Cached under `cache/` by a hash of (documents, vocabulary size, version).
  `datasets` is not needed.
- **order** (`batch_indices`): step `s` takes the blocks `s·B … s·B+B−1` of the stream of epochs, each epoch
  a permutation of all training blocks seeded by `(data_seed, epoch)`: a function of the step alone, so it
  is the same for every model and exactly reproduced on resume.
- **training** (`train_run`): AdamW (betas 0.9/0.95, weight decay on ≥2-D tensors), linear warm-up then
  cosine decay to `min_lr_ratio`·lr, gradient clipping at 1.0, the CMS update schedule
  (`hope_hf.schedule.HopeScheduleCallback`) for Hope models, bf16 autocast on CUDA (float32 on CPU),
  per-layer activation checkpointing for every model (memory; it does not change the result).
  Validation loss on a fixed subset of held-out blocks every `eval_every_tokens` tokens (the curve), and at
  the end on every held-out block (`final_eval_blocks` caps it; the JSON says how many were used).
- **checkpoints**: every `checkpoint_every` steps, every `CHECKPOINT_MINUTES` of wall time, when `max_minutes` runs
  out and on SIGTERM (a session or job ending: the step in flight finishes first), the model, optimiser, LR
  schedule, CMS schedule, RNG states, step and curve go to `checkpoints/<study>/<run>.pt`; the same command
  resumes from there (bit for bit on CPU). A finished run writes `results/<study>/<run>.json` and is skipped
  next time unless `--force`; its trained model goes to `checkpoints/<study>/<run>.final/` (`save_pretrained`:
  `from_pretrained` loads it for probing or evaluation; not committed). A run whose training loss or gradient norm
  turns NaN/inf is recorded as diverged at that step, nothing of the step applied, and the state before it is kept
  as `checkpoints/<study>/<run>.diverged.pt`:
  copied as `<run>.pt` into an empty `--checkpoint-dir` (with an empty `--results-dir`), the same command replays
  the diverging step.
- **runner** (`main`): `--only`, `--jobs N` (N runs as parallel subprocesses), `--tokens`, `--device`,
  `--max-minutes`, `--results-dir`, `--table` (print the markdown table and write the PNG of validation
  loss against tokens from the JSONs alone), `--progress` (the validation loss so far of finished and unfinished
  runs side by side at equal tokens, from the JSONs and the checkpoints).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import datetime
import hashlib
import json
import math
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RESULTS_DIR = HERE / "results"
CHECKPOINT_DIR = HERE / "checkpoints"
CACHE_DIR = HERE / "cache"

#: Bump when tokenisation or splitting changes, so cached token ids are rebuilt.
CORPUS_VERSION = 1
#: Every `HELD_OUT_EVERY`-th document (index 0, 20, 40, ...) is held out, as in `hope_hf.data`.
HELD_OUT_EVERY = 20
#: Parameter counts of the models compared in one table must agree within this fraction.
PARAM_TOLERANCE = 0.03
#: The Hope the studies train, by size: memory expansion r = 2 (`modeling_configs/hope-r2-*`), the shipped default
#: until the ablation study's r = 1 row replaced it (`hope-tiny` / `hope-small` are now that row's setting: r = 1 at
#: the same parameter count). The studies name these files, not the shipped ones, so that every committed result
#: stays the run its row defines when the shipped defaults move. Their runs keep their names (`hope-tiny@embedded`,
#: the ablations' `hope@embedded`): in the studies `hope` means this configuration.
STUDY_HOPE = {"tiny": "hope-r2-tiny", "small": "hope-r2-small"}
#: Exit status of a run stopped by its `--max-minutes` budget (checkpoint written, no result yet).
EXIT_INTERRUPTED = 3
#: Wall-clock minutes between checkpoints of a run (besides every `checkpoint_every` steps), so that a machine that
#: goes away without warning loses at most this much of a long run.
CHECKPOINT_MINUTES = 10.0


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------

def corpus_tag(data: str) -> str:
    """Short name of a corpus in run names: `"embedded"` or the file / folder stem (`rust_books`)."""
    return "embedded" if data == "embedded" else Path(data).stem


def read_documents(data: str) -> list[str]:
    """Documents of `data`, in a fixed order.

    `"embedded"`: `hope_hf.data.stdlib_documents()`. A `.txt` / `.md` / `.rst` file: blocks separated by
    one or more blank lines. A `.jsonl` file: the `"text"` field of each line. A folder: those files in
    sorted path order.

    Raises:
        ValueError: a missing path, an unsupported suffix, or no non-empty document.
    """
    if data == "embedded":
        from hope_hf.data import stdlib_documents

        return stdlib_documents()
    path = Path(data).expanduser()
    if not path.exists():
        raise ValueError(f"data path {data!r} does not exist (make the books corpus with "
                         "`python eval/experiments/make_corpus.py`, or pass another file)")
    suffixes = {".txt", ".md", ".rst", ".text", ".jsonl"}
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes) if path.is_dir() \
        else [path]
    docs: list[str] = []
    for file in files:
        if file.suffix.lower() not in suffixes:
            raise ValueError(f"data file {file} has suffix {file.suffix!r}; supported: {sorted(suffixes)}")
        if file.suffix.lower() == ".jsonl":
            with open(file, encoding="utf-8") as f:
                docs += [json.loads(line)["text"] for line in f if line.strip()]
        else:
            text = file.read_text(encoding="utf-8", errors="replace")
            docs += [block.strip() for block in text.replace("\r\n", "\n").split("\n\n")]
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise ValueError(f"data {data!r} holds no non-empty document")
    return docs


def split_documents(docs: Sequence[str]) -> tuple[list[str], list[str]]:
    """`(train, validation)`: every `HELD_OUT_EVERY`-th document (0, 20, ...) is held out."""
    return ([d for i, d in enumerate(docs) if i % HELD_OUT_EVERY != 0],
            [d for i, d in enumerate(docs) if i % HELD_OUT_EVERY == 0])


@dataclasses.dataclass
class Corpus:
    """Token streams of one corpus: `train` and `validation` 1-D int32 tensors, and where they came from."""

    train: torch.Tensor
    validation: torch.Tensor
    info: dict[str, Any]

    def blocks(self, split: str, block_size: int) -> torch.Tensor:
        """[N, block_size] int64: the split's stream cut into consecutive blocks (the tail is dropped)."""
        stream = self.train if split == "train" else self.validation
        n = len(stream) // block_size
        if n == 0:
            raise ValueError(f"the {split} split of {self.info['data']!r} has {len(stream)} tokens, fewer than "
                             f"one block of {block_size}")
        return stream[: n * block_size].view(n, block_size).long()


def load_corpus(data: str, vocab_size: int, cache_dir: Path = CACHE_DIR) -> Corpus:
    """Tokenised corpus, built once and cached as `<cache_dir>/<tag>-v<vocab>-<hash>.pt` (+ `.tokenizer.json`).

    The cache key hashes the documents themselves, the vocabulary size and `CORPUS_VERSION`, so a changed
    file gets new token ids. Concurrent builders write to a temporary file and rename it (atomic).
    """
    docs = read_documents(data)
    digest = hashlib.sha256()
    digest.update(f"{CORPUS_VERSION}|{vocab_size}|".encode())
    for doc in docs:
        digest.update(doc.encode("utf-8"))
        digest.update(b"\0")
    key = digest.hexdigest()[:16]
    path = Path(cache_dir) / f"{corpus_tag(data)}-v{vocab_size}-{key}.pt"
    if path.is_file():
        saved = torch.load(path)
        return Corpus(saved["train"], saved["validation"], saved["info"])
    from hope_hf.data import train_bpe_tokenizer

    train_docs, val_docs = split_documents(docs)
    tokenizer = train_bpe_tokenizer(train_docs, vocab_size=vocab_size)
    eos = tokenizer.eos_token_id

    def stream(texts: list[str]) -> torch.Tensor:
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        return torch.tensor([t for doc in ids for t in (*doc, eos)], dtype=torch.int32)

    file_info = {}
    if data != "embedded":
        raw = b"".join(p.read_bytes() for p in sorted(Path(data).rglob("*")) if p.is_file()) \
            if Path(data).is_dir() else Path(data).read_bytes()
        file_info = {"bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
    train, validation = stream(train_docs), stream(val_docs)
    info = {"data": data, "tag": corpus_tag(data), "documents": len(docs), "train_documents": len(train_docs),
            "validation_documents": len(val_docs), "chars": sum(map(len, docs)), "vocab_size": vocab_size,
            "train_tokens": len(train), "validation_tokens": len(validation), "cache_key": key, **file_info}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({"train": train, "validation": validation, "info": info}, tmp)
    tokenizer.backend_tokenizer.save(str(path.with_suffix(".tokenizer.json")))
    os.replace(tmp, path)
    return Corpus(train, validation, info)


def batch_indices(step: int, batch_size: int, num_blocks: int, data_seed: int) -> torch.Tensor:
    """Training-block indices of optimiser step `step` (0-based): [batch_size] int64.

    The stream of epochs, each a permutation of `range(num_blocks)` seeded by `(data_seed, epoch)`; step `s`
    takes its entries `s·B … s·B+B−1`. Independent of the model and of any RNG state.
    """
    start = step * batch_size
    out = []
    epoch_cache: dict[int, torch.Tensor] = {}
    for g in range(start, start + batch_size):
        epoch, pos = divmod(g, num_blocks)
        if epoch not in epoch_cache:
            gen = torch.Generator().manual_seed(data_seed * 1_000_003 + epoch)
            epoch_cache[epoch] = torch.randperm(num_blocks, generator=gen)
        out.append(int(epoch_cache[epoch][pos]))
    return torch.tensor(out, dtype=torch.long)


# ----------------------------------------------------------------------------------------------------------------
# Runs and their settings
# ----------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class TrainSettings:
    """The outer loop, identical for every run of a study.

    Batches of 64 × 256 tokens: Hope's chunk-wise memory costs about 10⁵ small operations per step whatever
    the batch (a loop over chunks), so on a GPU its step time is launch-bound and fewer, larger steps are
    what makes millions of tokens affordable; the Transformer gets the same batches. Gradient checkpointing
    (per layer, every model) keeps that affordable in memory: the chunk-wise memory saves per-token
    fast-weight-sized tensors for the backward pass, so a `hope-small` step at 8 × 256 peaks at 5.8 GB
    without it and 1.5 GB with it (measured on the CPU); it changes speed, not the result.
    """

    tokens: int = 5_000_000
    batch_size: int = 64
    block_size: int = 256
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_fraction: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    data_seed: int = 0
    eval_every_tokens: int = 250_000
    eval_blocks: int = 64
    final_eval_blocks: int = 0          # 0: every held-out block
    checkpoint_every: int = 200
    gradient_checkpointing: bool = True

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.block_size

    @property
    def steps(self) -> int:
        return max(1, self.tokens // self.tokens_per_step)

    @property
    def warmup_steps(self) -> int:
        return max(1, round(self.warmup_fraction * self.steps))


@dataclasses.dataclass
class Run:
    """One model of a study: `name` (file stem of its result), `config` (a `modeling_configs` name or a
    config dict with `"model_type"`), `overrides` (fields set on top), `data` (corpus), `group` (runs whose
    parameter counts must match within `PARAM_TOLERANCE`; `None`: not checked), a free `label`,
    `tokens` (its training budget when the command gives no `--tokens`; `None`: the study's default) and
    `level_lr_scale` (one outer learning-rate factor per CMS level, applied by the CMS schedule on the steps a
    level takes; `None`: all 1)."""

    name: str
    config: str | dict
    data: str = "embedded"
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    group: str | None = None
    label: str = ""
    tokens: int | None = None
    level_lr_scale: list[float] | None = None


#: `Run` fields that only name or present a run (table label, parameter-check group): a checkpoint resumes across
#: changes of these.
PRESENTATION_FIELDS = ("label", "group")


def _same_run(saved: dict, run: Run) -> bool:
    """Whether a checkpoint's run definition trains what `run` trains. A field the checkpoint lacks (added to `Run`
    after it was written) counts as equal when `run` has that field's default; `PRESENTATION_FIELDS` are ignored."""
    defaults = {f.name: f.default for f in dataclasses.fields(Run) if f.default is not dataclasses.MISSING}
    mine = {k: v for k, v in dataclasses.asdict(run).items() if k not in PRESENTATION_FIELDS}
    saved = {k: v for k, v in saved.items() if k not in PRESENTATION_FIELDS}
    return all(saved.get(name, defaults.get(name)) == value for name, value in mine.items()) and set(saved) <= set(mine)


def cms_levels(widths_and_periods: Sequence[tuple[int, int]]) -> list[dict]:
    """`HopeConfig.cms_levels` of the given (width, update_period) levels, without in-context steps."""
    return [{"intermediate_size": w, "update_period": p, "chunk_size": 0, "lr": 0.0} for w, p in widths_and_periods]


def build_config(run: Run):
    """The run's `HopeConfig` / `LlamaConfig`: the named or given config with `run.overrides` applied."""
    from hope_hf.model_configs import CONFIG_CLASSES, load_config

    if isinstance(run.config, str):
        base = load_config(run.config).to_dict()
    else:
        base = copy.deepcopy(run.config)
    base.update(copy.deepcopy(run.overrides))
    model_type = base.get("model_type")
    if model_type not in CONFIG_CLASSES:
        raise ValueError(f"run {run.name!r}: model_type {model_type!r} is not one of {sorted(CONFIG_CLASSES)}")
    return CONFIG_CLASSES[model_type].from_dict(base)


def build_model(config):
    import hope_hf  # noqa: F401  (registers the Hope Auto classes)
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_config(config)


def check_parameter_match(counts: dict[str, int], tolerance: float = PARAM_TOLERANCE) -> None:
    """Raise `ValueError` if the largest and smallest of `counts` differ by more than `tolerance` of the smallest."""
    if not counts:
        return
    low, high = min(counts.values()), max(counts.values())
    if high > low * (1 + tolerance):
        listing = ", ".join(f"{name} {n:,}" for name, n in sorted(counts.items(), key=lambda kv: kv[1]))
        raise ValueError(f"parameter counts differ by {100 * (high / low - 1):.1f}% (> {100 * tolerance:.0f}%): "
                         f"{listing}")


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------

def lr_factor(step: int, settings: TrainSettings) -> float:
    """LR multiplier at optimiser step `step` (0-based): linear warm-up, then cosine to `min_lr_ratio`."""
    warmup, total = settings.warmup_steps, settings.steps
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return settings.min_lr_ratio + (1 - settings.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, settings: TrainSettings, per_cms_level: bool = False) -> torch.optim.AdamW:
    """AdamW; weight decay on tensors of ≥ 2 dimensions (matrices, embeddings), none on gains and biases.
    `per_cms_level`: each of the two groups split by CMS level as well (what per-level learning rates need; AdamW
    is elementwise, so the steps are the same)."""
    from hope_hf.optim import cms_level_of

    groups: dict[tuple[bool, int | None], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((p.ndim >= 2, cms_level_of(name) if per_cms_level else None), []).append(p)
    order = sorted(groups, key=lambda key: (not key[0], -1 if key[1] is None else key[1]))
    return torch.optim.AdamW([{"params": groups[key], "weight_decay": settings.weight_decay if key[0] else 0.0}
                              for key in order], lr=settings.lr, betas=settings.betas, foreach=True)


def make_cms_schedule(model: torch.nn.Module, level_lr_scale: Sequence[float] | None = None):
    """The CMS update schedule of a Hope model whose levels have periods > 1 or learning-rate factors; `None`
    otherwise."""
    levels = getattr(model.config, "cms_levels", None)
    if not levels or (all(level["update_period"] == 1 for level in levels) and level_lr_scale is None):
        return None
    from hope_hf.schedule import HopeScheduleCallback

    return HopeScheduleCallback(model, level_lr_scale=level_lr_scale)


def apply_step(optimizer: torch.optim.Optimizer, scheduler, schedule) -> None:
    """One optimiser step (through the CMS update schedule `schedule` where there is one), then the LR schedule's
    step; the gradients are cleared."""
    if schedule is not None:
        schedule.optimizer_step(optimizer)
    else:
        optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def training_state(model, optimizer, scheduler, schedule) -> dict:
    """What a checkpoint keeps of the model and the outer loop: the model's, optimiser's, LR schedule's and CMS
    schedule's (`None` without one) state dicts; `load_training_state` restores them."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "cms_schedule": schedule.state_dict() if schedule is not None else None}


def load_training_state(state: dict, model, optimizer, scheduler, schedule) -> None:
    """Restore what `training_state` kept (a checkpoint dict holding its keys) into the live objects."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if schedule is not None:
        schedule.load_state_dict(state["cms_schedule"])


def enable_activation_checkpointing(model) -> None:
    """Per-layer activation (gradient) checkpointing, non-reentrant, under either transformers 5.x name."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):        # transformers >= 5.2x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


@torch.no_grad()
def evaluate(model, blocks: torch.Tensor, batch_size: int, device: torch.device) -> float:
    """Mean next-token loss (nats) over every predicted token of `blocks` [N, T]: each block alone."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(blocks), batch_size):
        ids = blocks[i: i + batch_size].to(device)
        with autocast(device):
            logits = model(ids, use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                                 ids[:, 1:].reshape(-1), reduction="sum")
        total += float(loss)
        count += ids[:, 1:].numel()
    model.train(was_training)
    return total / count


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from hope_hf.benchmark import cpu_model_name

    cpu = cpu_model_name() or platform.processor() or platform.machine()
    return f"CPU: {cpu} ({torch.get_num_threads()} threads)"


def git_commit() -> str | None:
    """`git rev-parse HEAD` (+dirty) of the repository, else `$HOPE_GIT_COMMIT`, else `None`."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        if out.returncode == 0:
            return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return os.environ.get("HOPE_GIT_COMMIT")      # a copy of the tree without .git (e.g. a GPU box): set it there


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_atomic(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


@contextlib.contextmanager
def _stop_requested_on_sigterm():
    """A `threading.Event` set when the process gets SIGTERM while inside the block (main thread only; elsewhere
    the event is never set). The previous handler is restored on exit."""
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: event.set())
    try:
        yield event
    finally:
        signal.signal(signal.SIGTERM, previous)


def final_model_path(checkpoint_dir: str | Path, study: str, run_name: str) -> Path:
    """Where a finished run's trained model is saved (`save_pretrained` folder)."""
    return Path(checkpoint_dir) / study / f"{run_name}.final"


def train_run(run: Run, settings: TrainSettings, study: str, *, device: str = "cpu",
              results_dir: Path = RESULTS_DIR, checkpoint_dir: Path = CHECKPOINT_DIR, cache_dir: Path = CACHE_DIR,
              deadline: float | None = None, stop_after_steps: int | None = None, force: bool = False,
              memory_implementation: str = "chunk", checkpoint_minutes: float | None = CHECKPOINT_MINUTES,
              log: Callable[[str], None] = print) -> dict | None:
    """Train one run to the end (or until `deadline`, a `time.time()` value, or `stop_after_steps`), resuming
    from its checkpoint. `memory_implementation` (`"chunk"` or `"compiled"`: the same function, the compiled one
    faster once compiled) is how Hope models run their memories; it is recorded in the result, it is not part of the
    run's identity (a run may resume under the other one). A checkpoint is also written every `checkpoint_minutes`
    of wall time (`None`: only every `settings.checkpoint_every` steps) and, after the step in flight, on SIGTERM.

    Returns:
        The result dict (also written to `<results_dir>/<study>/<run.name>.json`), or `None` if the run
        stopped early (its checkpoint holds the progress; the same call continues it).
    """
    from hope_hf import baselines

    result_path = Path(results_dir) / study / f"{run.name}.json"
    ckpt_path = Path(checkpoint_dir) / study / f"{run.name}.pt"
    diverged_path = ckpt_path.with_suffix(".diverged.pt")
    if result_path.is_file() and not force:
        log(f"[{run.name}] done already ({result_path}); --force retrains")
        return json.loads(result_path.read_text())
    if force:
        ckpt_path.unlink(missing_ok=True)
        diverged_path.unlink(missing_ok=True)
    dev = torch.device(device)
    commit = git_commit()             # the code this process runs (read now: the tree may move on while it trains)
    config = build_config(run)
    if hasattr(config, "memory_implementation"):          # Hope configs; a Llama has no such field
        config.memory_implementation = memory_implementation
    corpus = load_corpus(run.data, config.vocab_size, cache_dir)
    train_blocks = corpus.blocks("train", settings.block_size)
    val_blocks = corpus.blocks("validation", settings.block_size)
    curve_blocks = val_blocks[: settings.eval_blocks]
    final_blocks = val_blocks if settings.final_eval_blocks <= 0 else val_blocks[: settings.final_eval_blocks]

    torch.manual_seed(settings.seed)
    model = build_model(config).to(dev)
    if settings.gradient_checkpointing:
        enable_activation_checkpointing(model)
    model.train()
    parameters = baselines.count_parameters(model)
    optimizer = make_optimizer(model, settings, per_cms_level=run.level_lr_scale is not None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, settings))
    schedule = make_cms_schedule(model, run.level_lr_scale)
    step, curve, train_losses, elapsed, eval_seconds = 0, [], [], 0.0, 0.0
    if ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)   # RNG states must stay on the CPU
        if state["settings"] != dataclasses.asdict(settings) or not _same_run(state["run"], run):
            raise ValueError(f"checkpoint {ckpt_path} was made with other settings or another run definition; "
                             "delete it or pass --force")
        load_training_state(state, model, optimizer, scheduler, schedule)
        _set_rng_state(state["rng"])
        step, curve, train_losses = state["step"], state["curve"], state["train_losses"]
        elapsed, eval_seconds = state["elapsed"], state["eval_seconds"]
        log(f"[{run.name}] resumed at step {step}/{settings.steps}")

    def save_checkpoint(path: Path = ckpt_path) -> None:
        _save_atomic({**training_state(model, optimizer, scheduler, schedule), "rng": _rng_state(), "step": step,
                      "curve": curve, "train_losses": train_losses, "elapsed": elapsed, "eval_seconds": eval_seconds,
                      "settings": dataclasses.asdict(settings), "run": dataclasses.asdict(run)}, path)

    eval_every = max(1, settings.eval_every_tokens // settings.tokens_per_step)
    diverged_at = None
    started = time.time()
    base_elapsed = elapsed
    if step == 0 and not curve:
        curve.append([0, evaluate(model, curve_blocks, settings.batch_size, dev)])
        eval_seconds += time.time() - started
    last_saved = time.time()
    with _stop_requested_on_sigterm() as terminated:
        while step < settings.steps:
            ids = train_blocks[batch_indices(step, settings.batch_size, len(train_blocks), settings.data_seed)].to(dev)
            with autocast(dev):
                loss = model(ids, labels=ids, use_cache=False).loss
            loss_value = float(loss.detach())
            grad_norm = None
            if math.isfinite(loss_value):
                loss.backward()
                grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip))
            if not math.isfinite(loss_value) or not math.isfinite(grad_norm):
                # nothing of this step is applied: keep the state that produces it, to replay and inspect
                optimizer.zero_grad(set_to_none=True)
                save_checkpoint(diverged_path)
                step += 1
                train_losses.append([step, loss_value])
                elapsed = base_elapsed + time.time() - started
                diverged_at = step
                what = f"training loss {loss_value}" if grad_norm is None else f"gradient norm {grad_norm}"
                log(f"[{run.name}] DIVERGED: {what} at step {step}; recorded as such; the state before the step "
                    f"is kept in {diverged_path}")
                break
            apply_step(optimizer, scheduler, schedule)
            step += 1
            train_losses.append([step, loss_value])
            elapsed = base_elapsed + time.time() - started
            if step % eval_every == 0 or step == settings.steps:
                eval_started = time.time()
                curve.append([step * settings.tokens_per_step, evaluate(model, curve_blocks, settings.batch_size, dev)])
                eval_seconds += time.time() - eval_started
                log(f"[{run.name}] step {step}/{settings.steps} train loss {train_losses[-1][1]:.4f} "
                    f"val loss {curve[-1][1]:.4f} ({time.time() - started:.0f} s)")
            elapsed = base_elapsed + time.time() - started
            out_of_time = deadline is not None and time.time() > deadline
            stop_here = (stop_after_steps is not None and step >= stop_after_steps) or terminated.is_set()
            due = step % settings.checkpoint_every == 0 or (
                checkpoint_minutes is not None and time.time() - last_saved >= 60 * checkpoint_minutes)
            if step < settings.steps and (due or out_of_time or stop_here):
                save_checkpoint()
                last_saved = time.time()
                if out_of_time or stop_here:
                    why = " (SIGTERM)" if terminated.is_set() else ""
                    log(f"[{run.name}] stopped at step {step}/{settings.steps}{why}; checkpoint {ckpt_path} "
                        "(run the same command to continue)")
                    return None
    train_seconds = elapsed - eval_seconds        # optimiser steps only; the curve's evaluations apart
    final_loss = _finite_or_none(evaluate(model, final_blocks, settings.batch_size, dev)) if diverged_at is None else None
    curve = [[tokens, _finite_or_none(loss)] for tokens, loss in curve]        # strict JSON: no NaN
    result = {
        "study": study, "run": run.name, "label": run.label, "group": run.group, "data": corpus.info,
        "config_name": run.config if isinstance(run.config, str) else None,
        "config": json.loads(config.to_json_string(use_diff=False)),   # in full: shipped defaults may change
        "overrides": run.overrides, "level_lr_scale": run.level_lr_scale, "model_type": config.model_type,
        "parameters": parameters,
        "settings": dataclasses.asdict(settings), "steps": step,
        "tokens": step * settings.tokens_per_step,
        "diverged_at_step": diverged_at,
        "validation": {"loss": final_loss, "perplexity": math.exp(final_loss) if final_loss is not None else None,
                       "blocks": len(final_blocks),
                       "tokens": len(final_blocks) * (settings.block_size - 1)},
        "curve": curve, "train_loss_last100": _mean_finite([l for _, l in train_losses[-100:]]),
        "train_seconds": train_seconds, "curve_eval_seconds": eval_seconds,
        "tokens_per_second": step * settings.tokens_per_step / max(train_seconds, 1e-9),
        "device": device_name(dev), "dtype": _dtype_name(dev),
        "memory_implementation": getattr(config, "memory_implementation", None),
        "torch": torch.__version__, "transformers": _transformers_version(), "git_commit": commit,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    result_path.parent.mkdir(parents=True, exist_ok=True)
    saved = ""
    if diverged_at is None:
        final_path = final_model_path(checkpoint_dir, study, run.name)
        model.save_pretrained(final_path)
        saved = f"; model -> {final_path}"
    result_path.write_text(json.dumps(result, indent=1, allow_nan=False) + "\n")
    if ckpt_path.is_file():
        ckpt_path.unlink()
    log(f"[{run.name}] done: validation perplexity {result['validation']['perplexity']}, "
        f"{train_seconds:.0f} s, {result['tokens_per_second']:.0f} tokens/s -> {result_path}{saved}")
    return result


#: Config fields that do not change what a run computes (ignored when two runs are compared).
_NOT_THE_TRAINING = ("memory_implementation", "transformers_version")
#: Settings that change how a step is computed, not what: activation checkpointing recomputes the same values.
_SETTINGS_NOT_THE_TRAINING = ("gradient_checkpointing",)


def _training(config: dict, cache_key: str | None, settings: dict, dtype: str | None,
              level_lr_scale: list[float] | None) -> dict[str, Any]:
    """What makes two runs the same training, by the name a difference is reported under: the full model config, the
    corpus (token cache key), the settings, the dtype and the CMS learning-rate factors, less the fields that change
    how a step is computed, not what (`_NOT_THE_TRAINING`, `_SETTINGS_NOT_THE_TRAINING`)."""
    return {"config": {k: v for k, v in config.items() if k not in _NOT_THE_TRAINING},
            "corpus": cache_key,
            "settings": {k: v for k, v in settings.items() if k not in _SETTINGS_NOT_THE_TRAINING},
            "dtype": dtype,
            "CMS learning rates": level_lr_scale}


def config_differences(config, saved: dict) -> list[str]:
    """The fields in which `config` (a `HopeConfig` / `LlamaConfig`) trains another model than `saved` (a result's
    `"config"`), the fields that do not change the training aside (`_NOT_THE_TRAINING`). A field `saved` lacks (added
    to the config class after the result was written, with a default that keeps the earlier behaviour) counts as
    equal when `config` holds that field's default. Of two Hope-Attention configs, the fields only the self-modifying
    mixer reads (`SELF_MODIFYING_FIELDS`) are not compared."""
    from hope_hf.configuration_hope import SELF_MODIFYING_FIELDS

    mine = json.loads(config.to_json_string(use_diff=False))
    ignored = set(_NOT_THE_TRAINING)
    if mine.get("model_type") == "hope" and mine.get("mixer") == saved.get("mixer") == "attention":
        ignored |= set(SELF_MODIFYING_FIELDS)
    mine = {k: v for k, v in mine.items() if k not in ignored}
    defaults = json.loads(type(config)().to_json_string(use_diff=False))
    theirs = {k: v for k, v in saved.items() if k not in ignored}
    return sorted(k for k in set(mine) | set(theirs)
                  if theirs.get(k, defaults.get(k)) != mine.get(k) or (k not in mine))


def _training_of_result(result: dict) -> dict[str, Any]:
    """`_training` of a result JSON."""
    return _training(result["config"], result["data"].get("cache_key"), result["settings"], result.get("dtype"),
                     result.get("level_lr_scale"))


def _dtype_name(device: torch.device) -> str:
    return "bf16 autocast" if device.type == "cuda" else "float32"


def adopt_identical_result(run: Run, settings: TrainSettings, study: str, source: Path, *, device: str = "cpu",
                           results_dir: Path = RESULTS_DIR, cache_dir: Path = CACHE_DIR,
                           log: Callable[[str], None] = print) -> dict | None:
    """Take another study's result as `run`'s when it is the same training, instead of training it again.

    Same training: the same full model config (the memory implementation aside: the same function), the same corpus
    (token cache key), the same settings (activation checkpointing aside: it recomputes the same values) and the
    same dtype as `run` on `device`. Then the result is written as
    `run`'s (study and run renamed, `same_training_as` naming the source) and returned; otherwise (or if `run` has a
    result already, or `source` does not exist) nothing is written and `None` is returned. On a CPU a training is
    deterministic (the resume tests compare bit for bit), so a rerun would give the very same numbers.
    """
    result_path = Path(results_dir) / study / f"{run.name}.json"
    source = Path(source)
    if result_path.is_file() or not source.is_file():
        return None
    other = json.loads(source.read_text())
    config = build_config(run)
    mine = _training(json.loads(config.to_json_string(use_diff=False)),
                     load_corpus(run.data, config.vocab_size, cache_dir).info["cache_key"],
                     json.loads(json.dumps(dataclasses.asdict(settings))),      # tuples as lists, as in the JSON
                     _dtype_name(torch.device(device)), run.level_lr_scale)
    theirs = _training_of_result(other)
    differences = [name for name in mine if name != "config" and mine[name] != theirs[name]]
    if config_differences(config, other["config"]):
        differences.insert(0, "config")
    if differences:
        log(f"[{run.name}] {source} is not the same training ({', '.join(differences)} differ): training it")
        return None
    result = {**other, "study": study, "run": run.name, "label": run.label, "group": run.group,
              "overrides": run.overrides, "same_training_as": f"{other['study']}/{other['run']}"}
    result_path.parent.mkdir(parents=True, exist_ok=True)
    result_path.write_text(json.dumps(result, indent=1, allow_nan=False) + "\n")
    log(f"[{run.name}] the same training as {result['same_training_as']} ({source}): its result taken, not retrained")
    return result


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _mean_finite(values: list[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


# ----------------------------------------------------------------------------------------------------------------
# Tables and plots from the JSONs
# ----------------------------------------------------------------------------------------------------------------

def load_results(results_dir: Path, study: str) -> list[dict]:
    """Every result JSON of `study` under `results_dir`, sorted by run name."""
    folder = Path(results_dir) / study
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def markdown_table(results: Sequence[dict], order: Sequence[str] | None = None, baseline: str | None = None) -> str:
    """One row per result: run, label, parameters, tokens, validation loss / perplexity, wall time, tokens/s, device.

    Rows follow `order` (run names) where given, then the rest by name. With `baseline` (a run name that
    has a result), two more columns give each row's parameter and perplexity change relative to it.
    """
    rank = {name: i for i, name in enumerate(order or [])}
    rows = sorted(results, key=lambda r: (rank.get(r["run"], len(rank)), r["run"]))
    base = next((r for r in results if r["run"] == baseline), None)
    extra_head, extra_rule = (" Δ params | Δ ppl |", "---:|---:|") if base else ("", "")
    lines = [f"| run | what | params |{extra_head} tokens | val loss | val ppl | train time | tokens/s | device |",
             f"|---|---|---:|{extra_rule}---:|---:|---:|---:|---:|---|"]
    for r in rows:
        extra = ""
        if base:
            ppl, base_ppl = r["validation"]["perplexity"], base["validation"]["perplexity"]
            change = f"{100 * (ppl / base_ppl - 1):+.1f}%" if ppl is not None and base_ppl is not None else "-"
            extra = f" {100 * (r['parameters'] / base['parameters'] - 1):+.1f}% | {change} |"
        lines.append(f"| {r['run']} | {r.get('label', '')} | {r['parameters']:,} |{extra} {r['tokens']:,} | "
                     f"{_number(r['validation']['loss'], '.4f', r)} | {_number(r['validation']['perplexity'], '.2f', r)} | "
                     f"{_duration(r['train_seconds'])} | {r['tokens_per_second']:,.0f} | {r['device']} |")
    return "\n".join(lines)


def run_progress(runs: Sequence[Run], settings: Callable[[Run], TrainSettings], study: str,
                 results_dir: Path = RESULTS_DIR, checkpoint_dir: Path = CHECKPOINT_DIR) -> list[dict]:
    """Where each run stands, from its result JSON or else its checkpoint (neither is modified): one dict per run
    with `run`, `group`, `state` (`"done"`, `"diverged"`, `"running"`: a checkpoint, no result, or `"not started"`),
    `step`, `steps` and `curve` (`[tokens, validation loss]` pairs measured so far). `settings(run)` gives the
    settings of a run without a checkpoint (its step count)."""
    out = []
    for run in runs:
        result_path = Path(results_dir) / study / f"{run.name}.json"
        ckpt_path = Path(checkpoint_dir) / study / f"{run.name}.pt"
        entry = {"run": run.name, "group": run.group}
        if result_path.is_file():
            result = json.loads(result_path.read_text())
            entry.update(state="done" if result["diverged_at_step"] is None else "diverged", step=result["steps"],
                         steps=_settings_of(result["settings"]).steps, curve=result["curve"])
        elif ckpt_path.is_file():
            state = torch.load(ckpt_path, map_location="cpu", weights_only=False, mmap=True)
            entry.update(state="running", step=state["step"], steps=_settings_of(state["settings"]).steps,
                         curve=[list(point) for point in state["curve"]])
        else:
            entry.update(state="not started", step=0, steps=settings(run).steps, curve=[])
        out.append(entry)
    return out


def _settings_of(saved: dict) -> TrainSettings:
    """`TrainSettings` from `dataclasses.asdict` as a checkpoint or a result JSON holds it."""
    return TrainSettings(**{**saved, "betas": tuple(saved["betas"])})


def _progress_state(entry: dict) -> str:
    return f"step {entry['step']}/{entry['steps']}" if entry["state"] == "running" else entry["state"]


def progress_table(progress: Sequence[dict]) -> str:
    """Validation loss against training tokens of finished and unfinished runs side by side (`run_progress`), one
    markdown table per group: a column per run headed by its state (`step s/N` while running), a row per token
    count any of them has measured. Runs with the same schedule are compared at equal tokens and equal learning
    rate, so an unfinished run can be read against the others before its final perplexity exists."""
    groups: dict[str, list[dict]] = {}
    for entry in progress:
        groups.setdefault(str(entry["group"] or "all"), []).append(entry)
    tables = []
    for group, entries in groups.items():
        heads = [f"{e['run']} ({_progress_state(e)})" for e in entries]
        lines = [f"{group}:", "", "| tokens | " + " | ".join(heads) + " |", "|---:|" + "---:|" * len(entries)]
        losses = [{tokens: _finite_or_none(loss) for tokens, loss in e["curve"]} for e in entries]
        for tokens in sorted({t for curve in losses for t in curve}):
            cells = ["-" if tokens not in c else "non-finite" if c[tokens] is None else f"{c[tokens]:.4f}"
                     for c in losses]
            lines.append(f"| {tokens:,} | " + " | ".join(cells) + " |")
        tables.append("\n".join(lines))
    return "\n\n".join(tables)


def seed_spread_table(results_dirs: Sequence[Path], study: str) -> str:
    """The same runs trained from several initialisation seeds: one row per run found in at least two of
    `results_dirs` (each folder holds one training per run), with the perplexity of each seed, their mean and the
    spread `max / min − 1`.

    Results of one run must be the same training apart from the seed (`_training`, as `adopt_identical_result`
    compares them) and of distinct seeds; otherwise `ValueError` naming the run and the folders.
    """
    by_run: dict[str, list[tuple[Path, dict]]] = {}
    for folder in results_dirs:
        for result in load_results(folder, study):
            by_run.setdefault(result["run"], []).append((Path(folder), result))

    def training_but_seed(result: dict) -> str:
        training = _training_of_result(result)
        training["settings"] = {k: v for k, v in training["settings"].items() if k != "seed"}
        return json.dumps(training, sort_keys=True)

    lines = ["| run | what | seeds | val ppl per seed | mean | spread |", "|---|---|---|---|---:|---:|"]
    for name in sorted(by_run):
        found = sorted(by_run[name], key=lambda fr: fr[1]["settings"]["seed"])
        if len(found) < 2:
            continue
        if len({training_but_seed(r) for _, r in found}) > 1:
            raise ValueError(f"run {name}: the results in {[str(f) for f, _ in found]} differ in more than the seed")
        seeds = [r["settings"]["seed"] for _, r in found]
        if len(set(seeds)) < len(seeds):
            raise ValueError(f"run {name}: seed {seeds} repeated across {[str(f) for f, _ in found]}")
        ppl = [r["validation"]["perplexity"] for _, r in found]
        finite = [p for p in ppl if p is not None]
        mean = f"{sum(finite) / len(finite):.2f}" if len(finite) == len(ppl) else "-"
        spread = f"{100 * (max(finite) / min(finite) - 1):.1f}%" if len(finite) == len(ppl) else "-"
        per_seed = " / ".join(_number(p, ".2f", r) for p, (_, r) in zip(ppl, found, strict=True))
        lines.append(f"| {name} | {found[0][1].get('label', '')} | {', '.join(map(str, seeds))} | {per_seed} | "
                     f"{mean} | {spread} |")
    return "\n".join(lines)


def _number(value: float | None, spec: str, result: dict) -> str:
    """`value` formatted, or why there is none (a run that diverged)."""
    if value is None:
        step = result.get("diverged_at_step")
        return f"diverged (step {step})" if step is not None else "non-finite"
    return format(value, spec)


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s"


def plot_curves(results: Sequence[dict], path: Path, title: str, group_by: str = "group") -> Path:
    """PNG of validation loss against training tokens, one panel per value of `group_by`, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[dict]] = {}
    for r in results:
        groups.setdefault(str(r.get(group_by) or "all"), []).append(r)
    fig, axes = plt.subplots(1, len(groups), figsize=(6.5 * len(groups), 4.5), dpi=110, squeeze=False)
    for ax, (group, rs) in zip(axes[0], sorted(groups.items())):
        for r in sorted(rs, key=lambda r: r["run"]):
            tokens, losses = zip(*r["curve"][1:]) if len(r["curve"]) > 1 else zip(*r["curve"])
            ppl = _number(r["validation"]["perplexity"], ".1f", r)
            ax.plot(tokens, losses, label=f"{r['run']} ({r['parameters'] / 1e6:.2f}M, ppl {ppl})")
        ax.set_title(group)
        ax.set_xlabel("training tokens")
        ax.set_ylabel("validation loss (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------------------------
# The runner
# ----------------------------------------------------------------------------------------------------------------

def base_parser(description: str) -> argparse.ArgumentParser:
    """Options every study takes."""
    from hope_hf.configuration_hope import FAST_MEMORY_IMPLEMENTATIONS

    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", metavar="RUN", help="run only these runs (names as in --list)")
    parser.add_argument("--list", action="store_true", help="list the runs with their parameter counts and exit")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at the same time (subprocesses)")
    parser.add_argument("--tokens", type=int, default=None, help="training tokens of every run (default per study)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--block-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--eval-every-tokens", type=int, default=None)
    parser.add_argument("--eval-blocks", type=int, default=None, help="held-out blocks of the curve's evaluations")
    parser.add_argument("--final-eval-blocks", type=int, default=None,
                        help="held-out blocks of the final perplexity (0: all)")
    parser.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints")
    parser.add_argument("--seed", type=int, default=0, help="model initialisation seed")
    parser.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false",
                        default=None, help="keep every activation (faster, much more memory for Hope)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda if available)")
    parser.add_argument("--memory-implementation", choices=FAST_MEMORY_IMPLEMENTATIONS, default="chunk",
                        help="Hope's memories: chunk-wise (eager) or the same chunk functions under torch.compile")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads per run (default: cores / jobs, at least 1)")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="wall-time budget of the whole command: running runs checkpoint and stop when it is "
                             "spent, runs not started yet are left; rerun the same command to continue")
    parser.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)   # set for child processes
    parser.add_argument("--force", action="store_true", help="retrain runs that have a result")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--checkpoint-dir", type=Path, default=CHECKPOINT_DIR)
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR)
    parser.add_argument("--table", action="store_true", help="only print the table and write the plot from the JSONs")
    parser.add_argument("--progress", action="store_true",
                        help="only print the validation loss so far of finished and unfinished runs at equal tokens "
                             "(from the JSONs and the checkpoints)")
    parser.add_argument("--prepare", action="store_true",
                        help="only build the token caches of the selected runs' corpora (then carry --cache-dir)")
    return parser


def settings_from_args(args: argparse.Namespace, defaults: TrainSettings) -> TrainSettings:
    fields = {"tokens": args.tokens, "batch_size": args.batch_size, "block_size": args.block_size, "lr": args.lr,
              "eval_every_tokens": args.eval_every_tokens, "eval_blocks": args.eval_blocks,
              "final_eval_blocks": args.final_eval_blocks, "checkpoint_every": args.checkpoint_every,
              "seed": args.seed, "gradient_checkpointing": args.gradient_checkpointing}
    return dataclasses.replace(defaults, **{k: v for k, v in fields.items() if v is not None})


def run_settings(run: Run, settings: TrainSettings, args: argparse.Namespace) -> TrainSettings:
    """`settings` with the run's own token budget, unless the command set `--tokens`."""
    if args.tokens is None and run.tokens is not None:
        return dataclasses.replace(settings, tokens=run.tokens)
    return settings


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def parameter_report(runs: Sequence[Run]) -> dict[str, int]:
    """Parameter count of every run; checks each `group` matches within `PARAM_TOLERANCE` (raises otherwise)."""
    from hope_hf.baselines import meta_parameter_count

    counts = {run.name: meta_parameter_count(build_config(run)) for run in runs}
    groups: dict[str, dict[str, int]] = {}
    for run in runs:
        if run.group is not None:
            groups.setdefault(run.group, {})[run.name] = counts[run.name]
    for group, members in groups.items():
        try:
            check_parameter_match(members)
        except ValueError as err:
            raise ValueError(f"group {group!r}: {err}") from None
    return counts


def launch_cost_rank(run: Run) -> tuple[int, int]:
    """Sort key that starts the slowest runs first (most tokens, then the self-modifying mixer), so the
    longest run does not start last."""
    config = build_config(run)
    slow_mixer = config.model_type == "hope" and getattr(config, "mixer", "") == "self_modifying"
    return -(run.tokens or 0), 0 if slow_mixer else 1


def _child_argv(argv: Sequence[str], name: str, deadline: float | None = None, threads: int | None = None) -> list[str]:
    """`argv` with `--only` / `--jobs` / `--max-minutes` replaced so that the child trains `name` alone, with
    the parent's `deadline`."""
    out, skip = [], False
    for arg in argv:
        if skip and not arg.startswith("--"):
            continue
        skip = False
        if arg in ("--only", "--jobs", "--max-minutes", "--deadline", "--threads"):
            skip = True
            continue
        if arg.startswith(("--only=", "--jobs=", "--max-minutes=", "--deadline=", "--threads=")):
            continue
        out.append(arg)
    extra = ["--deadline", repr(deadline)] if deadline is not None else []
    extra += ["--threads", str(threads)] if threads is not None else []
    return [*out, "--only", name, "--jobs", "1", *extra]


def run_parallel(script: str, argv: Sequence[str], names: Sequence[str], jobs: int, log_dir: Path,
                 deadline: float | None = None, threads: int | None = None) -> dict[str, int]:
    """Train `names` as subprocesses of `script`, `jobs` at a time; each logs to `<log_dir>/<name>.log`.
    After `deadline` no new run starts (those get `EXIT_INTERRUPTED`).

    Returns: the exit status of each run.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    pending, running, status = list(names), {}, {}
    while pending or running:
        while pending and len(running) < jobs:
            name = pending.pop(0)
            if deadline is not None and time.time() > deadline:
                status[name] = EXIT_INTERRUPTED
                print(f"{name}: not started, the time budget is spent", flush=True)
                continue
            log_file = open(log_dir / f"{name}.log", "a")
            proc = subprocess.Popen([sys.executable, script, *_child_argv(argv, name, deadline, threads)], stdout=log_file,
                                    stderr=subprocess.STDOUT, env=os.environ.copy())
            running[name] = (proc, log_file)
            print(f"started {name} (log {log_dir / f'{name}.log'})", flush=True)
        time.sleep(1.0)
        for name, (proc, log_file) in list(running.items()):
            if proc.poll() is not None:
                log_file.close()
                status[name] = proc.returncode
                del running[name]
                word = {0: "finished", EXIT_INTERRUPTED: "stopped by --max-minutes (rerun to continue)"}.get(
                    proc.returncode, f"FAILED (exit {proc.returncode})")
                print(f"{name}: {word}", flush=True)
    return status


def main(study: str, title: str, runs: Sequence[Run], defaults: TrainSettings, args: argparse.Namespace,
         argv: Sequence[str], script: str, group_by: str = "group", baseline: str | None = None,
         same_training: dict[str, Path] | None = None) -> int:
    """Run a study from parsed arguments: `--list`, `--table`, one run in-process, or several (in parallel).
    `same_training` maps a run name to another study's result file that is taken as its result, instead of
    training it, when it is the same training (`adopt_identical_result`)."""
    names = [run.name for run in runs]
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            raise SystemExit(f"unknown run(s) {unknown}; runs of {study}: {names}")
        runs = [run for run in runs if run.name in args.only]
    settings = settings_from_args(args, defaults)
    if args.progress:
        print(progress_table(run_progress(runs, lambda run: run_settings(run, settings, args), study,
                                          args.results_dir, args.checkpoint_dir)))
        return 0
    if args.table:
        results = [r for r in load_results(args.results_dir, study) if r["run"] in {run.name for run in runs}]
        if not results:
            print(f"no results of {study} under {args.results_dir / study}")
            return 1
        print(markdown_table(results, order=names, baseline=baseline))
        png = plot_curves(results, Path(args.results_dir) / study / "validation_loss.png", title, group_by)
        print(f"\nplot: {png}")
        return 0
    counts = parameter_report(runs)
    if args.list:
        for run in runs:
            print(f"{run.name:40s} {counts[run.name]:>12,}  {run.label}")
        return 0
    deadline = args.deadline
    if deadline is None and args.max_minutes is not None:
        deadline = time.time() + 60 * args.max_minutes
    device = resolve_device(args.device)
    jobs = max(1, min(args.jobs, len(runs)))
    threads = args.threads or max(1, (os.cpu_count() or 1) // jobs)
    torch.set_num_threads(threads)
    budgets = sorted({run_settings(run, settings, args).tokens for run in runs})
    print(f"{study}: {len(runs)} run(s), {' / '.join(f'{t:,}' for t in budgets)} training tokens per run, batches "
          f"of {settings.batch_size} x {settings.block_size}, device {device}, {jobs} job(s)", flush=True)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if jobs > 1 or args.prepare:
        for data in sorted({run.data for run in runs}):      # build the token caches once, not in every child
            for vocab in sorted({build_config(run).vocab_size for run in runs if run.data == data}):
                info = load_corpus(data, vocab, args.cache_dir).info
                print(f"corpus {info['tag']}: {info['documents']:,} documents, {info['train_tokens']:,} training / "
                      f"{info['validation_tokens']:,} validation tokens (vocabulary {vocab}, cache key "
                      f"{info['cache_key']})", flush=True)
        if args.prepare:
            return 0
        status = run_parallel(script, list(argv), [run.name for run in sorted(runs, key=launch_cost_rank)], jobs,
                              Path(args.checkpoint_dir) / study / "logs", deadline, threads)
        failed = {n: s for n, s in status.items() if s not in (0, EXIT_INTERRUPTED)}
        interrupted = [n for n, s in status.items() if s == EXIT_INTERRUPTED]
        if failed:
            print(f"failed runs: {failed}")
        if interrupted:
            print(f"stopped early (rerun the same command to continue): {interrupted}")
        return 1 if failed else (EXIT_INTERRUPTED if interrupted else 0)
    unfinished = []
    for run in runs:
        if deadline is not None and time.time() > deadline and not (args.results_dir / study / f"{run.name}.json").is_file():
            print(f"[{run.name}] not started, the time budget is spent", flush=True)
            unfinished.append(run.name)
            continue
        this_run = run_settings(run, settings, args)
        if run.name in (same_training or {}) and not args.force and adopt_identical_result(
                run, this_run, study, same_training[run.name], device=device, results_dir=args.results_dir,
                cache_dir=args.cache_dir, log=lambda s: print(s, flush=True)):
            continue
        result = train_run(run, this_run, study, device=device, results_dir=args.results_dir,
                           checkpoint_dir=args.checkpoint_dir, cache_dir=args.cache_dir, deadline=deadline,
                           force=args.force, memory_implementation=args.memory_implementation,
                           log=lambda s: print(s, flush=True))
        if result is None:
            unfinished.append(run.name)
    return EXIT_INTERRUPTED if unfinished else 0


def variants_main(study: str, base: str | dict[str, str], title: str, runs_of_corpus, doc: str,
                  argv: Sequence[str] | None, script: str) -> int:
    """The command of a study of variants of one model (`ablations.py`, `cms_schedule.py`): `--data` picks the
    corpus, `runs_of_corpus(data)` gives the runs, the first being the base: the LM comparison's run `base` on that
    corpus, whose result is taken when it is the same training (`adopt_identical_result`).

    `base` names the base's run in the LM comparison (`<family>-<size>`, e.g. `hope-attention-tiny`) and may map
    sizes to them (`{"tiny": "hope-tiny", "small": "hope-small"}`): the command then takes `--size` (default the
    first), the runs are `runs_of_corpus(data, size)` and a size other than the first is the study `<study>_<size>`
    (its own results and checkpoints folder). `title` may hold `{base}`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = base_parser(doc)
    parser.add_argument("--data", default="embedded", help="'embedded' or the path of a text file / folder")
    sizes = base if isinstance(base, dict) else None
    if sizes:
        parser.add_argument("--size", choices=list(sizes), default=next(iter(sizes)),
                            help="the base model's size (a size other than the first is the study "
                                 f"{study}_<size>)")
    args = parser.parse_args(argv)
    if sizes:
        study_runs = runs_of_corpus(args.data, args.size)
        base = sizes[args.size]
        study = study if args.size == next(iter(sizes)) else f"{study}_{args.size}"
    else:
        study_runs = runs_of_corpus(args.data)
    base_twin = Path(args.results_dir) / "lm_comparison" / f"{base}@{corpus_tag(args.data)}.json"
    return main(study, title.format(base=base), study_runs, TrainSettings(), args, argv, script,
                baseline=study_runs[0].name, same_training={study_runs[0].name: base_twin})


__all__ = [
    "Corpus", "Run", "TrainSettings", "base_parser", "batch_indices", "build_config", "check_parameter_match",
    "adopt_identical_result", "cms_levels", "config_differences", "count_parameters", "evaluate", "load_corpus",
    "load_results", "main",
    "markdown_table", "parameter_report", "plot_curves", "progress_table", "read_documents", "run_progress",
    "seed_spread_table", "split_documents", "train_run", "variants_main",
]
