"""Trainer glue for Hope: optimisers by name, a ready `Trainer`, and LoRA defaults (HOPE.md §5-6).

Outer-loop tooling, not a model file. Fine-tuning a Hope with `transformers.Trainer`:

    from transformers import TrainingArguments
    from hope_hf.training import make_trainer

    args = TrainingArguments("out", max_steps=100, learning_rate=3e-3, per_device_train_batch_size=8)
    trainer = make_trainer(model, args, train_dataset, optimizer="m3")     # + the CMS schedule callback
    trainer.train()                                                        # resume: train(resume_from_checkpoint=True)

or by hand: `Trainer(model, args, train_dataset=..., optimizer_cls_and_kwargs=optimizer_cls_and_kwargs(model,
"dmgd", lr=1e-3), callbacks=[HopeScheduleCallback(model)])`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from .optim import DMGD, M3, DeltaMomentum, build_param_groups
from .schedule import HopeScheduleCallback

OPTIMIZERS = ("adamw", "delta-momentum", "dmgd", "m3")
_OPTIMIZER_CLASSES = {"adamw": torch.optim.AdamW, "delta-momentum": DeltaMomentum, "dmgd": DMGD, "m3": M3}


def optimizer_cls_and_kwargs(model: nn.Module, name: str = "adamw", lr: float = 1e-3, weight_decay: float = 0.0,
                             **kwargs: Any) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """The optimiser class and constructor kwargs (with `params` = `build_param_groups(model, weight_decay)`).

    The pair `Trainer(optimizer_cls_and_kwargs=...)` takes. `name` is one of `OPTIMIZERS`; `kwargs` go to
    the optimiser (e.g. `slow_period` for M3, `betas` for AdamW).

    Raises:
        ValueError: for an unknown `name`.
    """
    if name not in _OPTIMIZER_CLASSES:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
    params = build_param_groups(model, weight_decay=weight_decay)
    return _OPTIMIZER_CLASSES[name], {"params": params, "lr": lr, **kwargs}


def build_optimizer(model: nn.Module, name: str = "adamw", lr: float = 1e-3, weight_decay: float = 0.0,
                    **kwargs: Any) -> torch.optim.Optimizer:
    """An optimiser over `model`'s trainable parameters, grouped by kind and CMS level.

    Args:
        model: the model (or a PEFT model: only trainable parameters are taken).
        name: one of `OPTIMIZERS`: `"adamw"` (torch.optim.AdamW), `"delta-momentum"`, `"dmgd"`, `"m3"`.
        lr: learning rate.
        weight_decay: decoupled weight decay for the kinds that decay (linear weights and embeddings;
            see `hope_hf.optim.build_param_groups`).
        **kwargs: further constructor arguments of the optimiser.
    Raises:
        ValueError: for an unknown `name` (naming the value and the choices) or a bad hyper-parameter.
    """
    cls, cls_kwargs = optimizer_cls_and_kwargs(model, name, lr, weight_decay, **kwargs)
    return cls(cls_kwargs.pop("params"), **cls_kwargs)


class HopeTrainer(Trainer):
    """`Trainer` that hands the resumed checkpoint folder to its `HopeScheduleCallback`s.

    A plain `Trainer` works with the callback too when the checkpoint lies in `args.output_dir`; this
    subclass also covers `train(resume_from_checkpoint="/elsewhere/checkpoint-N")`.
    """

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"No valid checkpoint found in output directory ({self.args.output_dir})")
        if isinstance(resume_from_checkpoint, (str, os.PathLike)):
            for callback in self.callback_handler.callbacks:
                if isinstance(callback, HopeScheduleCallback):
                    callback.resume_from(resume_from_checkpoint)
        return super().train(resume_from_checkpoint=resume_from_checkpoint or None, **kwargs)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Training logs also carry each CMS level's update count and last gradient norm (all reporters see them)."""
        if "loss" in logs:
            for callback in self.callback_handler.callbacks:
                if isinstance(callback, HopeScheduleCallback):
                    logs.update(callback.metrics())
        super().log(logs, start_time)


def make_trainer(model: nn.Module, args: TrainingArguments, train_dataset, eval_dataset=None, *,
                 optimizer: str = "adamw", optimizer_kwargs: dict | None = None, schedule: bool = True,
                 warmup_steps: int = 0, level_lr_scale: Sequence[float] | None = None, callbacks=None,
                 data_collator=None, **trainer_kwargs) -> Trainer:
    """A `Trainer` for a Hope model: the named optimiser over tagged param groups, plus the CMS schedule.

    Args:
        model: a `HopeForCausalLM` (or a PEFT model around one).
        args: `TrainingArguments`; `learning_rate` and `weight_decay` feed the optimiser (unless
            `optimizer_kwargs` sets `lr` / `weight_decay`), and for AdamW also `adam_beta1/2`, `adam_epsilon`.
        train_dataset, eval_dataset, data_collator: as for `Trainer`.
        optimizer: one of `OPTIMIZERS`.
        optimizer_kwargs: extra constructor arguments of the optimiser.
        schedule: add a `HopeScheduleCallback` (each CMS level stepped every `update_period` steps).
        warmup_steps, level_lr_scale: passed to the callback (see `HopeScheduleCallback`).
        callbacks: further `TrainerCallback`s.
        **trainer_kwargs: any other `Trainer` argument (e.g. `processing_class`, `compute_metrics`).
    Returns:
        a `HopeTrainer` (a `Trainer` subclass that also restores the schedule from any checkpoint path).
    """
    kwargs = dict(optimizer_kwargs or {})
    lr = kwargs.pop("lr", args.learning_rate)
    weight_decay = kwargs.pop("weight_decay", args.weight_decay)
    if optimizer == "adamw":
        kwargs.setdefault("betas", (args.adam_beta1, args.adam_beta2))
        kwargs.setdefault("eps", args.adam_epsilon)
    cls_and_kwargs = optimizer_cls_and_kwargs(model, optimizer, lr, weight_decay, **kwargs)
    all_callbacks = list(callbacks or [])
    if schedule:
        all_callbacks.insert(0, HopeScheduleCallback(model, warmup_steps=warmup_steps, level_lr_scale=level_lr_scale))
    return HopeTrainer(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                       data_collator=data_collator, optimizer_cls_and_kwargs=cls_and_kwargs,
                       callbacks=all_callbacks, **trainer_kwargs)


#: Linear layers LoRA adapts by default, where the model has them: the mixer's projections (self-modifying:
#: `q_proj`, `g_proj`, `o_proj`, plus `k_proj`, `v_proj` when k / v are static and `input_proj` with
#: `input_projection`; attention: `q/k/v/o_proj`) and
#: every CMS level's `gate_proj`, `up_proj`, `down_proj`. Not the static rate gates (`eta_proj`, `alpha_proj`,
#: H outputs), the embeddings or the head.
LORA_TARGET_MODULES = ("input_proj", "q_proj", "k_proj", "v_proj", "o_proj", "g_proj", "gate_proj", "up_proj", "down_proj")
#: The meta-learned initial states A⁰, B⁰ of the self-modifying memories (`FastMemoryBank`, module name `memories`).
MEMORY_INIT_MODULES = ("memories",)


def lora_config(model: nn.Module, r: int = 8, alpha: int = 16, dropout: float = 0.0, train_memory_init: bool = False,
                **kwargs: Any):
    """A `peft.LoraConfig` for a Hope model.

    Args:
        model: the base model; `target_modules` defaults to the names of `LORA_TARGET_MODULES` it contains.
        r, alpha, dropout: LoRA rank, `lora_alpha`, `lora_dropout`.
        train_memory_init: also train the memories' meta-learned initial states (`modules_to_save=["memories"]`:
            a full trainable copy saved with the adapter); `False` leaves them frozen.
        **kwargs: any other `LoraConfig` field (e.g. `target_modules`, `modules_to_save`, `bias`).
    """
    from peft import LoraConfig

    present = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    kwargs.setdefault("target_modules", [name for name in LORA_TARGET_MODULES if name in present])
    if train_memory_init:
        has_memories = any(name.rsplit(".", 1)[-1] in MEMORY_INIT_MODULES for name, _ in model.named_modules())
        if not has_memories:
            raise ValueError("train_memory_init=True, but the model has no self-modifying memories (mixer='attention'?)")
        kwargs["modules_to_save"] = [*(kwargs.get("modules_to_save") or []), *MEMORY_INIT_MODULES]
    kwargs.setdefault("task_type", "CAUSAL_LM")
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, **kwargs)


__all__ = ["LORA_TARGET_MODULES", "MEMORY_INIT_MODULES", "OPTIMIZERS", "HopeScheduleCallback", "HopeTrainer",
           "build_optimizer", "lora_config", "make_trainer", "optimizer_cls_and_kwargs"]
