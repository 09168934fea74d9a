"""``relaydiff data build``: a relay-consistent multi-resolution copy of an image dataset.

Every image is centre-cropped to a square and resized to the top resolution ``R``; each lower
resolution ``r`` is the exact ``(R/r)×(R/r)`` block average of the stored top-resolution image
(:func:`~relaydiff.data.resample.area_downsample`), so that ``up(low) = Blur(high, ∞)`` holds
on the data a relay cascade is trained on (docs/method.md §5).

Layout of the output folder ``OUT``::

    OUT/dataset_info.json          resolutions, count, classes, source fingerprint
    OUT/<r>/dataset.json           {"labels": [[name, class], ...] | null, "class_names": [...]}
    OUT/<r>/<relative path>.png    the same relative names at every resolution

The folder is written under a temporary name and renamed into place at the end, so an
interrupted build never leaves a half-written ``OUT``; re-running with the same source and
settings finds ``OUT`` up to date and does nothing. A folder that holds anything else (other
files, a build of other settings or of a changed source) is refused unless ``overwrite``.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any

from tqdm import tqdm

from ..io.files import fingerprint, read_json, write_json
from ..io.images import parse_color, save_png
from ..io.out_folder import occupied_error
from .datasets import INFO_FILE, LABELS_FILE, ImageDataset, open_dataset
from .resample import area_downsample

FORMAT = "relaydiff-dataset/1"


class ArgumentError(ValueError):
    """A bad value of one argument: ``argument=value: reason`` (a command names its flag)."""

    def __init__(self, argument: str, value, reason: str) -> None:
        super().__init__(f"{argument}={value}: {reason}")
        self.argument, self.value, self.reason = argument, value, reason


def check_resolutions(resolution: int, also: Sequence[int]) -> list[int]:
    """``[resolution, *also]`` in decreasing order; each lower one must divide ``resolution``."""
    if resolution < 1:
        raise ArgumentError("resolution", resolution, "must be a positive integer")
    lower = sorted(set(also), reverse=True)
    for r in lower:
        if r < 1 or r >= resolution:
            raise ArgumentError("also", r, f"must be a resolution below {resolution}")
        if resolution % r:
            divisors = [d for d in range(resolution - 1, 0, -1) if resolution % d == 0][:4]
            raise ArgumentError("also", r, f"{resolution}/{r} is not an integer scale factor; use "
                                f"a resolution that divides {resolution} (e.g. "
                                f"{', '.join(map(str, divisors))})")
    return [resolution, *lower]


def parse_resolution_list(text: str) -> list[int]:
    """``"64,16"`` → ``[64, 16]``; a malformed entry raises ``ValueError`` naming it."""
    values = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        try:
            values.append(int(item))
        except ValueError:
            raise ValueError(f"resolution {item!r} is not an integer; give e.g. 64,16") from None
    return values


def build_dataset(
    src: str | Path,
    out: str | Path,
    resolution: int,
    also: Sequence[int] = (),
    *,
    background: str | Sequence[int] = "white",
    skip_bad: bool = False,
    limit: int | None = None,
    workers: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the multi-resolution dataset of ``src`` (folder or zip) to ``out``.

    Returns the contents of ``out/dataset_info.json`` (with ``"up_to_date": True`` added when
    nothing had to be written). ``out`` must be absent, empty or the same build; anything else
    is refused (``ValueError`` naming ``--out`` and ``--overwrite``) unless ``overwrite``.
    """
    resolutions = check_resolutions(resolution, also)
    src, out = Path(src), Path(out)
    _check_out(src, out, overwrite)
    dataset = open_dataset(
        src, resolution=resolution, background=background, skip_bad=skip_bad, limit=limit
    )
    info = _describe(dataset, resolutions, parse_color(background), limit)
    previous = out / INFO_FILE
    if previous.is_file():
        difference = _difference(read_json(previous), info)
        if difference is None:
            return {**info, "up_to_date": True}
        if not overwrite:
            raise occupied_error(out, f"a data set built with {difference}")

    partial = out.parent / f".{out.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)  # left over from an interrupted build
    out_names = [str(PurePosixPath(n).with_suffix(".png")) for n in dataset.names]
    _check_unique(dataset, out_names)

    def write(index: int) -> None:
        high = dataset.image_array(index)
        save_png(high, partial / str(resolution) / out_names[index])
        for r in resolutions[1:]:
            save_png(area_downsample(high, resolution // r), partial / str(r) / out_names[index])

    n_workers = workers or min(8, os.cpu_count() or 1)
    label = "/".join(map(str, resolutions))
    with (
        ThreadPoolExecutor(n_workers) as pool,
        tqdm(
            total=len(dataset),
            desc=f"build {label}",
            unit="img",
            disable=None if progress else True,
        ) as bar,
    ):
        for _ in pool.map(write, range(len(dataset))):
            bar.update()
    labels = (
        None
        if dataset.labels is None
        else [[n, c] for n, c in zip(out_names, dataset.labels, strict=True)]
    )
    for r in resolutions:
        meta = {"labels": labels, "class_names": dataset.class_names}
        write_json(meta, partial / str(r) / LABELS_FILE)
    write_json(info, partial / INFO_FILE)
    _replace_dir(partial, out)
    return info


def _check_out(src: Path, out: Path, overwrite: bool) -> None:
    if out.is_file():
        raise ValueError(f"out={out}: exists and is a file; give a folder path")
    if out.is_dir() and any(out.iterdir()) and not (out / INFO_FILE).is_file() and not overwrite:
        raise occupied_error(out)
    src_abs, out_abs = src.resolve(), out.resolve()
    if src_abs == out_abs or out_abs in src_abs.parents or src_abs in out_abs.parents:
        raise ValueError(f"out={out}: overlaps the source {src}; write to a separate folder")


def _describe(
    dataset: ImageDataset,
    resolutions: list[int],
    background: tuple[int, int, int],
    limit: int | None,
) -> dict[str, Any]:
    counts = Counter(dataset.labels or [])
    return {
        "format": FORMAT,
        "resolutions": resolutions,
        "count": len(dataset),
        "classes": dataset.class_names,
        "class_counts": (
            None
            if dataset.class_names is None
            else {c: counts[k] for k, c in enumerate(dataset.class_names)}
        ),
        "background": list(background),
        "limit": limit,
        "skipped": [{"file": f, "reason": r} for f, r in dataset.skipped],
        "source": {
            "path": str(Path(dataset.source).resolve()),
            "fingerprint": fingerprint((name, dataset.read_bytes(name)) for name in dataset.names),
        },
    }


def _difference(old: Any, new: dict[str, Any]) -> str | None:
    """How the earlier build ``old`` differs from ``new`` (``None``: the same build)."""
    if not isinstance(old, dict):
        return "an unknown format"
    for key in ("format", "resolutions", "background", "limit"):
        if old.get(key) != new[key]:
            return f"other settings ({key} {old.get(key)} there, {new[key]} now)"
    if (any(old.get(key) != new[key] for key in ("count", "classes"))
            or old.get("source", {}).get("fingerprint") != new["source"]["fingerprint"]):
        return "other source files"
    return None


def _check_unique(dataset: ImageDataset, out_names: list[str]) -> None:
    seen: dict[str, str] = {}
    for name, target in zip(dataset.names, out_names, strict=True):
        if target in seen:
            raise ValueError(
                f"{dataset.display_name(name)} and {dataset.display_name(seen[target])} would both "
                f"be written as {target}; rename one of them"
            )
        seen[target] = name


def _replace_dir(new: Path, out: Path) -> None:
    """Move the finished folder ``new`` to ``out``, replacing a previous build there."""
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if not out.exists():
        os.replace(new, out)
        return
    old = out.parent / f".{out.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    os.replace(out, old)
    os.replace(new, out)
    shutil.rmtree(old)
