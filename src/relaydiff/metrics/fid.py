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

:class:`MultisetFid` evaluates the same identities for many multisets of the rows of one feature
matrix (subsets, bootstrap resamples) against fixed statistics, reusing what they share.
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
    f = np.asarray(features)
    if f.ndim == 2 and len(f) > f.shape[1]:
        return frechet_distance(*gaussian_stats(f), mu2, sigma2)
    return MultisetFid(f, mu2, sigma2)(np.ones(len(f), dtype=np.int64))


class MultisetFid:
    """FID against fixed statistics ``(μ₂, Σ₂)`` of multisets of the rows ``fᵢ`` of one ``N×D``
    feature matrix, row ``i`` taken ``cᵢ`` times (``counts``): all rows once, a subset (0/1), a
    bootstrap resample (counts summing to ``N``).

    With ``T = Σcᵢ``, ``μ₁ = Σcᵢfᵢ/T`` and ``Σ₁ = Σcᵢ(fᵢ−μ₁)(fᵢ−μ₁)ᵀ/(T−1)`` (the statistics of the
    ``T`` rows listed out, :func:`gaussian_stats`), Eq. 6 is evaluated exactly without forming
    ``Σ₁``: over the ``u`` rows present, with ``w = √c`` and ``Q = I − wwᵀ/T``, the rows of
    ``B = Q·diag(w)·X`` (``X`` the rows centred on the matrix's mean; ``Q`` removes any common
    shift) give ``(T−1)Σ₁ = BᵀB``, so the non-zero eigenvalues of ``Σ₁Σ₂`` are those of
    ``BΣ₂Bᵀ/(T−1)`` and ``tr((Σ₁Σ₂)^{1/2}) = Σ√λ`` (negative rounding residues clipped to 0).

    ``N ≤ D``: ``G = XΣ₂Xᵀ`` (``N×N``) is formed once and each multiset costs a ``u×u`` gather and
    eigenproblem. ``N > D``: ``Y = XL`` with ``Σ₂ = LLᵀ`` (``L = V·diag(√e)`` from one ``eigh``)
    is formed once; each multiset forms ``Z = QWY`` rows (``W = diag(w)``) and solves the smaller
    of ``ZZᵀ`` (``u×u``) and ``ZᵀZ`` (``D×D``; ``Σ₂^{1/2}Σ₁Σ₂^{1/2}`` up to an orthogonal change
    of basis), an ``O(u·D·min(u, D))`` product and an eigenproblem of that size.
    """

    def __init__(self, features: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> None:
        f = np.asarray(features, np.float64)
        mu2, s2 = np.asarray(mu2, np.float64), np.asarray(sigma2, np.float64)
        if f.ndim != 2 or mu2.shape != (f.shape[1],) or s2.shape != (f.shape[1],) * 2:
            raise ValueError(f"Fréchet distance of mismatched statistics: features of shape "
                             f"{f.shape}, reference mean {mu2.shape} and covariance {s2.shape}")
        self.n, self.d = f.shape
        self.mean = f.mean(axis=0)
        self.x = f - self.mean
        self.squares = np.einsum("ij,ij->i", self.x, self.x)
        self.offset = self.mean - mu2
        self.trace2 = float(np.trace(s2))
        if self.n <= self.d:
            self.gram = self.x @ s2 @ self.x.T
        else:
            e, v = np.linalg.eigh(s2)
            self.y = (self.x @ v) * np.sqrt(np.clip(e, 0, None))

    def __call__(self, counts: np.ndarray) -> float:
        """FID of the multiset ``counts`` (``N`` non-negative integers summing to at least 2)."""
        c = np.asarray(counts)
        if c.shape != (self.n,) or (c < 0).any():
            raise ValueError(f"counts must be {self.n} non-negative integers, got shape {c.shape}")
        total = int(c.sum())
        if total < 2:
            raise ValueError(f"a Gaussian fit needs at least 2 feature vectors, got {total}")
        keep = np.flatnonzero(c)
        w = np.sqrt(c[keep].astype(np.float64))
        shift = c[keep] @ self.x[keep] / total  # μ₁ − mean
        trace1 = (c[keep] @ self.squares[keep] - total * shift @ shift) / (total - 1)
        if self.n <= self.d:
            m = self.gram[np.ix_(keep, keep)] * np.outer(w, w)
            v = m @ w / total
            m = m - np.outer(w, v) - np.outer(v, w) + (w @ v / total) * np.outer(w, w)  # QmQ
        else:
            z = w[:, None] * (self.y[keep] - c[keep] @ self.y[keep] / total)
            m = z @ z.T if len(keep) < self.d else z.T @ z
        eig = np.linalg.eigvalsh(m / (total - 1))
        diff = self.offset + shift
        return float(diff @ diff + trace1 + self.trace2 - 2 * np.sqrt(np.clip(eig, 0, None)).sum())
