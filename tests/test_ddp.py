"""DDP: ``torchrun --nproc_per_node=2`` (gloo, CPU) trains the same weights as one process.

Both runs use the same global batch of 8 (micro-batches of 2: 4 accumulation steps alone,
2 per rank under DDP) for 20 steps. σ and noise of every sample come from its own generator,
so the runs differ only in float rounding of the gradient sums. The toy network has no
dropout and the data no labels (so no label dropout): random draws of the global RNG are
per rank and would differ legitimately. Besides the weights, the logged loss and gradient
norm of every step must agree: Adam hides a wrong overall gradient scale in the weights, the
gradient norm does not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from training_helpers import config_dict, image_folder

from relaydiff.training.config import TrainConfig
from relaydiff.training.loop import train


def logged_steps(run: Path) -> list[dict]:
    lines = (run / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == "train"]


def test_torchrun_two_ranks_equals_one_process(tmp_path):
    data = image_folder(tmp_path / "data", 12, 16)
    cfg = config_dict(
        data,
        batch=8,
        batch_per_device=2,
        total_images=8 * 20,
        optim={"lr": 2e-3, "rampup_images": 1},
        checkpoint={"every_images": 10**9, "keep": 1},
        log={"every_steps": 1, "tensorboard": False},
    )
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps(cfg))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = train(TrainConfig.from_dict(cfg), tmp_path / "single", progress=False)
    finally:
        torch.set_num_threads(threads)

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "relaydiff",
            "train",
            str(config),
            "--out",
            str(tmp_path / "ddp"),
            "--no-progress",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp_snapshot = tmp_path / "ddp" / "checkpoints" / single.snapshot.name
    for name in ("model", "ema"):
        a = load_file(str(single.snapshot / f"{name}.safetensors"))
        b = load_file(str(ddp_snapshot / f"{name}.safetensors"))
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-5, msg=f"{name}/{key}")
    one, two = logged_steps(tmp_path / "single"), logged_steps(tmp_path / "ddp")
    assert len(one) == len(two) == 20
    for r1, r2 in zip(one, two, strict=True):
        torch.testing.assert_close(
            torch.tensor([r2["loss"], r2["grad_norm"]]),
            torch.tensor([r1["loss"], r1["grad_norm"]]),
            rtol=1e-5,
            atol=0,
        )
    state = json.loads((ddp_snapshot / "state.json").read_text())
    assert state["cost"]["images_seen"] == 160
