"""Data-vs-data FID floors (relaydiff.metrics.floors) on synthetic features, and the cached
features of a dataset they take (relaydiff.metrics.evaluate.dataset_features)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from relaydiff.io.files import dumps_json
from relaydiff.io.images import save_png
from relaydiff.metrics.fid import frechet_distance, gaussian_stats
from relaydiff.metrics.floors import split_floor, split_half_floor, subset_floor, summary


def features(n: int, d: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) / np.sqrt(d) + 0.5


@pytest.mark.parametrize("n_data", [12, 60])  # N ≤ D and N > D
def test_all_the_data_against_itself_is_zero(n_data):
    f = features(n_data)
    floor = subset_floor(f, n_data, splits=3)
    assert max(abs(v) for v in floor["values"]) < 1e-9
    assert floor["n"] == floor["n_data"] == n_data and len(floor["values"]) == 3


@pytest.mark.parametrize("n", [8, 40])  # a subset of fewer and of more rows than dimensions
def test_subset_floor_is_the_fid_of_its_draws_against_all_the_data(n):
    f = features(60, seed=1)
    floor = subset_floor(f, n, splits=4, seed=5)
    rng = np.random.default_rng(5)
    stats = gaussian_stats(f)
    expected = [frechet_distance(*gaussian_stats(f[rng.choice(60, n, replace=False)]), *stats)
                for _ in range(4)]
    np.testing.assert_allclose(floor["values"], expected, rtol=1e-6)
    assert floor["min"] <= floor["mean"] <= floor["max"] and floor["sd"] > 0
    assert subset_floor(f, n, splits=4, seed=5) == floor != subset_floor(f, n, splits=4, seed=6)


def test_split_half_floor_is_symmetric_in_its_halves():
    """Each split's FID is that of the two halves' Gaussians, whichever half is the reference."""
    f = features(81, seed=2)
    floor = split_half_floor(f, splits=3, seed=9)
    assert (floor["n"], floor["n_ref"], floor["n_data"]) == (40, 41, 81)
    rng = np.random.default_rng(9)
    for value in floor["values"]:
        order = rng.permutation(81)
        a, b = gaussian_stats(f[order[:40]]), gaussian_stats(f[order[40:]])
        assert value == pytest.approx(frechet_distance(*a, *b), rel=1e-6)
        assert value == pytest.approx(frechet_distance(*b, *a), rel=1e-6)


def test_split_floor_of_equal_disjoint_sets_and_bad_sizes():
    f = features(50, seed=3)
    floor = split_floor(f, 20, splits=1)
    assert floor["n_ref"] == 20 and floor["sd"] is None and floor["values"][0] > 0
    dumps_json(floor)  # strict JSON
    with pytest.raises(ValueError, match="need 52 data images"):
        split_floor(f, 26)
    with pytest.raises(ValueError, match="between 2 and the 50"):
        subset_floor(f, 51)
    with pytest.raises(ValueError, match="splits"):
        subset_floor(f, 10, splits=0)
    assert summary([1.0, 3.0]) == {"mean": 2.0, "sd": pytest.approx(np.sqrt(2)), "min": 1.0,
                                   "max": 3.0, "values": [1.0, 3.0]}


class _MeanFeatures(torch.nn.Module):
    """Stand-in for the Inception: per-image channel means as the pool features."""

    def forward(self, images: torch.Tensor):
        from relaydiff.metrics.inception import InceptionFeatures

        pool = images.float().mean(dim=(2, 3))
        return InceptionFeatures(pool, pool[:, :1], None)


def test_dataset_features_are_computed_once_and_cached_by_content(tmp_path, monkeypatch):
    import relaydiff.metrics.evaluate as ev

    monkeypatch.setenv("RELAYDIFF_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    folder = tmp_path / "data"
    folder.mkdir()
    for i, im in enumerate(images):
        save_png(im, folder / f"{i}.png")
    passes = []
    real_pass = ev._pass
    monkeypatch.setattr(ev, "_pass", lambda *a, **k: passes.append(1) or real_pass(*a, **k))
    first = ev.dataset_features(folder, _MeanFeatures(), progress=False)
    np.testing.assert_allclose(first, images.mean(axis=(1, 2)), rtol=1e-6)
    assert passes == [1] and first.shape == (5, 3)
    (cached,) = (tmp_path / "cache" / "features").glob("*.npy")
    np.testing.assert_array_equal(ev.dataset_features(folder, _MeanFeatures()), first)
    assert passes == [1]  # read back
    cached.write_bytes(cached.read_bytes()[:40])  # damaged: computed again
    np.testing.assert_array_equal(ev.dataset_features(folder, _MeanFeatures(), progress=False), first)
    assert passes == [1, 1]
    save_png(images[0], folder / "5.png")  # other content: another entry
    assert len(ev.dataset_features(folder, _MeanFeatures(), progress=False)) == 6
    assert len(list((tmp_path / "cache" / "features").glob("*.npy"))) == 2


def test_a_references_pass_leaves_the_features_for_the_floors(tmp_path, monkeypatch):
    """``folder_reference`` computing the Inception statistics keeps the same pass's features:
    ``dataset_features`` of the same folder then makes no pass of its own."""
    import relaydiff.metrics.evaluate as ev

    monkeypatch.setenv("RELAYDIFF_CACHE", str(tmp_path / "cache"))
    images = np.random.default_rng(1).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    folder = tmp_path / "data"
    folder.mkdir()
    for i, im in enumerate(images):
        save_png(im, folder / f"{i}.png")
    passes = []
    real_pass = ev._pass
    monkeypatch.setattr(ev, "_pass", lambda *a, **k: passes.append(1) or real_pass(*a, **k))
    model = _MeanFeatures()
    ev.folder_reference(folder, model, ["fid"], progress=False)
    assert passes == [1]
    features = ev.dataset_features(folder, model, progress=False)
    assert passes == [1]
    np.testing.assert_allclose(features, images.mean(axis=(1, 2)), rtol=1e-6)
