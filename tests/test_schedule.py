"""The CMS schedule callback from a plain loop (HOPE.md §4, §6): due steps, summed gradients, warm-up, lr scales."""

from __future__ import annotations

import pytest
import torch

from hope_hf import HopeConfig, HopeForCausalLM
from hope_hf.optim import build_param_groups
from hope_hf.schedule import SCHEDULE_FILE, HopeScheduleCallback

from conftest import tiny_config_kwargs

PERIODS = (1, 4, 16)


def model_with_periods(periods=PERIODS, **overrides) -> HopeForCausalLM:
    levels = [{"intermediate_size": 37 - 6 * j, "update_period": p} for j, p in enumerate(periods)]
    config = HopeConfig(**tiny_config_kwargs(num_hidden_layers=1, mixer="attention", cms_levels=levels, **overrides))
    return HopeForCausalLM(config)


def level_params(model, level):
    return {n: p for n, p in model.named_parameters() if f".cms.levels.{level}." in n}


def run(model, schedule, optimizer, steps, record=None):
    """Plain training loop with the schedule; `record(step, grads_before, params_before)` sees each step."""
    for step in range(1, steps + 1):
        x = torch.randint(3, 99, (2, 8), generator=torch.Generator().manual_seed(step))
        model(x, labels=x).loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        schedule.before_optimizer_step(optimizer)
        optimizer.step()
        schedule.after_optimizer_step(optimizer)
        optimizer.zero_grad()
        if record:
            record(step, grads, before)


def summed_like_the_schedule(grads: list[torch.Tensor]) -> torch.Tensor:
    """The gradient the schedule applies on a due step: g_last + ((g_1 + g_2) + ...), the same additions."""
    *earlier, last = grads
    if not earlier:
        return last
    buffer = earlier[0].clone()
    for g in earlier[1:]:
        buffer.add_(g)
    return last + buffer


def test_levels_change_exactly_on_due_steps_by_the_summed_gradients():
    torch.manual_seed(0)
    model = model_with_periods()
    lr = 0.1
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    schedule = HopeScheduleCallback(model)
    history: dict[str, list[torch.Tensor]] = {n: [] for n, _ in model.named_parameters()}
    changed_at = {level: [] for level in range(3)}

    def record(step, grads, before):
        for name in history:
            history[name].append(grads[name])
        for level, period in enumerate(PERIODS):
            params = level_params(model, level)
            changed = {not torch.equal(p, before[n]) for n, p in params.items()}
            assert len(changed) == 1, (step, level)                   # a level moves as one
            changed_at[level].append(changed.pop())
            if step % period == 0:
                for name, param in params.items():
                    expected = before[name].add(summed_like_the_schedule(history[name][-period:]), alpha=-lr)
                    assert torch.equal(param.detach(), expected), (step, name)
        outside = "model.layers.0.mixer.q_proj.weight"                # not a CMS parameter: every step
        assert torch.equal(model.get_parameter(outside).detach(), before[outside].add(grads[outside], alpha=-lr))

    run(model, schedule, optimizer, 16, record)
    for level, period in enumerate(PERIODS):
        assert changed_at[level] == [step % period == 0 for step in range(1, 17)], level
    assert schedule.update_counts == [16, 4, 1]
    assert all(not b.any() for b in schedule.buffers.values())        # everything applied at step 16
    assert set(schedule.metrics()) == {f"cms/level_{j}/{k}" for j in range(3) for k in ("updates", "grad_norm")}


def test_warmup_updates_every_level_every_step_then_counts_periods_from_its_end():
    schedule = HopeScheduleCallback(model_with_periods(), warmup_steps=3)
    due = [[schedule.is_due(level, step) for step in range(1, 12)] for level in range(3)]
    assert due[0] == [True] * 11
    assert due[1] == [True, True, True, False, False, False, True, False, False, False, True]
    assert due[2] == [True, True, True] + [False] * 8


def test_level_lr_scale_applies_to_its_groups_only_during_the_step():
    torch.manual_seed(0)
    model = model_with_periods(periods=(1, 1, 1))
    groups = build_param_groups(model)
    optimizer = torch.optim.SGD(groups, lr=0.1)
    schedule = HopeScheduleCallback(model, level_lr_scale=[1.0, 0.0, 2.0])
    frozen = {n: p.detach().clone() for n, p in level_params(model, 1).items()}
    seen_lrs = []

    def record(step, grads, before):
        seen_lrs.append([g["lr"] for g in optimizer.param_groups])
        for name, param in level_params(model, 2).items():
            assert torch.equal(param.detach(), before[name].add(grads[name], alpha=-0.2)), name

    run(model, schedule, optimizer, 2, record)
    assert all(torch.equal(p, frozen[n]) for n, p in level_params(model, 1).items())
    assert seen_lrs == [[0.1] * len(groups)] * 2                     # restored after every step
    mixed = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="build_param_groups"):
        run(model, schedule, mixed, 1)


def test_a_due_level_without_gradient_still_gets_its_buffer():
    model = model_with_periods(periods=(1, 2, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = HopeScheduleCallback(model)
    run(model, schedule, optimizer, 1)                                 # step 1: levels 1, 2 buffered
    before = {n: p.detach().clone() for n, p in level_params(model, 1).items()}
    schedule.before_optimizer_step(optimizer)                          # step 2 with no backward at all
    optimizer.step()
    schedule.after_optimizer_step(optimizer)
    for name, param in level_params(model, 1).items():
        assert not torch.equal(param, before[name]), name


def test_save_and_load_restore_buffers_and_counters(tmp_path):
    torch.manual_seed(0)
    model = model_with_periods()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = HopeScheduleCallback(model)
    run(model, schedule, optimizer, 6)
    path = schedule.save(tmp_path)
    assert path.endswith(SCHEDULE_FILE)
    restored = HopeScheduleCallback(model)
    restored.load(tmp_path)
    assert restored.step == 6 and restored.update_counts == [6, 1, 0]
    assert restored.grad_norms == schedule.grad_norms
    assert set(restored.buffers) == set(schedule.buffers) and len(restored.buffers) > 0
    assert all(torch.equal(restored.buffers[n], b) for n, b in schedule.buffers.items())
    other = HopeScheduleCallback(model, warmup_steps=2)
    with pytest.raises(ValueError, match="warmup_steps"):
        other.load(tmp_path)
    with pytest.raises(FileNotFoundError, match=SCHEDULE_FILE):
        restored.load(tmp_path / "missing")


@pytest.mark.parametrize("kwargs, field", [
    ({"warmup_steps": -1}, "warmup_steps"),
    ({"level_lr_scale": [1.0]}, "level_lr_scale"),
    ({"level_lr_scale": [1.0, float("inf"), 1.0]}, r"level_lr_scale\[1\]"),
    ({"update_periods": [1, 0, 4]}, r"update_periods\[1\]"),
    ({"update_periods": [1, 2.5, 4]}, r"update_periods\[1\]"),
])
def test_bad_arguments_raise_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        HopeScheduleCallback(model_with_periods(), **kwargs)


def test_optimizer_step_is_before_step_after():
    """`optimizer_step` (the plain-loop shorthand) gives the same parameters and learning rates as the three calls."""
    results = []
    for shorthand in (False, True):
        torch.manual_seed(0)
        model = model_with_periods()
        optimizer = torch.optim.SGD(build_param_groups(model), lr=0.1)
        schedule = HopeScheduleCallback(model, level_lr_scale=(1.0, 0.5, 0.25))
        for step in range(1, 6):
            x = torch.randint(3, 99, (2, 8), generator=torch.Generator().manual_seed(step))
            model(x, labels=x).loss.backward()
            if shorthand:
                schedule.optimizer_step(optimizer)
            else:
                schedule.before_optimizer_step(optimizer)
                optimizer.step()
                schedule.after_optimizer_step(optimizer)
            optimizer.zero_grad()
        results.append(([p.detach().clone() for p in model.parameters()], [g["lr"] for g in optimizer.param_groups],
                        schedule.step))
    (params_a, lrs_a, step_a), (params_b, lrs_b, step_b) = results
    assert all(torch.equal(a, b) for a, b in zip(params_a, params_b, strict=True))
    assert lrs_a == lrs_b and step_a == step_b == 5
