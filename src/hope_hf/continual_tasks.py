"""Class-incremental text classification task sequences for the continual-learning benchmark.

A sequence is `T` tasks with disjoint classes; task `i` brings its own classes and is learned after tasks
`0 … i-1`; at test time the label is predicted among all classes seen so far (no task id).

- `synthetic_tasks`: a family that needs no download. Every class owns a few pseudo-words (its keywords);
  an example is a row of random filler pseudo-words with some of its class's keywords at random places.
- `load_text_classification`: CLINC150 (`clinc_oos`, intents, `oos` dropped), Banking77 (`banking77`) and
  DBpedia-14 (`dbpedia_14`), from a local folder (`train.jsonl` / `test.jsonl`, or a `save_to_disk`
  dataset) with the upstream field names, or by Hub name for online users.

This is not a model file.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: Upstream `(config, text field, label field)` of the supported datasets.
KNOWN_DATASETS = {
    "clinc_oos": ("plus", "text", "intent"),
    "banking77": (None, "text", "label"),
    "dbpedia_14": (None, "content", "label"),
}


@dataclass
class ClassificationTask:
    """One task: its classes (global class ids) and `(text, class id)` examples."""

    name: str
    classes: list[int]
    train: list[tuple[str, int]] = field(default_factory=list)
    test: list[tuple[str, int]] = field(default_factory=list)


def _pseudo_words(count: int, rng: random.Random) -> list[str]:
    """`count` distinct pronounceable words of two or three syllables."""
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    words: set[str] = set()
    while len(words) < count:
        words.add("".join(rng.choice(syllables) for _ in range(rng.choice((2, 3)))))
    return sorted(words)


def synthetic_tasks(num_tasks: int = 5, classes_per_task: int = 2, train_per_class: int = 64,
                    test_per_class: int = 32, words_per_example: int = 12, keywords_per_class: int = 6,
                    keywords_per_example: int = 3, filler_words: int = 300, seed: int = 0) -> list[ClassificationTask]:
    """A synthetic class-incremental sequence (deterministic in `seed`).

    Class `c` owns `keywords_per_class` pseudo-words; an example of class `c` has `words_per_example` words,
    `keywords_per_example` of them drawn from `c`'s keywords and the rest from a shared filler vocabulary.
    """
    for name, value, low in (("num_tasks", num_tasks, 1), ("classes_per_task", classes_per_task, 2),
                             ("train_per_class", train_per_class, 1), ("test_per_class", test_per_class, 1),
                             ("keywords_per_example", keywords_per_example, 1)):
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    if keywords_per_example > words_per_example:
        raise ValueError(f"keywords_per_example ({keywords_per_example}) must be <= words_per_example "
                         f"({words_per_example})")
    rng = random.Random(seed)
    num_classes = num_tasks * classes_per_task
    words = _pseudo_words(filler_words + num_classes * keywords_per_class, rng)
    rng.shuffle(words)
    filler, keywords = words[:filler_words], words[filler_words:]

    def example(label: int) -> str:
        row = [rng.choice(filler) for _ in range(words_per_example - keywords_per_example)]
        own = keywords[label * keywords_per_class:(label + 1) * keywords_per_class]
        for word in (rng.choice(own) for _ in range(keywords_per_example)):
            row.insert(rng.randrange(len(row) + 1), word)
        return " ".join(row)

    tasks = []
    for t in range(num_tasks):
        classes = list(range(t * classes_per_task, (t + 1) * classes_per_task))
        task = ClassificationTask(f"task{t}", classes)
        for label in classes:
            task.train += [(example(label), label) for _ in range(train_per_class)]
            task.test += [(example(label), label) for _ in range(test_per_class)]
        rng.shuffle(task.train)
        tasks.append(task)
    return tasks


def _read_split(source: str, split: str, config: str | None):
    """Rows of `split` from a folder (`{split}.jsonl` or a `save_to_disk` dataset) or a Hub dataset name."""
    path = Path(source)
    if (path / f"{split}.jsonl").is_file():
        lines = (path / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()], None
    import datasets

    if path.is_dir():
        dataset = datasets.load_from_disk(str(path))[split]
    else:
        dataset = datasets.load_dataset(source, config, split=split)
    return list(dataset), dataset.features


def load_text_classification(source: str, num_tasks: int, classes_per_task: int, train_per_class: int,
                             test_per_class: int, dataset: str | None = None, text_field: str | None = None,
                             label_field: str | None = None, seed: int = 0) -> list[ClassificationTask]:
    """A class-incremental sequence from a text-classification dataset.

    Args:
        source: a Hub name in `KNOWN_DATASETS`, or a local folder with `train.jsonl` and `test.jsonl` (or a
            `save_to_disk` dataset with `train` / `test` splits) in the upstream field names.
        dataset: which known dataset a local folder holds (for its field names); default: `source`'s name
            when it is one of `KNOWN_DATASETS`.
        text_field, label_field: override the field names.
    Classes (the `oos` intent of CLINC excluded) are shuffled with `seed` and cut into `num_tasks` tasks of
    `classes_per_task`; each class keeps `train_per_class` / `test_per_class` examples (fewer raise).
    """
    dataset = dataset or (Path(source).name if Path(source).name in KNOWN_DATASETS else None)
    config, default_text, default_label = KNOWN_DATASETS.get(dataset, (None, None, None))
    text_field, label_field = text_field or default_text, label_field or default_label
    if text_field is None or label_field is None:
        raise ValueError(f"dataset must be one of {sorted(KNOWN_DATASETS)} (or give text_field and label_field), "
                         f"got dataset={dataset!r}")
    splits = {}
    names = None
    for split in ("train", "test"):
        rows, features = _read_split(source, split, config)
        if rows and (text_field not in rows[0] or label_field not in rows[0]):
            raise ValueError(f"{source} {split} rows lack the fields {text_field!r} / {label_field!r}: "
                             f"they have {sorted(rows[0])}")
        if features is not None and hasattr(features[label_field], "names"):
            names = features[label_field].names
        splits[split] = rows
    by_class: dict[str, dict] = {split: defaultdict(list) for split in splits}
    for split, rows in splits.items():
        for row in rows:
            label = row[label_field]
            name = names[label] if names is not None else label
            if name != "oos":
                by_class[split][label].append(row[text_field])
    classes = sorted(by_class["train"], key=str)
    needed = num_tasks * classes_per_task
    if len(classes) < needed:
        raise ValueError(f"{source} has {len(classes)} classes, {num_tasks} tasks x {classes_per_task} need {needed}")
    rng = random.Random(seed)
    rng.shuffle(classes)
    tasks = []
    for t in range(num_tasks):
        chosen = classes[t * classes_per_task:(t + 1) * classes_per_task]
        task = ClassificationTask(f"task{t}", list(range(t * classes_per_task, (t + 1) * classes_per_task)))
        for class_id, label in zip(task.classes, chosen):
            for split, count, examples in (("train", train_per_class, task.train), ("test", test_per_class, task.test)):
                texts = by_class[split][label]
                if len(texts) < count:
                    raise ValueError(f"class {label!r} of {source} has {len(texts)} {split} examples, {count} needed")
                examples += [(text, class_id) for text in rng.sample(texts, count)]
        rng.shuffle(task.train)
        tasks.append(task)
    return tasks


def all_texts(tasks: Sequence[ClassificationTask]) -> list[str]:
    """Every training text of the sequence (to train a tokenizer)."""
    return [text for task in tasks for text, _ in task.train]


__all__ = ["KNOWN_DATASETS", "ClassificationTask", "all_texts", "load_text_classification", "synthetic_tasks"]
