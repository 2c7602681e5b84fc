"""lm-evaluation-harness: `HopeLM` against a hand computation, the offline mode on the real task configs,
batched == unbatched (no memory carried between requests), and `--model hf` on a saved folder.

Everything is local: a byte-level BPE trained in a second, a tiny float64 Hope, and a few documents per
task written in the upstream datasets' own field names.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from hope_hf import HopeConfig, HopeForCausalLM  # noqa: E402
from hope_hf.evaluation import (  # noqa: E402
    PAPER_COLUMNS, PAPER_SUITE, SUITE_GROUP, evaluate_lm, export_offline_data, make_lm, paper_row,
    suite_group_config, write_offline_tasks,
)
from hope_hf.lm_eval_backend import HopeLM  # noqa: E402
from hope_hf.data import train_bpe_tokenizer  # noqa: E402

from conftest import tiny_config_kwargs  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A few documents per task, in the upstream field names (and value types: winogrande's answer and
# hellaswag's label are strings upstream).
DOCS = {
    "wikitext": [
        {"page": " = Tower = \n The tower is tall ; it has 3 @,@ 000 steps and a bell . \n"},
        {"page": " = River = \n A river runs to the sea . Boats sail on it @-@ all year . \n"},
    ],
    "lambada_openai": [
        {"text": "she opened the door and saw her cat"},
        {"text": "the boat sailed across the calm blue sea"},
        {"text": "he read the letter twice before he smiled"},
    ],
    "piqa": [
        {"goal": "How to open a jar?", "sol1": "Twist the lid.", "sol2": "Eat the lid.", "label": 0},
        {"goal": "Dry wet hair", "sol1": "Use a towel", "sol2": "Pour water on it", "label": 0},
        {"goal": "Keep bread fresh", "sol1": "Leave it in the sun", "sol2": "Seal it in a bag", "label": 1},
    ],
    "hellaswag": [
        {"activity_label": "Cooking", "ctx_a": "A man cuts onions.", "ctx_b": "he",
         "endings": ["fries them.", "sings a song [title] loudly.", "flies away.", "sleeps."], "label": "0"},
        {"activity_label": "Running", "ctx_a": "A woman ties her shoes.", "ctx_b": "she",
         "endings": ["runs down the road.", "eats the shoes.", "paints a wall.", "swims."], "label": "0"},
    ],
    "winogrande": [
        {"sentence": "The cup fell off the table because _ was wobbly.", "option1": "the cup",
         "option2": "the table", "answer": "2"},
        {"sentence": "Sam gave Tom a book because _ had finished it.", "option1": "Sam", "option2": "Tom",
         "answer": "1"},
    ],
    "arc_easy": [
        {"question": "What is water?", "choices": {"text": ["a liquid", "a rock", "a gas"], "label": ["A", "B", "C"]},
         "answerKey": "A"},
    ],
    "arc_challenge": [
        {"question": "Why is the sky blue?", "choices": {"text": ["light scattering", "blue paint"],
                                                         "label": ["1", "2"]}, "answerKey": "1"},
        {"question": "What melts ice?", "choices": {"text": ["cold", "heat", "dark", "wind"],
                                                    "label": ["A", "B", "C", "D"]}, "answerKey": "B"},
    ],
    "social_iqa": [
        {"context": "Tom gave Ann a gift.", "question": "How does Ann feel?", "answerA": "happy", "answerB": "sad",
         "answerC": "angry", "label": "1"},
    ],
    "boolq": [
        {"passage": "Cats are mammals that purr.", "question": "are cats mammals", "label": 1},
        {"passage": "The sun is a star.", "question": "is the sun a planet", "label": 0},
    ],
}
TEST_SPLIT = {"wikitext", "lambada_openai", "arc_easy", "arc_challenge"}


pytestmark = pytest.mark.usefixtures("single_thread")


def write_docs(data_dir, docs=DOCS):
    for task, rows in docs.items():
        path = data_dir / task / f"{'test' if task in TEST_SPLIT else 'validation'}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Tokenizer, a tiny float64 Hope, the offline data, its generated tasks and a TaskManager over them."""
    root = tmp_path_factory.mktemp("lm_eval")
    write_docs(root / "data")
    tokenizer = train_bpe_tokenizer([json.dumps(row) for rows in DOCS.values() for row in rows] * 4, vocab_size=320)
    config = HopeConfig(**tiny_config_kwargs(vocab_size=len(tokenizer), projection_chunk_size=8, memory_chunk_size=16,
                                             cms_levels=[{"intermediate_size": 37, "update_period": 1}]))
    torch.manual_seed(0)
    model = HopeForCausalLM(config).double().eval()
    tasks_dir = write_offline_tasks(root / "data", root / "tasks", cache_dir=root / "cache")
    manager = TaskManager(include_path=str(tasks_dir), include_defaults=False)
    return dict(root=root, tokenizer=tokenizer, model=model, manager=manager)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """How a causal LM scores `continuation` after `context`: tokenise the whole text, the context's tokens
    are the first `len(tokenize(context))` (trailing spaces belong to the continuation)."""
    stripped = context.rstrip()
    continuation, context = context[len(stripped):] + continuation, stripped
    whole = tokenizer.encode(context + continuation)
    context_ids = tokenizer.encode(context)
    return context_ids, whole[len(context_ids):]


@torch.no_grad()
def hand_loglikelihood(model, context_ids: list[int], continuation_ids: list[int]) -> tuple[float, bool]:
    """Σ log p(continuation token | everything before it), and whether each is the argmax."""
    ids = torch.tensor([context_ids + continuation_ids])
    logprobs = model(ids).logits[0].log_softmax(-1)
    rows = logprobs[len(context_ids) - 1: ids.shape[1] - 1]
    targets = torch.tensor(continuation_ids)
    return float(rows.gather(1, targets[:, None]).sum()), bool((rows.argmax(-1) == targets).all())


def hand_choice_scores(model, tokenizer, context: str, choices: list[str]) -> tuple[list[float], int, int]:
    lls = [hand_loglikelihood(model, *encode_pair(tokenizer, context, " " + choice))[0] for choice in choices]
    best = max(range(len(lls)), key=lls.__getitem__)
    best_norm = max(range(len(lls)), key=lambda i: lls[i] / len(choices[i]))
    return lls, best, best_norm


def wikitext_detokenize(page: str) -> str:
    """The upstream `preprocess_wikitext.wikitext_detokenizer`, on the patterns our pages use."""
    for old, new in ((" @-@ ", "-"), (" @,@ ", ","), (" ; ", "; "), (" . ", ". "), (" \n", "\n"), ("\n ", "\n")):
        page = page.replace(old, new)
    return page


def test_hope_lm_equals_hand_computation(setup):
    """Multiple choice (acc, acc_norm), a last-word task (perplexity, acc) and rolling perplexity
    (word_perplexity) from lm-eval with HopeLM equal the same log-likelihoods computed with the model."""
    model, tokenizer = setup["model"], setup["tokenizer"]
    lm = HopeLM(pretrained=model, tokenizer=tokenizer, batch_size=1)
    tasks = ["wikitext", "lambada_openai", "piqa", "arc_challenge"]
    results = evaluate_lm(lm, tasks, manager=setup["manager"])["results"]

    acc, acc_norm = [], []
    for doc in DOCS["piqa"]:
        _, best, best_norm = hand_choice_scores(model, tokenizer, f"Question: {doc['goal']}\nAnswer:",
                                                [doc["sol1"], doc["sol2"]])
        acc.append(best == doc["label"])
        acc_norm.append(best_norm == doc["label"])
    assert results["piqa"]["acc,none"] == pytest.approx(sum(acc) / len(acc), abs=1e-12)
    assert results["piqa"]["acc_norm,none"] == pytest.approx(sum(acc_norm) / len(acc_norm), abs=1e-12)

    acc_norm = []
    for doc in DOCS["arc_challenge"]:
        _, _, best_norm = hand_choice_scores(model, tokenizer, f"Question: {doc['question']}\nAnswer:",
                                             doc["choices"]["text"])
        acc_norm.append(best_norm == doc["choices"]["label"].index(doc["answerKey"]))
    assert results["arc_challenge"]["acc_norm,none"] == pytest.approx(sum(acc_norm) / len(acc_norm), abs=1e-12)

    lls, greedy = [], []
    for doc in DOCS["lambada_openai"]:
        *words, last = doc["text"].split(" ")
        ll, is_greedy = hand_loglikelihood(model, *encode_pair(tokenizer, " ".join(words), " " + last))
        lls.append(ll)
        greedy.append(is_greedy)
    assert results["lambada_openai"]["perplexity,none"] == pytest.approx(math.exp(-sum(lls) / len(lls)), rel=1e-9)
    assert results["lambada_openai"]["acc,none"] == pytest.approx(sum(greedy) / len(greedy), abs=1e-12)

    total_ll, total_words = 0.0, 0
    for doc in DOCS["wikitext"]:
        ids = tokenizer.encode(wikitext_detokenize(doc["page"]))
        total_ll += hand_loglikelihood(model, [tokenizer.bos_token_id], ids)[0]     # one window: BOS then the page
        total_words += len(re.split(r"\s+", doc["page"]))
    assert results["wikitext"]["word_perplexity,none"] == pytest.approx(math.exp(-total_ll / total_words), rel=1e-9)


def _sample_scores(results: dict) -> dict:
    """Per task, per document, the log-likelihood of each request (rolling ones are plain floats)."""
    first = lambda response: float(response[0] if isinstance(response, (tuple, list)) else response)  # noqa: E731
    return {task: [[first(r[0]) for r in sample["resps"]] for sample in samples]
            for task, samples in results["samples"].items()}


def test_batched_equals_unbatched_and_memory_resets(setup):
    """lm-eval pads and groups requests differently at batch size 5; every log-likelihood is the same as
    alone (float64), so no memory state crosses rows or batches. Greedy generation too (left padding)."""
    model, tokenizer = setup["model"], setup["tokenizer"]
    tasks = ["wikitext", "hellaswag", "winogrande", "boolq"]
    scores = {}
    for batch_size in (1, 5):
        lm = HopeLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        scores[batch_size] = _sample_scores(evaluate_lm(lm, tasks, manager=setup["manager"], log_samples=True))
    assert scores[1].keys() == set(tasks)
    for task in tasks:
        torch.testing.assert_close(torch.tensor(scores[5][task]), torch.tensor(scores[1][task]), rtol=1e-10, atol=1e-10)

    contexts = ["Question: How to open a jar?\nAnswer:", "The boat", "A man cuts onions. He then fries them and"]
    requests = [Instance("generate_until", {}, (context, {"until": ["\n\n"], "max_gen_toks": 6, "do_sample": False}), i)
                for i, context in enumerate(contexts)]
    alone = [HopeLM(pretrained=model, tokenizer=tokenizer, batch_size=1).generate_until([r])[0] for r in requests]
    batched = HopeLM(pretrained=model, tokenizer=tokenizer, batch_size=3).generate_until(requests)
    assert batched == alone
    assert any(alone)


def test_offline_mode_runs_upstream_task_configs(setup, tmp_path):
    """The generated YAMLs include the installed upstream configs and change only the data source; all nine
    tasks run on the local files; bad folders fail with a message naming the file and fields."""
    tasks_dir = setup["root"] / "tasks"
    import lm_eval.tasks

    upstream_root = os.path.dirname(lm_eval.tasks.__file__)
    for task in PAPER_SUITE:
        config = json.loads(json.dumps(__import__("yaml").safe_load((tasks_dir / f"{task.name}.yaml").read_text())))
        assert config["include"] == os.path.join(upstream_root, task.upstream_yaml)
        assert config["dataset_path"] == "json"
        (split, path), = config["dataset_kwargs"]["data_files"].items()
        assert path.endswith(f"{task.name}/{split}.jsonl") and config[f"{split}_split"] == split
    loaded = setup["manager"].load([SUITE_GROUP])["tasks"]
    assert {task.name for task in PAPER_SUITE} <= set(loaded)
    assert loaded["hellaswag"].config.doc_to_text == "{{query}}"                  # the upstream prompt, unchanged
    assert len(loaded["hellaswag"].eval_docs) == len(DOCS["hellaswag"])

    lm = make_lm(setup["model"], setup["tokenizer"], batch_size=4)
    row = paper_row(evaluate_lm(lm, manager=setup["manager"]))
    assert list(row) == list(PAPER_COLUMNS)
    assert all(row[column] is not None and math.isfinite(row[column]) for column in PAPER_COLUMNS)

    write_docs(tmp_path / "partial", {"piqa": DOCS["piqa"]})
    with pytest.raises(FileNotFoundError, match=r"boolq.*validation\.jsonl.*passage"):
        write_offline_tasks(tmp_path / "partial", tmp_path / "tasks", tasks=["piqa", "boolq"])
    write_docs(tmp_path / "renamed", {"piqa": [{"question": "q", "sol1": "a", "sol2": "b", "label": 0}]})
    with pytest.raises(ValueError, match="lacks the upstream fields.*goal"):
        write_offline_tasks(tmp_path / "renamed", tmp_path / "tasks", tasks=["piqa"])
    with pytest.raises(ValueError, match="not in the paper's suite"):
        write_offline_tasks(tmp_path / "partial", tmp_path / "tasks", tasks=["mmlu"])


def test_export_then_offline_round_trip(setup, tmp_path):
    """`export_offline_data` asks `load_dataset` for each upstream (path, name, evaluation split) and writes
    files that `write_offline_tasks` accepts."""
    import datasets

    asked = []

    def fake_load_dataset(path, name, split):
        asked.append((path, name, split))
        task = {"Rowan/hellaswag": "hellaswag", "allenai/ai2_arc": "arc_easy"}[path]
        return datasets.Dataset.from_list(DOCS[task])

    written = export_offline_data(tmp_path / "data", ["hellaswag", "arc_easy"], load_dataset=fake_load_dataset)
    assert asked == [("Rowan/hellaswag", None, "validation"), ("allenai/ai2_arc", "ARC-Easy", "test")]
    assert written["arc_easy"] == tmp_path / "data" / "arc_easy" / "test.jsonl"
    write_offline_tasks(tmp_path / "data", tmp_path / "tasks", ["hellaswag", "arc_easy"])


def test_paper_row_and_group_file():
    results = {"results": {
        "wikitext": {"word_perplexity,none": 18.68}, "lambada_openai": {"perplexity,none": 20.07, "acc,none": 0.4},
        "piqa": {"acc,none": 0.7, "acc_norm,none": 0.1}, "hellaswag": {"acc,none": 0.1, "acc_norm,none": 0.5},
        "winogrande": {"acc,none": 0.55}, "arc_easy": {"acc,none": 0.6, "acc_norm,none": 0.1},
        "arc_challenge": {"acc,none": 0.1, "acc_norm,none": 0.3}, "social_iqa": {"acc,none": 0.4},
        "boolq": {"acc,none": 0.65}}}
    row = paper_row(results)
    assert row["Wiki ppl"] == 18.68 and row["LMB ppl"] == 20.07
    assert row["Hella"] == pytest.approx(50.0) and row["ARC-c"] == pytest.approx(30.0) and row["PIQA"] == 70.0
    assert row["Avg"] == pytest.approx((40 + 70 + 50 + 55 + 60 + 30 + 40 + 65) / 8)
    del results["results"]["boolq"]
    assert paper_row(results)["Avg"] is None and paper_row(results)["BoolQ"] is None
    # eval/tasks/hope_paper_suite.yaml is the group of the Python suite
    import yaml

    with open(os.path.join(REPO, "eval", "tasks", f"{SUITE_GROUP}.yaml")) as handle:
        assert yaml.safe_load(handle) == suite_group_config()


def test_hope_lm_rejects_other_models(setup):
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=len(setup["tokenizer"]), hidden_size=32, num_hidden_layers=1,
                                         num_attention_heads=4, intermediate_size=37))
    with pytest.raises(ValueError, match="model_type 'llama'"):
        HopeLM(pretrained=llama, tokenizer=setup["tokenizer"])
    with pytest.raises(ValueError, match="backend"):
        HopeLM(pretrained=setup["model"], tokenizer=setup["tokenizer"], backend="seq2seq")
    assert type(make_lm(llama, setup["tokenizer"])).__name__ == "HFLM"


def test_hf_backend_loads_saved_folder_with_remote_code(setup, tmp_path):
    """`--model hf --model_args pretrained=DIR,trust_remote_code=True` on a saved folder, in a process where
    `hope_hf` cannot be imported, gives the log-likelihoods of HopeLM."""
    model, tokenizer = setup["model"], setup["tokenizer"]
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    lm = HopeLM(pretrained=model, tokenizer=tokenizer, batch_size=2)
    expected = _sample_scores(evaluate_lm(lm, ["piqa"], manager=setup["manager"], log_samples=True))
    script = textwrap.dedent(f"""
        import json, sys
        sys.modules["hope_hf"] = None          # any import of the package now fails
        from lm_eval import simple_evaluate
        from lm_eval.tasks import TaskManager
        manager = TaskManager(include_path={str(setup["root"] / "tasks")!r}, include_defaults=False)
        out = simple_evaluate(model="hf", model_args="pretrained={tmp_path / 'model'},trust_remote_code=True",
                              tasks=["piqa"], device="cpu", batch_size=2, task_manager=manager, bootstrap_iters=0)
        print("SCORES", json.dumps([[r[0][0] for r in s["resps"]] for s in out["samples"]["piqa"]]))
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env,
                            stdin=subprocess.DEVNULL, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    scores = json.loads(result.stdout.split("SCORES", 1)[1])
    torch.testing.assert_close(torch.tensor(scores), torch.tensor(expected["piqa"]), rtol=1e-10, atol=1e-10)
