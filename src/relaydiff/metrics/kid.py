"""Kernel Inception Distance (Bińkowski et al. 2018): unbiased MMD² with the cubic kernel.

``k(x, y) = (xᵀy/d + 1)³``; ``MMD² = Σ_{i≠j} k(xᵢ,xⱼ)/(m(m−1)) + Σ_{i≠j} k(yᵢ,yⱼ)/(m(m−1))
− 2·Σ_{i,j} k(xᵢ,yⱼ)/m²``, averaged over ``subsets`` random subsets of ``m = min(N₁, N₂,
subset_size)`` vectors drawn without replacement from each set (StyleGAN3: 100 × 1000).
"""

from __future__ import annotations

import numpy as np


def _kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a @ b.T / a.shape[1] + 1) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² of two equally sized sets under the cubic polynomial kernel."""
    m = len(x)
    kxx, kyy = _kernel(x, x), _kernel(y, y)
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within - 2 * _kernel(x, y).mean())


def kernel_inception_distance(real: np.ndarray, fake: np.ndarray, subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Mean and standard deviation of :func:`mmd2_unbiased` over random subsets."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    m = min(len(real), len(fake), subset_size)
    if m < 2:
        raise ValueError(f"KID needs at least 2 images per set, got {len(real)} and {len(fake)}")
    rng = np.random.default_rng(seed)
    values = [mmd2_unbiased(fake[rng.choice(len(fake), m, replace=False)],
                            real[rng.choice(len(real), m, replace=False)]) for _ in range(subsets)]
    return float(np.mean(values)), float(np.std(values))
