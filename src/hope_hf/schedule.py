"""The CMS schedule: each level's parameters take an optimiser step every `update_period` steps (HOPE.md §4, §6).

Outer-loop tooling (not a model file). Level `j` (parameters `...cms.levels.{j}....`) with period `P_j`
is *due* at training step `n` (1-based) when `n ≤ warmup_steps` or `(n − warmup_steps) mod P_j = 0`.
Before every optimiser step:

    not due:  buffer_j += grad_j;   grad_j ← None      (the optimiser skips the level: no moment
                                                       update, no weight decay)
    due:      grad_j ← grad_j + buffer_j;  buffer_j ← 0 (one step on the summed gradients of the period)

so the gradients of skipped steps are summed, never dropped (Eq. 71 read at the outer level). Parameters
outside the CMS (mixer, embeddings, norms outside the levels) are untouched: they step every step.

With `transformers.Trainer`, pass the callback (`make_trainer` does): it runs in `on_pre_optimizer_step`
/ `on_optimizer_step`, after gradient accumulation, clipping and the DDP all-reduce (so every rank
buffers the same gradients), takes the optimiser from the callback kwargs, logs per-level update counts
and gradient norms, writes `hope_schedule.safetensors` into every checkpoint folder and reads it back on
resume. From a plain loop:

    schedule = HopeScheduleCallback(model)
    for batch in data:
        model(**batch).loss.backward()
        schedule.optimizer_step(optimizer)   # = before_optimizer_step, optimizer.step(), after_optimizer_step
        optimizer.zero_grad()
    schedule.save(folder)   # and schedule.load(folder) to resume; or state_dict() / load_state_dict()
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .optim import cms_level_of

SCHEDULE_FILE = "hope_schedule.safetensors"


class HopeScheduleCallback(TrainerCallback):
    """Applies every CMS level's `update_period` at the training-step level.

    Args:
        model: the model (a `HopeForCausalLM`, or a PEFT model around one). Its trainable parameters named
            `...cms.levels.{j}....` are scheduled; build the callback after freezing / wrapping the model.
        warmup_steps: during the first `warmup_steps` steps every level is updated every step; the periods
            count from the end of the warm-up.
        level_lr_scale: one learning-rate factor per level (default all 1). Applied to the optimiser's
            param groups during the step, so each group must hold parameters of one level only (as the
            groups of `hope_hf.optim.build_param_groups` do); otherwise `ValueError`.
        update_periods: override the periods read from `model.config.cms_levels[j]["update_period"]`.

    Gradient clipping (Trainer's `max_grad_norm`) acts on each step's whole gradient before the callback,
    so a buffer sums clipped gradients. fp16 with a gradient scaler, DeepSpeed and FSDP are not supported
    (bf16 is).
    """

    def __init__(self, model: nn.Module, warmup_steps: int = 0, level_lr_scale: Sequence[float] | None = None,
                 update_periods: Sequence[int] | None = None):
        if update_periods is None:
            config = getattr(model, "config", None)
            if config is None or not hasattr(config, "cms_levels"):
                raise ValueError("model has no config.cms_levels: pass update_periods explicitly")
            update_periods = [level["update_period"] for level in config.cms_levels]
        for j, period in enumerate(update_periods):
            if isinstance(period, bool) or not isinstance(period, int) or period < 1:
                raise ValueError(f"update_periods[{j}] must be an integer >= 1, got {period!r}")
        self.update_periods = list(update_periods)
        num_levels = len(self.update_periods)
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an integer >= 0, got {warmup_steps!r}")
        self.warmup_steps = warmup_steps
        if level_lr_scale is None:
            level_lr_scale = [1.0] * num_levels
        level_lr_scale = [float(s) for s in level_lr_scale]
        if len(level_lr_scale) != num_levels:
            raise ValueError(f"level_lr_scale must have one factor per CMS level ({num_levels}), got {level_lr_scale}")
        for j, scale in enumerate(level_lr_scale):
            if not (math.isfinite(scale) and scale >= 0):
                raise ValueError(f"level_lr_scale[{j}] must be a finite number >= 0, got {scale!r}")
        self.level_lr_scale = level_lr_scale

        self.level_params: list[list[tuple[str, nn.Parameter]]] = [[] for _ in range(num_levels)]
        for name, param in model.named_parameters():
            level = cms_level_of(name)
            if level is None or not param.requires_grad:
                continue
            if level >= num_levels:
                raise ValueError(f"parameter {name} belongs to CMS level {level}, but only {num_levels} periods are set")
            self.level_params[level].append((name, param))
        self._level_of_param = {id(p): j for j, params in enumerate(self.level_params) for _, p in params}
        self._saved_lrs: list[tuple[dict, float]] = []
        self._resume_path: str | None = None
        self.reset()

    # ----------------------------------------------------------------------------------------------
    # the schedule
    # ----------------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget all progress: step 0, empty buffers, zero counters."""
        self.step = 0
        self.buffers: dict[str, torch.Tensor] = {}
        self.update_counts = [0] * len(self.update_periods)
        self.grad_norms = [0.0] * len(self.update_periods)

    def is_due(self, level: int, step: int) -> bool:
        """Whether `level` takes an optimiser step at training step `step` (1-based)."""
        if step <= self.warmup_steps:
            return True
        return (step - self.warmup_steps) % self.update_periods[level] == 0

    @torch.no_grad()
    def before_optimizer_step(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Buffer the gradients of levels not due, add the buffers back for levels due; scale learning rates.

        Call after the gradients of the step are complete (accumulated, clipped, all-reduced) and before
        `optimizer.step()`. `optimizer` is needed only for `level_lr_scale`.
        """
        step = self.step + 1
        for level, params in enumerate(self.level_params):
            due = self.is_due(level, step)
            applied = []
            for name, param in params:
                buffer = self.buffers.get(name)
                if due:
                    if buffer is not None:
                        if param.grad is None:
                            param.grad = buffer.clone()
                        else:
                            param.grad.add_(buffer)
                        buffer.zero_()
                    if param.grad is not None:
                        applied.append(param.grad)
                elif param.grad is not None:
                    if buffer is None:
                        self.buffers[name] = param.grad.detach().clone()
                    else:
                        buffer.add_(param.grad)
                    param.grad = None
            if due:
                self.update_counts[level] += 1
                if applied:
                    norms = torch.stack(torch._foreach_norm(applied)).float()
                    self.grad_norms[level] = float(torch.linalg.vector_norm(norms))
        if optimizer is not None and any(scale != 1.0 for scale in self.level_lr_scale):
            self._scale_learning_rates(optimizer)

    def after_optimizer_step(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Restore the learning rates scaled by `before_optimizer_step` and count the step."""
        for group, lr in self._saved_lrs:
            group["lr"] = lr
        self._saved_lrs = []
        self.step += 1

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """One optimiser step of a plain loop under the schedule: `before_optimizer_step`, `optimizer.step()`,
        `after_optimizer_step` (call it where the loop would call `optimizer.step()`)."""
        self.before_optimizer_step(optimizer)
        optimizer.step()
        self.after_optimizer_step(optimizer)

    def _scale_learning_rates(self, optimizer: torch.optim.Optimizer) -> None:
        for index, group in enumerate(optimizer.param_groups):
            levels = {self._level_of_param.get(id(p)) for p in group["params"]}
            scales = {1.0 if level is None else self.level_lr_scale[level] for level in levels}
            if len(scales) > 1:
                raise ValueError(
                    f"level_lr_scale needs one CMS level per optimiser param group, but group {index} mixes "
                    f"levels {sorted(levels, key=str)}: build the optimiser with hope_hf.optim.build_param_groups"
                )
            (scale,) = scales
            if scale != 1.0:
                self._saved_lrs.append((group, group["lr"]))
                group["lr"] = group["lr"] * scale

    def metrics(self) -> dict[str, float]:
        """Per level: updates applied so far and the norm of the last applied (summed) gradient."""
        logs = {}
        for level in range(len(self.update_periods)):
            logs[f"cms/level_{level}/updates"] = self.update_counts[level]
            logs[f"cms/level_{level}/grad_norm"] = self.grad_norms[level]
        return logs

    # ----------------------------------------------------------------------------------------------
    # state: in every checkpoint, restored on resume
    # ----------------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Tensors and plain values only: step, counters, gradient norms, the buffers by parameter name."""
        return {"step": self.step, "update_counts": list(self.update_counts), "grad_norms": list(self.grad_norms),
                "update_periods": list(self.update_periods), "warmup_steps": self.warmup_steps,
                "buffers": {name: buffer.clone() for name, buffer in self.buffers.items()}}

    def load_state_dict(self, state: dict) -> None:
        if list(state["update_periods"]) != self.update_periods or state["warmup_steps"] != self.warmup_steps:
            raise ValueError(
                f"the saved schedule has update_periods={state['update_periods']}, warmup_steps={state['warmup_steps']}; "
                f"this callback has update_periods={self.update_periods}, warmup_steps={self.warmup_steps}"
            )
        params = {name: param for level in self.level_params for name, param in level}
        unknown = sorted(set(state["buffers"]) - set(params))
        if unknown:
            raise ValueError(f"the saved schedule buffers parameters this model does not schedule: {unknown[:5]}")
        self.step = int(state["step"])
        self.update_counts = [int(c) for c in state["update_counts"]]
        self.grad_norms = [float(n) for n in state["grad_norms"]]
        self.buffers = {name: buffer.to(device=params[name].device, dtype=params[name].dtype).clone()
                        for name, buffer in state["buffers"].items()}

    def save(self, folder: str | os.PathLike) -> str:
        """Write the state to `folder/hope_schedule.safetensors` (buffers as tensors, the rest as metadata)."""
        state = self.state_dict()
        tensors = {f"buffer.{name}": buffer.contiguous() for name, buffer in state.pop("buffers").items()}
        path = os.path.join(folder, SCHEDULE_FILE)
        save_file(tensors, path, metadata={"schedule": json.dumps(state)})
        return path

    def load(self, folder: str | os.PathLike) -> None:
        """Read the state written by `save` from `folder`."""
        path = os.path.join(folder, SCHEDULE_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no {SCHEDULE_FILE} in {folder}: it was not saved with a HopeScheduleCallback")
        with safe_open(path, framework="pt") as f:
            state = json.loads(f.metadata()["schedule"])
        tensors = load_file(path)
        state["buffers"] = {name[len("buffer."):]: t for name, t in tensors.items()}
        self.load_state_dict(state)

    def resume_from(self, checkpoint: str | os.PathLike) -> None:
        """Load the state from this checkpoint folder at the next `on_train_begin` (Trainer resume)."""
        self._resume_path = os.fspath(checkpoint)

    # ----------------------------------------------------------------------------------------------
    # Trainer events
    # ----------------------------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, **kwargs):
        if args.fp16:
            raise NotImplementedError("HopeScheduleCallback does not support fp16 with a gradient scaler: use bf16")
        if args.deepspeed or args.fsdp:
            raise NotImplementedError("HopeScheduleCallback does not support DeepSpeed or FSDP (sharded gradients)")
        if state.global_step == 0:
            self.reset()
            return
        candidates = [self._resume_path, args.resume_from_checkpoint if isinstance(args.resume_from_checkpoint, str)
                      else None, os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")]
        for folder in candidates:
            if folder and os.path.isfile(os.path.join(folder, SCHEDULE_FILE)):
                self.load(folder)
                break
        else:
            raise FileNotFoundError(
                f"resuming at step {state.global_step}, but no {SCHEDULE_FILE} found in {[c for c in candidates if c]}: "
                "call callback.resume_from(checkpoint_folder) before trainer.train(...)"
            )
        self._resume_path = None
        if self.step != state.global_step:
            raise ValueError(f"the schedule state is at step {self.step}, the Trainer at step {state.global_step}")

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.before_optimizer_step(optimizer)

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.after_optimizer_step(optimizer)

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"checkpoint folder {folder} not found: HopeScheduleCallback expects Trainer's "
                                    "default layout output_dir/checkpoint-N (no hyper-parameter search)")
        self.save(folder)

    def on_log(self, args, state, control, logs=None, **kwargs):
        """Add the per-level metrics to training logs (HopeTrainer adds them before any reporter sees them)."""
        if logs is None or "loss" not in logs:
            return
        missing = {k: v for k, v in self.metrics().items() if k not in logs}
        logs.update(missing)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(missing)


__all__ = ["SCHEDULE_FILE", "HopeScheduleCallback"]
