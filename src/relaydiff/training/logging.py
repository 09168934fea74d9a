"""What a training run reports: a JSON-lines log, TensorBoard scalars/images, σ-band losses."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import torch

# Edges of the σ bands whose mean loss is logged separately: (…, 0.1), [0.1, 0.5), …
SIGMA_BAND_EDGES = (0.1, 0.5, 2.0, 10.0)


def band_names() -> list[str]:
    edges = ["0", *map(str, SIGMA_BAND_EDGES), "inf"]
    return [f"loss/sigma_{lo}-{hi}" for lo, hi in itertools.pairwise(edges)]


class SigmaBands:
    """Sums and counts of per-sample losses in each σ band (a flat tensor, easy to all-reduce)."""

    def __init__(self) -> None:
        self.stats = torch.zeros(2 * (len(SIGMA_BAND_EDGES) + 1), dtype=torch.float64)

    def add(self, sigma: torch.Tensor, loss: torch.Tensor) -> None:
        edges = torch.tensor(SIGMA_BAND_EDGES, dtype=torch.float64)
        band = torch.bucketize(sigma.detach().double().cpu(), edges, right=True)
        k = len(SIGMA_BAND_EDGES) + 1
        self.stats[:k] += torch.bincount(band, loss.detach().double().cpu(), minlength=k)
        self.stats[k:] += torch.bincount(band, minlength=k).double()

    def means(self, stats: torch.Tensor) -> dict[str, float]:
        k = len(SIGMA_BAND_EDGES) + 1
        return {
            name: (s / c).item()
            for name, s, c in zip(band_names(), stats[:k], stats[k:], strict=True)
            if c > 0
        }

    def reset(self) -> None:
        self.stats.zero_()


class RunLog:
    """Appends JSON records to ``log.jsonl`` and mirrors scalars/images to TensorBoard."""

    def __init__(self, run_dir: Path, tensorboard: bool) -> None:
        self.path = run_dir / "log.jsonl"
        self.file = open(self.path, "a")
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                self.writer = None
            else:
                self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def record(self, kind: str, step: int, values: dict) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()}
        self.file.write(json.dumps({"event": kind, "step": step, **clean}) + "\n")
        self.file.flush()
        if self.writer is not None and kind == "train":
            for key, value in values.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.writer.add_scalar(key, value, step)

    def scalar(self, tag: str, step: int, value: float) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, value, step)

    def image(self, tag: str, step: int, grid: np.ndarray) -> None:
        if self.writer is not None:
            self.writer.add_image(tag, grid, step, dataformats="HWC")

    def close(self) -> None:
        self.file.close()
        if self.writer is not None:
            self.writer.close()
