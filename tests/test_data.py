"""The data module: sources, packing with EOS between documents, the BPE tokenizer, clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from hope_hf.data import (
    DataError,
    collate_blocks,
    load_text_dataset,
    pack_dataset,
    pack_token_lists,
    stdlib_documents,
    train_bpe_tokenizer,
)

TEXTS = [f"Document {i} says that the quick brown fox jumps over {i} lazy dogs." for i in range(40)]


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(TEXTS * 5, vocab_size=300)


def test_pack_token_lists_puts_eos_between_documents_and_drops_the_tail():
    assert pack_token_lists([[5, 6], [7], [8, 9, 10, 11]], eos_id=2, block_size=3) == [[5, 6, 2], [7, 2, 8], [9, 10, 11]]
    assert pack_token_lists([[5]], eos_id=2, block_size=3) == []


def test_pack_dataset_equals_manual_packing_of_the_token_stream(tokenizer, tmp_path):
    path = tmp_path / "docs.txt"
    path.write_text("\n".join(TEXTS) + "\n\n   \n")        # blank lines are not documents
    splits = load_text_dataset(str(path), validation_fraction=0.25, cache_dir=tmp_path / "cache")
    assert len(splits["train"]) + len(splits["validation"]) == len(TEXTS)
    train = splits["train"]
    blocks = pack_dataset(train, tokenizer, block_size=16)
    stream = []
    for text in list(train["text"]):
        stream += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    expected = [stream[i: i + 16] for i in range(0, len(stream) - 15, 16)]
    assert list(blocks["input_ids"]) == expected
    assert sum(row.count(tokenizer.eos_token_id) for row in blocks["input_ids"]) >= len(train) - 1


def test_bpe_tokenizer_round_trips_and_has_the_special_tokens(tokenizer, tmp_path):
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert len(tokenizer) == 300
    text = "Unseen wörds ✓ and\ttabs\n"
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    tokenizer.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    again = train_bpe_tokenizer(TEXTS * 5, vocab_size=300)
    assert again.get_vocab() == tokenizer.get_vocab()      # deterministic training


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet", ".csv"])
def test_local_structured_files_with_a_text_column(suffix, tmp_path):
    import datasets

    path = tmp_path / f"docs{suffix}"
    table = datasets.Dataset.from_dict({"body": TEXTS, "id": list(range(len(TEXTS)))})
    {".jsonl": table.to_json, ".parquet": table.to_parquet, ".csv": table.to_csv}[suffix](str(path))
    splits = load_text_dataset(str(path), text_column="body", cache_dir=tmp_path / "cache")
    assert splits["train"].column_names == ["text"]
    assert sorted(list(splits["train"]["text"]) + list(splits["validation"]["text"])) == sorted(TEXTS)
    with pytest.raises(DataError, match="no text column 'text'.*body"):
        load_text_dataset(str(path), cache_dir=tmp_path / "cache")


def test_text_files_by_paragraph_and_train_split_slicing(tmp_path):
    (tmp_path / "a.txt").write_text("one line\nsame paragraph\n\nsecond paragraph\n")
    splits = load_text_dataset(str(tmp_path / "a.txt"), sample_by="paragraph", validation_fraction=0.5,
                               cache_dir=tmp_path / "cache")
    texts = sorted(t.strip() for t in list(splits["train"]["text"]) + list(splits["validation"]["text"]))
    assert texts == ["one line\nsame paragraph", "second paragraph"]
    (tmp_path / "b.txt").write_text("\n".join(TEXTS))
    sliced = load_text_dataset(str(tmp_path / "b.txt"), train_split="train[:10]", validation_split="train[10:14]",
                               cache_dir=tmp_path / "cache")
    assert list(sliced["train"]["text"]) == TEXTS[:10] and list(sliced["validation"]["text"]) == TEXTS[10:14]


def test_bad_data_gives_clear_errors(tmp_path, tokenizer):
    with pytest.raises(DataError, match="data file not found: .*missing.txt"):
        load_text_dataset(str(tmp_path / "missing.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n\n")
    with pytest.raises(DataError, match="no non-empty text|need at least 2 documents"):
        load_text_dataset(str(empty), cache_dir=tmp_path / "cache")
    (tmp_path / "x.yaml").write_text("a: 1")
    with pytest.raises(DataError, match="unsupported data file type"):
        load_text_dataset(str(tmp_path / "x.yaml"))
    short = load_text_dataset(str(_write(tmp_path / "short.txt", "tiny\nwords\n")), validation_fraction=0.5,
                              cache_dir=tmp_path / "cache")
    with pytest.raises(DataError, match="fewer tokens than one block of 64"):
        pack_dataset(short["train"], tokenizer, block_size=64)
    with pytest.raises(DataError, match="has no split 'nope'"):
        load_text_dataset(str(_write(tmp_path / "s.txt", "\n".join(TEXTS))), train_split="nope",
                          cache_dir=tmp_path / "cache")


def test_unreachable_hub_dataset_suggests_the_embedded_corpus(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    for name in ("surely-not-a-dataset-hope-hf", "some-org/surely-not-a-dataset"):
        with pytest.raises(DataError, match=f"Hub dataset '{name}'.*--data embedded"):
            load_text_dataset(name, cache_dir=tmp_path / "cache")


def test_embedded_corpus_is_deterministic_english_and_held_out(tmp_path):
    docs = stdlib_documents()
    size = sum(map(len, docs))
    assert len(docs) > 2000 and size > 1_500_000, (len(docs), size)
    assert all(len(d) >= 100 for d in docs) and len(set(docs)) == len(docs)
    assert sum(" the " in d for d in docs) > 0.8 * len(docs)          # English prose
    splits = load_text_dataset("embedded", cache_dir=tmp_path)    # builds the corpus again: deterministic
    assert list(splits["validation"]["text"]) == docs[::20]
    assert len(splits["train"]) == len(docs) - len(docs[::20])
    again = load_text_dataset("embedded", cache_dir=tmp_path)        # from the parquet cache
    assert list(again["train"]["text"]) == list(splits["train"]["text"])


def test_collate_blocks_labels_equal_inputs():
    batch = collate_blocks([{"input_ids": [1, 2, 3]}, {"input_ids": [4, 5, 6]}])
    assert torch.equal(batch["input_ids"], torch.tensor([[1, 2, 3], [4, 5, 6]]))
    assert torch.equal(batch["labels"], batch["input_ids"]) and batch["labels"] is not batch["input_ids"]


def _write(path, text):
    path.write_text(text)
    return path


def test_json_lines_file_round_trip(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS[:6]))
    splits = load_text_dataset(str(path), validation_split="train", cache_dir=tmp_path / "cache")
    assert list(splits["train"]["text"]) == TEXTS[:6] == list(splits["validation"]["text"])
