"""The `hope-hf` command line: help, clear errors, exact resume after Ctrl-C, 2-process DDP, eval, generate, bench.

Every run uses a tiny config (hidden 32, 2 layers, two CMS levels with update periods 1 and 4), a tiny text
file and one torch thread (`--threads 1`: the reference, the interrupted and the resumed runs must do the same
arithmetic, and two processes on two cores must not oversubscribe them).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_config_kwargs
from hope_hf.cli import EXIT_BAD_INPUT, EXIT_INTERRUPTED, RESULTS_FILE, complete_checkpoints, main

REPO = Path(__file__).resolve().parents[1]
WORDS = ("the memory of a model learns each token while it reads and the optimiser updates every level "
         "on its own period so that fast and slow weights keep what matters").split()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny Hope config JSON and a text file of 400 pseudo-sentences (one document per line)."""
    folder = tmp_path_factory.mktemp("cli")
    config = folder / "tiny.json"
    config.write_text(json.dumps({"model_type": "hope", **tiny_config_kwargs(vocab_size=300)}))
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 20))) + "." for _ in range(400)]
    text = folder / "docs.txt"
    text.write_text("\n".join(lines) + "\n")
    return {"config": str(config), "data": str(text), "dir": folder}


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def train_args(files, out, *extra):
    return ["--threads", "1", "train", "--config", files["config"], "--data", files["data"], "--vocab-size", "300",
            "--block-size", "32", "--batch-size", "4", "--lr", "3e-3", "--output-dir", str(out), "--no-progress",
            "--report-to", "none", *extra]


def subprocess_env():
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO / "tests"), env.get("PYTHONPATH", "")])
    return env


def test_help_explains_every_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    top = capsys.readouterr().out
    for command in ("train", "eval", "generate", "bench"):
        assert command in top
    expected = {
        "train": ("--config", "--data", "--optimizer", "delta-momentum", "dmgd", "m3", "--schedule", "--no-schedule",
                  "--max-steps", "--epochs", "--batch-size", "--lr", "--warmup-steps", "--bf16",
                  "--gradient-checkpointing", "--output-dir", "--resume", "--overwrite", "--tokenizer", "accelerate"),
        "eval": ("--tasks", "perplexity", "--data", "--block-size"),
        "generate": ("--prompt", "--max-new-tokens", "--temperature"),
        "bench": ("--lengths", "--repeats", "--json", "--models", "--tokens-per-step", "--parts", "--dtype"),
    }
    for command, options in expected.items():
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        missing = [o for o in options if o not in text]
        assert not missing, (command, missing)


def run_error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == EXIT_BAD_INPUT and len(lines) == 1 and "Traceback" not in err, (code, err)
    return lines[0]


def test_bad_input_gets_one_clear_error_line(files, tmp_path, capsys):
    base = ["train", "--output-dir", str(tmp_path / "out"), "--no-progress", "--report-to", "none"]
    line = run_error(capsys, [*base, "--config", "hope-tyni"])
    assert "unknown model config 'hope-tyni'" in line and "hope-tiny" in line        # lists the names
    line = run_error(capsys, [*base, "--config", files["config"], "--data", str(tmp_path / "nope.txt")])
    assert "data file not found" in line and "nope.txt" in line
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n\n")
    line = run_error(capsys, [*base, "--config", files["config"], "--data", str(empty)])
    assert "no non-empty text" in line or "need at least 2 documents" in line
    line = run_error(capsys, [*base, "--config", files["config"], "--block-size", "5000"])
    assert "--block-size 5000 is above the model's limit: max_position_embeddings=4096" in line
    line = run_error(capsys, [*base, "--config", files["config"], "--batch-size", "0"])
    assert "--batch-size must be > 0" in line
    held = tmp_path / "held"
    (held / "checkpoint-5").mkdir(parents=True)
    line = run_error(capsys, [*base[:1], "--output-dir", str(held), "--config", files["config"]])
    assert "holds another run" in line and "--resume" in line and "--overwrite" in line
    line = run_error(capsys, [*base, "--config", files["config"], "--resume"])
    assert "no complete checkpoint" in line
    line = run_error(capsys, [*base, "--config", files["config"], "--resume", "--overwrite"])
    assert "--resume and --overwrite exclude each other" in line
    line = run_error(capsys, ["eval", str(tmp_path / "no-model")])
    assert "no model at" in line


def test_bad_input_from_the_console_has_no_traceback(files, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "hope_hf.cli", "train", "--config", "no-such-config",
                           "--output-dir", str(tmp_path / "o")], capture_output=True, text=True, env=subprocess_env(),
                          timeout=300)
    assert proc.returncode == EXIT_BAD_INPUT, proc.stderr
    assert proc.stderr.strip().startswith("error: unknown model config 'no-such-config'") and "Traceback" not in proc.stderr


def final_state(out: Path) -> tuple[float, dict[str, torch.Tensor], int]:
    state = json.loads((out / "trainer_state.json").read_text())
    losses = {entry["step"]: entry["loss"] for entry in state["log_history"] if "loss" in entry}
    return losses[state["global_step"]], load_file(out / "model.safetensors"), state["global_step"]


def test_ctrl_c_then_resume_ends_at_the_same_loss_and_weights(files, tmp_path, capsys, one_thread):
    """An uninterrupted 30-step run, and one stopped by SIGINT after step 15 then resumed, end identically.

    The Trainer restores model, optimiser, LR scheduler, CMS schedule state, RNG and data position, and the
    arithmetic is the same (one thread, same order), so the weights agree bit for bit.
    """
    steps = ["--max-steps", "30", "--save-steps", "5", "--logging-steps", "1"]
    reference = tmp_path / "reference"
    assert main(train_args(files, reference, *steps)) == 0

    stopped = tmp_path / "stopped"
    proc = subprocess.Popen([sys.executable, "-m", "hope_hf.cli", *train_args(files, stopped, *steps)],
                            env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while not (stopped / "checkpoint-15" / "trainer_state.json").exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=240)[0]
    assert proc.returncode == EXIT_INTERRUPTED, output[-3000:]
    assert "to continue" in output and not (stopped / RESULTS_FILE).exists()
    last = complete_checkpoints(stopped)[-1]
    assert 15 <= int(last.name.split("-")[1]) < 30, last

    capsys.readouterr()
    assert main(train_args(files, stopped, *steps, "--resume")) == 0
    assert f"resuming from {last}" in capsys.readouterr().out
    loss_ref, weights_ref, step_ref = final_state(reference)
    loss, weights, step = final_state(stopped)
    assert step == step_ref == 30
    assert loss == loss_ref
    assert weights.keys() == weights_ref.keys()
    for name in weights:
        assert torch.equal(weights[name], weights_ref[name]), name

    # the finished run refuses a plain restart, and a resume with other settings
    code = main(train_args(files, stopped, *steps))
    assert code == EXIT_BAD_INPUT and "holds another run" in capsys.readouterr().err
    code = main(train_args(files, stopped, *steps, "--lr", "1e-3", "--resume"))
    assert code == EXIT_BAD_INPUT and "--lr 0.001 (the run has 0.003)" in capsys.readouterr().err

    # eval recomputes the perplexity the run reported; generate streams a continuation of the prompt
    results = json.loads((stopped / RESULTS_FILE).read_text())
    assert main(["eval", str(stopped), "--data", files["data"], "--block-size", "32",
                 "--output", str(tmp_path / "eval.json")]) == 0
    evaluated = json.loads((tmp_path / "eval.json").read_text())["perplexity"]
    assert evaluated["perplexity"] == pytest.approx(results["validation"]["perplexity"], rel=1e-6)
    assert 1 < evaluated["perplexity"] < 300
    capsys.readouterr()
    assert main(["generate", str(stopped), "--prompt", "the memory of", "--max-new-tokens", "8"]) == 0
    streamed = capsys.readouterr().out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(stopped)
    model = AutoModelForCausalLM.from_pretrained(stopped)
    ids = tokenizer("the memory of", add_special_tokens=False, return_tensors="pt")["input_ids"]
    greedy = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert streamed.strip() == tokenizer.decode(greedy[0], skip_special_tokens=True).strip()


def test_two_process_ddp_takes_the_steps_of_one_process_with_twice_the_batch(files, tmp_path, one_thread):
    """`accelerate launch --num_processes 2` with batch 2 per process: as many optimiser steps as one process
    with batch 4 (the global batch is the same), on CPU with the gloo backend."""
    single = tmp_path / "single"
    subset = ("--train-split", "train[:120]", "--epochs", "1", "--save-steps", "1000")
    assert main(train_args(files, single, *subset, "--batch-size", "4")) == 0
    ddp = tmp_path / "ddp"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(REPO / "accelerate_configs" / "ddp.yaml"), "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "hope_hf.cli"]
    proc = subprocess.run([*launch, *train_args(files, ddp, *subset, "--batch-size", "2")], capture_output=True,
                          text=True, env=subprocess_env(), timeout=500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    one, two = (json.loads((d / RESULTS_FILE).read_text()) for d in (single, ddp))
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert two["global_batch_blocks"] == one["global_batch_blocks"] == 4
    assert two["global_step"] == one["global_step"] > 5
    steps = [json.loads((d / "trainer_state.json").read_text())["global_step"] for d in (single, ddp)]
    assert steps == [one["global_step"]] * 2


def test_bench_writes_one_report(tmp_path, one_thread, capsys):
    """`hope-hf bench` measures every part for the models asked and the Llama, prints the table, writes the JSON."""
    out = tmp_path / "bench.json"
    assert main(["--threads", "1", "bench", "--hidden-size", "32", "--layers", "1", "--heads", "2", "--vocab-size",
                 "99", "--lengths", "8", "16", "--tokens-per-step", "16", "--repeats", "1", "--warmup", "0",
                 "--decode-steps", "2", "--models", "hope-attention", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| hope-attention | 16 | 1 |" in printed and "matmul peak" in printed
    result = json.loads(out.read_text())
    assert list(result["models"]) == ["hope-attention", "llama"]
    assert {(r["model"], r["length"], r["batch"]) for r in result["rows"]} == {
        ("hope-attention", 8, 2), ("hope-attention", 16, 1), ("llama", 8, 2), ("llama", 16, 1)}
    for row in result["rows"]:
        assert row["train_tokens_per_s"] > 0 and row["decode_ms_per_token"] > 0 and row["train_peak_mib"] > 0
        assert 0 < row["train_peak_fraction"] < 1


def test_eval_runs_the_long_context_suite_into_one_report(files, tmp_path, one_thread):
    """`hope-hf eval --tasks perplexity long_context` scores a trained folder and writes report.md/json."""
    out = tmp_path / "run"
    assert main(train_args(files, out, "--max-steps", "2", "--save-steps", "100")) == 0
    report_dir, results = tmp_path / "eval", tmp_path / "results.json"
    assert main(["--threads", "1", "eval", str(out), "--tasks", "perplexity", "long_context", "--data",
                 files["data"], "--block-size", "32", "--niah-lengths", "640", "--niah-samples", "1",
                 "--ppl-length", "64", "--ppl-documents", "1", "--report-dir", str(report_dir),
                 "--output", str(results)]) == 0
    report = (report_dir / "report.md").read_text()
    assert "Long context" in report and (report_dir / "long_context" / "long_context.png").is_file()
    saved = json.loads(results.read_text())
    assert saved["perplexity"]["perplexity"] > 1
    niah = saved["suite"]["long_context"]["niah"]
    assert main(["eval", str(out), "--tasks", "long_context", "--niah-lengths", "8", "--report-dir",
                 str(report_dir)]) == EXIT_BAD_INPUT                         # too short: one clear error line
    assert set(niah) == {"run"} and all(640 in v or "640" in v for v in niah["run"].values())
