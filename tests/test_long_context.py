"""Long context: the RULER-style samples, exact match == greedy generation, perplexity by position, and a
tiny end-to-end run (tables and PNG)."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from hope_hf import HopeConfig, HopeForCausalLM
from hope_hf.long_context import (
    NEEDLE, NIAH_TASKS, REPEAT_HAYSTACK, TEMPLATE, greedy_exact_match, long_documents, make_needle_sample,
    needle_samples, perplexity_by_position, run_long_context, split_answer, token_losses,
)
from hope_hf.data import train_bpe_tokenizer

from conftest import tiny_config_kwargs

SENTENCES = [f"Sentence {i} tells of the {w} near the old mill." for i, w in
             enumerate(["river", "garden", "tower", "market", "bridge", "forest"] * 40)]


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def tokenizer():
    texts = SENTENCES + [NEEDLE, TEMPLATE, REPEAT_HAYSTACK, "What is the special magic number for"] * 10
    return train_bpe_tokenizer(texts * 3, vocab_size=1000)


@pytest.fixture(scope="module")
def hope(tokenizer):
    torch.manual_seed(0)
    config = HopeConfig(**tiny_config_kwargs(vocab_size=len(tokenizer), projection_chunk_size=8, memory_chunk_size=16))
    return HopeForCausalLM(config).double().eval()


@pytest.mark.parametrize("task", sorted(NIAH_TASKS))
def test_needle_samples(task, tokenizer):
    samples = needle_samples(task, tokenizer, length=600, count=3, sentences=SENTENCES)
    for sample in samples:
        assert sample.tokens <= 600
        assert sample.tokens > 600 - 40, "the haystack should fill the length up to one unit"
        value = sample.answer.strip()
        assert sample.prompt.count(value) == 1 and sample.answer == " " + value
        assert sample.prompt.endswith("mentioned in the provided text is")
        needles = re.findall(r"One of the special magic (\w+) for ([\w-]+) is: ([\w-]+)\.", sample.prompt)
        assert len(needles) == NIAH_TASKS[task].keys
        asked = re.search(r"What is the special magic \w+ for ([\w-]+) ", sample.prompt).group(1)
        assert (NIAH_TASKS[task].value, asked, value) in needles
        pattern = r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
        assert re.match(pattern if NIAH_TASKS[task].value == "uuids" else r"^\d{7}$", value)
        if NIAH_TASKS[task].haystack == "repeat":
            assert "The grass is green." in sample.prompt and "Sentence" not in sample.prompt
    positions = [s.prompt.index(s.answer.strip()) for s in samples]
    if NIAH_TASKS[task].keys == 1:
        assert positions == sorted(positions) and positions[0] < positions[-1], "depth 0 … 1 moves the needle"
    assert [s.depth for s in samples] == [0.0, 0.5, 1.0]
    again = needle_samples(task, tokenizer, length=600, count=3, sentences=SENTENCES)
    assert [s.prompt for s in again] == [s.prompt for s in samples]
    with pytest.raises(ValueError, match="too short"):
        make_needle_sample(task, tokenizer, 20, 0.5, 0, SENTENCES)


def test_exact_match_equals_greedy_generation(hope, tokenizer):
    sample = make_needle_sample("passkey", tokenizer, 160, 0.3, 0, SENTENCES)
    prompt_ids, answer_ids = split_answer(tokenizer, sample.prompt, sample.answer)
    assert tokenizer.decode(answer_ids) == sample.answer
    generated = hope.generate(torch.tensor([prompt_ids]), max_new_tokens=len(answer_ids), do_sample=False,
                              pad_token_id=tokenizer.pad_token_id)[0, len(prompt_ids):].tolist()
    assert greedy_exact_match(hope, prompt_ids, generated) is True          # the model's own greedy answer
    assert greedy_exact_match(hope, prompt_ids, answer_ids) is (generated == answer_ids)
    for position in range(len(generated)):                                  # any one wrong token is a miss
        wrong = list(generated)
        wrong[position] = (wrong[position] + 1) % len(tokenizer)
        assert greedy_exact_match(hope, prompt_ids, wrong) is False


def test_perplexity_by_position(hope, tokenizer):
    docs = [tokenizer(" ".join(SENTENCES[i::3]))["input_ids"][:50] for i in range(3)]
    ids = torch.tensor(docs)
    with torch.no_grad():
        expected = F.cross_entropy(hope(ids).logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
    torch.testing.assert_close(token_losses(hope, ids, vocab_chunk=7), expected, rtol=1e-10, atol=1e-10)
    bins = perplexity_by_position(hope, docs, bins=4)
    mean = expected.mean(0)
    assert [(b["start"], b["end"]) for b in bins] == [(1, 13), (13, 25), (25, 38), (38, 50)]
    for b in bins:
        assert b["loss"] == pytest.approx(float(mean[b["start"] - 1: b["end"] - 1].mean()), rel=1e-12)
        assert b["ppl"] == pytest.approx(math.exp(b["loss"]))


def test_long_documents(tokenizer, tmp_path):
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": " ".join(SENTENCES[i:])}) + "\n"
                                                 for i in (0, 230, 10)))
    docs = long_documents(tokenizer, 300, 2, tmp_path / "docs.jsonl")
    assert [len(d) for d in docs] == [300, 300]
    assert docs[1] == tokenizer(" ".join(SENTENCES[10:]), add_special_tokens=False)["input_ids"][:300]
    with pytest.raises(ValueError, match="2 documents of at least 300 tokens, 3 needed"):
        long_documents(tokenizer, 300, 3, tmp_path / "docs.jsonl")


def test_run_long_context_tiny(hope, tokenizer, tmp_path):
    pytest.importorskip("matplotlib")
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=4, intermediate_size=37)).double().eval()
    haystack = tmp_path / "haystack.txt"
    haystack.write_text(" ".join(SENTENCES))
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text(" ".join(SENTENCES))
    (docs / "b.txt").write_text(" ".join(reversed(SENTENCES)))
    out = run_long_context({"hope": hope, "llama": llama}, tokenizer, tmp_path / "out", tasks=["passkey", "uuid"],
                           lengths=[200, 260], samples=2, ppl_length=64, ppl_documents=2, ppl_bins=4,
                           ppl_source=docs, haystack_file=haystack)
    assert set(out["niah"]) == {"hope", "llama"}
    assert all(set(scores[task]) == {200, 260} and all(v in (0.0, 50.0, 100.0) for v in scores[task].values())
               for scores in out["niah"].values() for task in ("passkey", "uuid"))
    assert [len(rows) for rows in out["ppl_by_position"].values()] == [4, 4]
    table = (tmp_path / "out" / "niah.md").read_text()
    assert "| hope / passkey |" in table and "| llama / uuid |" in table
    assert json.loads((tmp_path / "out" / "ppl_by_position.json").read_text())["columns"] == \
        ["1-17", "17-33", "33-48", "48-64"]
    assert (tmp_path / "out" / "long_context.png").read_bytes()[:4] == b"\x89PNG"
