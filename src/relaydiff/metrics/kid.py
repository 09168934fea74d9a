"""Kernel Inception Distance (Bińkowski et al. 2018): unbiased MMD² with the cubic kernel.

``k(x, y) = (xᵀy/d + 1)³``; ``MMD²ᵤ = Σ_{i≠j} k(xᵢ,xⱼ)/(m(m−1)) + Σ_{i≠j} k(yᵢ,yⱼ)/(n(n−1))
− 2·Σ_{i,j} k(xᵢ,yⱼ)/(mn)`` (Gretton et al. 2012, Lemma 6), averaged over ``subsets`` random
subsets of ``m = n = min(N₁, N₂, subset_size)`` vectors drawn without replacement from each set
(StyleGAN3: 100 × 1000). Kernel sums are taken in blocks of rows, so memory stays at
``block × len(y)`` values whatever the sets' sizes.
"""

from __future__ import annotations

import numpy as np

BLOCK = 1024  # rows of x per kernel block


def kernel_matvec(x: np.ndarray, y: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``K(x, y) @ v`` for ``K[i, j] = k(xᵢ, yⱼ)`` (``v``: ``len(y)`` values or ``len(y)×B``),
    without holding more than :data:`BLOCK` rows of ``K``."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    out = np.empty((len(x), *np.shape(v)[1:]))
    for start in range(0, len(x), BLOCK):
        rows = x[start:start + BLOCK]
        out[start:start + BLOCK] = ((rows @ y.T / x.shape[1] + 1) ** 3) @ v
    return out


def kernel_diagonal(x: np.ndarray) -> np.ndarray:
    """``k(xᵢ, xᵢ) = (‖xᵢ‖²/d + 1)³`` for each row."""
    x = np.asarray(x, np.float64)
    return (np.einsum("ij,ij->i", x, x) / x.shape[1] + 1) ** 3


def within_mean(x: np.ndarray) -> float:
    """``Σ_{i≠j} k(xᵢ, xⱼ)/(m(m−1))``: the mean kernel value over pairs of different rows."""
    m = len(x)
    return float((kernel_matvec(x, x, np.ones(m)).sum() - kernel_diagonal(x).sum()) / (m * (m - 1)))


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² (``MMD²ᵤ`` above) of two sets under the cubic polynomial kernel."""
    cross = kernel_matvec(x, y, np.ones(len(y))).sum() / (len(x) * len(y))
    return within_mean(x) + within_mean(y) - 2 * float(cross)


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
