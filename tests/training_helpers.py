"""Shared helpers of the training tests: tiny image folders and configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from relaydiff.training.config import TrainConfig


def smooth_images(n: int, res: int, seed: int = 0) -> np.ndarray:
    """``n`` smooth colour images ``res×res×3`` uint8 (low-frequency sinusoids)."""
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(np.linspace(0, 1, res), np.linspace(0, 1, res), indexing="ij")
    out = []
    for _ in range(n):
        channels = []
        for _ in range(3):
            fx, fy, phase = rng.uniform(0.5, 2.0), rng.uniform(0.5, 2.0), rng.uniform(0, 6.3)
            channels.append(np.sin(2 * np.pi * (fx * x + fy * y) + phase))
        out.append(np.stack(channels, -1))
    return np.round((np.stack(out) * 0.9 + 1) * 127.5).clip(0, 255).astype(np.uint8)


def image_folder(root: Path, n: int, res: int, classes: int = 0, seed: int = 0) -> Path:
    """A folder of ``n`` PNGs (in ``classes`` sub-folders when ``classes`` ≥ 2)."""
    for k, image in enumerate(smooth_images(n, res, seed)):
        sub = root / f"class{k % classes}" if classes >= 2 else root
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(sub / f"img{k:03d}.png")
    return root


def toy_network(label_dim: int = 0) -> dict:
    return {"name": "toy", "channels": 16, "label_dim": label_dim}


def tiny_unet(res: int, dropout: float = 0.0, label_dropout: float = 0.0) -> dict:
    return {
        "name": "unet",
        "img_resolution": res,
        "model_channels": 8,
        "channel_mult": [1, 2],
        "num_blocks": 1,
        "attn_resolutions": [res // 2],
        "dropout": dropout,
        "label_dropout": label_dropout,
        "channels_per_head": 8,
    }


def config_dict(
    images: Path, kind: str = "edm", res: int = 16, network: dict | None = None, **overrides
) -> dict:
    """A training config dict for a tiny run; keyword arguments replace top-level sections."""
    stage = {
        "kind": kind,
        "resolution": res,
        "network": network or toy_network(),
        "edm_sampler": {"steps": 4},
        "relay_sampler": {"steps": 8},
    }
    if kind == "relay":
        stage["relay"] = {"scale": 4}
    if kind == "sr":
        stage["sr"] = {"scale": 4}
    cfg = {
        "stage": stage,
        "data": {"path": str(images)},
        "batch": 4,
        "total_images": 32,
        "seed": 7,
        "optim": {"lr": 1e-3, "rampup_images": 8},
        "ema": {"halflife_images": 16, "rampup_ratio": 0.5},
        "checkpoint": {"every_images": 16, "keep": 3},
        "log": {"every_steps": 1, "grid_every_images": 0, "tensorboard": False},
    }
    cfg.update(overrides)
    return cfg


def make_config(images: Path, **kwargs) -> TrainConfig:
    return TrainConfig.from_dict(config_dict(images, **kwargs))


def posthoc_config(images: Path, total: int) -> TrainConfig:
    """A tiny run that stores post-hoc EMA snapshots (σ_rel 0.05 and 0.10, every 8 images)."""
    return make_config(images, total_images=total, ema={"halflife_images": 16, "rampup_ratio": 0.5,
                                                         "posthoc_sigma_rels": [0.05, 0.10],
                                                         "posthoc_every_images": 8},
                       checkpoint={"every_images": 16, "keep": 5})


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny networks run fastest on one thread (and leave the other cores alone); a module
    that imports this fixture runs on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
