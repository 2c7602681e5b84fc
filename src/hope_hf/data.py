"""Training text for Hope: where it comes from, how it is tokenised and how it is packed into blocks.

Three sources, one result (a `datasets.DatasetDict` with a `"train"` and a `"validation"` split of
documents in a `"text"` column):

- `"embedded"` (the default, no download): an English corpus built at run time from what every Python
  installation carries, the docstrings of the standard library's source files (read with `ast`, nothing
  is imported) and the language reference of `pydoc_data.topics`. Deterministic for a given Python
  version, about 2 MB; written once to parquet under the `datasets` cache and loaded from there.
- a local file or folder: `.txt` / `.text` (one document per line, or per paragraph / file with
  `sample_by`), `.json` / `.jsonl`, `.parquet`, `.csv`.
- a Hugging Face Hub dataset name with an optional config, e.g. `wikitext` / `wikitext-103-raw-v1`.

Documents are tokenised and packed into fixed-length blocks `[N, block_size]` with an EOS token between
documents (`pack_dataset`); the work is cached by `datasets` (`Dataset.map` with its fingerprints), so a
second run with the same data, tokenizer and block size reuses it. The embedded corpus is tokenised by a
byte-level BPE trained on its training split (`train_bpe_tokenizer`), saved with the model as a
`PreTrainedTokenizerFast`.

This is not a model file: it is not carried by Hub checkpoints and may import the package.

Example:
    >>> from hope_hf.data import load_text_dataset, train_bpe_tokenizer, pack_dataset
    >>> splits = load_text_dataset("embedded")
    >>> tokenizer = train_bpe_tokenizer(splits["train"]["text"], vocab_size=4096)
    >>> blocks = pack_dataset(splits["train"], tokenizer, block_size=128)   # rows of 128 input_ids
"""

from __future__ import annotations

import ast
import hashlib
import os
import sys
import sysconfig
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

#: The name of the built-in corpus for `--data`.
EMBEDDED = "embedded"

#: Bump when `stdlib_documents` changes, so cached copies of the embedded corpus are rebuilt.
EMBEDDED_CORPUS_VERSION = 1

#: Every `HELD_OUT_EVERY`-th document of the embedded corpus is held out for validation.
HELD_OUT_EVERY = 20

#: File suffix → the `datasets` builder that reads it.
FILE_BUILDERS = {".txt": "text", ".text": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet",
                 ".csv": "csv"}

#: Folders of the standard library left out of the embedded corpus (tests, demos, bundled packages).
_SKIPPED_STDLIB_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__",
                                  "lib2to3", "turtledemo", "ensurepip", "venv"})


class DataError(ValueError):
    """Bad data input (a missing file, an empty dataset, an unreachable Hub dataset, ...) with a clear message."""


# ----------------------------------------------------------------------------------------------------------------
# The embedded corpus
# ----------------------------------------------------------------------------------------------------------------

def stdlib_documents(min_chars: int = 100, progress: bool = False) -> list[str]:
    """English documents every Python installation carries, in a fixed order, without importing anything.

    The docstrings (modules, classes, functions) of the standard library's `.py` files, read with `ast`
    in sorted path order, then the topics of the language reference (`pydoc_data.topics`) in sorted key
    order. Duplicates and texts shorter than `min_chars` are dropped.

    Returns:
        The documents; about 4,000 texts, 2 MB, with CPython 3.11.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if not set(p.relative_to(root).parts[:-1]) & _SKIPPED_STDLIB_DIRS)
    seen: set[str] = set()
    docs: list[str] = []

    def add(text: str | None) -> None:
        text = (text or "").strip()
        if len(text) >= min_chars and text not in seen:
            seen.add(text)
            docs.append(text)

    from tqdm.auto import tqdm

    for path in tqdm(files, desc="embedded corpus: reading standard-library docstrings", unit="file",
                     disable=not progress):
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError, OSError):   # a file of another Python version or unreadable
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                add(ast.get_docstring(node))
    try:
        from pydoc_data.topics import topics
    except ImportError:      # some distributions strip it
        topics = {}
    for key in sorted(topics):
        add(topics[key])
    return docs


def embedded_corpus(cache_dir: str | os.PathLike[str] | None = None):
    """The embedded corpus as a `DatasetDict` (`"train"`, `"validation"`; a `"text"` column).

    Built once per Python version (a few seconds) and cached as parquet in `cache_dir` (default: the
    `datasets` cache, `HF_DATASETS_CACHE`); every `HELD_OUT_EVERY`-th document is held out.
    """
    import datasets

    base = Path(cache_dir) if cache_dir is not None else Path(datasets.config.HF_DATASETS_CACHE)
    key = hashlib.sha1(f"{EMBEDDED_CORPUS_VERSION}|{sys.version}|{sysconfig.get_paths()['stdlib']}".encode())
    folder = base / "hope_hf_embedded" / key.hexdigest()[:16]
    files = {split: folder / f"{split}.parquet" for split in ("train", "validation")}
    if not all(path.is_file() for path in files.values()):
        docs = stdlib_documents(progress=True)     # once per Python version, a few seconds
        held_out = [d for i, d in enumerate(docs) if i % HELD_OUT_EVERY == 0]
        train = [d for i, d in enumerate(docs) if i % HELD_OUT_EVERY != 0]
        folder.mkdir(parents=True, exist_ok=True)
        for split, texts in (("train", train), ("validation", held_out)):
            tmp = files[split].with_suffix(f".tmp{os.getpid()}")
            datasets.Dataset.from_dict({"text": texts}).to_parquet(str(tmp))
            os.replace(tmp, files[split])      # atomic: concurrent builders never see a half-written file
    return datasets.load_dataset("parquet", data_files={k: str(v) for k, v in files.items()},
                                 cache_dir=str(base))


# ----------------------------------------------------------------------------------------------------------------
# Loading any source
# ----------------------------------------------------------------------------------------------------------------

def _local_files(data: str) -> tuple[str, list[str]] | None:
    """`(builder, files)` if `data` names local files; `None` if it should be looked up on the Hub."""
    path = Path(data).expanduser()
    if path.is_dir():
        files = sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in FILE_BUILDERS and p.is_file())
        if not files:
            raise DataError(f"data folder {path} holds no {'/'.join(sorted(FILE_BUILDERS))} files")
    elif path.is_file():
        files = [str(path)]
    elif path.suffix.lower() in FILE_BUILDERS or data.startswith((".", os.sep, "~")):
        raise DataError(f"data file not found: {data}")
    else:       # a Hub id such as "wikitext" or "HuggingFaceFW/fineweb-edu"
        return None
    suffixes = {Path(f).suffix.lower() for f in files}
    builders = {FILE_BUILDERS.get(s) for s in suffixes}
    if None in builders:
        raise DataError(f"unsupported data file type {sorted(suffixes)} for {data}; "
                        f"supported suffixes: {sorted(FILE_BUILDERS)}")
    if len(builders) != 1:
        raise DataError(f"data folder {data} mixes file types {sorted(suffixes)}; use one type per folder")
    return builders.pop(), files


def load_text_dataset(
    data: str = EMBEDDED,
    data_config: str | None = None,
    *,
    text_column: str = "text",
    train_split: str = "train",
    validation_split: str | None = None,
    validation_fraction: float = 0.05,
    sample_by: str = "line",
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
):
    """Documents for training and validation from `data`, as a `DatasetDict` with a `"text"` column.

    Args:
        data: `"embedded"`, a local file / folder (`.txt`, `.json`, `.jsonl`, `.parquet`, `.csv`), or a
            Hub dataset name.
        data_config: the Hub dataset's configuration (e.g. `"wikitext-103-raw-v1"`).
        text_column: the column holding the text (renamed to `"text"`).
        train_split: the split to train on; `datasets` slicing works, e.g. `"train[:10%]"`.
        validation_split: the held-out split; default: `"validation"` if the dataset has one, else the
            last `validation_fraction` of the training split (a seeded shuffle split).
        validation_fraction: share of the training documents held out when there is no validation split.
        sample_by: for text files, what a document is: `"line"`, `"paragraph"` or `"document"` (a file).
        seed: seed of the held-out split.
        cache_dir: the `datasets` cache folder (default `HF_DATASETS_CACHE`).

    Returns:
        `DatasetDict(train=..., validation=...)`, empty documents removed.

    Raises:
        DataError: a missing file, an unsupported file type, an unreachable Hub dataset, a missing text
            column or split, or no non-empty document.
    """
    import datasets

    if not 0 < validation_fraction < 1:
        raise DataError(f"validation_fraction must be in (0, 1), got {validation_fraction!r}")
    cache = str(cache_dir) if cache_dir is not None else None
    if data == EMBEDDED:
        splits = embedded_corpus(cache_dir)
    else:
        local = _local_files(data)
        try:
            if local is not None:
                builder, files = local
                kwargs = {"sample_by": sample_by} if builder == "text" else {}
                splits = datasets.load_dataset(builder, data_files={"train": files}, cache_dir=cache, **kwargs)
            else:
                splits = datasets.load_dataset(data, data_config, cache_dir=cache)
        except DataError:
            raise
        except Exception as err:   # datasets raises many types (connection, offline, not found, bad config)
            where = "the file(s)" if local is not None else f"the Hub dataset {data!r}" + (
                f" (config {data_config!r})" if data_config else "")
            hint = "" if local is not None else (
                "; without network access use --data embedded (the built-in corpus) or a local file path")
            raise DataError(f"could not load {where}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                            f"{hint}") from err
    train = _pick_split(splits, train_split, data)
    if validation_split is None and "validation" in splits and train_split == "train":
        validation_split = "validation"
    if validation_split is not None:
        validation = _pick_split(splits, validation_split, data)
    else:
        if len(train) < 2:
            raise DataError(f"{data} has {len(train)} document(s) and no validation split: "
                            "need at least 2 documents to hold one out")
        parts = train.train_test_split(test_size=validation_fraction, seed=seed)
        train, validation = parts["train"], parts["test"]
    result = datasets.DatasetDict(train=_text_only(train, text_column, data),
                                  validation=_text_only(validation, text_column, data))
    if len(result["train"]) == 0:
        raise DataError(f"the training split of {data} holds no non-empty text")
    return result


def _pick_split(splits, name: str, data: str):
    import datasets

    base = name.split("[", 1)[0]
    if base not in splits:
        raise DataError(f"{data} has no split {base!r}; its splits are {sorted(splits)}")
    if "[" in name:    # slicing syntax: re-read the split through datasets' ReadInstruction parser
        instruction = datasets.ReadInstruction.from_spec(name)
        dataset = splits[base]
        absolute = instruction.to_absolute({base: len(dataset)})[0]
        return dataset.select(range(absolute.from_, absolute.to))
    return splits[name]


def _text_only(dataset, text_column: str, data: str):
    if text_column not in dataset.column_names:
        raise DataError(f"{data} has no text column {text_column!r}; its columns are {dataset.column_names} "
                        "(choose one with --text-column)")
    dataset = dataset.select_columns([text_column])
    if text_column != "text":
        dataset = dataset.rename_column(text_column, "text")
    return dataset.filter(lambda batch: [bool(t and t.strip()) for t in batch["text"]], batched=True,
                          desc="dropping empty documents")


# ----------------------------------------------------------------------------------------------------------------
# Tokenizer and packing
# ----------------------------------------------------------------------------------------------------------------

def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, show_progress: bool = False):
    """A byte-level BPE trained on `texts` (`tokenizers`), as a `PreTrainedTokenizerFast`.

    Special tokens: `<pad>` (id 0), `<s>` (1, BOS), `</s>` (2, EOS), as the shipped configs expect.
    Byte-level: every string round-trips, nothing is unknown.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 260:
        raise ValueError(f"vocab_size must be >= 260 (256 bytes + 3 special tokens), got {vocab_size}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=show_progress)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", model_max_length=1_000_000_000)


def pack_token_lists(token_lists: Sequence[Sequence[int]], eos_id: int, block_size: int) -> list[list[int]]:
    """Concatenate documents with `eos_id` after each and cut the stream into blocks of `block_size`.

    The tail shorter than a block is dropped. Example: `[[5, 6], [7]]`, EOS 2, block 2 →
    stream `5 6 2 7 2` → `[[5, 6], [2, 7]]`.
    """
    stream = [t for tokens in token_lists for t in (*tokens, eos_id)]
    n = len(stream) // block_size
    return [stream[i * block_size: (i + 1) * block_size] for i in range(n)]


def pack_dataset(dataset, tokenizer, block_size: int, *, batch_size: int = 1000, num_proc: int | None = None):
    """Tokenise the `"text"` column and pack it into blocks: a `Dataset` with one `input_ids` row per block.

    Documents are packed in groups of `batch_size` (each group's tail shorter than a block is dropped);
    the result is cached by `datasets` (fingerprint of the data, the tokenizer and `block_size`).

    Raises:
        DataError: if `tokenizer` has no EOS token, or the text is too short for one block.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no EOS token to separate documents")
    if block_size < 2:
        raise DataError(f"block_size must be >= 2, got {block_size}")

    def tokenize_and_pack(batch: dict[str, list[Any]]) -> dict[str, list[list[int]]]:
        ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        return {"input_ids": pack_token_lists(ids, eos, block_size)}

    packed = dataset.map(tokenize_and_pack, batched=True, batch_size=batch_size, num_proc=num_proc,
                         remove_columns=dataset.column_names, desc=f"tokenising and packing into {block_size}-token blocks")
    if len(packed) == 0:
        raise DataError(f"{len(dataset)} document(s) give fewer tokens than one block of {block_size} "
                        "(use more text or a smaller --block-size)")
    return packed


def collate_blocks(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Batch packed blocks for causal LM training: `input_ids` and `labels` [B, block_size] (labels = inputs;
    the model shifts them)."""
    input_ids = torch.tensor([f["input_ids"] for f in features], dtype=torch.long)
    return {"input_ids": input_ids, "labels": input_ids.clone()}


__all__ = [
    "EMBEDDED",
    "DataError",
    "collate_blocks",
    "embedded_corpus",
    "load_text_dataset",
    "pack_dataset",
    "pack_token_lists",
    "stdlib_documents",
    "train_bpe_tokenizer",
]
