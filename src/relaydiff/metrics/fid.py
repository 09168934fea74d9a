"""Fréchet distance between Gaussians fitted to features (FID on pool_3, sFID on mixed_6/conv).

``d² = ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^{1/2})`` (Heusel et al. 2017, Eq. 6; Dowson & Landau
1982), computed in float64 with ``scipy.linalg.sqrtm`` like TTUR, StyleGAN3 and ADM: if the
square root of the product is not finite, ``ε·I`` (ε = 1e-6) is added to both covariances; a
residual imaginary part is dropped when the diagonal's is below 1e-3, else it is an error.

With fewer feature vectors than dimensions (``n ≤ D``, e.g. a quick FID of 1 000 samples on
2048-d features) ``Σ₁ = XᵀX/(n−1)`` (``X`` the centred features) has rank < D, the product is
singular and ``sqrtm`` is slow and inaccurate. :func:`frechet_distance_features` then uses the
exact identity ``tr((Σ₁Σ₂)^{1/2}) = Σᵢ √λᵢ(XΣ₂Xᵀ/(n−1))`` (``AB`` and ``BA`` share their non-zero
eigenvalues), an ``n×n`` symmetric eigenproblem.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import linalg


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (``ddof = 1``, as ``np.cov``) of ``N×D`` features, float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"a Gaussian fit needs at least 2 feature vectors, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """``‖μ₁ − μ₂‖² + tr(Σ₁) + tr(Σ₂) − 2·tr((Σ₁Σ₂)^{1/2})`` (see the module docstring)."""
    mu1, mu2 = (np.atleast_1d(np.asarray(m, np.float64)) for m in (mu1, mu2))
    s1, s2 = (np.atleast_2d(np.asarray(s, np.float64)) for s in (sigma1, sigma2))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"Fréchet distance of mismatched statistics: means {mu1.shape} vs "
                         f"{mu2.shape}, covariances {s1.shape} vs {s2.shape} (different features?)")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        warnings.warn(f"FID: singular covariance product; adding {eps} to the diagonals",
                      RuntimeWarning, stacklevel=2)
        offset = np.eye(len(s1)) * eps
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: (Σ₁Σ₂)^1/2 has an imaginary component of "
                             f"{np.max(np.abs(covmean.imag)):.3g}; the statistics are degenerate")
        covmean = covmean.real
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def frechet_distance_features(features: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """FID of a feature set against ``(μ₂, Σ₂)``: :func:`frechet_distance` when ``n > D``, else
    the exact ``n×n`` eigenvalue form of ``tr((Σ₁Σ₂)^{1/2})`` (see the module docstring)."""
    mu1, sigma1 = gaussian_stats(features)
    n, d = np.shape(features)
    if n > d:
        return frechet_distance(mu1, sigma1, mu2, sigma2)
    mu2, s2 = np.asarray(mu2, np.float64), np.asarray(sigma2, np.float64)
    if mu2.shape != (d,) or s2.shape != (d, d):
        raise ValueError(f"Fréchet distance of mismatched statistics: features of dimension {d}, "
                         f"reference mean {mu2.shape} and covariance {s2.shape}")
    x = np.asarray(features, np.float64) - mu1
    eig = np.linalg.eigvalsh(x @ s2 @ x.T / (n - 1))
    tr_covmean = np.sqrt(np.clip(eig, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(s2) - 2 * tr_covmean)
