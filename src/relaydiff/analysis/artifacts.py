"""Artifact correction (the paper's appendix C.3): how much of the noise in a low-resolution input
an upscaler passes on to its output.

Low-resolution images get Gaussian noise of level ``σ = 0.1``; each method upscales the clean and
the noisy input (the same seeds for both), and the noise passed on is measured back at the input
resolution: ``E[(down(f(noisy)) − down(f(clean)))²]``, in total and in the upper half of the
frequencies (DCT radius ≥ R/2), next to the input noise itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ..ops import downsample, patch_dct, randn, upsample
from ..seeds import ARTIFACT_NOISE_STREAM

NOISE_SIGMA = 0.1


def noise_energy(diff: torch.Tensor) -> tuple[float, float]:
    """``1e4 ×`` (mean energy, energy above half the Nyquist radius) of ``N×C×R×R`` differences."""
    r = diff.shape[-1]
    coef = patch_dct(diff, r)
    i = torch.arange(r, dtype=torch.float64)
    high = (i[:, None] ** 2 + i[None, :] ** 2).sqrt() >= r / 2
    return 1e4 * float((coef**2).mean()), 1e4 * float((coef[..., high] ** 2).sum() / coef.numel())


def bicubic(x: torch.Tensor, scale: int) -> torch.Tensor:
    return F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False).clamp(-1, 1)


def artifact_correction(methods: dict[str, Callable[[torch.Tensor], torch.Tensor]],
                        low: torch.Tensor, scale: int, sigma: float = NOISE_SIGMA
                        ) -> tuple[list[dict], list[torch.Tensor]]:
    """Rows ``{method, noise energy ×1e4, high-frequency part ×1e4}`` (the input noise first) and
    the image columns (noisy input upsampled, then each method's output of the noisy input).

    ``methods`` maps a name to an upscaler of ``N×C×R×R`` float64 images in [-1, 1]; nearest
    and bicubic upsampling are always included before them."""
    low = low.to(torch.float64)
    gens = [torch.Generator().manual_seed(ARTIFACT_NOISE_STREAM + k) for k in range(low.shape[0])]
    noisy = (low + sigma * randn(low.shape, gens, dtype=low.dtype)).clamp(-1, 1)
    total, high = noise_energy(noisy - low)
    rows = [{"method": f"input noise ({low.shape[-1]} px)", "noise energy ×1e4": total,
             "high-frequency part ×1e4": high}]
    columns = [upsample(noisy, scale)]
    every = {"nearest": lambda x: upsample(x, scale), "bicubic": lambda x: bicubic(x, scale),
             **methods}
    for name, f in every.items():
        out_noisy, out_clean = f(noisy).to(low.dtype), f(low).to(low.dtype)
        columns.append(out_noisy)
        total, high = noise_energy(downsample(out_noisy, scale) - downsample(out_clean, scale))
        rows.append({"method": name, "noise energy ×1e4": total, "high-frequency part ×1e4": high})
    return rows, columns


def describe(rows: Sequence[dict], sigma: float = NOISE_SIGMA) -> str:
    """What the rows of :func:`artifact_correction` measure, what they do not, and the methods
    from least to most noise passed on (computed from ``rows``)."""
    noise, *methods = rows
    ranked = sorted(methods, key=lambda r: r["noise energy ×1e4"])
    order = ", ".join(f"{r['method']} {r['noise energy ×1e4']:.3g}" for r in ranked)
    return (
        f"What the table measures: each method upsamples the clean and the noisy input (Gaussian "
        f"noise σ = {sigma:g} on pixels in [−1, 1], clipped to that range); both outputs are "
        "box-averaged back to the input's resolution, and <b>noise "
        "energy ×1e4</b> is 10⁴ × the mean squared difference between the two (equal, by "
        "Parseval, to the mean squared orthonormal DCT coefficient of the difference); the "
        "<b>high-frequency part</b> is the share of that from the DCT coefficients at radius ≥ "
        "half the input's side (still divided by the count of all of them, so at most the "
        "noise energy). The first row is the input noise itself "
        f"({noise['noise energy ×1e4']:.3g}). From least to most noise passed on: {order}. "
        "What it does not measure is fidelity to the input: a generative upscaler such as a "
        "relay stage draws a new sample, which can change content (compare its column with the "
        "input's), and a low noise energy says only that its output depends little on the "
        "input's noise. It is not a restoration metric.")
