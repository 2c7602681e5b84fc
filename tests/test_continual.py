"""Continual learning: metrics on known matrices, EWC and LwF against hand computations, the task
sequences (synthetic and CLINC/Banking-style local files), and the tiny benchmark end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from hope_hf.continual import (
    EWC, METHODS, SETTINGS, LwF, Method, average_accuracy, average_forgetting, backward_transfer,
    continual_metrics, encode, register_method, run_benchmark, separator_logits,
)
from hope_hf.continual_tasks import load_text_classification, synthetic_tasks
from hope_hf.data import train_bpe_tokenizer

pytestmark = pytest.mark.usefixtures("single_thread")
NAN = float("nan")


def test_metrics_on_known_matrices():
    R = [[90, NAN, NAN], [60, 80, NAN], [40, 70, 95]]
    assert average_accuracy(R) == pytest.approx((40 + 70 + 95) / 3)
    assert average_forgetting(R) == pytest.approx(((90 - 40) + (80 - 70)) / 2)
    assert backward_transfer(R) == pytest.approx(((40 - 90) + (70 - 80)) / 2)
    # forgetting uses the best accuracy before the end, not the one just after learning (70 > 50 below)
    R = [[50, NAN, NAN], [70, 60, NAN], [30, 65, 80]]
    assert continual_metrics(R) == pytest.approx({"average_accuracy": 175 / 3, "average_forgetting": (40 - 5) / 2,
                                                  "backward_transfer": (-20 + 5) / 2})
    assert continual_metrics([[42.0]]) == {"average_accuracy": 42.0, "average_forgetting": 0.0,
                                           "backward_transfer": 0.0}
    with pytest.raises(ValueError, match="NaN on or below the diagonal"):
        average_accuracy([[90, NAN], [NAN, 80]])
    with pytest.raises(ValueError, match="square"):
        backward_transfer([[1, 2, 3]])


@pytest.fixture(scope="module")
def tiny():
    tasks = synthetic_tasks(num_tasks=2, classes_per_task=2, train_per_class=4, test_per_class=2, words_per_example=5,
                            keywords_per_example=2, seed=3)
    tokenizer = train_bpe_tokenizer([t for task in tasks for t, _ in task.train] * 2, vocab_size=300)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer) + 4, hidden_size=16, num_hidden_layers=1,
                                         num_attention_heads=2, intermediate_size=19))
    data = encode(tokenizer, tasks[0].train, len(tokenizer), align=4, max_text_tokens=32)
    return tasks, tokenizer, model, data


def test_encode_layout(tiny):
    tasks, tokenizer, _, data = tiny
    for row, (text, label) in enumerate(tasks[0].train):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        sep = int(data.sep[row])
        assert sep % 4 == 0 and len(ids) <= sep < len(ids) + 4
        assert data.input_ids[row, :len(ids)].tolist() == ids
        assert int(data.input_ids[row, sep]) == tokenizer.eos_token_id
        assert data.attention_mask[row].tolist() == [1] * len(ids) + [0] * (sep - len(ids)) + [1] + \
            [0] * (data.input_ids.shape[1] - sep - 1)
        assert int(data.labels[row]) == len(tokenizer) + label
    assert data[1:3].input_ids.shape[1] == int(data.sep[1:3].max()) + 1


def test_ewc_fisher_and_penalty(tiny):
    _, _, model, data = tiny
    ewc = EWC(strength=3.0, samples=5)
    ewc.consolidate(model, data)
    fisher, anchor = ewc.anchors[0]
    name, param = "model.embed_tokens.weight", dict(model.named_parameters())["model.embed_tokens.weight"]
    expected = torch.zeros_like(param)
    for i in range(5):                                                  # one example at a time, by hand
        model.zero_grad()
        F.cross_entropy(separator_logits(model, data[i:i + 1]), data.labels[i:i + 1]).backward()
        expected += param.grad**2 / 5
    torch.testing.assert_close(fisher[name], expected)
    assert ewc.penalty(model).item() == 0.0
    delta = {n: 0.01 * torch.randn_like(p) for n, p in model.named_parameters()}
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.add_(delta[n])
    hand = 0.5 * 3.0 * sum((fisher[n] * delta[n] ** 2).sum() for n in fisher)
    assert ewc.penalty(model).item() == pytest.approx(float(hand), rel=1e-4)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.sub_(delta[n])


def test_lwf_distils_old_classes_only(tiny):
    _, tokenizer, model, data = tiny
    lwf = LwF(strength=2.0, temperature=2.0)
    lwf.start_task(model, [])
    assert lwf.loss(separator_logits(model, data), data).item() == 0.0             # first task: nothing to keep
    old = [len(tokenizer), len(tokenizer) + 1]
    lwf.start_task(model, old)
    logits = separator_logits(model, data)
    assert lwf.loss(logits, data).item() == pytest.approx(0.0, abs=1e-7)           # unchanged model
    changed = logits.detach().clone()
    changed[:, len(tokenizer) + 2] += 5.0                                          # a new class: no effect
    assert lwf.loss(changed, data).item() == pytest.approx(0.0, abs=1e-7)
    changed[:, old[0]] += 1.0
    p_old = F.softmax(logits.detach()[:, old] / 2, -1)
    p_new = F.softmax(changed[:, old] / 2, -1)
    hand = 2.0 * 4 * (p_old * (p_old.log() - p_new.log())).sum(-1).mean()
    assert lwf.loss(changed, data).item() == pytest.approx(float(hand), rel=1e-5)


def test_synthetic_tasks():
    tasks = synthetic_tasks(num_tasks=3, classes_per_task=2, train_per_class=5, test_per_class=3, words_per_example=7)
    assert [task.classes for task in tasks] == [[0, 1], [2, 3], [4, 5]]
    for task in tasks:
        assert sorted(label for _, label in task.train) == sorted(task.classes * 5)
        assert sorted(label for _, label in task.test) == sorted(task.classes * 3)
        assert all(len(text.split()) == 7 for text, _ in task.train + task.test)
    again = synthetic_tasks(num_tasks=3, classes_per_task=2, train_per_class=5, test_per_class=3, words_per_example=7)
    assert [t.train for t in again] == [t.train for t in tasks]
    with pytest.raises(ValueError, match="classes_per_task must be >= 2"):
        synthetic_tasks(classes_per_task=1)


def test_local_clinc_and_banking_files(tmp_path):
    def write(folder, rows_by_split):
        folder.mkdir()
        for split, rows in rows_by_split.items():
            (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    intents = ["oos", "book_flight", "pay_bill", "weather", "alarm"]
    write(tmp_path / "clinc_oos", {split: [{"text": f"{split} {i} {intent}", "intent": intent} for intent in intents
                                           for i in range(n)] for split, n in (("train", 4), ("test", 2))})
    tasks = load_text_classification(str(tmp_path / "clinc_oos"), num_tasks=2, classes_per_task=2, train_per_class=3,
                                     test_per_class=2)
    texts = [text for task in tasks for text, _ in task.train + task.test]
    assert not any(text.endswith("oos") for text in texts)
    assert {text.split()[-1] for text in texts} == set(intents[1:])
    assert [task.classes for task in tasks] == [[0, 1], [2, 3]] and len(tasks[1].train) == 6
    with pytest.raises(ValueError, match="4 classes, 3 tasks x 2 need 6"):
        load_text_classification(str(tmp_path / "clinc_oos"), 3, 2, 3, 2)
    with pytest.raises(ValueError, match="has 4 train examples, 5 needed"):
        load_text_classification(str(tmp_path / "clinc_oos"), 2, 2, 5, 2)
    write(tmp_path / "bank", {split: [{"text": f"q{i}", "label": c} for c in range(4) for i in range(3)]
                              for split in ("train", "test")})
    tasks = load_text_classification(str(tmp_path / "bank"), 2, 2, 3, 3, dataset="banking77")
    assert sum(len(task.test) for task in tasks) == 12
    with pytest.raises(ValueError, match="lack the fields 'content'"):
        load_text_classification(str(tmp_path / "bank"), 2, 2, 3, 3, dataset="dbpedia_14")
    with pytest.raises(ValueError, match="dataset must be one of"):
        load_text_classification(str(tmp_path / "bank"), 2, 2, 3, 3)


def test_methods_validate_and_register():
    with pytest.raises(ValueError, match="needs model='hope'"):
        Method("transformer", schedule=True)
    with pytest.raises(ValueError, match="regulariser"):
        Method("hope", regulariser="si")
    assert {"finetune", "ewc", "lwf", "hope", "hope_cms"} <= set(METHODS)
    register_method("hope_wide_test", Method("hope", config_overrides={"memory_expansion": 3}))
    try:
        assert METHODS["hope_wide_test"].config_overrides == {"memory_expansion": 3}
    finally:
        del METHODS["hope_wide_test"]


def test_tiny_benchmark_runs_every_method(tmp_path):
    pytest.importorskip("matplotlib")
    out = run_benchmark(setting="tiny", output_dir=tmp_path)
    T = SETTINGS["tiny"].num_tasks
    assert list(out["methods"]) == list(METHODS)
    for name, result in out["methods"].items():
        R = result["R"]
        assert [[value is None for value in row] for row in R] == [[j > i for j in range(T)] for i in range(T)]
        assert all(0 <= R[i][j] <= 100 for i in range(T) for j in range(i + 1))
        assert result["metrics"] == continual_metrics(result["R"])
        assert math.isfinite(result["final_loss"])
    # the CMS schedule ran: levels of periods 1, 4, 16 stepped 36, 9 and 2 times in 3 x 12 steps
    assert out["methods"]["hope_cms"]["cms_updates"] == [36, 9, 2]
    parameters = {name: result["parameters"] for name, result in out["methods"].items()}
    assert abs(parameters["finetune"] - parameters["hope"]) / parameters["hope"] < 0.01       # same size
    saved = json.loads((tmp_path / "continual_table.json").read_text())
    assert saved["methods"]["ewc"]["R"] == out["methods"]["ewc"]["R"] and saved["settings"]["num_tasks"] == T
    assert "| hope_cms |" in (tmp_path / "continual_table.md").read_text()
    assert (tmp_path / "accuracy_matrices.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="unknown Setting fields"):
        run_benchmark(setting="tiny", output_dir=tmp_path, steps=3)


def test_hope_in_context_method_learns_inside_each_example_and_evaluates_batched():
    """`hope_in_context`: in-context CMS on (level 0: chunk 4, lr 0.1); a padded evaluation batch gives every
    example the separator logits it gets alone, and the fast weights do change them."""
    with pytest.raises(ValueError, match="set together"):
        Method("hope", in_context_chunk=4)
    with pytest.raises(ValueError, match="needs model='hope'"):
        Method("transformer", in_context_chunk=4, in_context_lr=0.1)
    setting = SETTINGS["tiny"]
    tasks = synthetic_tasks(2, 2, 4, 4, words_per_example=9, keywords_per_example=2, seed=0)
    tokenizer = train_bpe_tokenizer([text for task in tasks for text, _ in task.train], 300)
    from hope_hf.continual import build_model

    model = build_model(METHODS["hope_in_context"], setting, len(tokenizer) + 4, tokenizer).eval()
    assert model.config.in_context_cms and model.config.in_context_levels == [0]
    assert model.config.cms_levels[0]["chunk_size"] == 4 and model.config.cms_levels[0]["lr"] == 0.1
    data = encode(tokenizer, tasks[0].test + tasks[1].test, len(tokenizer), setting.memory_chunk_size,
                  setting.max_text_tokens)
    assert len(set(data.attention_mask.sum(1).tolist())) > 1                   # rows of different lengths
    with torch.no_grad():
        batched = separator_logits(model, data)
        alone = torch.cat([separator_logits(model, data[i:i + 1]) for i in range(len(data))])
        model.config.in_context_cms = False
        off = separator_logits(model, data)
    assert (batched - alone).abs().max() < 1e-5
    assert (batched - off).abs().max() > 1e-4
