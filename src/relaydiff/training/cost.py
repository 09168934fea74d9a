"""Training cost (docs/method.md §6): images seen, wall-clock device-hours, FLOPs per image.

FLOPs per image are measured, not estimated: one training sample's forward and backward pass
through the loss, under ``torch.utils.flop_counter.FlopCounterMode`` (which counts the
matrix multiplications and convolutions, 2 FLOPs per multiply-add).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode


def flops_per_image(
    denoiser: torch.nn.Module,
    loss_fn,
    image_shape: tuple[int, ...],
    label_dim: int = 0,
    device: torch.device | str = "cpu",
) -> int:
    """FLOPs of the forward + backward pass of ``loss_fn`` on one sample (gradients cleared after)."""
    x = torch.zeros((1, *image_shape), device=device)
    labels = torch.zeros(1, label_dim, device=device) if label_dim else None
    sigma = torch.ones(1, device=device)
    gen = [torch.Generator().manual_seed(0)]
    with FlopCounterMode(display=False) as counter:
        loss_fn(denoiser, x, sigma, labels, generator=gen).sum().backward()
    denoiser.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


@dataclass
class TrainingCost:
    """Accumulated over all runs of a training (resumes add up)."""

    images_seen: int = 0
    wall_seconds: float = 0.0
    device_hours: float = 0.0
    flops_per_image: int = 0

    @property
    def total_flops(self) -> float:
        return float(self.images_seen) * self.flops_per_image

    def add_time(self, seconds: float, devices: int) -> None:
        self.wall_seconds += seconds
        self.device_hours += seconds * devices / 3600

    def to_dict(self) -> dict:
        return {**asdict(self), "total_flops": self.total_flops}

    @classmethod
    def from_dict(cls, data: dict) -> TrainingCost:
        return cls(**{k: v for k, v in data.items() if k != "total_flops"})
