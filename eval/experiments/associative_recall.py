"""Multi-query associative recall (MQAR; Arora et al., *Zoology*, arXiv 2312.04927) trained from scratch: can a
model store key-value pairs it reads in context and give back the value of each key when asked?

The language-model studies cannot answer this: at their budget no model recalls a passage it has just read
(`probe_recall.py`, copy gains of 0.00-0.06 nats, the Transformer included). This task asks for nothing else.

Notation:
    P   pairs per example;  NK, NV  key and value tokens (disjoint sets);  G  filler tokens between pairs and queries
    T   example length = 2P (pairs) + G (filler) + 2P (queries)

An example (keys distinct, values drawn with replacement, π a random permutation):

    k_1 v_1 k_2 v_2 … k_P v_P   f … f   k_π(1) v_π(1) … k_π(P) v_π(P)
    └──────── pairs (2P) ──────┘ └ G ┘  └──────────── queries (2P) ───────────┘

Loss and accuracy count the P query values only, each predicted at its key: chance is 1 / NV. The pairs are new in
every example, so nothing can be learnt into the weights; a model must write the pairs into its state while reading
them (attention: keys/values kept; Hope/Titans: fast weights) and read them back at the queries.

**The gap G.** A Hope layer reads its main memory at the state it had at the end of the previous chunk of C_m tokens
(HOPE.md §3 item 8: `o_t = M_mem^anchor(q_t)`), so a pair written in the chunk of its query is invisible to the
memory (only the convolution of window 4 and attention, where there is one, see it). Two tasks (P = 8, NK = NV = 32)
separate this from the capacity of the memory:

    near   G = 0, T = 32: the queries follow the pairs (pairs at 0-15, queries at 16-31): for C_m = 16 every pair is
           in the chunk before the queries, for C_m = 64 all are in the queries' chunk
    far    G = 48, T = 80: the queries start at token 64, a chunk boundary of every C_m in {16, 64}, so every pair
           is in a chunk before every query

Chance is 1 / NV = 0.031; a model that only learnt to answer with one of the values in its context (no key-value
binding) scores about 1 / P = 0.125 and somewhat more by not repeating values already asked for (0.18-0.22 measured
on the plateau every model sits on before it binds).

Models (matched to Hope's parameter count within 3%, `--list`; width 64, 2 layers, 2 heads):

    hope               hope-tiny's design at this width (C_o/C_m 16/64, CMS 1/4/16)
    hope-c16           the same with C_m = 16 (what the Titans ablation has)
    titans             the Titans ablation (titans-tiny's design: static projections, GD, one MLP level, C_m 16)
    titans-c64         the same with C_m = 64 (what Hope has)
    hope-attention     softmax attention + CMS
    transformer        Llama
    ...-eta-X          the same with the inner learning rate starting at eta_init = X (shipped: 0.03)
    titans-eta-0.3-dgd, titans-eta-0.3-adaptive-kv, hope-c16-eta-0.3-static-kv
                       single differences between the Titans ablation and Hope, at eta_init 0.3 and C_m 16
    hope-static-kv, hope-eta-0.3-static-kv
                       Hope at C_m 64 with static k and v, at the shipped eta_init and at 0.3 (the ablation study's
                       LM rows `static-kv`, `eta-init-0.3-static-kv`)

Every run of a task sees the same examples in the same order (step s draws from a generator seeded by (data seed,
s): exactly reproduced on resume), with the same AdamW, warm-up + cosine schedule and gradient clipping as the
LM studies (`common.py`). Evaluation: a fixed held-out set of examples (another seed) every `--eval-every` steps
(the curve) and at the end (the result); the training time in the result includes these evaluations. Checkpoints
every `--checkpoint-every` steps, on SIGTERM and when `--max-minutes` runs out; the same command resumes. Results:
`results/associative_recall/<family>@<task>.json`.

    python eval/experiments/associative_recall.py --list
    python eval/experiments/associative_recall.py --only transformer@far --threads 1
    python eval/experiments/associative_recall.py --only hope@far --threads 1 --memory-implementation compiled
    python eval/experiments/associative_recall.py --table
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

STUDY = "associative_recall"
FILLER = 3          # token ids 0-2 are left to pad / BOS / EOS
FIRST_KEY = 4       # keys are FIRST_KEY … FIRST_KEY + NK − 1, values the NV ids after them


@dataclasses.dataclass(frozen=True)
class RecallTask:
    """P pairs, G filler tokens, NK key and NV value tokens (module docstring)."""

    pairs: int
    gap: int
    keys: int = 64
    values: int = 64

    def __post_init__(self):
        for name in ("pairs", "keys", "values"):
            if getattr(self, name) < 1:
                raise ValueError(f"RecallTask.{name} must be >= 1, got {getattr(self, name)}")
        if self.gap < 0:
            raise ValueError(f"RecallTask.gap must be >= 0, got {self.gap}")
        if self.pairs > self.keys:
            raise ValueError(f"RecallTask.pairs ({self.pairs}) must be <= keys ({self.keys}): keys are distinct")

    @property
    def length(self) -> int:
        return 4 * self.pairs + self.gap

    @property
    def vocab_size(self) -> int:
        return FIRST_KEY + self.keys + self.values

    @property
    def first_query(self) -> int:
        """Position of the first query key."""
        return 2 * self.pairs + self.gap


TASKS = {"near": RecallTask(pairs=8, gap=0, keys=32, values=32),
         "far": RecallTask(pairs=8, gap=48, keys=32, values=32)}


def recall_batch(task: RecallTask, count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` examples of `task`.

    Returns:
        input_ids [count, T] int64 and labels [count, T] int64: the value at each query value's position, −100
        elsewhere (HF convention: `labels[:, t]` is predicted from the logits at t − 1, i.e. at the query key).
    """
    P = task.pairs
    keys = torch.rand(count, task.keys, generator=generator).argsort(dim=1)[:, :P] + FIRST_KEY       # distinct
    values = torch.randint(task.values, (count, P), generator=generator) + FIRST_KEY + task.keys
    order = torch.rand(count, P, generator=generator).argsort(dim=1)
    pairs = torch.stack([keys, values], dim=2).flatten(1)                                       # [N, 2P]
    query_values = values.gather(1, order)
    queries = torch.stack([keys.gather(1, order), query_values], dim=2).flatten(1)              # [N, 2P]
    filler = torch.full((count, task.gap), FILLER, dtype=torch.long)
    input_ids = torch.cat([pairs, filler, queries], dim=1)
    labels = torch.full_like(input_ids, -100)
    labels[:, task.first_query + 1:: 2] = query_values
    return input_ids, labels


def step_generator(data_seed: int, step: int) -> torch.Generator:
    """The generator of training step `step`: a function of the step alone (the same for every model, on resume)."""
    return torch.Generator().manual_seed(1_000_003 * data_seed + step)


def held_out_set(task: RecallTask, count: int, data_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The evaluation examples: drawn from a generator no training step uses (training seeds are ≥ 0)."""
    return recall_batch(task, count, torch.Generator().manual_seed(-1 - data_seed))


@torch.no_grad()
def recall_scores(model, input_ids: torch.Tensor, labels: torch.Tensor, batch_size: int,
                  device: torch.device) -> dict[str, float]:
    """Mean loss (nats) and top-1 accuracy over the labelled (query value) positions of the examples."""
    was_training = model.training
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for i in range(0, len(input_ids), batch_size):
        ids, target = input_ids[i: i + batch_size].to(device), labels[i: i + batch_size, 1:].to(device)
        with common.autocast(device):
            logits = model(ids, use_cache=False).logits[:, :-1].float()
        mask = target != -100
        loss_sum += float(torch.nn.functional.cross_entropy(logits[mask], target[mask], reduction="sum"))
        correct += int((logits.argmax(-1)[mask] == target[mask]).sum())
        count += int(mask.sum())
    model.train(was_training)
    return {"loss": loss_sum / count, "accuracy": correct / count}


# ----------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------

#: The width of every model of the study (small enough that Hope trains in minutes on one CPU thread).
SHAPE = {"hidden_size": 64, "num_hidden_layers": 2}
HOPE_SHAPE = {**SHAPE, "num_heads": 2, "num_key_value_heads": 2}
STATIC_KV = {"adaptive_k": False, "adaptive_v": False}     # Hope's k and v as static projections (as in Titans)
HOPE = common.STUDY_HOPE["tiny"]    # the studies' Hope (memory expansion r = 2): the design of every hope-* family
#: family → (modeling config its design comes from, overrides, label); `None`: the Llama matched to Hope. The inner
#: learning rate at initialisation is the shipped `eta_init` (0.03) unless the name says otherwise.
FAMILY_DEFINITIONS: dict[str, tuple[str, dict, str] | None] = {
    "hope": (HOPE, {}, "Hope (C_o/C_m 16/64)"),
    "hope-c16": (HOPE, {"memory_chunk_size": 16}, "Hope, C_m = 16"),
    "titans": ("titans-tiny", {}, "Titans ablation (C_m 16)"),
    "titans-c64": ("titans-tiny", {"memory_chunk_size": 64}, "Titans ablation, C_m = 64"),
    "hope-attention": ("hope-attention-tiny", {}, "Hope-Attention"),
    "transformer": None,
    # the inner learning rate at initialisation (eta_max stays 1)
    "hope-eta-0.3": (HOPE, {"eta_init": 0.3}, "Hope, eta_init 0.3"),
    "hope-c16-eta-0.3": (HOPE, {"memory_chunk_size": 16, "eta_init": 0.3}, "Hope, C_m = 16, eta_init 0.3"),
    "titans-eta-0.1": ("titans-tiny", {"eta_init": 0.1}, "Titans ablation, eta_init 0.1"),
    "titans-eta-0.3": ("titans-tiny", {"eta_init": 0.3}, "Titans ablation, eta_init 0.3"),
    "titans-c64-eta-0.3": ("titans-tiny", {"memory_chunk_size": 64, "eta_init": 0.3},
                           "Titans ablation, C_m = 64, eta_init 0.3"),
    # single differences between the Titans ablation and Hope, at eta_init 0.3 and C_m 16
    "titans-eta-0.3-dgd": ("titans-tiny", {"eta_init": 0.3, "inner_optimizer": "dgd"},
                           "Titans ablation, eta_init 0.3, DGD"),
    "titans-eta-0.3-adaptive-kv": ("titans-tiny", {"eta_init": 0.3, "adaptive_k": True, "adaptive_v": True},
                                   "Titans ablation, eta_init 0.3, k and v memories"),
    "hope-c16-eta-0.3-static-kv": (HOPE, {"memory_chunk_size": 16, "eta_init": 0.3, **STATIC_KV},
                                   "Hope, C_m = 16, eta_init 0.3, static k and v"),
    # the ablation study's LM rows of the same setting at the shipped C_m 64, and their control at the shipped eta_init
    "hope-eta-0.3-static-kv": (HOPE, {"eta_init": 0.3, **STATIC_KV}, "Hope, eta_init 0.3, static k and v"),
    "hope-static-kv": (HOPE, STATIC_KV, "Hope, static k and v"),
}
FAMILIES = tuple(FAMILY_DEFINITIONS)
FAMILY_LABELS = {f: "Transformer++ (Llama)" if d is None else d[2] for f, d in FAMILY_DEFINITIONS.items()}


def family_config(family: str, vocab_size: int):
    """The config of `family` at the study's width, with the MLP / CMS width that matches Hope's parameter count."""
    from hope_hf.baselines import cms_width_for, matched_llama_config, meta_parameter_count, with_cms_width

    def hope_like(name: str, overrides: dict):
        return common.build_config(common.Run(name=family, config=name,
                                              overrides={**HOPE_SHAPE, "vocab_size": vocab_size, **overrides}))

    hope = hope_like(HOPE, {})
    if FAMILY_DEFINITIONS[family] is None:
        return matched_llama_config(hope)
    name, overrides, _ = FAMILY_DEFINITIONS[family]
    config = hope_like(name, overrides)
    target = meta_parameter_count(hope)
    if meta_parameter_count(config) == target:          # e.g. Hope with other chunk sizes or rates
        return config
    return with_cms_width(config, cms_width_for(config, target))


@dataclasses.dataclass
class RecallSettings:
    """The outer loop of every run (the LM studies' optimiser and schedule, `common.TrainSettings`)."""

    steps: int = 2000
    batch_size: int = 32
    lr: float = 3e-3
    seed: int = 0
    data_seed: int = 0
    eval_every: int = 100
    eval_examples: int = 512
    checkpoint_every: int = 250

    def train_settings(self, task: RecallTask) -> common.TrainSettings:
        return common.TrainSettings(tokens=self.steps * self.batch_size * task.length, batch_size=self.batch_size,
                                    block_size=task.length, lr=self.lr, seed=self.seed, data_seed=self.data_seed,
                                    gradient_checkpointing=False)


def train_recall_run(family: str, task_name: str, settings: RecallSettings, *, device: str = "cpu",
                     results_dir: Path = common.RESULTS_DIR, checkpoint_dir: Path = common.CHECKPOINT_DIR,
                     deadline: float | None = None, memory_implementation: str = "chunk", force: bool = False,
                     log=print) -> dict | None:
    """Train `family` on `task_name` to the end (or until `deadline`), resuming from its checkpoint.

    Returns: the result (also written to `<results_dir>/associative_recall/<family>@<task>.json`), or `None` if it
    stopped early (the same call continues it).
    """
    from hope_hf.baselines import count_parameters

    name = f"{family}@{task_name}"
    task = TASKS[task_name]
    result_path = Path(results_dir) / STUDY / f"{name}.json"
    ckpt_path = Path(checkpoint_dir) / STUDY / f"{name}.pt"
    if result_path.is_file() and not force:
        log(f"[{name}] done already ({result_path}); --force retrains")
        return json.loads(result_path.read_text())
    if force:
        ckpt_path.unlink(missing_ok=True)
    dev = torch.device(device)
    commit = common.git_commit()
    config = family_config(family, task.vocab_size)
    if hasattr(config, "memory_implementation"):
        config.memory_implementation = memory_implementation
    outer = settings.train_settings(task)
    torch.manual_seed(settings.seed)
    model = common.build_model(config).to(dev)
    model.train()
    optimizer = common.make_optimizer(model, outer)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: common.lr_factor(s, outer))
    schedule = common.make_cms_schedule(model)
    eval_ids, eval_labels = held_out_set(task, settings.eval_examples, settings.data_seed)
    step, curve, train_losses, elapsed = 0, [], [], 0.0
    if ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if state["settings"] != dataclasses.asdict(settings) or state["task"] != dataclasses.asdict(task):
            raise ValueError(f"checkpoint {ckpt_path} was made with other settings or another task; delete it or "
                             "pass --force")
        common.load_training_state(state, model, optimizer, scheduler, schedule)
        step, curve, train_losses, elapsed = state["step"], state["curve"], state["train_losses"], state["elapsed"]
        log(f"[{name}] resumed at step {step}/{settings.steps}")

    def save_checkpoint() -> None:
        common._save_atomic({**common.training_state(model, optimizer, scheduler, schedule), "step": step,
                             "curve": curve, "train_losses": train_losses, "elapsed": elapsed,
                             "settings": dataclasses.asdict(settings), "task": dataclasses.asdict(task)}, ckpt_path)

    def evaluate() -> None:
        curve.append([step, recall_scores(model, eval_ids, eval_labels, 128, dev)])

    started, base_elapsed = time.time(), elapsed
    if step == 0 and not curve:
        evaluate()
    diverged_at = None
    with common._stop_requested_on_sigterm() as terminated:
        while step < settings.steps:
            ids, labels = recall_batch(task, settings.batch_size, step_generator(settings.data_seed, step))
            with common.autocast(dev):
                loss = model(ids.to(dev), labels=labels.to(dev), use_cache=False).loss
            loss_value = float(loss.detach())
            grad_norm = math.nan
            if math.isfinite(loss_value):
                loss.backward()
                grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), outer.grad_clip))
            if not math.isfinite(grad_norm):          # nothing of the step is applied
                diverged_at = step + 1
                log(f"[{name}] DIVERGED at step {diverged_at}: training loss {loss_value}, gradient norm {grad_norm}")
                break
            common.apply_step(optimizer, scheduler, schedule)
            step += 1
            train_losses.append([step, loss_value])
            if step % settings.eval_every == 0 or step == settings.steps:
                evaluate()
                log(f"[{name}] step {step}/{settings.steps} train loss {loss_value:.4f} held-out accuracy "
                    f"{curve[-1][1]['accuracy']:.3f} ({time.time() - started:.0f} s)")
            elapsed = base_elapsed + time.time() - started
            out_of_time = deadline is not None and time.time() > deadline
            if step < settings.steps and (step % settings.checkpoint_every == 0 or out_of_time or terminated.is_set()):
                save_checkpoint()
                if out_of_time or terminated.is_set():
                    log(f"[{name}] stopped at step {step}/{settings.steps}; checkpoint {ckpt_path} (run the same "
                        "command to continue)")
                    return None
    final = curve[-1][1] if diverged_at is None else None
    result = {
        "study": STUDY, "run": name, "family": family, "label": FAMILY_LABELS[family], "task_name": task_name,
        "task": dataclasses.asdict(task), "settings": dataclasses.asdict(settings),
        "config": json.loads(config.to_json_string(use_diff=False)), "model_type": config.model_type,
        "parameters": count_parameters(model), "steps": step, "diverged_at_step": diverged_at,
        "held_out": final, "chance_accuracy": 1 / task.values, "curve": curve,
        "train_loss_last50": sum(l for _, l in train_losses[-50:]) / max(1, len(train_losses[-50:])),
        "train_seconds": elapsed, "device": common.device_name(dev),
        "memory_implementation": getattr(config, "memory_implementation", None),
        "torch": torch.__version__, "git_commit": commit, "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    result_path.parent.mkdir(parents=True, exist_ok=True)
    result_path.write_text(json.dumps(result, indent=1, allow_nan=False) + "\n")
    ckpt_path.unlink(missing_ok=True)
    summary = "diverged" if final is None else f"held-out accuracy {final['accuracy']:.3f}, loss {final['loss']:.3f}"
    log(f"[{name}] done: {summary}, {elapsed:.0f} s -> {result_path}")
    return result


# ----------------------------------------------------------------------------------------------------------------
# Table and command line
# ----------------------------------------------------------------------------------------------------------------

def recall_table(results: Sequence[dict]) -> str:
    """Markdown: one row per family, one accuracy column per task (and the parameter count, training time)."""
    tasks = [t for t in TASKS if any(r["task_name"] == t for r in results)]
    by_run = {(r["family"], r["task_name"]): r for r in results}
    lines = ["| model | params | " + " | ".join(f"{t}: accuracy (loss)" for t in tasks) + " | training time |",
             "|---|---|" + "---|" * len(tasks) + "---|"]
    for family in FAMILIES:
        runs = [by_run.get((family, t)) for t in tasks]
        if not any(runs):
            continue
        first = next(r for r in runs if r)
        cells = []
        for r in runs:
            if r is None:
                cells.append("not run")
            elif r["held_out"] is None:
                cells.append(f"diverged at step {r['diverged_at_step']}")
            else:
                cells.append(f"{r['held_out']['accuracy']:.3f} ({r['held_out']['loss']:.2f})")
        times = ", ".join(f"{r['train_seconds'] / 60:.1f}" for r in runs if r)
        lines.append(f"| {first['label']} | {first['parameters']:,} | " + " | ".join(cells) + f" | {times} min |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from hope_hf.baselines import meta_parameter_count
    from hope_hf.configuration_hope import FAST_MEMORY_IMPLEMENTATIONS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", metavar="RUN", help="runs <family>@<task> (default: all)")
    parser.add_argument("--list", action="store_true", help="list the runs with their parameter counts and exit")
    parser.add_argument("--table", action="store_true", help="only print the table from the JSONs")
    defaults = RecallSettings()
    for field in dataclasses.fields(RecallSettings):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(getattr(defaults, field.name)),
                            default=getattr(defaults, field.name))
    parser.add_argument("--device", default="auto", help="cpu, cuda, ... (auto: cuda if available)")
    parser.add_argument("--memory-implementation", choices=FAST_MEMORY_IMPLEMENTATIONS, default="chunk")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="wall-time budget: the run in flight checkpoints and stops, later runs are left")
    parser.add_argument("--force", action="store_true", help="retrain runs that have a result")
    parser.add_argument("--results-dir", type=Path, default=common.RESULTS_DIR)
    parser.add_argument("--checkpoint-dir", type=Path, default=common.CHECKPOINT_DIR)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    names = [f"{family}@{task}" for task in TASKS for family in FAMILIES]
    if args.table:
        results = common.load_results(args.results_dir, STUDY)
        print(recall_table(results) if results else f"no results under {args.results_dir / STUDY}")
        return 0
    for name in args.only or ():
        if name not in names:
            raise SystemExit(f"--only: unknown run {name!r}; runs: {', '.join(names)}")
    counts = {task: {family: meta_parameter_count(family_config(family, TASKS[task].vocab_size))
                     for family in FAMILIES} for task in TASKS}
    for task, members in counts.items():
        common.check_parameter_match(members)
    if args.list:
        for name in names:
            family, task = name.split("@")
            print(f"{name:38s} {counts[task][family]:>9,}  {FAMILY_LABELS[family]}; {TASKS[task]}")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = RecallSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(RecallSettings)})
    deadline = None if args.max_minutes is None else time.time() + 60 * args.max_minutes
    status = 0
    for name in args.only or names:
        if deadline is not None and time.time() > deadline:
            print(f"[{name}] not started: --max-minutes spent")
            status = common.EXIT_INTERRUPTED
            continue
        family, task = name.split("@")
        result = train_recall_run(family, task, settings, device=common.resolve_device(args.device),
                                  results_dir=args.results_dir, checkpoint_dir=args.checkpoint_dir,
                                  deadline=deadline, memory_implementation=args.memory_implementation,
                                  force=args.force)
        if result is None:
            status = common.EXIT_INTERRUPTED
    return status


if __name__ == "__main__":
    raise SystemExit(main())
