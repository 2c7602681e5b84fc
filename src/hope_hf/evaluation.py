"""The paper's evaluation suite with lm-evaluation-harness, its offline mode, and `run_suite` (`hope-hf eval`).

The suite (arXiv Table 2 of *Nested Learning*, the columns of Titans Table 1): zero-shot `wikitext`
(word perplexity), `lambada_openai` (perplexity, accuracy), `piqa`, `hellaswag` (acc_norm), `winogrande`,
`arc_easy`, `arc_challenge` (acc_norm), `social_iqa`, `boolq`; `Avg` is the mean of the eight accuracies.

Offline mode: copy each task's evaluation split, in the upstream dataset's own field names, to
`DATA/<task>/<split>.jsonl` (or `.json` / `.parquet`); `write_offline_tasks` writes one task YAML per
task that *includes the upstream lm-eval task config* (prompts, metrics, `!function`s unchanged) and only
points `dataset_path` at the local file. `export_offline_data` makes such a folder on a machine with
Hub access.

    from hope_hf.evaluation import run_suite
    run_suite({"hope": "runs/hope", "transformer": "runs/llama"}, offline_dir="DATA", output_dir="outputs/eval")

This is not a model file (it imports lm-eval, the `eval` extra, when it runs the suite).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

#: The parts `run_suite` (and `hope-hf eval`) can run.
PARTS = ("lm_eval", "long_context", "continual")


@dataclass(frozen=True)
class SuiteTask:
    """One lm-eval task of the paper's suite.

    Attributes:
        name: the lm-eval task name.
        upstream_yaml: its config, relative to the installed `lm_eval/tasks/`.
        columns: `(column, metric)` pairs of the results table; the metric is an lm-eval metric name.
        fields: the upstream dataset's fields the config reads (checked in offline files).
    """

    name: str
    upstream_yaml: str
    columns: tuple[tuple[str, str], ...]
    fields: tuple[str, ...]


# acc_norm for HellaSwag and ARC-c, acc elsewhere: the metrics of Titans Table 1, whose columns Nested
# Learning's Table 2 reuses.
PAPER_SUITE: tuple[SuiteTask, ...] = (
    SuiteTask("wikitext", "wikitext/wikitext.yaml", (("Wiki ppl", "word_perplexity"),), ("page",)),
    SuiteTask("lambada_openai", "lambada/lambada_openai.yaml",
              (("LMB ppl", "perplexity"), ("LMB acc", "acc")), ("text",)),
    SuiteTask("piqa", "piqa/piqa.yaml", (("PIQA", "acc"),), ("goal", "sol1", "sol2", "label")),
    SuiteTask("hellaswag", "hellaswag/hellaswag.yaml", (("Hella", "acc_norm"),),
              ("activity_label", "ctx_a", "ctx_b", "endings", "label")),
    SuiteTask("winogrande", "winogrande/default.yaml", (("Wino", "acc"),),
              ("sentence", "option1", "option2", "answer")),
    SuiteTask("arc_easy", "arc/arc_easy.yaml", (("ARC-e", "acc"),), ("question", "choices", "answerKey")),
    SuiteTask("arc_challenge", "arc/arc_challenge.yaml", (("ARC-c", "acc_norm"),),
              ("question", "choices", "answerKey")),
    SuiteTask("social_iqa", "siqa/siqa.yaml", (("SIQA", "acc"),),
              ("context", "question", "answerA", "answerB", "answerC", "label")),
    SuiteTask("boolq", "super_glue/boolq/default.yaml", (("BoolQ", "acc"),), ("passage", "question", "label")),
)
SUITE_GROUP = "hope_paper_suite"
PERPLEXITY_COLUMNS = ("Wiki ppl", "LMB ppl")
ACCURACY_COLUMNS = ("LMB acc", "PIQA", "Hella", "Wino", "ARC-e", "ARC-c", "SIQA", "BoolQ")
PAPER_COLUMNS = PERPLEXITY_COLUMNS + ACCURACY_COLUMNS + ("Avg",)
DATA_SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def suite_tasks(tasks: Iterable[str] | None = None) -> list[SuiteTask]:
    """The `SuiteTask`s named in `tasks` (all of them for `None`), in the paper's order."""
    by_name = {task.name: task for task in PAPER_SUITE}
    if tasks is None:
        return list(PAPER_SUITE)
    tasks = list(tasks)
    unknown = [name for name in tasks if name not in by_name]
    if unknown:
        raise ValueError(f"tasks holds {unknown}, not in the paper's suite {sorted(by_name)}")
    return [task for task in PAPER_SUITE if task.name in tasks]


def upstream_config(task: SuiteTask) -> tuple[Path, dict]:
    """Path of the installed lm-eval config of `task` and its content (includes merged, functions unresolved)."""
    import lm_eval.tasks
    from lm_eval.tasks._yaml_loader import load_yaml

    path = Path(lm_eval.tasks.__file__).parent / task.upstream_yaml
    if not path.is_file():
        raise FileNotFoundError(f"lm-eval has no config {path} for task {task.name!r}: is lm-eval 0.4.13 installed?")
    return path, load_yaml(path, resolve_func=False)


def evaluation_split(config: Mapping) -> str:
    """The split lm-eval scores: the config's test split, else its validation split."""
    return config.get("test_split") or config["validation_split"]


def _first_record_fields(path: Path) -> set[str]:
    if path.suffix == ".parquet":
        import pyarrow.parquet

        return set(pyarrow.parquet.read_schema(path).names)
    with path.open(encoding="utf-8") as handle:
        if path.suffix == ".jsonl":
            first = json.loads(next((line for line in handle if line.strip()), "{}"))
        else:
            data = json.load(handle)
            first = data[0] if isinstance(data, list) and data else {}
    return set(first)


def find_data_file(data_dir: str | Path, task: SuiteTask, split: str) -> Path:
    """`data_dir/<task>/<split>.{jsonl,json,parquet}`, checked to hold the upstream fields."""
    folder = Path(data_dir) / task.name
    found = [folder / f"{split}{suffix}" for suffix in DATA_SUFFIXES if (folder / f"{split}{suffix}").is_file()]
    if not found:
        raise FileNotFoundError(
            f"offline data for {task.name!r}: expected {folder / split}.jsonl (or .json / .parquet) with the "
            f"upstream fields {list(task.fields)}"
        )
    missing = set(task.fields) - _first_record_fields(found[0])
    if missing:
        raise ValueError(f"{found[0]} lacks the upstream fields {sorted(missing)} of task {task.name!r}")
    return found[0]


def suite_group_config(tasks: Sequence[SuiteTask] = PAPER_SUITE) -> dict:
    """The lm-eval group config that runs `tasks` as one `--tasks hope_paper_suite`."""
    return {"group": SUITE_GROUP, "task": [task.name for task in tasks], "metadata": {"version": 1.0}}


def write_offline_tasks(data_dir: str | Path, tasks_dir: str | Path, tasks: Iterable[str] | None = None,
                        cache_dir: str | Path | None = None) -> Path:
    """Write lm-eval task YAMLs that run the upstream task configs on local files.

    Each `tasks_dir/<task>.yaml` `include`s the installed upstream config and overrides only where the
    data comes from (`dataset_path: json | parquet`, `dataset_kwargs.data_files`) and the splits (only the
    evaluation split exists locally; the suite is zero-shot). `tasks_dir/hope_paper_suite.yaml` groups them.

    Args:
        data_dir: folder with `<task>/<split>.jsonl` files (see `find_data_file`).
        tasks_dir: where to write the YAMLs (created).
        tasks: task names (default: the whole suite).
        cache_dir: `datasets` cache for the converted files (default: the `datasets` default).
    Returns:
        `tasks_dir`, to pass as lm-eval's `include_path` (`TaskManager(include_path=..., include_defaults=False)`).
    """
    tasks_dir = Path(tasks_dir)
    tasks_dir.mkdir(parents=True, exist_ok=True)
    selected = suite_tasks(tasks)
    for task in selected:
        upstream_path, upstream = upstream_config(task)
        split = evaluation_split(upstream)
        data_file = find_data_file(data_dir, task, split).resolve()
        dataset_kwargs: dict[str, Any] = {"data_files": {split: str(data_file)}}
        if cache_dir is not None:
            dataset_kwargs["cache_dir"] = str(cache_dir)
        config = {
            "include": str(upstream_path),
            "task": task.name,
            "dataset_path": DATA_SUFFIXES[data_file.suffix],
            "dataset_name": None,
            "dataset_kwargs": dataset_kwargs,
            "training_split": None,
            "validation_split": split if split == "validation" else None,
            "test_split": split if split == "test" else None,
        }
        (tasks_dir / f"{task.name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (tasks_dir / f"{SUITE_GROUP}.yaml").write_text(yaml.safe_dump(suite_group_config(selected), sort_keys=False))
    return tasks_dir


def export_offline_data(data_dir: str | Path, tasks: Iterable[str] | None = None,
                        load_dataset: Callable | None = None) -> dict[str, Path]:
    """On a machine with Hub access: save each task's evaluation split as `data_dir/<task>/<split>.jsonl`.

    Args:
        load_dataset: `datasets.load_dataset` (default) or any callable with its `(path, name, split=...)` form.
    Returns:
        `{task: file written}`.
    """
    if load_dataset is None:
        from datasets import load_dataset
    written = {}
    for task in suite_tasks(tasks):
        _, upstream = upstream_config(task)
        split = evaluation_split(upstream)
        dataset = load_dataset(upstream["dataset_path"], upstream.get("dataset_name"), split=split)
        path = Path(data_dir) / task.name / f"{split}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        dataset.to_json(str(path), lines=True, force_ascii=False)
        written[task.name] = path
    return written


# ---------------------------------------------------------------------------------------------------------
# running lm-eval and the results table


def is_hope(model_or_config) -> bool:
    config = getattr(model_or_config, "config", model_or_config)
    return getattr(config, "model_type", None) == "hope"


def make_lm(model, tokenizer=None, batch_size: int = 1, device: str = "cpu", max_length: int | None = None,
            dtype: str | None = None, trust_remote_code: bool = False):
    """An lm-eval LM: `HopeLM` for Hope models, `HFLM` for any other causal LM (the baselines).

    Args:
        model: a saved folder / Hub name, or a `PreTrainedModel` (then `tokenizer` is required).
        max_length: the window of rolling log-likelihoods and the context limit (default: from the config).
    """
    from lm_eval.models.huggingface import HFLM

    kwargs: dict[str, Any] = dict(batch_size=batch_size, max_length=max_length)
    if isinstance(model, (str, Path)):
        from transformers import AutoConfig

        model = str(model)
        config = AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
        kwargs.update(device=device, trust_remote_code=trust_remote_code, tokenizer=tokenizer)
        if dtype is not None:
            kwargs["dtype"] = dtype
    else:
        if tokenizer is None:
            raise ValueError("tokenizer is required when model is a model object, got tokenizer=None")
        config = model.config
        kwargs["tokenizer"] = tokenizer
    if is_hope(config):
        from .lm_eval_backend import HopeLM

        return HopeLM(pretrained=model, **kwargs)
    return HFLM(pretrained=model, backend="causal", **kwargs)


def task_manager(offline_dir: str | Path | None = None, tasks: Iterable[str] | None = None,
                 work_dir: str | Path = "outputs/eval", cache_dir: str | Path | None = None):
    """lm-eval's `TaskManager`: the upstream tasks (online) or, with `offline_dir`, only the generated offline
    tasks (written to `work_dir/offline_tasks`)."""
    from lm_eval.tasks import TaskManager

    if offline_dir is None:
        group_dir = Path(work_dir) / "suite_group"
        group_dir.mkdir(parents=True, exist_ok=True)
        (group_dir / f"{SUITE_GROUP}.yaml").write_text(yaml.safe_dump(suite_group_config(), sort_keys=False))
        return TaskManager(include_path=str(group_dir))
    tasks_dir = write_offline_tasks(offline_dir, Path(work_dir) / "offline_tasks", tasks, cache_dir=cache_dir)
    return TaskManager(include_path=str(tasks_dir), include_defaults=False)


def evaluate_lm(lm, tasks: Iterable[str] | None = None, offline_dir: str | Path | None = None,
                limit: int | float | None = None, work_dir: str | Path = "outputs/eval",
                cache_dir: str | Path | None = None, log_samples: bool = False, manager=None) -> dict:
    """Zero-shot lm-eval results (`simple_evaluate`'s dict) of an lm-eval `lm` on suite tasks.

    Args:
        tasks: suite task names (default: all nine).
        offline_dir: run on local files (see `write_offline_tasks`) instead of the Hub datasets.
        limit: examples per task (for smoke runs).
        manager: a `TaskManager` to reuse (default: `task_manager(offline_dir, tasks, work_dir, cache_dir)`).
    """
    from lm_eval import simple_evaluate

    names = [task.name for task in suite_tasks(tasks)]
    manager = manager or task_manager(offline_dir, names, work_dir, cache_dir)
    return simple_evaluate(model=lm, tasks=names, num_fewshot=0, limit=limit, task_manager=manager,
                           bootstrap_iters=0, log_samples=log_samples)


def paper_row(results: Mapping) -> dict[str, float | None]:
    """One row of the paper's table from lm-eval results: perplexities as they are, accuracies in percent,
    `Avg` the mean of the eight accuracies (`None` unless all eight were run)."""
    scores = results["results"]
    row: dict[str, float | None] = {column: None for column in PAPER_COLUMNS}
    for task in PAPER_SUITE:
        for column, metric in task.columns:
            value = scores.get(task.name, {}).get(f"{metric},none")
            if value is not None:
                row[column] = float(value) if column in PERPLEXITY_COLUMNS else 100.0 * float(value)
    accuracies = [row[column] for column in ACCURACY_COLUMNS]
    if all(value is not None for value in accuracies):
        row["Avg"] = sum(accuracies) / len(accuracies)
    return row


def _cell(value: float | None) -> str:
    if value is None:
        return "—"
    return "inf" if math.isinf(value) else f"{value:.2f}"


def markdown_table(rows: Mapping[str, Mapping[str, Any]], columns: Sequence[str], first: str = "model") -> str:
    """A Markdown table with one row per key of `rows`, `columns` in order (numbers to two decimals)."""
    lines = ["| " + " | ".join((first, *columns)) + " |", "|" + "---|" * (len(columns) + 1)]
    for name, row in rows.items():
        cells = [_cell(row.get(c)) if not isinstance(row.get(c), str) else row[c] for c in columns]
        lines.append("| " + " | ".join((name, *cells)) + " |")
    return "\n".join(lines) + "\n"


def write_table(rows: Mapping[str, Mapping[str, Any]], columns: Sequence[str], output_dir: str | Path, stem: str,
                title: str, extra: Mapping | None = None, first: str = "model") -> str:
    """Print the table and save it as `stem.json` (rows and `extra`) and `stem.md`; returns the Markdown."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    table = markdown_table(rows, columns, first)
    (output_dir / f"{stem}.json").write_text(json.dumps({"columns": list(columns), "rows": rows, **(extra or {})},
                                                        indent=2, default=str))
    (output_dir / f"{stem}.md").write_text(f"# {title}\n\n{table}")
    print(f"{title}\n{table}", flush=True)
    return table


def parse_models(specs: Sequence[str]) -> dict[str, str]:
    """`["hope=runs/hope", "runs/llama"]` → `{"hope": "runs/hope", "llama": "runs/llama"}` (command lines)."""
    models = {}
    for spec in specs:
        name, _, path = spec.partition("=") if "=" in spec else (Path(spec.rstrip("/")).name, "", spec)
        if not name or not path or name in models:
            raise ValueError(f"--model takes NAME=PATH or PATH with distinct names, got {spec!r}")
        models[name] = path
    return models


def _named_models(models) -> dict[str, Any]:
    if isinstance(models, Mapping):
        return dict(models)
    name = Path(models).name if isinstance(models, (str, Path)) else type(models).__name__
    return {name: models}


def run_lm_eval_suite(models, tokenizer=None, tasks: Iterable[str] | None = None,
                      offline_dir: str | Path | None = None, output_dir: str | Path = "outputs/eval",
                      batch_size: int = 1, limit: int | float | None = None, device: str = "cpu",
                      max_length: int | None = None, trust_remote_code: bool = False) -> dict:
    """The paper's table for one or more models on the same tasks; writes `lm_eval_table.{json,md}` and each
    model's raw lm-eval results (`lm_eval_<name>.json`) in `output_dir`.

    Args:
        models: a folder / model object, or `{name: folder or model}` for a comparison (Hope and baselines).
        tokenizer: for model objects.
    Returns:
        `{"rows": {name: row}, "table": markdown, "results": {name: lm-eval results["results"]}}`.
    """
    output_dir = Path(output_dir)
    names = [task.name for task in suite_tasks(tasks)]
    manager = task_manager(offline_dir, names, output_dir, None)
    rows, raw = {}, {}
    for name, model in _named_models(models).items():
        lm = make_lm(model, tokenizer, batch_size=batch_size, device=device, max_length=max_length,
                     trust_remote_code=trust_remote_code)
        results = evaluate_lm(lm, names, offline_dir, limit, output_dir, manager=manager)
        rows[name], raw[name] = paper_row(results), results["results"]
        (output_dir / f"lm_eval_{_slug(name)}.json").write_text(json.dumps(results["results"], indent=2, default=str))
    settings = {"tasks": names, "offline_dir": str(offline_dir) if offline_dir else None, "limit": limit,
                "batch_size": batch_size, "max_length": max_length, "num_fewshot": 0}
    table = write_table(rows, PAPER_COLUMNS, output_dir, "lm_eval_table",
                        "Zero-shot lm-eval suite (Nested Learning Table 2 columns)", {"settings": settings})
    return {"rows": rows, "table": table, "results": raw, "settings": settings}


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


# ---------------------------------------------------------------------------------------------------------
# one report for any subset: `hope-hf eval`


def run_suite(models, parts: Iterable[str] = ("lm_eval",), tokenizer=None, tasks: Iterable[str] | None = None,
              offline_dir: str | Path | None = None, output_dir: str | Path = "outputs/eval", batch_size: int = 1,
              limit: int | float | None = None, device: str = "cpu", max_length: int | None = None,
              trust_remote_code: bool = False, long_context: Mapping | None = None,
              continual: Mapping | None = None) -> dict:
    """Run any subset of the evaluations and write one report (`report.md`, `report.json`) in `output_dir`.

    Args:
        models: a folder / model object, or `{name: folder or model}` to compare (Hope and baselines on the
            same work). Used by `lm_eval` and `long_context`; `continual` trains its own models.
        parts: any of `"lm_eval"`, `"long_context"`, `"continual"`.
        tasks, offline_dir, batch_size, limit, max_length: the lm-eval suite (see `run_lm_eval_suite`).
        long_context: keyword arguments of `hope_hf.long_context.run_long_context` (lengths, samples, ...).
        continual: keyword arguments of `hope_hf.continual.run_benchmark` (methods, setting, ...).
    Returns:
        `{part: that part's result dict}`.
    """
    parts = list(parts)
    unknown = [part for part in parts if part not in PARTS]
    if unknown or not parts:
        raise ValueError(f"parts must be a non-empty subset of {list(PARTS)}, got {parts}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    report, sections = {}, ["# hope-hf evaluation report\n"]
    if "lm_eval" in parts:
        report["lm_eval"] = run_lm_eval_suite(models, tokenizer, tasks, offline_dir, output_dir / "lm_eval",
                                              batch_size, limit, device, max_length, trust_remote_code)
        sections.append("## Zero-shot lm-eval suite\n\n" + report["lm_eval"]["table"]
                        + f"\nSettings: `{json.dumps(report['lm_eval']['settings'])}`\n")
    if "long_context" in parts:
        from .long_context import run_long_context

        report["long_context"] = run_long_context(models, tokenizer=tokenizer, output_dir=output_dir / "long_context",
                                                  device=device, trust_remote_code=trust_remote_code,
                                                  **dict(long_context or {}))
        sections.append("## Long context\n\n" + report["long_context"]["markdown"])
    if "continual" in parts:
        from .continual import run_benchmark

        kwargs = {"device": device, **(continual or {})}
        report["continual"] = run_benchmark(output_dir=output_dir / "continual", **kwargs)
        sections.append("## Continual learning\n\n" + report["continual"]["markdown"])
    (output_dir / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (output_dir / "report.md").write_text("\n".join(sections))
    print(f"report: {output_dir / 'report.md'}", flush=True)
    return report


__all__ = [
    "PAPER_COLUMNS", "PAPER_SUITE", "PARTS", "SuiteTask", "evaluate_lm", "export_offline_data", "make_lm",
    "markdown_table", "paper_row", "parse_models", "run_lm_eval_suite", "run_suite", "suite_tasks",
    "write_offline_tasks", "write_table",
]
