"""Continual learning: metrics, EWC, LwF, the compared methods, and the class-incremental benchmark.

Notation: `T` tasks; `R[i, j]` = accuracy (%) on task `j`'s test set after learning tasks `0 … i`
(`j ≤ i`; NaN, or `None` in lists and JSON, above the diagonal, where task `j` is not learned yet).

    average accuracy    ACC = (1/T) Σ_j R[T-1, j]
    average forgetting  F   = (1/(T-1)) Σ_{j<T-1} ( max_{l ∈ [j, T-2]} R[l, j] − R[T-1, j] )
    backward transfer   BWT = (1/(T-1)) Σ_{j<T-1} ( R[T-1, j] − R[j, j] )

(forgetting: Chaudhry et al. 2018; backward transfer: Lopez-Paz & Ranzato 2017.)

Classification with a causal LM: an example is its text's tokens, masked padding up to the next multiple
of `align` tokens, then a separator (EOS); the class is predicted at the separator among label tokens
added after the tokenizer's vocabulary (one per class), restricted at test time to the classes seen so
far. `align` is Hope's main-memory chunk `memory_chunk_size`: a chunk reads the memory state at its start
(HOPE.md §3.8), so a separator at a chunk start reads a memory that has absorbed the whole text. Every
method gets the same inputs.

Methods (same tasks, data order, steps, batch size and learning rate):

| name | model | what |
|---|---|---|
| `finetune` | same-size Transformer | plain fine-tuning, task after task (Llama, `matched_llama_config`) |
| `ewc` | same-size Transformer | + EWC (Kirkpatrick et al. 2017), see `EWC` |
| `lwf` | same-size Transformer | + LwF (Li & Hoiem 2016), see `LwF` |
| `hope` | Hope | every CMS level updated every step (no schedule) |
| `hope_cms` | Hope | level `j` steps every `update_period_j` steps (`schedule.HopeScheduleCallback`) |
| `hope_in_context` | Hope | + in-context CMS on, in training and at test time: level 0's fast weights step every 4 real tokens of each example, lr 0.1 (HOPE.md §4) |

`hope_in_context` learns inside each example at test time (the fast weights start from 0 for every example and
live only while it is read, so nothing is carried from one example to the next); training runs the same online
forward, first order. Add methods with `register_method(name, Method(...))`.
This is not a model file.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .baselines import count_parameters, matched_llama_config
from .configuration_hope import HopeConfig, default_cms_levels
from .continual_tasks import ClassificationTask, all_texts, load_text_classification, synthetic_tasks
from .modeling_hope import HopeForCausalLM

# ---------------------------------------------------------------------------------------------------------
# metrics of an accuracy matrix


def _check_matrix(accuracy: Any) -> torch.Tensor:
    if not isinstance(accuracy, torch.Tensor):                 # lists may hold None for "not learned yet"
        accuracy = [[math.nan if v is None else v for v in row] for row in accuracy]
    R = torch.as_tensor(accuracy, dtype=torch.float64)
    if R.dim() != 2 or R.shape[0] != R.shape[1] or R.shape[0] < 1:
        raise ValueError(f"the accuracy matrix must be square [T, T], got shape {tuple(R.shape)}")
    if torch.isnan(torch.tril(R)).any() or torch.isnan(R.diagonal()).any():
        raise ValueError("the accuracy matrix has NaN on or below the diagonal (R[i, j] for j <= i is required)")
    return R


def average_accuracy(accuracy: Any) -> float:
    """ACC = mean over tasks of the accuracy after the last task, `R[T-1, :]`."""
    R = _check_matrix(accuracy)
    return float(R[-1].mean())


def average_forgetting(accuracy: Any) -> float:
    """F = mean over tasks j < T-1 of (best accuracy on j before the last task) − (accuracy on j at the end)."""
    R = _check_matrix(accuracy)
    T = R.shape[0]
    if T == 1:
        return 0.0
    return float(sum(R[j:T - 1, j].max() - R[T - 1, j] for j in range(T - 1)) / (T - 1))


def backward_transfer(accuracy: Any) -> float:
    """BWT = mean over tasks j < T-1 of (accuracy on j at the end) − (accuracy on j just after learning it)."""
    R = _check_matrix(accuracy)
    T = R.shape[0]
    if T == 1:
        return 0.0
    return float(sum(R[T - 1, j] - R[j, j] for j in range(T - 1)) / (T - 1))


def continual_metrics(accuracy: Any) -> dict[str, float]:
    return {"average_accuracy": average_accuracy(accuracy), "average_forgetting": average_forgetting(accuracy),
            "backward_transfer": backward_transfer(accuracy)}


# ---------------------------------------------------------------------------------------------------------
# encoding examples for a causal LM


@dataclass
class Encoded:
    """Examples as model inputs: `input_ids`, `attention_mask` [N, L], separator position `sep` [N], `labels` [N]
    (label token ids)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    sep: torch.Tensor
    labels: torch.Tensor

    def __getitem__(self, index) -> Encoded:
        rows = Encoded(self.input_ids[index], self.attention_mask[index], self.sep[index], self.labels[index])
        width = int(rows.sep.max()) + 1                       # drop columns past the longest row
        return Encoded(rows.input_ids[:, :width], rows.attention_mask[:, :width], rows.sep, rows.labels)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device) -> Encoded:
        return Encoded(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.sep, self.labels)))


def encode(tokenizer, examples: Sequence[tuple[str, int]], label_offset: int, align: int,
           max_text_tokens: int) -> Encoded:
    """Text tokens (at most `max_text_tokens`), masked padding to a multiple of `align`, then the separator
    (EOS) at which label token `label_offset + class` is predicted."""
    if align < 1:
        raise ValueError(f"align must be >= 1, got {align}")
    texts = [tokenizer(text, add_special_tokens=False)["input_ids"][:max_text_tokens] for text, _ in examples]
    seps = [math.ceil(len(ids) / align) * align for ids in texts]
    width = max(seps) + 1
    input_ids = torch.full((len(texts), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(texts), width), dtype=torch.long)
    for row, (ids, sep) in enumerate(zip(texts, seps)):
        input_ids[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        input_ids[row, sep] = tokenizer.eos_token_id
        mask[row, :len(ids)] = 1
        mask[row, sep] = 1
    labels = torch.tensor([label_offset + label for _, label in examples])
    return Encoded(input_ids, mask, torch.tensor(seps), labels)


def separator_logits(model, batch: Encoded) -> torch.Tensor:
    """Logits [B, vocab] at each row's separator."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    return logits[torch.arange(len(batch)), batch.sep]


@torch.no_grad()
def accuracy(model, data: Encoded, candidates: Sequence[int], batch_size: int = 64) -> float:
    """Accuracy (%) predicting among the label token ids `candidates`."""
    model.eval()
    candidates = torch.tensor(list(candidates), device=data.labels.device)
    correct = 0
    for start in range(0, len(data), batch_size):
        batch = data[start:start + batch_size]
        predicted = candidates[separator_logits(model, batch)[:, candidates].argmax(-1)]
        correct += int((predicted == batch.labels).sum())
    return 100.0 * correct / len(data)


# ---------------------------------------------------------------------------------------------------------
# regularisers


class EWC:
    """Elastic Weight Consolidation: after each task, the diagonal empirical Fisher at the learned weights.

    `F_k,i = mean over examples of (∂ log p(y | x) / ∂θ_i)²` (one example at a time), and the penalty
    `(strength / 2) Σ_k Σ_i F_k,i (θ_i − θ*_k,i)²` over all past tasks `k`.
    """

    def __init__(self, strength: float, samples: int):
        self.strength, self.samples = strength, samples
        self.anchors: list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]] = []

    def consolidate(self, model, data: Encoded) -> None:
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        fisher = {n: torch.zeros_like(p) for n, p in params.items()}
        model.eval()
        count = min(self.samples, len(data))
        for index in range(count):
            example = data[index:index + 1]
            loss = F.cross_entropy(separator_logits(model, example), example.labels)
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            for (name, _), grad in zip(params.items(), grads):
                if grad is not None:
                    fisher[name] += grad.detach() ** 2 / count
        self.anchors.append((fisher, {n: p.detach().clone() for n, p in params.items()}))

    def penalty(self, model) -> torch.Tensor:
        total = torch.zeros((), device=next(model.parameters()).device)
        for fisher, anchor in self.anchors:
            for name, param in model.named_parameters():
                if name in fisher:
                    total = total + (fisher[name] * (param - anchor[name]) ** 2).sum()
        return 0.5 * self.strength * total


class LwF:
    """Learning without Forgetting: distil the model from before the current task on the old classes.

    `strength · τ² · KL(softmax(z_old / τ) ‖ softmax(z_new / τ))`, logits `z` at the separator restricted to
    the label tokens of the classes of earlier tasks, on the current task's inputs.
    """

    def __init__(self, strength: float, temperature: float):
        self.strength, self.temperature = strength, temperature
        self.old_model = None
        self.old_labels: list[int] = []

    def start_task(self, model, old_labels: Sequence[int]) -> None:
        self.old_labels = list(old_labels)
        self.old_model = None
        if self.old_labels:
            self.old_model = copy.deepcopy(model).eval()
            self.old_model.requires_grad_(False)

    def loss(self, new_logits: torch.Tensor, batch: Encoded) -> torch.Tensor:
        if self.old_model is None:
            return new_logits.new_zeros(())
        with torch.no_grad():
            old_logits = separator_logits(self.old_model, batch)[:, self.old_labels]
        tau = self.temperature
        return self.strength * tau**2 * F.kl_div(F.log_softmax(new_logits[:, self.old_labels] / tau, -1),
                                                  F.log_softmax(old_logits / tau, -1), log_target=True,
                                                  reduction="batchmean")


# ---------------------------------------------------------------------------------------------------------
# methods and settings


@dataclass(frozen=True)
class Method:
    """A compared method.

    Attributes:
        model: `"transformer"` (same-size Llama) or `"hope"`.
        regulariser: `None`, `"ewc"` or `"lwf"`.
        schedule: use the CMS schedule (`HopeScheduleCallback`; Hope only).
        config_overrides: `HopeConfig` fields for this method's Hope.
        in_context_chunk, in_context_lr: > 0 turns in-context CMS on (Hope only): CMS level 0 of the benchmark's
            Hope steps its fast weights every `in_context_chunk` real tokens with this inner learning rate, in
            training (first order) and at test time.
        description: one line for the report.
    """

    model: str
    regulariser: str | None = None
    schedule: bool = False
    config_overrides: Mapping[str, Any] = field(default_factory=dict)
    in_context_chunk: int = 0
    in_context_lr: float = 0.0
    description: str = ""

    def __post_init__(self):
        if self.model not in ("transformer", "hope"):
            raise ValueError(f"Method.model must be 'transformer' or 'hope', got {self.model!r}")
        if self.regulariser not in (None, "ewc", "lwf"):
            raise ValueError(f"Method.regulariser must be None, 'ewc' or 'lwf', got {self.regulariser!r}")
        if self.schedule and self.model != "hope":
            raise ValueError("Method.schedule (the CMS schedule) needs model='hope'")
        if self.in_context_chunk < 0 or self.in_context_lr < 0:
            raise ValueError(f"Method.in_context_chunk and in_context_lr must be >= 0, got {self.in_context_chunk} "
                             f"and {self.in_context_lr}")
        if (self.in_context_chunk > 0) != (self.in_context_lr > 0):
            raise ValueError(f"Method.in_context_chunk and in_context_lr are set together, got {self.in_context_chunk} "
                             f"and {self.in_context_lr}")
        if self.in_context_chunk and self.model != "hope":
            raise ValueError("Method.in_context_chunk (in-context CMS) needs model='hope'")


METHODS: dict[str, Method] = {
    "finetune": Method("transformer", description="same-size Transformer, plain fine-tuning"),
    "ewc": Method("transformer", "ewc", description="same-size Transformer + EWC"),
    "lwf": Method("transformer", "lwf", description="same-size Transformer + LwF"),
    "hope": Method("hope", description="Hope, all CMS levels updated every step"),
    "hope_cms": Method("hope", schedule=True, description="Hope with the CMS schedule (update_period per level)"),
    "hope_in_context": Method("hope", in_context_chunk=4, in_context_lr=0.1,
                              description="Hope with in-context CMS (level 0: a step every 4 tokens, lr 0.1)"),
}


def register_method(name: str, method: Method) -> None:
    """Add a method to `METHODS` (the hook for in-context CMS and other variants)."""
    if not isinstance(method, Method):
        raise ValueError(f"method must be a Method, got {type(method).__name__}")
    METHODS[name] = method


@dataclass(frozen=True)
class Setting:
    """Data, budget and model sizes of one benchmark run (the same for every method)."""

    dataset: str = "synthetic"          # "synthetic", a KNOWN_DATASETS name, or a local folder
    num_tasks: int = 5
    classes_per_task: int = 2
    train_per_class: int = 64
    test_per_class: int = 32
    words_per_example: int = 12         # synthetic examples: words, of which `keywords_per_example` are keywords
    keywords_per_example: int = 3
    max_text_tokens: int = 64
    steps_per_task: int = 100
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    vocab_size: int = 1024              # the BPE tokenizer trained on the training texts
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_heads: int = 4
    projection_chunk_size: int = 4
    memory_chunk_size: int = 8
    ewc_lambda: float = 100.0
    ewc_samples: int = 64
    lwf_lambda: float = 1.0
    lwf_temperature: float = 2.0
    seed: int = 0


SETTINGS: dict[str, Setting] = {
    # the test suite's: seconds on a CPU; checks the pipeline, too short for the models to learn the tasks well
    "tiny": Setting(num_tasks=3, classes_per_task=2, train_per_class=16, test_per_class=8, words_per_example=6,
                    keywords_per_example=2, steps_per_task=12, batch_size=8, lr=1e-2, vocab_size=512,
                    hidden_size=32, projection_chunk_size=8, memory_chunk_size=16, ewc_samples=16),
    # eval/continual_learning.py: each task learned to ~100% by the Transformer (measured); about 3.5 s per
    # Hope step on a busy 2-core CPU, so the Hope methods want a GPU (--device cuda)
    "full": Setting(num_tasks=5, classes_per_task=4, train_per_class=128, test_per_class=64, steps_per_task=200,
                    batch_size=32, lr=1e-3, vocab_size=2048, hidden_size=128, num_hidden_layers=4,
                    projection_chunk_size=8, memory_chunk_size=16, ewc_samples=128),
}


def make_tasks(setting: Setting) -> list[ClassificationTask]:
    if setting.dataset == "synthetic":
        return synthetic_tasks(setting.num_tasks, setting.classes_per_task, setting.train_per_class,
                               setting.test_per_class, words_per_example=setting.words_per_example,
                               keywords_per_example=setting.keywords_per_example, seed=setting.seed)
    return load_text_classification(setting.dataset, setting.num_tasks, setting.classes_per_task,
                                    setting.train_per_class, setting.test_per_class, seed=setting.seed)


def hope_config(setting: Setting, vocab_size: int, tokenizer, **overrides) -> HopeConfig:
    """The benchmark's Hope (default CMS: three levels updated every 1, 4, 16 steps)."""
    kwargs = dict(vocab_size=vocab_size, hidden_size=setting.hidden_size, num_hidden_layers=setting.num_hidden_layers,
                  num_heads=setting.num_heads, projection_chunk_size=setting.projection_chunk_size,
                  memory_chunk_size=setting.memory_chunk_size, pad_token_id=tokenizer.pad_token_id,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    kwargs.update(overrides)
    return HopeConfig(**kwargs)


def build_model(method: Method, setting: Setting, vocab_size: int, tokenizer):
    overrides = dict(method.config_overrides)
    if method.in_context_chunk:
        levels = [dict(level) for level in overrides.get("cms_levels", default_cms_levels(setting.hidden_size))]
        levels[0].update(chunk_size=method.in_context_chunk, lr=method.in_context_lr)
        overrides.update(cms_levels=levels, in_context_cms=True)
    config = hope_config(setting, vocab_size, tokenizer, **overrides)
    if method.model == "hope":
        return HopeForCausalLM(config)
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM(matched_llama_config(hope_config(setting, vocab_size, tokenizer)))


# ---------------------------------------------------------------------------------------------------------
# learning a sequence


def learn_sequence(method: Method, tasks: Sequence[ClassificationTask], setting: Setting, tokenizer,
                   device: str = "cpu") -> dict:
    """Learn `tasks` in order with `method`; `R[i, j]` after each task. Returns the matrix, metrics, cost."""
    start = time.time()
    label_offset = len(tokenizer)
    num_classes = sum(len(task.classes) for task in tasks)
    torch.manual_seed(setting.seed)
    model = build_model(method, setting, label_offset + num_classes, tokenizer).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=setting.lr, weight_decay=setting.weight_decay)
    schedule = None
    if method.schedule:
        from .schedule import HopeScheduleCallback

        schedule = HopeScheduleCallback(model)
    ewc = EWC(setting.ewc_lambda, setting.ewc_samples) if method.regulariser == "ewc" else None
    lwf = LwF(setting.lwf_lambda, setting.lwf_temperature) if method.regulariser == "lwf" else None

    def prepare(examples):
        return encode(tokenizer, examples, label_offset, setting.memory_chunk_size, setting.max_text_tokens).to(device)

    tests = [prepare(task.test) for task in tasks]
    T = len(tasks)
    R = torch.full((T, T), float("nan"), dtype=torch.float64)
    seen: list[int] = []
    losses = []
    for i, task in enumerate(tasks):
        if lwf is not None:
            lwf.start_task(model, seen)
        seen += [label_offset + c for c in task.classes]
        train = prepare(task.train)
        order = torch.Generator().manual_seed(setting.seed * 1000 + i)      # the same batches for every method
        model.train()
        for _ in range(setting.steps_per_task):
            batch = train[torch.randint(len(train), (setting.batch_size,), generator=order).to(device)]
            logits = separator_logits(model, batch)
            loss = F.cross_entropy(logits, batch.labels)
            if ewc is not None:
                loss = loss + ewc.penalty(model)
            if lwf is not None:
                loss = loss + lwf.loss(logits, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), setting.max_grad_norm)
            if schedule is not None:
                schedule.optimizer_step(optimizer)
            else:
                optimizer.step()
            losses.append(loss.item())
        if ewc is not None:
            ewc.consolidate(model, train)
        for j in range(i + 1):
            R[i, j] = accuracy(model, tests[j], seen)
    matrix = [[None if math.isnan(v) else v for v in row] for row in R.tolist()]      # JSON: null above the diagonal
    return {"R": matrix, "metrics": continual_metrics(R), "parameters": count_parameters(model),
            "seconds": time.time() - start, "final_loss": losses[-1],
            **({"cms_updates": schedule.update_counts} if schedule is not None else {})}


# ---------------------------------------------------------------------------------------------------------
# the benchmark


def plot_accuracy_matrices(results: Mapping[str, Mapping], path: str | Path) -> None:
    """Heat-map PNG of each method's accuracy matrix R[i, j] (rows: after task i; columns: task j)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        R = _check_matrix(results[name]["R"])
        image = ax.imshow(R.numpy(), vmin=0, vmax=100, cmap="viridis")
        for (i, j), value in ((ij, R[ij].item()) for ij in ((i, j) for i in range(len(R)) for j in range(len(R)))):
            if not math.isnan(value):
                ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if value < 60 else "black")
        ax.set(title=name, xlabel="task j (tested)", xticks=range(len(R)), yticks=range(len(R)))
    axes[0][0].set_ylabel("after learning task i")
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="accuracy (%)")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def run_benchmark(methods: Iterable[str] | None = None, setting: str | Setting = "tiny",
                  output_dir: str | Path = "outputs/eval/continual", device: str = "cpu", **overrides) -> dict:
    """Learn the same task sequence with each method; write `continual_table.{json,md}` (ACC, F, BWT per
    method, the matrices, the settings) and `accuracy_matrices.png` in `output_dir`.

    Args:
        methods: names in `METHODS` (default: all).
        setting: `"tiny"`, `"full"` or a `Setting`; `overrides` replace its fields (e.g. `dataset="banking77"`).
        device: where the models train (`"cuda"` for the full setting).
    Returns:
        `{"methods": {name: learn_sequence's dict}, "settings": ..., "markdown": table}`.
    """
    from .evaluation import write_table
    from .data import train_bpe_tokenizer

    base = SETTINGS[setting] if isinstance(setting, str) else setting
    unknown = set(overrides) - set(asdict(base))
    if unknown:
        raise ValueError(f"unknown Setting fields {sorted(unknown)}; fields: {sorted(asdict(base))}")
    setting = replace(base, **overrides)
    names = list(methods) if methods is not None else list(METHODS)
    missing = [name for name in names if name not in METHODS]
    if missing:
        raise ValueError(f"methods {missing} are not in METHODS {sorted(METHODS)}")
    tasks = make_tasks(setting)
    tokenizer = train_bpe_tokenizer(all_texts(tasks), setting.vocab_size)
    results = {}
    for name in names:
        print(f"[continual] {name}: {METHODS[name].description}", flush=True)
        results[name] = learn_sequence(METHODS[name], tasks, setting, tokenizer, device)
        m = results[name]["metrics"]
        print(f"    ACC {m['average_accuracy']:.1f}  F {m['average_forgetting']:.1f}  BWT {m['backward_transfer']:.1f}"
              f"  ({results[name]['seconds']:.0f} s)", flush=True)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    rows = {name: {"parameters": f"{r['parameters']:,}", "ACC (%)": r["metrics"]["average_accuracy"],
                   "forgetting": r["metrics"]["average_forgetting"], "BWT": r["metrics"]["backward_transfer"],
                   "final-task acc (%)": r["R"][-1][-1], "seconds": r["seconds"]} for name, r in results.items()}
    settings = {**asdict(setting), "num_classes": sum(len(t.classes) for t in tasks), "tokenizer": len(tokenizer)}
    table = write_table(rows, ["parameters", "ACC (%)", "forgetting", "BWT", "final-task acc (%)", "seconds"],
                        output_dir, "continual_table", "Class-incremental continual learning",
                        {"settings": settings, "methods": results}, first="method")
    plot_accuracy_matrices(results, output_dir / "accuracy_matrices.png")
    markdown = (f"{setting.num_tasks} tasks x {setting.classes_per_task} classes ({setting.dataset}), "
                f"{setting.steps_per_task} steps x {setting.batch_size} per task, lr {setting.lr}\n\n{table}")
    return {"methods": results, "settings": settings, "markdown": markdown,
            "plot": str(output_dir / "accuracy_matrices.png")}


__all__ = [
    "EWC", "METHODS", "SETTINGS", "Encoded", "LwF", "Method", "Setting", "accuracy", "average_accuracy",
    "average_forgetting", "backward_transfer", "continual_metrics", "encode", "learn_sequence", "register_method",
    "run_benchmark",
]
