"""A tiny convolutional network for tests, smoke runs and untrained toy cascades."""

from __future__ import annotations

import torch
from torch import nn

from . import register


@register("toy")
class ToyNet(nn.Module):
    """Three 3×3 convolutions with SiLU, conditioned on ``c_noise`` (and labels, and a
    super-resolution stage's conditioning level) by a bias.

    Each output pixel depends only on its own sample, so results are batch-independent.
    """

    def __init__(self, in_channels: int = 3, channels: int = 16, label_dim: int = 0,
                 out_channels: int | None = None, cond_level: bool = False) -> None:
        super().__init__()
        self.in_channels, self.channels, self.label_dim = in_channels, channels, label_dim
        self.out_channels = in_channels if out_channels is None else out_channels
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.conv_mid = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv_out = nn.Conv2d(channels, self.out_channels, 3, padding=1)
        self.noise_embed = nn.Linear(1, channels)
        self.label_embed = nn.Linear(label_dim, channels, bias=False) if label_dim else None
        self.level_embed = nn.Linear(1, channels, bias=False) if cond_level else None

    def forward(
        self, x: torch.Tensor, c_noise: torch.Tensor, labels: torch.Tensor | None = None,
        cond_level: torch.Tensor | None = None,
    ) -> torch.Tensor:
        emb = self.noise_embed(c_noise.reshape(-1, 1).to(x.dtype))
        if self.label_embed is not None and labels is not None:
            emb = emb + self.label_embed(labels.to(x.dtype))
        if cond_level is not None:
            if self.level_embed is None:
                raise ValueError("this network has no conditioning-level input; build it with "
                                 "cond_level=True (a super-resolution stage)")
            emb = emb + self.level_embed(cond_level.reshape(-1, 1).to(x.dtype))
        h = torch.nn.functional.silu(self.conv_in(x) + emb[:, :, None, None])
        h = torch.nn.functional.silu(self.conv_mid(h))
        return self.conv_out(h)
