"""Reference image sets made from the data itself: what a generator is measured against.

* the round trip ``up(down(x))`` of data images: the fully blurred images a relay stage starts
  from, i.e. the floor that what it adds must beat;
* data images written as a sample folder (a subset, or one half of a split), so that metrics
  read them exactly like samples (the split-half FID is the noise floor of FID at that count).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..io.images import from_uint8, save_png, to_uint8
from ..io.sample_folder import seed_path
from ..ops import downsample, upsample
from .datasets import open_dataset


def evenly_spaced(n: int, total: int) -> list[int]:
    """``min(n, total)`` indices spread evenly over ``range(total)`` (all of them if n ≥ total)."""
    return np.linspace(0, total - 1, min(n, total)).round().astype(int).tolist()


def data_images(folder: str | Path, indices: Sequence[int],
                resolution: int | None = None) -> torch.Tensor:
    """Data set images ``indices`` as an ``N×C×H×W`` float64 tensor in ``[-1, 1]``."""
    ds = open_dataset(folder, resolution=resolution)
    return from_uint8(torch.stack([ds[int(i)][0] for i in indices]), torch.float64)


def write_images(images: torch.Tensor, out: str | Path, first_seed: int = 0) -> None:
    """``images`` (``[-1, 1]``) as ``OUT/000000/000000.png`` …, skipping files already there."""
    for k, arr in enumerate(to_uint8(images)):
        path = seed_path(out, first_seed + k)
        if not path.exists():
            save_png(arr, path)


def write_round_trip(data: str | Path, out: str | Path, n: int, scale: int) -> None:
    """``up(down(x))`` of ``n`` evenly spaced images of ``data`` (all of them if ``n`` ≥ its
    size) as a sample folder: the floor a relay stage must beat. Resumable."""
    indices = evenly_spaced(n, len(open_dataset(data)))
    for start in range(0, len(indices), 256):
        x = data_images(data, indices[start:start + 256])
        write_images(upsample(downsample(x, scale), scale), out, first_seed=start)
