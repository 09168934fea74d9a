"""Bootstrap intervals of FID and KID over the sample rows, the reference held fixed.

A resample draws ``N`` of the ``N`` sample feature rows with replacement (row ``i`` taken ``cᵢ``
times, ``c ~ Multinomial(N; 1/N, …, 1/N)``, :func:`resample_counts`); the reference side (FID's
``μ₂, Σ₂``, KID's reference features) is never resampled, so the interval speaks for the samples'
sampling noise only. The interval is the percentile interval of the resampled values (Efron &
Tibshirani 1993, ch. 13): their ``(1 − level)/2`` and ``(1 + level)/2`` quantiles.

A resample holds only about 63 % distinct rows (``1 − (1 − 1/N)ᴺ → 1 − 1/e``). KID's estimator
is defined over pairs of *different* images, so a pair of copies of one row is no such pair and
is left out (:func:`bootstrap_kids`); the resampled values are then centred on the estimate
(their expectation is exactly the estimate). FID has no such form: a Gaussian fitted to fewer
distinct rows has a covariance of lower rank, a smaller ``tr((Σ₁Σ₂)^{1/2})`` and a larger FID,
so nearly every resampled FID lies above the estimate (2048-d Inception features of 256 images:
by many times their spread). :func:`fid_interval` therefore shifts the resampled values by their
mean's excess over the estimate (the bootstrap's bias estimate, Efron & Tibshirani 1993, ch. 10)
before taking the quantiles. The resampled FIDs also spread wider than FIDs of fresh sample sets
(about 1.4 times for real features), so the FID interval is conservative.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .fid import MultisetFid
from .kid import kernel_diagonal, kernel_matvec, within_mean


def resample_counts(n: int, resamples: int, seed: int = 0) -> Iterator[np.ndarray]:
    """For each of ``resamples`` draws of ``n`` rows out of ``n`` with replacement, how often
    each row is drawn (``n`` integers summing to ``n``); one seed gives one sequence."""
    rng = np.random.default_rng(seed)
    p = np.full(n, 1 / n)
    for _ in range(resamples):
        yield rng.multinomial(n, p)


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The ``(1 − level)/2`` and ``(1 + level)/2`` quantiles of ``values`` (linear
    interpolation)."""
    values = np.asarray(values, np.float64)
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if values.size == 0 or not np.isfinite(values).all():
        raise ValueError(f"a percentile interval needs finite values, got {values.size} values")
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def bootstrap_fids(features: np.ndarray, mu_ref: np.ndarray, sigma_ref: np.ndarray, *,
                   resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """FID (Heusel et al. 2017, Eq. 6) of each resample of the rows of ``features`` against
    ``(mu_ref, sigma_ref)``, via :class:`relaydiff.metrics.fid.MultisetFid`.

    Cost on one core (D = 2048): ``N ≤ D``, one ``u×u`` eigenproblem per resample
    (``u ≈ 0.63 N``), 1000 resamples of 256 rows in about 1.5 s; ``N > D``, a ``D×D`` product
    and eigenproblem per resample, about 0.9 s each (3391 rows: 200 resamples ≈ 3 min, 1000
    ≈ 15 min)."""
    return _resampled(MultisetFid(features, mu_ref, sigma_ref), resamples, seed)


def _resampled(fid: MultisetFid, resamples: int, seed: int) -> np.ndarray:
    return np.array([fid(c) for c in resample_counts(fid.n, resamples, seed)])


def fid_interval(features: np.ndarray, mu_ref: np.ndarray, sigma_ref: np.ndarray, *,
                 resamples: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """``level`` interval of the FID of ``features`` against ``(mu_ref, sigma_ref)``: the
    percentile interval of :func:`bootstrap_fids` shifted by ``FID − mean(resampled FIDs)``, which
    removes the resamples' excess from their repeated rows (module docstring)."""
    fid = MultisetFid(features, mu_ref, sigma_ref)
    values = _resampled(fid, resamples, seed)
    estimate = fid(np.ones(fid.n, dtype=np.int64))
    return percentile_interval(values - (values.mean() - estimate), level)


def bootstrap_kids(real_features: np.ndarray, fake_features: np.ndarray, *,
                   resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """Unbiased MMD² (:func:`relaydiff.metrics.kid.mmd2_unbiased`) of each resample of the
    ``N`` fake rows against *all* the real rows, held fixed.

    With counts ``c``: the fake-fake term averages ``k(fᵢ, fⱼ)`` over the pairs of draws that are
    different rows, ``Σ_{i≠j} cᵢcⱼkᵢⱼ / (N² − Σcᵢ²)``: two copies of one row are one image, and
    the estimator leaves out ``k(f, f)`` of an image with itself (its ``i ≠ j``); the cross term
    is ``Σᵢ cᵢ Σⱼ k(fᵢ, rⱼ) / (N·M)``; the real-real term is a constant. Unresampled (all
    ``cᵢ = 1``) this is :func:`mmd2_unbiased` of the two whole sets, and it is the expectation
    of the resampled values. KID as reported (:func:`relaydiff.metrics.kid.kernel_inception_distance`)
    averages the same estimator over subsets of ≤ 1000 rows, so it differs from it by that
    subset noise.

    Cost: the ``N×N`` and ``N×M`` kernels once (``O((N + M)·N·D)``), in blocks, and an
    ``N×N`` by ``N×resamples`` product."""
    fake = np.asarray(fake_features, np.float64)
    real = np.asarray(real_features, np.float64)
    n = len(fake)
    if n < 2 or len(real) < 2:
        raise ValueError(f"KID needs at least 2 images per set, got {len(real)} and {n}")
    counts = np.stack(list(resample_counts(n, resamples, seed))).astype(np.float64)
    squares = counts ** 2
    pairs = n ** 2 - squares.sum(axis=1)
    if (pairs == 0).any():
        raise ValueError(f"a resample of the {n} samples drew one image only, which has no "
                         "pairs of different images for KID; use more images")
    within = ((counts * kernel_matvec(fake, fake, counts.T).T).sum(axis=1)
              - squares @ kernel_diagonal(fake)) / pairs
    cross = counts @ kernel_matvec(fake, real, np.ones(len(real))) / (n * len(real))
    return within + within_mean(real) - 2 * cross


def kid_interval(real_features: np.ndarray, fake_features: np.ndarray, *, resamples: int = 1000,
                 level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """``level`` percentile interval of :func:`bootstrap_kids` (no shift: the resampled values
    are centred on the whole-set estimate by construction)."""
    return percentile_interval(bootstrap_kids(real_features, fake_features, resamples=resamples,
                                              seed=seed), level)
