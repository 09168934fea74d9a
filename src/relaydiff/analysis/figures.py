"""Pictures of what relay diffusion does: block noise, and relay trajectories of a cascade."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..cascade import RelayCascade, seed_generators
from ..io.images import image_grid, to_uint8
from ..ops import block_noise, downsample, randn, relay_noise, upsample


def noise_figure(images: torch.Tensor, s: int, sigma: float = 0.3, alpha: float = 0.15,
                 seed: int = 0) -> np.ndarray:
    """A grid with one row per image: clean, + white noise, + block noise, + relay noise
    ``(ε + α·Block)/√(1+α²)``, all of per-pixel std ``sigma``; each followed by what the
    ``s×`` lower resolution sees of it (``up(down(·))``): white noise averages away there,
    block noise does not."""
    g = torch.Generator().manual_seed(seed)
    x = images.to(torch.float64)
    panels = [
        x,
        x + sigma * randn(x.shape, g, dtype=x.dtype),
        x + sigma * block_noise(x.shape, s, generator=g, dtype=x.dtype),
        x + sigma * relay_noise(x.shape, s, alpha, generator=g, dtype=x.dtype),
    ]
    tiles = []
    for k in range(x.shape[0]):
        for p in panels:
            tiles += [p[k], upsample(downsample(p[k], s), s)]
    return image_grid(to_uint8(torch.stack(tiles)), columns=2 * len(panels))


@torch.no_grad()
def relay_trajectory(cascade: RelayCascade, seeds: Sequence[int], stage: int = 1,
                     frames: int = 4, low_res: torch.Tensor | None = None) -> np.ndarray:
    """One row per seed: the low-resolution input (nearest-upsampled), the relay start
    ``up(x_low) + σ_0·n``, ``frames`` intermediate states of the relay sampler and the output of
    relay stage ``stage`` (0-based stage index; stage 1 is sampled first unless ``low_res``)."""
    cfg = cascade.configs[stage]
    if cfg.kind != "relay":
        raise ValueError(f"stage {stage + 1} is not a relay stage")
    gens = seed_generators(seeds)
    idx = cascade.labels_for(seeds) if cascade.num_classes else None
    x = low_res
    if x is None:
        for k in range(stage):
            x = cascade.run_stage(k, x, gens, idx)
    states: list[torch.Tensor] = []
    out = cascade.run_stage(stage, x, gens, idx, callback=lambda i, s, xi, d: states.append(xi))
    picks = np.linspace(1, len(states) - 1, frames).round().astype(int) if len(states) > 1 else []
    columns = [upsample(x.to(out.dtype), cfg.relay.scale), states[0]]
    columns += [states[i] for i in picks] + [out]
    tiles = [c[k].clamp(-1, 1) for k in range(len(seeds)) for c in columns]
    return image_grid(to_uint8(torch.stack(tiles)), columns=len(columns))
