"""Real images for the evaluation tests: fluent-emoji-3d (npm) at 64×64, resized copies, and
small blur/noise.

The npm tarball is fetched once by ``relaydiff.data.sources.npm_tarball`` into the cache
(``~/.cache/relaydiff/npm``); images are composited over white and box-downsampled 256 → 64.
"""

from __future__ import annotations

import io
import tarfile

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from relaydiff.data.sources import FLUENT_EMOJI_3D, npm_tarball
from relaydiff.io.images import load_image


def emoji_images(n: int, seed: int = 0) -> torch.Tensor:
    """``n`` random distinct emoji as uint8 ``n×3×64×64``."""
    with tarfile.open(npm_tarball(FLUENT_EMOJI_3D)) as tar:
        members = sorted((m for m in tar.getmembers() if m.name.endswith(".webp")),
                         key=lambda m: m.name)
        pick = np.random.default_rng(seed).permutation(len(members))[:n]
        arrays = [load_image(io.BytesIO(tar.extractfile(members[i]).read())) for i in pick]
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).double()
    assert x.shape[-1] == 256, x.shape
    return F.avg_pool2d(x, 4).round().to(torch.uint8)


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (reflect borders) of uint8 images, rounded back to uint8."""
    radius = int(np.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    x = images.double()
    c = x.shape[1]
    row, col = k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), row, groups=c)
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), col, groups=c)
    return x.round().clamp(0, 255).to(torch.uint8)


def add_noise(images: torch.Tensor, std: float, seed: int = 0) -> torch.Tensor:
    """Gaussian pixel noise of ``std`` (in 0…255 units), clamped and rounded to uint8."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(images.shape, generator=g, dtype=torch.float64) * std
    return (images.double() + noise).round().clamp(0, 255).to(torch.uint8)


def resized(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 images resized with PIL's bicubic filter, as a user would make odd-sized sets."""
    out = [np.asarray(Image.fromarray(im).resize((width, height), Image.Resampling.BICUBIC))
           for im in images.permute(0, 2, 3, 1).numpy()]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()
