"""The small-scale study runner (`eval/experiments/common.py`): exact resume, one token order for every model,
tables from the result JSONs, the parameter-matching check."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch

from hope_hf.baselines import meta_parameter_count

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "eval" / "experiments"))

import common  # noqa: E402
from conftest import tiny_config_kwargs  # noqa: E402

VOCAB = 300
WORDS = ("memory", "level", "update", "token", "gradient", "chunk", "state", "model", "layer", "the", "a", "of",
         "learns", "keeps", "writes", "reads", "every", "step", "fast", "slow")


def hope_config(**overrides) -> dict:
    """A tiny Hope config dict (CMS periods 1 and 4: the schedule is active)."""
    return {"model_type": "hope", **tiny_config_kwargs(vocab_size=VOCAB, **overrides)}


def llama_config() -> dict:
    return {"model_type": "llama", "vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 40,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4, "bos_token_id": 1,
            "eos_token_id": 2, "pad_token_id": 0}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one thread is faster, and much faster on a shared, busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    """80 documents of pseudo-English (blank-line separated), deterministic."""
    gen = torch.Generator().manual_seed(0)
    docs = []
    for _ in range(80):
        n = int(torch.randint(20, 60, (1,), generator=gen))
        words = [WORDS[int(i)] for i in torch.randint(len(WORDS), (n,), generator=gen)]
        docs.append(" ".join(words).capitalize() + ".")
    path = tmp_path_factory.mktemp("corpus") / "toy.txt"
    path.write_text("\n\n".join(docs) + "\n")
    return path


@pytest.fixture
def dirs(tmp_path, corpus_file) -> dict:
    return {"results_dir": tmp_path / "results", "checkpoint_dir": tmp_path / "ckpt",
            "cache_dir": corpus_file.parent / "cache"}


SETTINGS = common.TrainSettings(tokens=2 * 16 * 8, batch_size=2, block_size=16, lr=3e-3, warmup_fraction=0.25,
                                eval_every_tokens=2 * 16 * 2, eval_blocks=2, final_eval_blocks=4, checkpoint_every=100)


def test_corpus_split_and_cache(corpus_file, dirs):
    docs = common.read_documents(str(corpus_file))
    assert len(docs) == 80
    train, validation = common.split_documents(docs)
    assert validation == docs[0::20] and len(train) == 76
    first = common.load_corpus(str(corpus_file), VOCAB, dirs["cache_dir"])
    again = common.load_corpus(str(corpus_file), VOCAB, dirs["cache_dir"])      # from the cache file
    assert torch.equal(first.train, again.train) and torch.equal(first.validation, again.validation)
    assert first.info["train_documents"] == 76 and first.info["validation_documents"] == 4
    assert int(first.train.max()) < VOCAB and first.info["sha256"] == again.info["sha256"]
    assert first.blocks("train", 16).shape == (len(first.train) // 16, 16)


def test_batch_order_is_a_permutation_per_epoch_and_independent_of_state():
    num_blocks, batch = 10, 4
    torch.manual_seed(123)
    seen = torch.cat([common.batch_indices(step, batch, num_blocks, data_seed=0) for step in range(5)])  # 2 epochs
    torch.manual_seed(456)                                   # the global RNG plays no part
    assert torch.equal(seen, torch.cat([common.batch_indices(s, batch, num_blocks, 0) for s in range(5)]))
    assert sorted(seen[:10].tolist()) == list(range(10)) and sorted(seen[10:20].tolist()) == list(range(10))
    assert not torch.equal(seen[:10], seen[10:20])           # each epoch its own permutation
    assert not torch.equal(seen, torch.cat([common.batch_indices(s, batch, num_blocks, 1) for s in range(5)]))


def test_resume_after_interruption_equals_an_uninterrupted_run(corpus_file, dirs, tmp_path):
    run = common.Run(name="hope", config=hope_config(), data=str(corpus_file))
    straight = common.train_run(run, SETTINGS, "study", **dirs, log=lambda s: None)

    other = {**dirs, "results_dir": tmp_path / "results2", "checkpoint_dir": tmp_path / "ckpt2"}
    # stop at step 3: level 1 (period 4) holds buffered gradients in the checkpoint
    assert common.train_run(run, SETTINGS, "study", **other, stop_after_steps=3, log=lambda s: None) is None
    ckpt = other["checkpoint_dir"] / "study" / "hope.pt"
    state = torch.load(ckpt, weights_only=False)
    assert state["step"] == 3 and state["cms_schedule"]["buffers"], "the CMS buffers should be non-empty mid-period"
    assert not (other["results_dir"] / "study" / "hope.json").exists()
    resumed = common.train_run(run, SETTINGS, "study", **other, log=lambda s: None)

    assert resumed["validation"]["loss"] == straight["validation"]["loss"]          # bit for bit on CPU
    assert resumed["curve"] == straight["curve"]
    assert resumed["train_loss_last100"] == straight["train_loss_last100"]
    assert not ckpt.exists()                                                         # removed when finished
    # the trained model is kept: reloaded, it gives the recorded validation loss again
    from transformers import AutoModelForCausalLM

    trained = AutoModelForCausalLM.from_pretrained(common.final_model_path(other["checkpoint_dir"], "study", "hope"))
    blocks = common.load_corpus(str(corpus_file), VOCAB, dirs["cache_dir"]).blocks("validation", SETTINGS.block_size)
    final_blocks = blocks[: SETTINGS.final_eval_blocks]
    assert common.evaluate(trained, final_blocks, SETTINGS.batch_size, torch.device("cpu")) == pytest.approx(
        resumed["validation"]["loss"], rel=1e-6)
    saved = json.loads((other["results_dir"] / "study" / "hope.json").read_text())
    assert saved["validation"] == resumed["validation"] and saved["steps"] == SETTINGS.steps
    # a finished run is skipped: the JSON is returned as is
    assert common.train_run(run, SETTINGS, "study", **other, log=lambda s: None)["finished"] == saved["finished"]


def test_memory_implementation_reaches_the_model_and_a_run_resumes_under_the_other(corpus_file, dirs, tmp_path,
                                                                                    monkeypatch):
    """`--memory-implementation compiled` runs the memories through `compiled_chunk_updates()` (stubbed here with the
    eager functions, counted: compiling is not what this tests), is recorded in the result, and a run stopped under
    one implementation resumes under the other."""
    from hope_hf import memory_ops

    calls = []

    def counted(fn):
        def wrapper(*args, **kwargs):
            calls.append(fn.__name__)
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(memory_ops, "compiled_chunk_updates", lambda: (counted(memory_ops.projection_chunk_update),
                                                                       counted(memory_ops.main_chunk_update)))
    run = common.Run(name="hope", config=hope_config(), data=str(corpus_file))
    straight = common.train_run(run, SETTINGS, "study", **dirs, log=lambda s: None)
    assert straight["memory_implementation"] == "chunk" and not calls

    other = {**dirs, "results_dir": tmp_path / "results2", "checkpoint_dir": tmp_path / "ckpt2"}
    assert common.train_run(run, SETTINGS, "study", **other, stop_after_steps=3, log=lambda s: None) is None
    assert not calls
    resumed = common.train_run(run, SETTINGS, "study", **other, memory_implementation="compiled", log=lambda s: None)
    assert {"projection_chunk_update", "main_chunk_update"} <= set(calls)
    assert resumed["memory_implementation"] == "compiled"
    assert resumed["validation"]["loss"] == straight["validation"]["loss"]      # the same functions: same numbers
    llama = common.train_run(common.Run(name="llama", config=llama_config(), data=str(corpus_file)), SETTINGS,
                             "study", **dirs, memory_implementation="compiled", log=lambda s: None)
    assert llama["memory_implementation"] is None                              # a Llama has no memories


def test_a_result_of_the_same_training_is_taken_and_another_is_not(corpus_file, dirs):
    run = common.Run(name="hope", config=hope_config(), data=str(corpus_file))
    source = common.train_run(run, SETTINGS, "first", **dirs, log=lambda s: None)
    source_path = dirs["results_dir"] / "first" / "hope.json"
    logs = []
    kwargs = {"results_dir": dirs["results_dir"], "cache_dir": dirs["cache_dir"], "log": logs.append}

    twin = common.Run(name="base", config=hope_config(), data=str(corpus_file), label="the base")
    taken = common.adopt_identical_result(twin, SETTINGS, "second", source_path, **kwargs)
    assert taken["run"] == "base" and taken["study"] == "second" and taken["same_training_as"] == "first/hope"
    assert taken["validation"] == source["validation"] and taken["curve"] == source["curve"]
    assert json.loads((dirs["results_dir"] / "second" / "base.json").read_text()) == taken
    assert common.adopt_identical_result(twin, SETTINGS, "second", source_path, **kwargs) is None   # has one now

    other_config = common.Run(name="k", config=hope_config(), data=str(corpus_file), overrides={"adaptive_k": False})
    other_settings = dataclasses.replace(SETTINGS, lr=1e-3)
    assert common.adopt_identical_result(other_config, SETTINGS, "second", source_path, **kwargs) is None
    assert common.adopt_identical_result(twin, other_settings, "third", source_path, **kwargs) is None
    assert common.adopt_identical_result(twin, SETTINGS, "third", source_path, device="cuda", **kwargs) is None
    assert [line.split("(")[1].split(" differ")[0] for line in logs[-3:]] == ["config", "settings", "dtype"]
    assert not (dirs["results_dir"] / "second" / "k.json").exists()
    assert not (dirs["results_dir"] / "third").exists()
    recomputed = dataclasses.replace(SETTINGS, gradient_checkpointing=not SETTINGS.gradient_checkpointing)
    assert common.adopt_identical_result(twin, recomputed, "fourth", source_path, **kwargs)["run"] == "base"


def test_a_run_killed_without_warning_resumes_from_its_last_timed_checkpoint(corpus_file, dirs, tmp_path):
    """`checkpoint_minutes=0`: a checkpoint after every step, so a process that dies mid-run (here: an exception
    from the log at step 4, before that step's checkpoint) loses one step at most, and the resumed run finishes
    equal to an uninterrupted one."""
    run = common.Run(name="hope", config=hope_config(), data=str(corpus_file))
    straight = common.train_run(run, SETTINGS, "study", **dirs, log=lambda s: None)
    other = {**dirs, "results_dir": tmp_path / "results2", "checkpoint_dir": tmp_path / "ckpt2"}

    def die_at_step_4(line):
        if "step 4/" in line:
            raise RuntimeError("the machine went away")

    with pytest.raises(RuntimeError, match="went away"):
        common.train_run(run, SETTINGS, "study", **other, checkpoint_minutes=0, log=die_at_step_4)
    assert torch.load(other["checkpoint_dir"] / "study" / "hope.pt", weights_only=False)["step"] == 3
    resumed = common.train_run(run, SETTINGS, "study", **other, log=lambda s: None)
    assert resumed["validation"]["loss"] == straight["validation"]["loss"] and resumed["curve"] == straight["curve"]


def test_sigterm_stops_a_run_after_the_step_in_flight_with_a_checkpoint(corpus_file, dirs):
    import os
    import signal

    run = common.Run(name="hope", config=hope_config(), data=str(corpus_file))
    before = signal.getsignal(signal.SIGTERM)
    lines = []

    def terminate_at_step_2(line):
        lines.append(line)
        if "step 2/" in line:
            os.kill(os.getpid(), signal.SIGTERM)       # the handler only sets a flag: the step finishes

    assert common.train_run(run, SETTINGS, "study", **dirs, log=terminate_at_step_2) is None
    assert "(SIGTERM)" in lines[-1] and "stopped at step 2/" in lines[-1]
    assert torch.load(dirs["checkpoint_dir"] / "study" / "hope.pt", weights_only=False)["step"] == 2
    assert signal.getsignal(signal.SIGTERM) is before                # the previous handler is back


def test_cms_level_learning_rates_scale_the_steps_of_their_level_only(corpus_file, dirs, monkeypatch):
    """`Run.level_lr_scale`: AdamW gets one group per (decay, CMS level), the schedule multiplies a level's lr on
    its steps (inside `optimizer.step`, the largest over the smallest lr of the groups that step), and the result
    records the factors."""
    ratios = []
    real_step = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        lrs = [g["lr"] for g in self.param_groups if any(p.grad is not None for p in g["params"])]
        ratios.append(round(max(lrs) / min(lrs), 4))
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    scales = [1.0, 3.0]                                      # hope_config(): two levels, periods 1 and 4
    run = common.Run(name="scaled", config=hope_config(), data=str(corpus_file), level_lr_scale=scales)
    model = common.build_model(common.build_config(run))
    optimizer = common.make_optimizer(model, SETTINGS, per_cms_level=True)
    from hope_hf.optim import cms_level_of

    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:                     # one level (or none) per group
        assert len({cms_level_of(names[id(p)]) for p in group["params"]}) == 1
    plain = common.make_optimizer(model, SETTINGS)
    assert [len(g["params"]) for g in plain.param_groups] == [
        sum(p.ndim >= 2 for p in model.parameters()), sum(p.ndim < 2 for p in model.parameters())]

    result = common.train_run(run, SETTINGS, "lr", **dirs, log=lambda s: None)
    assert result["level_lr_scale"] == scales
    # steps 4 and 8 (level 1 due) run level 1's groups at 3x the scheduled lr; on the others level 1 does not step
    assert ratios == [1.0, 1.0, 1.0, 3.0, 1.0, 1.0, 1.0, 3.0], ratios


def test_a_checkpoint_resumes_across_new_run_fields_and_labels_but_not_other_training():
    run = common.Run(name="a", config="hope-tiny")
    saved = {k: v for k, v in dataclasses.asdict(run).items() if k != "level_lr_scale"}    # written before the field
    assert common._same_run(saved, run)
    assert not common._same_run(saved, dataclasses.replace(run, level_lr_scale=[1.0, 2.0, 4.0]))
    assert not common._same_run({**saved, "data": "other"}, run)
    assert not common._same_run({**saved, "unknown_field": 1}, run)
    relabelled = dataclasses.replace(run, label="renamed in the table", group="a parameter-check cell")
    assert common._same_run(saved, relabelled)              # presentation only: the same training


def test_resume_refuses_a_checkpoint_of_other_settings(corpus_file, dirs):
    run = common.Run(name="hope", config=hope_config(), data=str(corpus_file))
    common.train_run(run, SETTINGS, "study", **dirs, stop_after_steps=2, log=lambda s: None)
    with pytest.raises(ValueError, match="other settings"):
        common.train_run(run, dataclasses.replace(SETTINGS, lr=1e-3), "study", **dirs, log=lambda s: None)


def test_every_model_sees_the_same_tokens_in_the_same_order(corpus_file, dirs, monkeypatch):
    seen: dict[str, list[torch.Tensor]] = {}
    build = common.build_model

    def recording_build(config):
        model = build(config)
        batches = seen.setdefault(config.model_type, [])
        model.register_forward_pre_hook(
            lambda module, args, kwargs: batches.append(kwargs.get("input_ids", args[0] if args else None).clone())
            if module.training else None, with_kwargs=True)
        return model

    monkeypatch.setattr(common, "build_model", recording_build)
    settings = dataclasses.replace(SETTINGS, tokens=2 * 16 * 4)
    for name, config in (("hope", hope_config()), ("llama", llama_config())):
        common.train_run(common.Run(name=name, config=config, data=str(corpus_file)), settings, "order", **dirs,
                         log=lambda s: None)
    assert len(seen["hope"]) == len(seen["llama"]) == settings.steps
    for a, b in zip(seen["hope"], seen["llama"]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("poisoned", ["loss", "gradient"])
def test_a_diverged_run_is_recorded_with_the_state_before_the_step(corpus_file, dirs, monkeypatch, poisoned):
    """At the third training step the loss (or, with a finite loss, every gradient) turns NaN: the run is recorded as
    diverged at step 3, nothing of that step is applied, and the state after step 2 is kept to replay it."""
    build = common.build_model
    calls = []

    def diverging_build(config):
        model = build(config)

        def poison(module, args, kwargs, output):
            if module.training:
                calls.append(1)
                if len(calls) == 3 and output.loss is not None:
                    if poisoned == "loss":
                        output.loss = output.loss * float("nan")
                    else:
                        output.logits.register_hook(lambda grad: grad * float("nan"))
            return output

        model.register_forward_hook(poison, with_kwargs=True)
        return model

    monkeypatch.setattr(common, "build_model", diverging_build)
    run = common.Run(name="nan", config=hope_config(), data=str(corpus_file), label="diverges")
    result = common.train_run(run, SETTINGS, "div", **dirs, log=lambda s: None)
    assert result["diverged_at_step"] == 3 and result["steps"] == 3 and result["tokens"] == 3 * 32
    assert result["validation"]["loss"] is None and result["validation"]["perplexity"] is None
    saved = json.loads((dirs["results_dir"] / "div" / "nan.json").read_text())     # strict JSON: no NaN
    assert saved["diverged_at_step"] == 3
    assert "| diverged (step 3) | diverged (step 3) |" in common.markdown_table([saved])

    kept = torch.load(dirs["checkpoint_dir"] / "div" / "nan.diverged.pt", weights_only=False)
    assert kept["step"] == 2 and not (dirs["checkpoint_dir"] / "div" / "nan.pt").exists()
    assert not common.final_model_path(dirs["checkpoint_dir"], "div", "nan").exists()     # no trained model to keep
    # the kept state is that of the same run stopped after two steps (calls 4 and 5: not poisoned)
    assert common.train_run(run, SETTINGS, "clean", **dirs, stop_after_steps=2, log=lambda s: None) is None
    clean = torch.load(dirs["checkpoint_dir"] / "clean" / "nan.pt", weights_only=False)
    assert kept["model"].keys() == clean["model"].keys()
    for name, tensor in kept["model"].items():
        assert torch.equal(tensor, clean["model"][name]), name
    # --force retrains from scratch and drops the kept state
    common.train_run(run, SETTINGS, "div", **dirs, force=True, log=lambda s: None)
    assert not (dirs["checkpoint_dir"] / "div" / "nan.diverged.pt").exists()
    assert (common.final_model_path(dirs["checkpoint_dir"], "div", "nan") / "model.safetensors").is_file()


def test_parameter_match_check():
    common.check_parameter_match({"a": 1000, "b": 1030})            # 3.0%: allowed
    with pytest.raises(ValueError, match="differ by 3.1%"):
        common.check_parameter_match({"a": 1000, "b": 1031})
    narrow = common.Run(name="narrow", config=hope_config(), group="g")
    wide = common.Run(name="wide", config=hope_config(cms_levels=[{"intermediate_size": 200, "update_period": 1}]),
                      group="g")
    with pytest.raises(ValueError, match="group 'g'"):
        common.parameter_report([narrow, wide])
    counts = common.parameter_report([narrow, dataclasses.replace(wide, group=None)])   # ungrouped: not checked
    assert counts["wide"] > 1.03 * counts["narrow"]


def test_titans_bounded_is_the_titans_ablation_with_the_chunk_step_bounded():
    import lm_comparison

    for size in lm_comparison.SIZES:
        titans, bounded = (common.build_config(run) for run in lm_comparison.runs(
            sizes=(size,), corpora=("embedded",), families=("titans", "titans-bounded")))
        assert bounded.inner_optimizer == "gd" and bounded.eta_max * bounded.memory_chunk_size == 2.0
        assert titans.eta_max == 1.0
        differing = {k for k, v in bounded.to_dict().items() if titans.to_dict().get(k) != v}
        assert differing == {"eta_max"}


def test_shipped_study_sizes_are_matched():
    import cms_schedule
    import lm_comparison

    common.parameter_report(lm_comparison.runs(corpora=("embedded",)))   # raises if a cell is off by > 3%
    schedule_rows = cms_schedule.runs()
    assert len({run.group for run in schedule_rows}) == 1                  # one cell: every row checked
    counts = common.parameter_report(schedule_rows)
    assert max(counts.values()) <= 1.03 * min(counts.values())


def test_table_and_plot_from_the_jsons(corpus_file, dirs, tmp_path):
    runs = [common.Run(name="hope", config=hope_config(), data=str(corpus_file), label="Hope"),
            common.Run(name="llama", config=llama_config(), data=str(corpus_file), label="Llama")]
    results = {run.name: common.train_run(run, SETTINGS, "t", **dirs, log=lambda s: None) for run in runs}
    loaded = common.load_results(dirs["results_dir"], "t")
    assert [r["run"] for r in loaded] == ["hope", "llama"]
    table = common.markdown_table(loaded, order=["llama", "hope"], baseline="hope").splitlines()
    assert table[0].startswith("| run | what | params | Δ params | Δ ppl |")
    assert table[2].startswith("| llama | Llama |") and table[3].startswith("| hope | Hope |")
    assert f"{results['llama']['validation']['perplexity']:.2f}" in table[2]
    assert f"{results['llama']['parameters']:,}" in table[2] and "| +0.0% | +0.0% |" in table[3]
    png = common.plot_curves(loaded, tmp_path / "curves.png", "toy")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_progress_reads_finished_unfinished_and_unstarted_runs_at_equal_tokens(corpus_file, dirs):
    runs = [common.Run(name=name, config=config, data=str(corpus_file), group="cell")
            for name, config in (("hope", hope_config()), ("llama", llama_config()), ("later", llama_config()))]
    done = common.train_run(runs[0], SETTINGS, "t", **dirs, log=lambda s: None)
    assert common.train_run(runs[1], SETTINGS, "t", **dirs, stop_after_steps=5, log=lambda s: None) is None
    checkpoint = torch.load(dirs["checkpoint_dir"] / "t" / "llama.pt", weights_only=False)

    progress = common.run_progress(runs, lambda run: SETTINGS, "t", dirs["results_dir"], dirs["checkpoint_dir"])
    assert [(p["run"], p["state"], p["step"], p["steps"]) for p in progress] == [
        ("hope", "done", 8, 8), ("llama", "running", 5, 8), ("later", "not started", 0, 8)]
    assert progress[0]["curve"] == done["curve"] and progress[1]["curve"] == checkpoint["curve"]
    assert [t for t, _ in checkpoint["curve"]] == [0, 64, 128]         # evaluated every 2 steps of 32 tokens

    lines = common.progress_table(progress).splitlines()
    assert lines[0] == "cell:"
    assert lines[2] == "| tokens | hope (done) | llama (step 5/8) | later (not started) |"
    by_tokens = {line.split(" | ")[0]: line for line in lines[4:]}
    assert set(by_tokens) == {f"| {t:,}" for t, _ in done["curve"]}
    hope_loss, llama_loss = dict(done["curve"])[128], dict(checkpoint["curve"])[128]
    assert by_tokens["| 128"] == f"| 128 | {hope_loss:.4f} | {llama_loss:.4f} | - |"
    assert by_tokens["| 256"] == f"| 256 | {dict(done['curve'])[256]:.4f} | - | - |"
    # neither source is touched: the unfinished run still resumes to its end
    assert common.train_run(runs[1], SETTINGS, "t", **dirs, log=lambda s: None)["steps"] == 8


def test_child_processes_get_one_run_and_the_parents_budget():
    argv = ["--jobs", "4", "--only", "a", "b", "--tokens", "100", "--max-minutes", "9", "--threads=8", "--force"]
    child = common._child_argv(argv, "b", deadline=1234.5, threads=2)
    assert child == ["--tokens", "100", "--force", "--only", "b", "--jobs", "1", "--deadline", "1234.5",
                     "--threads", "2"]
    parsed = common.base_parser("x").parse_args(child)
    assert parsed.only == ["b"] and parsed.deadline == 1234.5 and parsed.max_minutes is None


def test_settings_from_args_and_per_run_budget():
    args = common.base_parser("x").parse_args(["--lr", "0.01"])
    settings = common.settings_from_args(args, common.TrainSettings())
    assert settings.lr == 0.01 and settings.tokens == common.TrainSettings().tokens
    run = common.Run(name="r", config="hope-tiny", tokens=4096)
    assert common.run_settings(run, settings, args).tokens == 4096
    args = common.base_parser("x").parse_args(["--tokens", "8192"])         # --tokens wins over the run's budget
    assert common.run_settings(run, common.settings_from_args(args, common.TrainSettings()), args).tokens == 8192


def test_variant_studies_list_their_rows_from_the_command(capsys):
    import ablations
    import cms_schedule

    for study, argv, rows in ((ablations, [], ablations.rows("tiny")), (ablations, ["--size", "small"],
                              ablations.rows("small")), (cms_schedule, [], cms_schedule.ROWS)):
        assert study.main(["--list", *argv]) == 0
        listed = [line.split()[0] for line in capsys.readouterr().out.splitlines() if "@embedded" in line]
        assert listed == [f"{row}@embedded" for row in rows]


def test_ablations_of_each_size_keep_the_base_count_where_they_say_so(capsys, tmp_path):
    import ablations

    for size, base in (("tiny", "hope-r2-tiny"), ("small", "hope-r2-small")):        # common.STUDY_HOPE
        runs = {run.name.split("@")[0]: run for run in ablations.runs(size=size)}
        counts = {name: meta_parameter_count(common.build_config(run)) for name, run in runs.items()}
        assert runs["hope"].config == base and runs["hope"].tokens == ablations.SIZES[size][1]
        # every row holds the base's count within 0.5%, except the rows declared to be designs of their own size,
        # which do differ (so the declaration cannot go stale)
        assert set(ablations.OWN_COUNT_ROWS) <= set(runs)
        for name in runs:
            keeps_count = counts[name] == pytest.approx(counts["hope"], rel=0.005)
            assert keeps_count == (name not in ablations.OWN_COUNT_ROWS), (size, name, counts[name], counts["hope"])
    # tiny: a head's memories hold as many weights as a D x D matrix, so static k is the base with adaptive_k off
    tiny, small = ablations.rows("tiny"), ablations.rows("small")
    assert tiny["static-k"] == ("static k", {"adaptive_k": False}, {})
    assert small["static-k"][0] == "static k (CMS levels of 114)" and "cms_levels" in small["static-k"][1]
    # the recall setting: eta_init 0.3 with static k and v, at C_m 64 and 16, and its control at the shipped eta_init
    static_kv = {"adaptive_k": False, "adaptive_v": False}
    assert tiny["static-kv"][1] == static_kv
    assert tiny["eta-init-0.3-static-kv"][1] == {**static_kv, "eta_init": 0.3}
    assert tiny["eta-init-0.3-static-kv-c16"][1] == {**static_kv, "eta_init": 0.3, "memory_chunk_size": 16}
    # a size other than the first is its own study
    assert ablations.main(["--table", "--size", "small", "--results-dir", str(tmp_path)]) == 1
    assert f"no results of ablations_small under {tmp_path / 'ablations_small'}" in capsys.readouterr().out


def committed_results(study: str) -> list[dict]:
    """Every committed result JSON of `study`, in `eval/experiments/results/` and each folder beside it (one per
    setting: `cpu/`, `cpu-seed1/`, ...)."""
    results_root = Path(common.__file__).parent / "results"
    folders = [results_root, *(folder for folder in results_root.iterdir() if folder.is_dir())]
    return [result for folder in folders for result in common.load_results(folder, study)]


def assert_trains(config, result: dict) -> None:
    """`result` (a committed result JSON) was trained with `config`, field by field (`common.config_differences`): a
    row means what its definition builds now, not only what its config is named (the shipped files may move)."""
    assert common.config_differences(config, result["config"]) == [], result["run"]


def test_config_differences_compare_the_full_config_with_missing_fields_at_their_default():
    from hope_hf import HopeConfig

    config = HopeConfig(**tiny_config_kwargs(vocab_size=VOCAB))
    saved = json.loads(config.to_json_string(use_diff=False))
    assert common.config_differences(config, saved) == []
    assert common.config_differences(config, {**saved, "memory_implementation": "compiled"}) == []   # not the training
    assert common.config_differences(config, {**saved, "memory_expansion": 3}) == ["memory_expansion"]
    older = {k: v for k, v in saved.items() if k != "input_projection"}       # a field added after the result
    assert common.config_differences(config, older) == []
    assert common.config_differences(HopeConfig(**{**saved, "input_projection": True}), older) == ["input_projection"]
    assert common.config_differences(config, {**saved, "removed_field": 1}) == ["removed_field"]


def test_committed_lm_comparison_results_are_the_runs_as_defined():
    """Every committed result of the LM comparison was trained with the config its run builds now."""
    import lm_comparison

    results = committed_results("lm_comparison")
    assert len(results) >= 30
    for result in results:
        family, size = result["run"].split("@")[0].rsplit("-", 1)
        config_name, overrides = lm_comparison.family_config(family, size)
        assert_trains(common.build_config(common.Run(name=result["run"], config=config_name, overrides=overrides)),
                      result)


@pytest.mark.parametrize("size", ["tiny", "small"])
def test_committed_ablation_results_are_the_rows_as_defined(size):
    """Every committed result of the ablation study (`ablations_small` at ~6M) was trained from its row's current
    definition (the full config, the outer-loop fields), so the tables mean what the rows say."""
    import ablations

    rows = {run.name: run for run in ablations.runs(size=size)}
    results = committed_results("ablations" if size == "tiny" else "ablations_small")
    assert len(results) >= (25 if size == "tiny" else 3)
    for result in results:
        run = rows[result["run"]]
        assert_trains(common.build_config(run), result)
        # `level_lr_scale` came after the first results: absent means the default, None
        assert result.get("level_lr_scale") == run.level_lr_scale, result["run"]


def test_committed_recall_results_are_the_families_as_defined():
    import associative_recall

    results = committed_results("associative_recall")
    assert len(results) >= 30
    for result in results:
        family, task = result["run"].split("@")
        assert_trains(associative_recall.family_config(family, associative_recall.TASKS[task].vocab_size), result)


def test_shipped_hope_is_the_ablation_row_it_was_chosen_from():
    """`hope-tiny` / `hope-small` are the ablation rows of memory expansion r = 1 at the base's count (the setting
    the studies chose), and the studies' base `hope-r2-*` differs from them only there."""
    import ablations
    from hope_hf.model_configs import load_config

    for size, row in (("tiny", "expansion-1-cms-132"), ("small", "expansion-1-cms-164")):
        run = {run.name: run for run in ablations.runs(size=size)}[f"{row}@embedded"]
        shipped = load_config(f"hope-{size}")
        saved = [json.loads(config.to_json_string(use_diff=False))          # as a result JSON holds a config
                 for config in (common.build_config(run), load_config(common.STUDY_HOPE[size]))]
        assert common.config_differences(shipped, saved[0]) == [], size
        assert common.config_differences(shipped, saved[1]) == ["cms_levels", "memory_expansion"], size


def test_seed_spread_table_compares_the_same_training_across_seeds(corpus_file, dirs, tmp_path, capsys):
    import seed_spread

    run = common.Run(name="hope", config=hope_config(), data=str(corpus_file), label="Hope")
    folders = [tmp_path / "seed0", tmp_path / "seed1"]
    ppl = []
    for seed, folder in enumerate(folders):
        places = {**dirs, "results_dir": folder, "checkpoint_dir": tmp_path / f"ckpt{seed}"}
        result = common.train_run(run, dataclasses.replace(SETTINGS, seed=seed), "t", **places, log=lambda s: None)
        ppl.append(result["validation"]["perplexity"])
    assert ppl[0] != ppl[1]                                   # another initialisation, another result
    table = common.seed_spread_table(folders, "t").splitlines()
    assert table[0] == "| run | what | seeds | val ppl per seed | mean | spread |"
    spread = 100 * (max(ppl) / min(ppl) - 1)
    assert table[2] == (f"| hope | Hope | 0, 1 | {ppl[0]:.2f} / {ppl[1]:.2f} | {sum(ppl) / 2:.2f} | {spread:.1f}% |")
    assert len(common.seed_spread_table(folders[:1], "t").splitlines()) == 2      # one folder: nothing to compare
    assert seed_spread.main(["t", *map(str, folders)]) == 0 and capsys.readouterr().out.splitlines()[2] == table[2]
    assert seed_spread.main(["t", str(folders[0])]) == 1
    with pytest.raises(ValueError, match="seed \\[0, 0\\] repeated"):
        common.seed_spread_table([folders[0], folders[0]], "t")
    other = tmp_path / "other_lr"
    common.train_run(run, dataclasses.replace(SETTINGS, seed=2, lr=1e-3), "t",
                     **{**dirs, "results_dir": other, "checkpoint_dir": tmp_path / "ckpt2"}, log=lambda s: None)
    with pytest.raises(ValueError, match="differ in more than the seed"):
        common.seed_spread_table([folders[0], other], "t")


def tiny_hope_model():
    """A tiny Hope (`hope_config()`), seed 0, in eval mode."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(common.build_config(common.Run(name="p", config=hope_config()))).eval()


def test_probe_state_reads_the_fast_weights_a_full_forward_ends_in():
    """`probe_state.probe` feeds pieces through a cache; its last row is the state one full forward ends in."""
    import probe_state

    from hope_hf import HopeCache

    model = tiny_hope_model()
    ids = torch.randint(3, VOCAB, (1, 45))
    rows = probe_state.probe(model, ids, piece=16)
    assert [tokens for tokens, _, _ in rows] == [16, 32, 45] and all(finite for _, finite, _ in rows)
    cache = HopeCache(model.config)
    with torch.no_grad():
        model(ids, past_key_values=cache, use_cache=True)
    assert rows[-1][2] == pytest.approx(probe_state.largest_fast_weights(cache), rel=1e-5)
    assert len(rows[-1][2]) == model.config.num_hidden_layers and min(rows[-1][2]) > 0


def test_probe_state_loss_by_position_averages_each_bin():
    import probe_state
    model = tiny_hope_model()
    rows = torch.randint(3, VOCAB, (2, 30))
    with torch.no_grad():
        logits = model(rows, use_cache=False).logits
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), rows[:, 1:], reduction="none")
    first, rest = probe_state.loss_by_position(model, rows, [(0, 10), (10, 29)])
    assert first == pytest.approx(float(loss[:, :10].mean()), rel=1e-6)
    assert rest == pytest.approx(float(loss[:, 10:].mean()), rel=1e-6)


def test_frozen_memories_leave_the_convolution_as_the_only_mixing_of_tokens():
    """With no memory writes a token's logits depend only on the tokens the stacked convolutions reach; with writes
    (and after the context manager) on every earlier token."""
    import probe_state
    model = tiny_hope_model()
    ids = torch.randint(3, VOCAB, (1, 40))
    changed = ids.clone()
    changed[0, 0] = 3 if ids[0, 0] != 3 else 4
    # the convolutions of the layers reach back (conv_window - 1) tokens each: later positions do not see token 0
    reach = model.config.num_hidden_layers * (model.config.conv_window - 1) + 1

    def logits(x):
        with torch.no_grad():
            return model(x, use_cache=False).logits[0, reach:]

    with probe_state.frozen_memories():
        assert torch.equal(logits(ids), logits(changed))
    assert not torch.allclose(logits(ids), logits(changed))


def test_probe_state_rate_statistics_per_layer():
    """With the gate weights zeroed every token's η and α are the gates' biases, so every statistic has a closed
    form; a different η bias in one layer shows up in that layer only."""
    import probe_state
    model = tiny_hope_model()
    cfg = model.config
    mixers = [layer.mixer for layer in model.model.layers]
    with torch.no_grad():
        for mixer in mixers:
            mixer.eta_weight.zero_()
            mixer.alpha_weight.zero_()
        mixers[1].eta_bias.fill_(0.0)                                       # η = eta_max · σ(0) in layer 1
    C, T = cfg.memory_chunk_size, 2 * cfg.memory_chunk_size
    blocks = torch.randint(3, VOCAB, (3, T))
    rows = probe_state.rate_statistics(model, blocks, batch_size=2)
    assert len(rows) == cfg.num_hidden_layers
    etas = [cfg.eta_init, cfg.eta_max / 2]
    for row, eta in zip(rows, etas, strict=True):
        for key in ("eta_mean", "eta_p90", "eta_max"):
            assert row[key] == pytest.approx(eta, rel=1e-6)
        assert row["chunk_step_mean"] == pytest.approx(C * eta, rel=1e-6)
        assert row["chunk_step_max"] == pytest.approx(C * eta, rel=1e-6)
        assert row["forget_mean"] == pytest.approx(1 - cfg.alpha_init, rel=1e-4)
        assert row["block_retention"] == pytest.approx(cfg.alpha_init ** T, rel=1e-4)
    with pytest.raises(ValueError, match="multiple of memory_chunk_size"):
        probe_state.rate_statistics(model, blocks[:, :-1])


def test_probe_recall_copy_inputs_repeat_consecutive_passages():
    import probe_recall
    text = torch.arange(100, dtype=torch.int32)
    inputs = probe_recall.copy_inputs(text, 10, 3)
    assert inputs.shape == (3, 20) and inputs.dtype == torch.int64
    assert torch.equal(inputs[:, :10], inputs[:, 10:]) and torch.equal(inputs[2, :10], torch.arange(20, 30))
    with pytest.raises(ValueError, match="need 110 tokens"):
        probe_recall.copy_inputs(text, 10, 11)


class _CopyingModel(torch.nn.Module):
    """At position p ≥ L (second copy) predicts the token L − 1 positions back, i.e. the first copy's next token,
    with certainty; in the first copy it predicts nothing (uniform logits)."""

    def __init__(self, vocab: int, length: int):
        super().__init__()
        self.vocab, self.length = vocab, length

    def forward(self, ids, use_cache=False):
        from types import SimpleNamespace

        logits = torch.zeros(*ids.shape, self.vocab)
        L = self.length
        logits[:, L:].scatter_(-1, ids[:, 1: L + 1, None], 1e4)        # position L + j predicts ids[j + 1]
        return SimpleNamespace(logits=logits)


def test_probe_recall_copy_losses_compare_the_same_targets_in_both_copies():
    """A model that copies perfectly has zero loss and accuracy 1 on the second copy and log V on the first (uniform):
    the two copies' slices line up on the same targets. A real model's figures equal the per-position cross-entropy."""
    import math

    import probe_recall
    L, V = 12, 50
    inputs = probe_recall.copy_inputs(torch.randint(0, V, (5 * L,)), L, 5)
    out = probe_recall.copy_losses(_CopyingModel(V, L), inputs, batch_size=2)
    assert out["second"] == pytest.approx(0.0, abs=1e-6) and out["second_accuracy"] == 1.0
    assert out["first"] == pytest.approx(math.log(V), rel=1e-6)
    model = tiny_hope_model()
    inputs = probe_recall.copy_inputs(torch.randint(3, VOCAB, (3 * L,)), L, 3)
    out = probe_recall.copy_losses(model, inputs, batch_size=2)
    with torch.no_grad():
        logits = model(inputs, use_cache=False).logits
    per_position = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), inputs[:, 1:], reduction="none")
    assert out["first"] == pytest.approx(float(per_position[:, : L - 1].mean()), rel=1e-5)
    assert out["second"] == pytest.approx(float(per_position[:, L: 2 * L - 1].mean()), rel=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# associative_recall.py (MQAR trained from scratch)
# ----------------------------------------------------------------------------------------------------------------

def test_recall_batch_asks_for_the_value_stored_with_each_key():
    import associative_recall as ar
    task = ar.RecallTask(pairs=5, gap=3, keys=7, values=4)
    ids, labels = ar.recall_batch(task, 50, torch.Generator().manual_seed(0))
    assert ids.shape == labels.shape == (50, task.length) and task.length == 23
    assert int(ids.max()) < task.vocab_size and int(ids.min()) >= ar.FILLER
    P = task.pairs
    for row, row_labels in zip(ids.tolist(), labels.tolist()):
        stored = dict(zip(row[0: 2 * P: 2], row[1: 2 * P: 2]))
        assert len(stored) == P and all(ar.FIRST_KEY <= k < ar.FIRST_KEY + task.keys for k in stored)
        assert all(v >= ar.FIRST_KEY + task.keys for v in stored.values())
        assert row[2 * P: task.first_query] == [ar.FILLER] * task.gap
        queries = row[task.first_query:]
        assert sorted(queries[0::2]) == sorted(stored)                      # every key asked once
        asked = {t: label for t, label in enumerate(row_labels) if label != -100}
        assert sorted(asked) == list(range(task.first_query + 1, task.length, 2))
        assert all(label == stored[row[t - 1]] == row[t] for t, label in asked.items())
    again, _ = ar.recall_batch(task, 50, torch.Generator().manual_seed(0))
    assert torch.equal(ids, again)
    with pytest.raises(ValueError, match="pairs"):
        ar.RecallTask(pairs=8, gap=0, keys=7)
    with pytest.raises(ValueError, match="gap"):
        ar.RecallTask(pairs=2, gap=-1)


class _LookUpModel(torch.nn.Module):
    """Answers each query from the pairs section (perfect recall): certainty on the stored value at query keys,
    uniform logits elsewhere."""

    def __init__(self, task):
        super().__init__()
        self.task = task

    def forward(self, ids, use_cache=False):
        from types import SimpleNamespace

        task, P = self.task, self.task.pairs
        logits = torch.zeros(*ids.shape, task.vocab_size)
        for b, row in enumerate(ids.tolist()):
            stored = dict(zip(row[0: 2 * P: 2], row[1: 2 * P: 2]))
            for t in range(task.first_query, task.length, 2):
                logits[b, t, stored[row[t]]] = 1e4
        return SimpleNamespace(logits=logits)


def test_recall_scores_count_the_query_values_only():
    """Perfect recall scores accuracy 1 and loss 0; uniform logits score log V (only query values are counted: a
    model that also predicted every other position perfectly would not score better)."""
    import math

    import associative_recall as ar
    task = ar.RecallTask(pairs=4, gap=2, keys=6, values=5)
    ids, labels = ar.held_out_set(task, 9, data_seed=0)
    perfect = ar.recall_scores(_LookUpModel(task), ids, labels, batch_size=4, device=torch.device("cpu"))
    assert perfect == {"loss": pytest.approx(0.0, abs=1e-6), "accuracy": 1.0}

    class Uniform(torch.nn.Module):
        def forward(self, ids, use_cache=False):
            from types import SimpleNamespace
            return SimpleNamespace(logits=torch.zeros(*ids.shape, task.vocab_size))

    uniform = ar.recall_scores(Uniform(), ids, labels, batch_size=4, device=torch.device("cpu"))
    assert uniform["loss"] == pytest.approx(math.log(task.vocab_size), rel=1e-6)


def test_recall_families_are_matched_and_differ_where_they_say():
    import associative_recall as ar
    counts = {f: meta_parameter_count(ar.family_config(f, 132)) for f in ar.FAMILIES}
    common.check_parameter_match(counts)
    hope, hope_c16 = ar.family_config("hope", 132), ar.family_config("hope-c16", 132)
    titans, titans_c64 = ar.family_config("titans", 132), ar.family_config("titans-c64", 132)
    assert (hope.memory_chunk_size, hope_c16.memory_chunk_size, titans.memory_chunk_size,
            titans_c64.memory_chunk_size) == (64, 16, 16, 64)
    assert {k for k, v in hope.to_dict().items() if hope_c16.to_dict()[k] != v} == {"memory_chunk_size"}
    assert {k for k, v in titans.to_dict().items() if titans_c64.to_dict()[k] != v} == {"memory_chunk_size"}
    assert not titans.adaptive_k and titans.inner_optimizer == "gd" and len(titans.cms_levels) == 1
    for family, base in (("titans-eta-0.3", titans), ("hope-eta-0.3", hope), ("hope-c16-eta-0.3", hope_c16)):
        config = ar.family_config(family, 132)
        assert {k for k, v in base.to_dict().items() if config.to_dict()[k] != v} == {"eta_init"}
        assert config.eta_init == 0.3 and base.eta_init == 0.03
    static_kv = ar.family_config("hope-static-kv", 132)
    assert {k for k, v in hope.to_dict().items() if static_kv.to_dict()[k] != v} >= {"adaptive_k", "adaptive_v"}
    assert not static_kv.adaptive_k and not static_kv.adaptive_v and static_kv.eta_init == 0.03
    config = ar.family_config("hope-eta-0.3-static-kv", 132)
    assert {k for k, v in static_kv.to_dict().items() if config.to_dict()[k] != v} == {"eta_init"}
    assert hope.hidden_size == ar.SHAPE["hidden_size"] and hope.vocab_size == 132
    # the "far" task puts every pair in a chunk before every query, for every C_m of the study
    far = ar.TASKS["far"]
    assert all(far.first_query % c == 0 and 2 * far.pairs <= far.first_query for c in (16, 64))


@pytest.mark.parametrize("family", ["transformer", "hope"])
def test_recall_run_resumes_exactly_and_writes_its_result(tmp_path, monkeypatch, family):
    import associative_recall as ar
    monkeypatch.setitem(ar.TASKS, "toy", ar.RecallTask(pairs=3, gap=2, keys=5, values=5))
    settings = ar.RecallSettings(steps=4, batch_size=3, eval_every=2, eval_examples=6, checkpoint_every=2)
    whole = ar.train_recall_run(family, "toy", settings, results_dir=tmp_path / "a", checkpoint_dir=tmp_path / "a",
                                log=lambda _: None)
    assert ar.train_recall_run(family, "toy", settings, results_dir=tmp_path / "b", checkpoint_dir=tmp_path / "b",
                               deadline=0.0, log=lambda _: None) is None                 # stops after step 1
    assert (tmp_path / "b" / ar.STUDY / f"{family}@toy.pt").is_file()
    resumed = ar.train_recall_run(family, "toy", settings, results_dir=tmp_path / "b", checkpoint_dir=tmp_path / "b",
                                  log=lambda _: None)
    assert resumed["curve"] == whole["curve"] and [s for s, _ in whole["curve"]] == [0, 2, 4]
    assert resumed["held_out"] == whole["held_out"] and whole["steps"] == 4 and whole["diverged_at_step"] is None
    assert json.loads((tmp_path / "a" / ar.STUDY / f"{family}@toy.json").read_text())["held_out"] == whole["held_out"]
    table = ar.recall_table([whole])
    assert f"{whole['held_out']['accuracy']:.3f}" in table and ar.FAMILY_LABELS[family] in table


def test_probes_write_what_they_print_as_json(corpus_file, dirs, tmp_path, monkeypatch, capsys):
    """`probe_state.py --json` and `probe_recall.py --json` on a finished tiny run: every figure of the printed
    tables is in the JSON, with the command that made it."""
    import functools
    import json

    import probe_recall
    import probe_state

    run = common.Run(name="hope", config=hope_config(), data=str(corpus_file), label="Hope")
    common.train_run(run, SETTINGS, "t", **dirs, log=lambda s: None)
    monkeypatch.setitem(probe_state.STUDIES, "t", lambda: [run])
    monkeypatch.setattr(common, "load_corpus", functools.partial(common.load_corpus, cache_dir=dirs["cache_dir"]))
    state_args = ["--study", "t", "--run", "hope", "--checkpoint-dir", str(dirs["checkpoint_dir"]), "--length", "32",
                  "--piece", "16", "--rows", "1", "--blocks", "3", "--block-size", "16", "--json",
                  str(tmp_path / "state.json")]
    assert probe_state.main(state_args) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "state.json").read_text())
    assert report["command"] == "python eval/experiments/probe_state.py " + " ".join(state_args)
    assert (report["run"], report["step"], report["git_commit"]) == ("hope", "final", common.git_commit())
    held_out = report["held_out"]
    assert held_out["inner_loop_worth_nats"] == pytest.approx(
        held_out["loss_without_writes"] - held_out["loss_with_writes"])
    assert (f"{held_out['loss_with_writes']:.4f} as trained, {held_out['loss_without_writes']:.4f} with no memory "
            "writes") in printed
    assert [row["tokens"] for row in report["fast_weights"]["held-out text"]] == [16, 32]
    assert len(report["rates"]) == 2 and len(report["loss_by_position"]["bins"]) == 1

    recall_json = tmp_path / "recall.json"
    assert probe_recall.main(["--study", "t", "--runs", "hope", "--checkpoint-dir", str(dirs["checkpoint_dir"]),
                              "--lengths", "4", "8", "--passages", "2", "--json", str(recall_json)]) == 0
    printed = capsys.readouterr().out.splitlines()
    rows = json.loads(recall_json.read_text())["rows"]
    assert [row["length"] for row in rows] == [4, 8] and len(printed) == 2 + 2 + 2       # header, 2 rows, "-> path"
    for row, line in zip(rows, printed[2:4]):
        assert f"| {row['copy_gain']:+.3f} | {row['second_accuracy']:.3f} | " \
               f"{row['copy_gain_without_writes']:+.3f} |" in line
        assert row["copy_gain"] == pytest.approx(row["loss_first"] - row["loss_second"])
