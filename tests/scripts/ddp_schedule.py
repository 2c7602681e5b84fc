"""Two-process DDP run of the CMS schedule, launched by tests/test_distributed.py:

    accelerate launch --multi_gpu --num_processes 2 tests/scripts/ddp_schedule.py OUTPUT_DIR

(`--multi_gpu` is accelerate's switch for its torchrun launcher; on a machine without GPUs the two processes run
on CPU with gloo. `--cpu` would start one plain process.)

Each rank trains the same tiny Hope (CMS periods 1, 4, 16) on its own shard of the data with M3 and the
schedule for 8 steps, then writes its parameters to OUTPUT_DIR/rank{r}.safetensors (rank 0 also writes
the initial parameters) and its per-level update counts to OUTPUT_DIR/rank{r}.json.
"""

from __future__ import annotations

import json
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import TrainingArguments

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from conftest import tiny_config_kwargs  # noqa: E402

from hope_hf import HopeConfig, HopeForCausalLM  # noqa: E402
from hope_hf.schedule import HopeScheduleCallback  # noqa: E402
from hope_hf.training import make_trainer  # noqa: E402


def main(output_dir: str) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    levels = [{"intermediate_size": 37 - 6 * j, "update_period": p} for j, p in enumerate((1, 4, 16))]
    model = HopeForCausalLM(HopeConfig(**tiny_config_kwargs(num_hidden_layers=1, cms_levels=levels)))
    initial = {n: p.detach().clone().contiguous() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(123)
    data = [{"input_ids": ids, "labels": ids.clone()} for ids in torch.randint(3, 99, (64, 12), generator=g)]
    args = TrainingArguments(output_dir=output_dir, max_steps=8, per_device_train_batch_size=2, learning_rate=3e-3,
                             report_to=[], use_cpu=True, save_strategy="no", logging_steps=4, disable_tqdm=True,
                             seed=0, ddp_backend="gloo", ddp_find_unused_parameters=False, dataloader_num_workers=0)
    trainer = make_trainer(model, args, data, optimizer="m3", optimizer_kwargs={"slow_period": 3})
    trainer.train()
    rank, world = trainer.args.process_index, trainer.args.world_size
    params = {n: p.detach().contiguous() for n, p in trainer.model.named_parameters()}
    save_file(params, os.path.join(output_dir, f"rank{rank}.safetensors"))
    if rank == 0:
        save_file(initial, os.path.join(output_dir, "initial.safetensors"))
    schedule = next(c for c in trainer.callback_handler.callbacks if isinstance(c, HopeScheduleCallback))
    with open(os.path.join(output_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"world_size": world, "update_counts": schedule.update_counts}, f)


if __name__ == "__main__":
    main(sys.argv[1])
