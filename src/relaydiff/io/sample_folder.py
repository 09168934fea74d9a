"""The layout of a sample folder, as ``relaydiff sample`` writes it and ``relaydiff eval`` reads it.

::

    OUT/000000/000123.png     one PNG per seed, sub-folders of 1,000 seeds (as EDM writes them)
    OUT/grid.png              the first 64 seeds
    OUT/stage1_16/…           lower stages' images (``--all-stages``), same layout
    OUT/labels.json           the manifest: seeds, how classes were chosen, each seed's class

The manifest is what lets metrics tell samples from grids and lower-stage folders, and report
FID of class-balanced labels as ``FID-CB``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .files import read_json, write_json

MANIFEST = "labels.json"
LABEL_FILES = (MANIFEST, "metadata.json")
LABEL_SAMPLINGS = ("random", "class-balanced", "fixed", "unconditional", "unknown")


def seed_path(out: str | Path, seed: int) -> Path:
    """``OUT/000000/000123.png``: sub-folders of 1,000 seeds, as EDM writes them."""
    return Path(out) / f"{seed - seed % 1000:06d}" / f"{seed:06d}.png"


def stage_folder(out: str | Path, k: int, resolution: int) -> Path:
    """Where ``--all-stages`` puts the images of (0-based) stage ``k``."""
    return Path(out) / f"stage{k + 1}_{resolution}"


def label_sampling(labels, class_idx, balanced: bool) -> str:
    """How classes were chosen: what ``relaydiff eval`` needs to say FID or FID-CB."""
    if labels is None:
        return "unconditional"
    return "class-balanced" if balanced else "fixed" if class_idx is not None else "random"


def write_manifest(out: str | Path, seeds: Sequence[int], *, sampling: str, num_classes: int,
                   resolutions: Sequence[int], labels: Sequence[int] | None) -> None:
    """Write ``OUT/labels.json`` (seeds, label sampling, class count, resolutions, classes)."""
    write_json({
        "seeds": [int(s) for s in seeds],
        "label_sampling": sampling,
        "num_classes": int(num_classes),
        "resolutions": [int(r) for r in resolutions],
        "labels": None if labels is None else {str(s): int(c) for s, c in zip(seeds, labels,
                                                                               strict=True)},
    }, Path(out) / MANIFEST)


def sample_files(folder: str | Path) -> list[Path] | None:
    """The sample images of a ``relaydiff sample`` folder, from its manifest (so grids and
    lower-stage folders are not mistaken for samples); ``None`` without one."""
    manifest = Path(folder) / MANIFEST
    if not manifest.is_file():
        return None
    data = read_json(manifest)
    seeds = data.get("seeds") if isinstance(data, dict) else None
    if seeds is None:
        return None
    return [p for p in (seed_path(folder, int(s)) for s in seeds) if p.exists()]


def read_label_sampling(samples: str | Path) -> str:
    """How the samples' class labels were drawn, from the manifest (or a ``metadata.json``).

    Reads ``"label_sampling"`` (``random``, ``class-balanced``, ``fixed``, ``unconditional``) or a
    boolean ``"balanced"``; looks in the folder itself, or beside an ``.npz``; else ``"unknown"``.
    """
    path = Path(samples)
    folder = path if path.is_dir() else path.parent
    for name in LABEL_FILES:
        file = folder / name
        if not file.is_file():
            continue
        meta = read_json(file)
        if not isinstance(meta, dict):
            continue
        value = meta.get("label_sampling")
        if value is None and isinstance(meta.get("balanced"), bool):
            value = "class-balanced" if meta["balanced"] else "random"
        if value is not None:
            value = {"balanced": "class-balanced"}.get(value, value)
            if value not in LABEL_SAMPLINGS:
                raise ValueError(f"{file}: label_sampling {value!r} is not one of "
                                 f"{', '.join(LABEL_SAMPLINGS)}")
            return value
    return "unknown"
