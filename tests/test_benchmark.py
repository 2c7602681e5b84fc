"""`hope_hf.benchmark`: the models of a run (same parameter count, each family's switches), round-robin timing,
the peak-memory measurement, the decoding cells and the report's arithmetic. Speeds themselves are not
asserted (a shared CPU); what is asserted is what each figure is made of."""

from __future__ import annotations

import statistics

import pytest
import torch
from transformers import LlamaConfig

from hope_hf.benchmark import (
    FAMILIES,
    REFERENCE,
    Subject,
    Variant,
    bench_configs,
    build_model,
    cpu_memory_tracking,
    family_config,
    markdown_table,
    run_bench,
    step_peak_mib,
    summary,
    time_round_robin,
)
from hope_hf.cli import main
from hope_hf.flops import forward_flops, training_flops
from hope_hf.model_configs import load_config

SHAPE = dict(hidden_size=32, layers=1, heads=2, vocab_size=99)


@pytest.fixture(scope="module")
def tiny_run():
    """One run of every part at a tiny shape (1 thread): lengths 8 and 40 at 16 tokens per step."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield run_bench(models=("hope", "titans"), lengths=(8, 40), tokens_per_step=16, repeats=1, warmup=0,
                        decode_steps=2, matmul_size=256, **SHAPE)
    finally:
        torch.set_num_threads(threads)


def test_every_model_holds_the_same_parameter_count():
    configs = bench_configs(FAMILIES, hidden_size=64, layers=2, heads=4, vocab_size=512, max_position_embeddings=1024)
    assert list(configs)[-1] == REFERENCE and isinstance(configs[REFERENCE], LlamaConfig)
    counts = {name: sum(p.numel() for p in build_model(c).parameters()) for name, c in configs.items()}
    for name, count in counts.items():
        assert count == pytest.approx(counts["hope-r2"], rel=0.01), (name, counts)
    # the count is r = 2's with the HopeConfig default CMS (width D); r = 1 (hope) takes wider levels to hold it
    assert (configs["hope-r2"].memory_expansion, configs["hope-r2"].cms_levels[0]["intermediate_size"]) == (2, 64)
    assert configs["hope"].memory_expansion == 1 and configs["hope"].cms_levels[0]["intermediate_size"] > 64


def test_a_family_keeps_its_switches_at_the_bench_shape():
    titans = family_config("titans", hidden_size=64, layers=2, heads=4, vocab_size=512, max_position_embeddings=1024)
    tiny = load_config("titans-tiny")
    for key in ("mixer", "inner_optimizer", "inner_momentum", "adaptive_k", "adaptive_v", "adaptive_rates",
                "projection_chunk_size", "memory_chunk_size"):
        assert getattr(titans, key) == getattr(tiny, key), key
    assert (titans.hidden_size, titans.num_hidden_layers, titans.num_heads, titans.vocab_size) == (64, 2, 4, 512)
    assert titans.cms_levels == tiny.cms_levels                        # no parameter count asked: unchanged


def test_unknown_family_or_unreachable_size_is_refused():
    with pytest.raises(ValueError, match="unknown model family 'hope-xl'"):
        family_config("hope-xl", hidden_size=32, layers=1, heads=2, vocab_size=99, max_position_embeddings=64)
    with pytest.raises(ValueError, match="holds 13,974 parameters with CMS width 1, more than the 1,000 asked"):
        family_config("titans", hidden_size=32, layers=1, heads=2, vocab_size=99, max_position_embeddings=64,
                      parameters=1000)
    with pytest.raises(ValueError, match="parts must be among"):
        run_bench(parts=("speed",))


def test_a_variant_is_a_family_with_other_switches_at_the_same_parameter_count():
    variants = [Variant.parse("hope-fast=hope:adaptive_rates=false,projection_chunk_size=8"),
                Variant.parse("titans-dgd=titans:inner_optimizer=dgd")]
    assert variants[0] == Variant("hope-fast", "hope", {"adaptive_rates": False, "projection_chunk_size": 8})
    assert variants[1].overrides == {"inner_optimizer": "dgd"}            # not JSON: kept as the string
    configs = bench_configs(["hope"], hidden_size=64, layers=2, heads=4, vocab_size=512,
                            max_position_embeddings=1024, variants=variants)
    assert list(configs) == ["hope", "hope-fast", "titans-dgd", REFERENCE]
    fast, titans = configs["hope-fast"], configs["titans-dgd"]
    assert (fast.adaptive_rates, fast.projection_chunk_size, fast.memory_chunk_size) == (False, 8, 64)
    assert (titans.inner_optimizer, titans.adaptive_k, len(titans.cms_levels)) == ("dgd", False, 1)
    counts = {name: sum(p.numel() for p in build_model(c).parameters()) for name, c in configs.items()}
    for name, count in counts.items():
        assert count == pytest.approx(counts["hope"], rel=0.01), (name, counts)
    # fewer memories, same count: the CMS is wider than hope's
    assert fast.cms_levels[0]["intermediate_size"] > configs["hope"].cms_levels[0]["intermediate_size"]


def test_bad_variants_are_refused_with_the_field_and_value(capsys):
    for text in ("hope-fast", "hope-fast=hope:adaptive_rates", "=hope:x=1", "hope-fast=:x=1"):
        with pytest.raises(ValueError, match=f"variant '{text}': expected NAME=FAMILY:FIELD=VALUE"):
            Variant.parse(text)
    shape = dict(hidden_size=32, layers=1, heads=2, vocab_size=99, max_position_embeddings=64)
    for variant, message in (
            (Variant("v", "hope", {"adaptive_ratez": False}),
             "override adaptive_ratez=False of hope: adaptive_ratez is not a HopeConfig field"),
            (Variant("v", "hope", {"hidden_size": 64}),
             "override hidden_size=64 of hope: hidden_size is set by the bench"),
            (Variant("v", "hope", {"projection_chunk_size": 5}), "memory_chunk_size"),
            (Variant("v", "hope-xl", {}), "unknown model family 'hope-xl'"),
            (Variant("titans", "hope", {}), "variant name 'titans' is taken")):
        with pytest.raises(ValueError, match=message):
            bench_configs(["hope"], **shape, variants=[variant])
    with pytest.raises(ValueError, match="variant name 'v' is taken"):
        bench_configs(["hope"], **shape, variants=[Variant("v", "hope"), Variant("v", "titans")])
    with pytest.raises(ValueError, match="variants are built at the bench shape, not with size='tiny'"):
        run_bench(models=("hope",), size="tiny", variants=[Variant("v", "hope")])
    assert main(["bench", "--variant", "hope-c32=hope:projection_chunk_size=32,memory_chunk_size=48"]) == 2
    assert "memory_chunk_size" in capsys.readouterr().err


def test_a_variant_is_measured_beside_the_families(monkeypatch):
    result = run_bench(models=("hope",), variants=[Variant("hope-c4", "hope", {"projection_chunk_size": 4})],
                       lengths=(16,), tokens_per_step=16, repeats=1, warmup=0, parts=("train",), matmul_size=64,
                       **SHAPE)
    assert [r["model"] for r in result["rows"]] == ["hope", "hope-c4", REFERENCE]
    assert all(r["train_tokens_per_s"] > 0 and "train_ratio" in r for r in result["rows"])
    assert result["models"]["hope-c4"]["config"]["projection_chunk_size"] == 4
    assert result["variants"] == {"hope-c4": {"family": "hope", "overrides": {"projection_chunk_size": 4}}}


def test_round_robin_runs_warmup_then_rounds_and_takes_medians(monkeypatch):
    calls, clock = [], iter([0.0, 1.0, 1.0, 1.5, 2.0, 5.0, 5.0, 5.5, 10.0, 12.0, 12.0, 12.5])
    monkeypatch.setattr("hope_hf.benchmark.time.perf_counter", lambda: next(clock))
    seconds = time_round_robin({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1)
    assert calls == ["a", "b"] * 4                                      # one warm-up round, three timed rounds
    assert seconds == {"a": 2.0, "b": 0.5}                              # medians of (1, 3, 2) and (0.5, 0.5, 0.5)


def test_step_peak_counts_parameters_optimizer_state_and_the_step_growth():
    """A step that holds 32 MiB of temporaries at once: its peak is that plus the model's resident bytes."""
    subject = Subject("tiny", None, torch.nn.Linear(256, 256))
    subject.optimizer.zero_grad()
    subject.model(torch.randn(4, 256)).sum().backward()
    subject.optimizer.step()                                            # AdamW state: 2 × the parameters
    resident = 3 * sum(p.numel() * 4 for p in subject.model.parameters()) / 2**20

    def step():
        blocks = [torch.ones(2**20) for _ in range(8)]                  # 8 × 4 MiB alive together
        del blocks

    with cpu_memory_tracking() as tracking:
        if not tracking:
            pytest.skip("no glibc / clear_refs: CPU peaks are not measured on this platform")
        peak = step_peak_mib(step, subject, torch.device("cpu"))
    assert resident + 31 <= peak < resident + 32 + 16                  # RSS is counted in pages


def test_rows_hold_every_part_and_consistent_derived_figures(tiny_run):
    assert list(tiny_run["models"]) == ["hope", "titans", REFERENCE]
    assert tiny_run["peak_memory"] and tiny_run["matmul_peak_flops_alone"] > 0
    assert tiny_run["load_average"]["start"] >= 0 and tiny_run["load_average"]["end"] >= 0      # Linux, macOS
    assert tiny_run["machine"].endswith("1 threads, cpu")                               # as it ran
    # the peak's matmul took a turn in each of the 4 timed round robins (2 lengths × training, inference)
    assert len(tiny_run["matmul_peak_flops_by_round"]) == 4
    assert tiny_run["matmul_peak_flops"] == statistics.median(tiny_run["matmul_peak_flops_by_round"])
    configs = {name: m["config"] for name, m in tiny_run["models"].items()}
    rows = {(r["model"], r["length"]): r for r in tiny_run["rows"]}
    assert {(n, r["batch"]) for (_, n), r in rows.items()} == {(8, 2), (40, 1)}    # 16 tokens per step, at least 1
    bench = bench_configs(["hope", "titans"], **SHAPE, max_position_embeddings=40 + 1024)
    for (name, length), row in rows.items():
        batch, ref = row["batch"], rows[REFERENCE, length]
        assert configs[name] == bench[name].to_diff_dict()
        tokens = batch * length
        # FLOP/s = (analytic FLOPs of the step) / (median seconds) = FLOPs per token × tokens/s
        assert row["train_flops_per_s"] == pytest.approx(
            training_flops(bench[name], batch, length) / tokens * row["train_tokens_per_s"])
        assert row["infer_flops_per_s"] == pytest.approx(
            sum(forward_flops(bench[name], batch, length, logits=1).values()) / tokens * row["infer_tokens_per_s"])
        # fraction of peak: against the matmul that took its turn in the same round (one per length and part)
        assert row["train_matmul_flops_per_s"] in tiny_run["matmul_peak_flops_by_round"]
        assert row["train_matmul_flops_per_s"] != row["infer_matmul_flops_per_s"]
        assert row["train_matmul_flops_per_s"] == ref["train_matmul_flops_per_s"]
        assert row["train_peak_fraction"] == pytest.approx(row["train_flops_per_s"] / row["train_matmul_flops_per_s"])
        assert row["train_ratio"] == pytest.approx(row["train_tokens_per_s"] / ref["train_tokens_per_s"])
        assert row["decode_ratio"] == pytest.approx(row["decode_ms_per_token"] / ref["decode_ms_per_token"])
        assert row["train_peak_mib"] > 0 and row["infer_peak_mib"] > 0
    # the recurrent caches have a fixed size; the Llama's grows with the context
    for name in ("hope", "titans"):
        assert rows[name, 8]["cache_mib"] == rows[name, 40]["cache_mib"] > 0
    assert rows[REFERENCE, 40]["cache_mib"] > 4 * rows[REFERENCE, 8]["cache_mib"]


def test_report_prints_ratios_and_the_decoding_growth(tiny_run):
    table = markdown_table(tiny_run)
    lines = table.splitlines()
    assert len(lines) == 2 + 6 and lines[2].startswith("| hope | 8 | 2 |") and lines[-1].startswith("| llama | 40 | 1 |")
    assert "(1.00x)" in lines[-1]
    text = summary(tiny_run)
    assert "hope: decode latency at 40 / at 8 = " in text and "tokens per step: 16" in text
    load = tiny_run["load_average"]
    assert f"load average (1 min) at the start {load['start']:.2f}, at the end {load['end']:.2f}" in text


def test_bench_rejects_bad_options(capsys):
    for argv, message in ((["--tokens-per-step", "0"], "--tokens-per-step must be > 0"),
                          (["--lengths", "0"], "--lengths must be >= 1"),
                          (["--warmup", "-1"], "--warmup must be >= 0"),
                          (["--heads", "3"], "HopeConfig.num_heads must be a divisor of hidden_size=256")):
        assert main(["bench", *argv]) == 2
        assert message in capsys.readouterr().err


def test_named_size_takes_the_modeling_configs(monkeypatch):
    """`size="tiny"` measures `hope-tiny` beside `transformer-tiny` as they are (room made for the lengths)."""
    built = []
    monkeypatch.setattr("hope_hf.benchmark.build_model", lambda config: built.append(build_model(config)) or built[-1])
    result = run_bench(models=("hope",), size="tiny", lengths=(16,), tokens_per_step=16, repeats=1, warmup=0,
                       parts=("train",), gradient_checkpointing=True, matmul_size=64)
    for name, config_name in (("hope", "hope-tiny"), (REFERENCE, "transformer-tiny")):
        expected = load_config(config_name).to_diff_dict()
        got = result["models"][name]["config"]
        assert {k: v for k, v in got.items() if k != "max_position_embeddings"} == {
            k: v for k, v in expected.items() if k != "max_position_embeddings"}
        assert got.get("max_position_embeddings", 4096) >= 16 + 1024
    assert all(model.is_activation_checkpointing for model in built) and result["gradient_checkpointing"]


def test_saved_activations_grow_with_the_tokens_and_exclude_parameters(tiny_kwargs):
    from hope_hf import HopeConfig
    from hope_hf.benchmark import saved_activation_bytes

    config = HopeConfig(**tiny_kwargs(projection_chunk_size=4, memory_chunk_size=8))
    subject = Subject("hope", config, build_model(config))
    short, long = (saved_activation_bytes(subject, torch.randint(3, 99, (1, n)), torch.float32) for n in (16, 32))
    assert 1.8 < long / short < 2.2                                         # about linear in the tokens
    assert subject.model.training                                           # mode restored
    ids = torch.randint(3, 99, (1, 16))
    params = sum(p.numel() * 4 for p in subject.model.parameters())
    assert short < 100 * params and saved_activation_bytes(subject, ids[:, :8], torch.float32) < short


def test_a_training_step_that_would_not_fit_is_skipped_and_said(monkeypatch):
    """With (pretend) 1 KiB free, every training step is skipped before it runs; inference still runs."""
    monkeypatch.setattr("hope_hf.benchmark.available_bytes", lambda device: 1024)
    result = run_bench(models=("hope",), lengths=(16,), tokens_per_step=16, repeats=1, warmup=0, decode_steps=1,
                       parts=("train", "infer"), matmul_size=64, **SHAPE)
    for row in result["rows"]:
        assert "train_tokens_per_s" not in row and row["infer_tokens_per_s"] > 0
        assert row["train_skipped"].startswith("needs ~0.0 GiB of saved activations, 0.0 GiB free")
    assert "skipped (memory)" in markdown_table(result)
    assert "hope at 16: training skipped, needs" in summary(result)


def test_memory_implementation_applies_to_the_hope_models_only(monkeypatch):
    """`memory_implementation="compiled"` builds every Hope model with its compiled memory steps (recorded in the
    result and its report) and leaves the Llama alone; an unknown value is refused before anything is built."""
    built = []
    monkeypatch.setattr("hope_hf.benchmark.build_model", lambda config: built.append(build_model(config)) or built[-1])
    result = run_bench(models=("hope", "titans"), lengths=(8,), tokens_per_step=8, repeats=1, warmup=0, parts=(),
                       matmul_size=64, memory_implementation="compiled", **SHAPE)
    implementations = {type(m).__name__: {layer.mixer.implementation for layer in m.model.layers}
                       for m in built if hasattr(m.model.layers[0], "mixer")}
    assert implementations == {"HopeForCausalLM": {"compiled"}}
    assert {result["models"][name]["config"]["memory_implementation"] for name in ("hope", "titans")} == {"compiled"}
    assert "memory_implementation" not in result["models"][REFERENCE]["config"]
    assert result["memory_implementation"] == "compiled" and "Hope memory: compiled" in summary(result)
    with pytest.raises(ValueError, match=r"memory_implementation must be one of \('chunk', 'compiled'\) or None, got 'naive'"):
        run_bench(models=("hope",), lengths=(8,), parts=(), memory_implementation="naive", **SHAPE)


def test_bench_warms_up_twice_for_the_compiled_memory(monkeypatch, capsys):
    """`hope-hf bench` warms up 1 step per cell by default and 2 with `--memory-implementation compiled` (whose first
    steps compile a graph per batch shape: a cell's first timed step must not include a compilation); an explicit
    `--warmup` wins."""
    seen = []

    def fake_run_bench(**kwargs):
        seen.append(kwargs)
        raise ValueError("stop here")

    monkeypatch.setattr("hope_hf.benchmark.run_bench", fake_run_bench)
    for argv in ([], ["--memory-implementation", "compiled"], ["--memory-implementation", "compiled", "--warmup", "0"]):
        assert main(["bench", *argv]) == 2
    assert [(k["warmup"], k["memory_implementation"]) for k in seen] == [(1, None), (2, "compiled"), (0, "compiled")]
    assert "stop here" in capsys.readouterr().err


def test_the_saved_activation_probe_is_short(monkeypatch):
    """The probe that predicts a step's saved activations runs one row of at most PROBE_TOKENS tokens (a probe as long
    as an 8192-token step held the memory the guard was about to check, so the step was skipped for lack of it)."""
    from hope_hf import benchmark

    seen = []
    monkeypatch.setattr(benchmark, "PROBE_TOKENS", 8)
    monkeypatch.setattr(benchmark, "saved_activation_bytes", lambda subject, ids, dtype: seen.append(ids.shape) or 1)
    run_bench(models=("hope",), lengths=(16, 32), tokens_per_step=32, repeats=1, warmup=0, parts=("train",),
              matmul_size=64, **SHAPE)
    assert set(seen) == {torch.Size([1, 8])}
