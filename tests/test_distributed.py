"""The CMS schedule under DDP: two CPU processes (gloo) run the same schedule and end with identical parameters."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

SCRIPT = Path(__file__).parent / "scripts" / "ddp_schedule.py"
SRC = Path(__file__).resolve().parents[1] / "src"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def why_multiprocessing_is_impossible() -> str | None:
    if not torch.distributed.is_available():
        return "torch.distributed is not available in this build of torch"
    if not torch.distributed.is_gloo_available():
        return "the gloo backend is not available in this build of torch"
    try:
        free_port()
    except OSError as error:
        return f"cannot open a local TCP port for the process group: {error}"
    return None


def test_two_ranks_run_the_same_schedule_and_end_identical(tmp_path):
    reason = why_multiprocessing_is_impossible()
    if reason:
        print(f"SKIPPED test_distributed: {reason}")
        pytest.skip(reason)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), str(SCRIPT), str(tmp_path)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world_size"] for r in reports] == [2, 2]
    assert reports[0]["update_counts"] == reports[1]["update_counts"] == [8, 2, 0]     # periods 1, 4, 16; 8 steps
    rank0, rank1 = (load_file(tmp_path / f"rank{r}.safetensors") for r in range(2))
    initial = load_file(tmp_path / "initial.safetensors")
    assert rank0.keys() == rank1.keys() == initial.keys()
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
        moved = not torch.equal(rank0[name], initial[name])
        if ".cms.levels.2." in name:
            assert not moved, name                         # period 16: still buffering after 8 steps
        elif ".cms.levels." in name or name.endswith("q_proj.weight"):
            assert moved, name
