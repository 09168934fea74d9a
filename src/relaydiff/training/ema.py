"""Exponential moving average of the weights with a half-life in training images (EDM).

After a step of ``batch`` images, ``θ_ema ← β·θ_ema + (1−β)·θ`` with
``β = 0.5^(batch / h)``, so the weight of an old value halves every ``h`` images.
With a ramp-up ratio ``r``, ``h = min(halflife, r·images_seen)`` (Karras et al. 2022,
``training_loop.py``), which lets the average follow the fast early changes.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_beta(batch: int, images_seen: int, halflife_images: float, rampup_ratio: float | None) -> float:
    """Decay ``β = 0.5^(batch / h)``, ``h = min(halflife, rampup_ratio·images_seen)``."""
    h = halflife_images
    if rampup_ratio is not None:
        h = min(h, images_seen * rampup_ratio)
    return 0.5 ** (batch / max(h, 1e-8))


class EMA:
    """A frozen copy of a module whose parameters track the source's by :func:`ema_beta`."""

    def __init__(self, module: nn.Module, halflife_images: float, rampup_ratio: float | None) -> None:
        self.module = copy.deepcopy(module).eval().requires_grad_(False)
        self.halflife_images = halflife_images
        self.rampup_ratio = rampup_ratio

    @torch.no_grad()
    def update(self, module: nn.Module, batch: int, images_seen: int) -> float:
        """One EMA step after a training step of ``batch`` images; returns ``β``."""
        beta = ema_beta(batch, images_seen, self.halflife_images, self.rampup_ratio)
        for p_ema, p in zip(self.module.parameters(), module.parameters(), strict=True):
            p_ema.copy_(p.detach().lerp(p_ema, beta))
        for b_ema, b in zip(self.module.buffers(), module.buffers(), strict=True):
            b_ema.copy_(b)
        return beta
