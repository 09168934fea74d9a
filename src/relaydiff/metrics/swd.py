"""Multi-scale sliced Wasserstein distance (SWD) of Laplacian-pyramid patches (Karras et al. 2018,
Progressive GAN, §5). Weight-free: needs no network, so it runs offline and in CI.

Every image is split into a Laplacian pyramid (5×5 binomial filter ``[1,4,6,4,1]ᵀ[1,4,6,4,1]/256``
with mirror borders; ``down`` filters and keeps every second pixel, ``up`` inserts zeros and
filters with 4× the kernel; level ``l`` is ``G_l − up(G_{l+1})`` and the coarsest level, at
16×16, is the Gaussian level itself). From each level, random 7×7 neighbourhoods become
``3·49``-dimensional descriptors; each set's descriptors are normalised per colour channel to
zero mean and unit variance. The sliced Wasserstein distance of two equally sized descriptor sets
``A, B`` is the mean over ``repeats × directions`` random unit directions ``v`` of
``mean_i |sort(Av)_i − sort(Bv)_i|``. Values are reported ×10³ (as in the paper), per level
(finest first) and averaged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NEIGHBOURHOOD = 7
MIN_RESOLUTION = 16
_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
_KERNEL = torch.outer(_BINOMIAL, _BINOMIAL) / 256


def _filter(x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    c = x.shape[1]
    k = (_KERNEL * gain).to(x)[None, None].expand(c, 1, 5, 5)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), k, groups=c)


def supports(h: int, w: int) -> bool:
    """Whether SWD's pyramid can take ``h×w`` images: square, a power of two, at least 16."""
    return h == w and h >= MIN_RESOLUTION and not h & (h - 1)


def laplacian_pyramid(images: torch.Tensor) -> list[torch.Tensor]:
    """Levels (finest first) down to 16×16 of float ``N×C×H×W`` images, ``H = W = 16·2^j``."""
    h, w = images.shape[-2:]
    if not supports(h, w):
        raise ValueError(f"SWD needs square images with a power-of-two size ≥ {MIN_RESOLUTION}, "
                         f"got {h}×{w}")
    levels, current = [], images.float()
    while current.shape[-1] > MIN_RESOLUTION:
        down = _filter(current)[..., ::2, ::2]
        up = torch.zeros_like(current)
        up[..., ::2, ::2] = down
        levels.append(current - _filter(up, gain=4.0))
        current = down
    levels.append(current)
    return levels


def patch_descriptors(level: torch.Tensor, per_image: int,
                      generators: list[torch.Generator]) -> torch.Tensor:
    """``per_image`` random 7×7 neighbourhoods per image, flattened: ``(N·per_image, C·49)``.

    Image ``i``'s positions come from ``generators[i]``, so they do not depend on batching.
    """
    n, c, h, w = level.shape
    ys = torch.stack([torch.randint(0, h - NEIGHBOURHOOD + 1, (per_image,), generator=g)
                      for g in generators])
    xs = torch.stack([torch.randint(0, w - NEIGHBOURHOOD + 1, (per_image,), generator=g)
                      for g in generators])
    offsets = torch.arange(NEIGHBOURHOOD)
    rows = (ys[..., None] + offsets)[..., :, None]  # n, p, 7, 1
    cols = (xs[..., None] + offsets)[..., None, :]  # n, p, 1, 7
    idx = torch.arange(n)[:, None, None, None]
    patches = level.cpu().permute(0, 2, 3, 1)[idx, rows, cols]  # n, p, 7, 7, c
    return patches.permute(0, 1, 4, 2, 3).reshape(n * per_image, c * NEIGHBOURHOOD ** 2)


def _normalise(desc: torch.Tensor, channels: int) -> torch.Tensor:
    d = desc.double().reshape(len(desc), channels, -1)
    mean = d.mean(dim=(0, 2), keepdim=True)
    std = d.std(dim=(0, 2), keepdim=True, correction=0)
    return ((d - mean) / std.clamp_min(1e-12)).reshape(len(desc), -1)


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, repeats: int = 4, directions: int = 128,
                       seed: int = 0) -> float:
    """Mean over random unit directions ``v`` of ``mean_i |sort(a v)_i − sort(b v)_i|``."""
    if a.shape != b.shape:
        raise ValueError(f"sliced Wasserstein needs equally many descriptors, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    g = torch.Generator().manual_seed(seed)
    a32, b32 = a.float(), b.float()
    total = 0.0
    for _ in range(repeats):
        v = torch.randn(directions, a.shape[1], generator=g, dtype=torch.float64)
        v = (v / v.norm(dim=1, keepdim=True)).float()
        # (directions, n) rows: projections sorted along the contiguous axis, in float32
        pa, pb = (v @ a32.T).sort(dim=1).values, (v @ b32.T).sort(dim=1).values
        total += (pa - pb).abs().double().mean().item()
    return total / repeats


def swd(desc_a: list[torch.Tensor], desc_b: list[torch.Tensor], channels: int = 3,
        seed: int = 0) -> list[float]:
    """Per-level SWD ×10³ of two sets' raw descriptors.

    A level with more descriptors in one set is randomly subsampled to the other's count.
    """
    if len(desc_a) != len(desc_b):
        raise ValueError(f"SWD needs images of the same size: {len(desc_a)} vs {len(desc_b)} "
                         "pyramid levels")
    out = []
    g = torch.Generator().manual_seed(seed)
    for level, (a, b) in enumerate(zip(desc_a, desc_b, strict=True)):
        m = min(len(a), len(b))
        if len(a) > m:
            a = a[torch.randperm(len(a), generator=g)[:m]]
        if len(b) > m:
            b = b[torch.randperm(len(b), generator=g)[:m]]
        a, b = _normalise(a, channels), _normalise(b, channels)
        out.append(1e3 * sliced_wasserstein(a, b, seed=seed + level))
    return out
