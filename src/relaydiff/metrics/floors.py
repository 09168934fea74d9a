"""Data-vs-data FID floors: the FID that real images of the data set get under a protocol, the
level below which no model's FID under that protocol can be read as a difference.

Both take the pool features of *all* the data images (``N×D``; e.g.
:func:`relaydiff.metrics.evaluate.dataset_features`) and repeat a random draw ``splits`` times:

* :func:`subset_floor`: FID (Heusel et al. 2017, Eq. 6) of ``n`` images drawn without replacement
  against the statistics of all ``N`` — the protocol of ``n`` samples against the whole data
  set. The drawn images are part of the reference, so the floor falls to 0 as ``n → N``.
* :func:`split_floor`: FID of ``n`` images against the statistics of ``n_ref`` others, two
  disjoint random sets — the protocol of ``n`` samples against ``n_ref`` held-out images;
  :func:`split_half_floor`: a random half (``⌊N/2⌋``) against the other half (``⌈N/2⌉``).

Each returns :func:`summary` of the FIDs, JSON-ready (write it with
:func:`relaydiff.io.files.write_json`).
"""

from __future__ import annotations

import numpy as np

from .fid import MultisetFid, frechet_distance_features, gaussian_stats


def summary(values: list[float]) -> dict:
    """``mean``, ``sd`` (``ddof = 1``; ``None`` for one value), ``min``, ``max`` and the
    ``values`` themselves."""
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else None,
            "min": float(v.min()), "max": float(v.max()), "values": [float(x) for x in v]}


def _check(features: np.ndarray, splits: int) -> np.ndarray:
    f = np.asarray(features, np.float64)
    if f.ndim != 2:
        raise ValueError(f"features must be N×D, got shape {f.shape}")
    if splits < 1:
        raise ValueError(f"splits must be at least 1, got {splits}")
    return f


def subset_floor(features: np.ndarray, n: int, *, splits: int = 10, seed: int = 0) -> dict:
    """FID of ``n`` data images drawn at random against the statistics of all of them, over
    ``splits`` draws: :func:`summary` plus ``n`` and ``n_data``.

    All draws share one :class:`relaydiff.metrics.fid.MultisetFid` (each draw is a 0/1 multiset
    of the rows), so a draw costs one eigenproblem of size ``min(n, D)``."""
    f = _check(features, splits)
    if not 2 <= n <= len(f):
        raise ValueError(f"n must lie between 2 and the {len(f)} data images, got {n}")
    fid = MultisetFid(f, *gaussian_stats(f))
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(splits):
        counts = np.zeros(len(f), dtype=np.int64)
        counts[rng.choice(len(f), n, replace=False)] = 1
        values.append(fid(counts))
    return {**summary(values), "n": n, "n_data": len(f)}


def split_floor(features: np.ndarray, n: int, *, n_ref: int | None = None, splits: int = 10,
                seed: int = 0) -> dict:
    """FID of ``n`` data images drawn at random against the statistics of ``n_ref`` (default
    ``n``) other ones, over ``splits`` random draws of the two disjoint sets: :func:`summary`
    plus ``n``, ``n_ref`` and ``n_data``."""
    f = _check(features, splits)
    n_ref = n if n_ref is None else n_ref
    if n < 2 or n_ref < 2 or n + n_ref > len(f):
        raise ValueError(f"two disjoint sets of n = {n} and n_ref = {n_ref} ≥ 2 images need "
                         f"{n + n_ref} data images, got {len(f)}")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(splits):
        order = rng.permutation(len(f))
        values.append(frechet_distance_features(
            f[order[:n]], *gaussian_stats(f[order[n:n + n_ref]])))
    return {**summary(values), "n": n, "n_ref": n_ref, "n_data": len(f)}


def split_half_floor(features: np.ndarray, *, splits: int = 10, seed: int = 0) -> dict:
    """:func:`split_floor` of a random half of the data images (``⌊N/2⌋``) against the other
    half (``⌈N/2⌉``)."""
    half = len(features) // 2
    return split_floor(features, half, n_ref=len(features) - half, splits=splits, seed=seed)
