"""Sample grids from the EMA network of one stage, for a look at training progress.

A stage-1 (EDM) network samples from noise with its own sampler settings. A relay stage
relays real images: ``x_low = down(x_data)`` goes through the stage's relay sampler, which
starts from ``up(x_low) + σ_0·n``; the grid shows ``up(x_low)`` and the result side by side.
"""

from __future__ import annotations

import numpy as np
import torch

from ..cascade import RelayCascade
from ..io.images import image_grid, to_uint8
from ..ops import downsample, upsample
from ..stage import StageConfig


def stage_samples(config: StageConfig, denoiser: torch.nn.Module, real: torch.Tensor | None,
                  count: int) -> torch.Tensor:
    """``count`` samples of one stage (seeds ``0..count-1``); a relay stage relays
    ``down(real)``. Returns ``N×C×H×W`` in [-1, 1]."""
    cascade = RelayCascade([config], [denoiser])
    seeds = list(range(count))
    if config.kind == "edm":
        return cascade(seeds, batch_size=count, dtype=torch.float32, batch_invariant=False)[-1]
    if real is None:
        raise ValueError(f"a {config.kind} stage's samples need real images to upscale")
    low = downsample(real[:count].to(cascade.device), config.scale)
    return cascade(seeds, low_res=low, batch_size=count, dtype=torch.float32,
                   batch_invariant=False)[-1]


def sample_grid(
    config: StageConfig, denoiser: torch.nn.Module, real: torch.Tensor | None, count: int
) -> np.ndarray:
    """An ``H×W×3`` uint8 grid of ``count`` samples (seeds ``0..count-1``); a relay stage's
    grid pairs each nearest-upsampled input with its output."""
    images = stage_samples(config, denoiser, real, count)
    if config.kind == "edm":
        return image_grid(to_uint8(images))
    low = downsample(real[:count], config.scale)
    pairs = torch.stack([upsample(low, config.scale), images], dim=1).flatten(0, 1)
    return image_grid(to_uint8(pairs), columns=2 * int(np.ceil(np.sqrt(count))))
