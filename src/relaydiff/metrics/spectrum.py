"""Radially averaged power spectrum and the log-spectral distance between two image sets.

Weight-free, the frequency view the RDM paper takes (its Fig. 2). For images ``x`` in ``[0, 1]``
with ``H×W`` pixels the power is ``P(k) = |FFT(x)(k)|² / (H·W)``, averaged over images and colour
channels; ``P̄(r)`` averages ``P`` over the frequencies with ``round(|k|) = r`` (``|k|`` in cycles
per image, ``r = 0 … min(H, W)/2``). The distance between two sets is the root mean square, over
the bins ``r ≥ 1``, of ``10·log₁₀ P̄_a(r) − 10·log₁₀ P̄_b(r)`` (decibels).
"""

from __future__ import annotations

import torch


def radial_bins(h: int, w: int) -> torch.Tensor:
    """Integer radius ``round(√(k_y² + k_x²))`` of every FFT frequency of an ``h×w`` image."""
    ky = torch.fft.fftfreq(h, d=1 / h, dtype=torch.float64)[:, None]
    kx = torch.fft.fftfreq(w, d=1 / w, dtype=torch.float64)[None, :]
    return torch.sqrt(ky ** 2 + kx ** 2).round().long()


def power_spectrum_sum(images: torch.Tensor) -> torch.Tensor:
    """``Σ_{images, channels} |FFT(x)|²/(H·W)`` of uint8 ``N×C×H×W`` images scaled to [0, 1]."""
    x = images.double() / 255
    h, w = x.shape[-2:]
    return (torch.fft.fft2(x).abs() ** 2 / (h * w)).sum(dim=(0, 1))


def radial_profile(power: torch.Tensor) -> torch.Tensor:
    """``P̄(r)``, ``r = 0 … min(H, W)//2``: the mean of a ``H×W`` power map per radius bin."""
    h, w = power.shape
    bins = radial_bins(h, w).flatten()
    n_bins = min(h, w) // 2 + 1
    keep = bins < n_bins
    sums = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, bins[keep],
                                                               power.flatten()[keep].double())
    counts = torch.bincount(bins[keep], minlength=n_bins).double()
    return sums / counts


def log_spectral_distance(profile_a: torch.Tensor, profile_b: torch.Tensor) -> float:
    """RMS over ``r ≥ 1`` of the difference of the profiles in decibels."""
    if profile_a.shape != profile_b.shape:
        raise ValueError(f"spectrum distance needs images of the same size: {len(profile_a)} vs "
                         f"{len(profile_b)} radius bins")
    tiny = torch.finfo(torch.float64).tiny
    da = 10 * torch.log10(profile_a[1:].double().clamp_min(tiny))
    db = 10 * torch.log10(profile_b[1:].double().clamp_min(tiny))
    return float(((da - db) ** 2).mean().sqrt())
