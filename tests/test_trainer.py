"""Trainer integration: optimisers by name, the CMS schedule inside `Trainer`, exact resume (HOPE.md §6)."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file
from transformers import Trainer, TrainerCallback, TrainerState, TrainingArguments

from hope_hf import HopeConfig, HopeForCausalLM
from hope_hf.optim import DMGD, M3, DeltaMomentum
from hope_hf.schedule import SCHEDULE_FILE, HopeScheduleCallback
from hope_hf.training import OPTIMIZERS, HopeTrainer, build_optimizer, make_trainer, optimizer_cls_and_kwargs

from conftest import tiny_config_kwargs

PERIODS = (1, 4, 16)


def tiny_model(mixer="attention", seed=0) -> HopeForCausalLM:
    torch.manual_seed(seed)
    levels = [{"intermediate_size": 37 - 6 * j, "update_period": p} for j, p in enumerate(PERIODS)]
    return HopeForCausalLM(HopeConfig(**tiny_config_kwargs(num_hidden_layers=1, mixer=mixer, cms_levels=levels)))


def dataset(size=40, length=8):
    g = torch.Generator().manual_seed(123)
    rows = []
    for _ in range(size):
        ids = torch.randint(3, 99, (length,), generator=g)
        rows.append({"input_ids": ids, "labels": ids.clone()})
    return rows


def arguments(output_dir, **overrides) -> TrainingArguments:
    kwargs = dict(output_dir=str(output_dir), max_steps=16, per_device_train_batch_size=2, learning_rate=0.1,
                  lr_scheduler_type="constant", max_grad_norm=0.0, report_to=[], use_cpu=True, save_strategy="no",
                  logging_steps=4, disable_tqdm=True, seed=0, dataloader_num_workers=0)
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def test_build_optimizer_by_name():
    model = tiny_model()
    classes = {"adamw": torch.optim.AdamW, "delta-momentum": DeltaMomentum, "dmgd": DMGD, "m3": M3}
    assert set(OPTIMIZERS) == set(classes)
    for name in OPTIMIZERS:
        optimizer = build_optimizer(model, name, lr=1e-3, weight_decay=0.1)
        assert type(optimizer) is classes[name] and optimizer.defaults["lr"] == 1e-3
        assert {g["kind"] for g in optimizer.param_groups} == {"embedding", "vector", "matrix"}
    with pytest.raises(ValueError, match=r"adamw.*delta-momentum.*dmgd.*m3.*'sgd'"):
        build_optimizer(model, "sgd")


def test_make_trainer_wires_the_optimizer_and_the_schedule(tmp_path):
    model = tiny_model()
    trainer = make_trainer(model, arguments(tmp_path, weight_decay=0.05), dataset(), optimizer="m3",
                           optimizer_kwargs={"slow_period": 2})
    assert isinstance(trainer, HopeTrainer)
    assert sum(isinstance(c, HopeScheduleCallback) for c in trainer.callback_handler.callbacks) == 1
    optimizer = trainer.create_optimizer()
    assert isinstance(optimizer, M3) and optimizer.defaults["slow_period"] == 2
    assert {g["weight_decay"] for g in optimizer.param_groups if g["kind"] == "matrix"} == {0.05}
    plain = make_trainer(tiny_model(), arguments(tmp_path), dataset(), schedule=False)
    assert not any(isinstance(c, HopeScheduleCallback) for c in plain.callback_handler.callbacks)


class Recorder(TrainerCallback):
    """Sees each step's complete gradient before the schedule touches it, and the parameters after the step."""

    def __init__(self, model):
        self.model, self.grads, self.before, self.after = model, [], [], []

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.grads.append({n: p.grad.clone() for n, p in self.model.named_parameters()})
        self.before.append({n: p.detach().clone() for n, p in self.model.named_parameters()})

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.after.append({n: p.detach().clone() for n, p in self.model.named_parameters()})


def test_trainer_steps_each_level_on_its_due_steps_with_the_summed_gradients(tmp_path):
    """Periods (1, 4, 16), gradient accumulation 2, SGD (DeltaMomentum with μ = β = 0): Δp = −lr Σ g."""
    model = tiny_model()
    recorder = Recorder(model)
    optimizer = optimizer_cls_and_kwargs(model, "delta-momentum", lr=0.1, momentum=0.0, erase=0.0)
    trainer = Trainer(model=model, args=arguments(tmp_path, gradient_accumulation_steps=2), train_dataset=dataset(),
                      optimizer_cls_and_kwargs=optimizer, callbacks=[recorder, HopeScheduleCallback(model)])
    trainer.train()
    assert len(recorder.grads) == 16
    for level, period in enumerate(PERIODS):
        names = [n for n, _ in model.named_parameters() if f".cms.levels.{level}." in n]
        for step in range(1, 17):
            before, after = recorder.before[step - 1], recorder.after[step - 1]
            for name in names:
                moved = not torch.equal(before[name], after[name])
                assert moved == (step % period == 0), (level, step, name)
                if moved:
                    grads = [recorder.grads[s][name] for s in range(step - period, step)]
                    summed = grads[-1] if period == 1 else grads[-1] + sum_in_order(grads[:-1])
                    assert torch.equal(after[name], before[name].add(summed, alpha=-0.1)), (level, step, name)
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [(e["step"], e["cms/level_0/updates"], e["cms/level_1/updates"], e["cms/level_2/updates"]) for e in logs] \
        == [(4, 4, 1, 0), (8, 8, 2, 0), (12, 12, 3, 0), (16, 16, 4, 1)]
    assert logs[-1]["cms/level_2/grad_norm"] > 0


def sum_in_order(grads):
    total = grads[0].clone()
    for g in grads[1:]:
        total.add_(g)
    return total


def test_resume_at_step_10_equals_an_uninterrupted_run_at_step_20(tmp_path):
    """M3 (slow momentum every 3 steps) + the schedule; checkpoint-10 holds optimiser and schedule state."""
    args = dict(max_steps=20, save_strategy="steps", save_steps=10, learning_rate=3e-3,
                lr_scheduler_type="linear", max_grad_norm=1.0)
    straight = make_trainer(tiny_model(mixer="self_modifying"), arguments(tmp_path / "a", **args), dataset(),
                            optimizer="m3", optimizer_kwargs={"slow_period": 3})
    straight.train()
    checkpoint = tmp_path / "a" / "checkpoint-10"
    saved = load_file(checkpoint / SCHEDULE_FILE)
    assert any(".cms.levels.2." in k and v.abs().sum() > 0 for k, v in saved.items())   # 10 buffered steps

    resumed = make_trainer(tiny_model(mixer="self_modifying", seed=1), arguments(tmp_path / "b", **args), dataset(),
                           optimizer="m3", optimizer_kwargs={"slow_period": 3})
    resumed.train(resume_from_checkpoint=str(checkpoint))
    for (name, a), b in zip(straight.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(a, b), name
    callbacks = [c for t in (straight, resumed) for c in t.callback_handler.callbacks
                 if isinstance(c, HopeScheduleCallback)]
    assert callbacks[0].update_counts == callbacks[1].update_counts == [20, 5, 1]


def test_resume_without_schedule_state_raises(tmp_path):
    callback = HopeScheduleCallback(tiny_model())
    state = TrainerState(global_step=5)
    with pytest.raises(FileNotFoundError, match="resume_from"):
        callback.on_train_begin(arguments(tmp_path), state, None)
    os.makedirs(tmp_path / "checkpoint-5")
    callback.save(tmp_path / "checkpoint-5")                          # saved at step 0, so the steps disagree
    with pytest.raises(ValueError, match="step 0.*step 5"):
        callback.on_train_begin(arguments(tmp_path), state, None)


def test_predict_with_use_cache_returns_the_logits_only(tmp_path):
    """With `use_cache=True` the model returns its `HopeCache`; `Trainer.predict` must leave it out of the
    predictions (`keys_to_ignore_at_inference`, whose key is `cache` from transformers 5.24)."""
    model = tiny_model()
    trainer = Trainer(model=model, args=arguments(tmp_path, use_cache=True, per_device_eval_batch_size=2))
    predictions = trainer.predict(dataset(size=4)).predictions
    assert predictions.shape == (4, 8, 99)
