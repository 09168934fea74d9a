"""Bootstrap intervals of FID and KID (relaydiff.metrics.bootstrap) and the multiset FID they
rest on (relaydiff.metrics.fid.MultisetFid), against scipy's sqrtm FID and brute-force KID on
the resampled rows listed out."""

from __future__ import annotations

import numpy as np
import pytest

from relaydiff.metrics.bootstrap import (
    bootstrap_fids,
    bootstrap_kids,
    fid_interval,
    kid_interval,
    percentile_interval,
    resample_counts,
)
from relaydiff.metrics.fid import MultisetFid, frechet_distance, frechet_distance_features, gaussian_stats
from relaydiff.metrics.kid import kernel_matvec, mmd2_unbiased, within_mean


def features(n: int, d: int, seed: int, shift: float = 0.0, scale: float = 1.0) -> np.ndarray:
    """Correlated Gaussian features with a decaying spectrum, like Inception's."""
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(99).standard_normal((d, d)) / np.sqrt(np.arange(1, d + 1))[:, None]
    return scale * rng.standard_normal((n, d)) @ mix + shift


@pytest.fixture(scope="module")
def reference() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """64-d reference features and their statistics."""
    ref = features(2000, 64, seed=0)
    return ref, *gaussian_stats(ref)


# --- FID ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [40, 100, 200])  # N < D (Gram); N > D with u < D and with u > D
def test_resampled_fid_equals_scipy_fid_of_the_rows_listed_out(reference, n):
    _, mu, sigma = reference
    f = features(n, 64, seed=n, shift=0.1, scale=1.2)
    values = bootstrap_fids(f, mu, sigma, resamples=3, seed=7)
    for counts, value in zip(resample_counts(n, 3, seed=7), values, strict=True):
        rows = np.repeat(f, counts, axis=0)
        assert len(rows) == n and (counts == 0).any()
        assert value == pytest.approx(frechet_distance(*gaussian_stats(rows), mu, sigma), rel=1e-6)


@pytest.mark.parametrize("n", [12, 40, 100])
def test_multiset_fid_of_subsets_and_of_all_rows(reference, n):
    """0/1 counts are a subset; all ones the whole set; a set against its own statistics is 0."""
    _, mu, sigma = reference
    f = features(n, 64, seed=n, shift=0.1)
    fid = MultisetFid(f, mu, sigma)
    subset = np.zeros(n, dtype=np.int64)
    subset[np.random.default_rng(0).choice(n, n // 2, replace=False)] = 1
    expected = frechet_distance(*gaussian_stats(f[subset == 1]), mu, sigma)
    assert fid(subset) == pytest.approx(expected, rel=1e-6)
    assert fid(np.ones(n, dtype=np.int64)) == pytest.approx(
        frechet_distance_features(f, mu, sigma), rel=1e-6)
    assert abs(MultisetFid(f, *gaussian_stats(f))(np.ones(n, dtype=np.int64))) < 1e-8
    with pytest.raises(ValueError, match="at least 2"):
        fid(np.eye(n, dtype=np.int64)[0])
    with pytest.raises(ValueError, match="non-negative"):
        fid(-np.ones(n, dtype=np.int64))
    with pytest.raises(ValueError, match="mismatched"):
        MultisetFid(f[:, :10], mu, sigma)


def test_resampled_fids_lie_above_the_estimate_and_the_interval_is_shifted_back(reference):
    """The reason for fid_interval's shift: a resample's repeated rows lower the rank of its
    covariance, so (N < D) nearly every resampled FID exceeds the estimate; the shifted interval
    holds the estimate and keeps the resamples' spread."""
    _, mu, sigma = reference
    f = features(40, 64, seed=3, shift=0.1, scale=1.2)
    estimate = frechet_distance_features(f, mu, sigma)
    values = bootstrap_fids(f, mu, sigma, resamples=200)
    assert np.mean(values > estimate) > 0.95
    lo, hi = fid_interval(f, mu, sigma, resamples=200)
    raw_lo, raw_hi = percentile_interval(values)
    assert lo < estimate < hi and raw_lo > lo and hi - lo == pytest.approx(raw_hi - raw_lo)


def test_fid_interval_holds_the_estimate_and_shrinks_with_more_samples(reference):
    _, mu, sigma = reference
    widths = []
    for n in (50, 400):
        f = features(n, 64, seed=n, shift=0.05, scale=1.1)
        lo, hi = fid_interval(f, mu, sigma, resamples=300)
        assert lo < frechet_distance_features(f, mu, sigma) < hi
        widths.append(hi - lo)
    assert widths[1] < 0.6 * widths[0]


def test_intervals_follow_the_seed(reference):
    ref, mu, sigma = reference
    f = features(30, 64, seed=5, shift=0.1)
    fid = [fid_interval(f, mu, sigma, resamples=50, seed=s) for s in (1, 1, 2)]
    kid = [kid_interval(ref, f, resamples=50, seed=s) for s in (1, 1, 2)]
    assert fid[0] == fid[1] and fid[0] != fid[2]
    assert kid[0] == kid[1] and kid[0] != kid[2]


# --- KID ---------------------------------------------------------------------------------------


def brute_force_resampled_kid(real: np.ndarray, fake: np.ndarray, counts: np.ndarray) -> float:
    """The estimator on the resample listed out, over pairs of draws of different rows."""
    ids = np.repeat(np.arange(len(fake)), counts)
    rows = fake[ids]
    d = fake.shape[1]
    pairs = [(rows[a] @ rows[b] / d + 1) ** 3 for a in range(len(ids)) for b in range(len(ids))
             if ids[a] != ids[b]]
    cross = np.mean([(x @ y / d + 1) ** 3 for x in rows for y in real])
    return float(np.mean(pairs) + within_mean(real) - 2 * cross)


def test_resampled_kid_leaves_out_pairs_of_copies_of_one_row():
    rng = np.random.default_rng(0)
    real, fake = rng.standard_normal((15, 5)), rng.standard_normal((12, 5)) + 0.4
    values = bootstrap_kids(real, fake, resamples=4, seed=3)
    for counts, value in zip(resample_counts(12, 4, seed=3), values, strict=True):
        assert (counts > 1).any()
        assert value == pytest.approx(brute_force_resampled_kid(real, fake, counts), rel=1e-10)


def test_resampled_kids_are_centred_on_the_whole_set_estimate():
    """Their expectation is the estimate of the two whole sets (Monte Carlo, 4 000 resamples)."""
    rng = np.random.default_rng(1)
    real, fake = rng.standard_normal((30, 6)), rng.standard_normal((20, 6)) * 1.3 + 0.3
    values = bootstrap_kids(real, fake, resamples=4000, seed=0)
    estimate = mmd2_unbiased(fake, real)
    assert abs(values.mean() - estimate) < 4 * values.std() / np.sqrt(len(values))
    lo, hi = kid_interval(real, fake, resamples=4000, seed=0)
    assert lo < estimate < hi


def test_kid_interval_shrinks_with_more_samples(reference):
    ref, _, _ = reference
    widths = []
    for n in (50, 400):
        f = features(n, 64, seed=n, shift=0.05, scale=1.1)
        lo, hi = kid_interval(ref, f, resamples=300)
        assert lo < mmd2_unbiased(f, ref) < hi
        widths.append(hi - lo)
    assert widths[1] < 0.6 * widths[0]


def test_kid_of_a_resample_of_one_image_is_refused():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="one image only"):
        bootstrap_kids(rng.standard_normal((5, 3)), rng.standard_normal((2, 3)), resamples=40)


def test_kernel_sums_in_blocks_equal_the_full_matrix(monkeypatch):
    import relaydiff.metrics.kid as kid

    rng = np.random.default_rng(2)
    x, y, v = rng.standard_normal((10, 4)), rng.standard_normal((7, 4)), rng.standard_normal((7, 3))
    full = (x @ y.T / 4 + 1) ** 3 @ v
    monkeypatch.setattr(kid, "BLOCK", 3)
    np.testing.assert_allclose(kernel_matvec(x, y, v), full, rtol=1e-12)


# --- the percentile interval and the resamples ----------------------------------------------


def test_percentile_interval_and_resample_counts():
    assert percentile_interval(np.arange(101.0), level=0.9) == pytest.approx((5.0, 95.0))
    with pytest.raises(ValueError, match="level"):
        percentile_interval(np.arange(3.0), level=1.0)
    with pytest.raises(ValueError, match="finite"):
        percentile_interval(np.array([1.0, np.nan]))
    counts = np.stack(list(resample_counts(50, 200, seed=4)))
    assert counts.shape == (200, 50) and (counts.sum(axis=1) == 50).all()
    distinct = (counts > 0).mean()
    assert abs(distinct - (1 - (1 - 1 / 50) ** 50)) < 0.02  # ≈ 63.6 % of the rows in a resample
