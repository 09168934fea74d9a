"""Writing a cascade's samples to PNG folders: one file per seed, resumable, shardable."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from .cascade import RelayCascade
from .config import read_json, write_json_atomic
from .data.images import image_grid, load_image, save_png, to_uint8

GRID_SIZE = 64


def seed_path(out: Path, seed: int) -> Path:
    """``OUT/000000/000123.png``: sub-folders of 1,000 seeds, as EDM writes them."""
    return Path(out) / f"{seed - seed % 1000:06d}" / f"{seed:06d}.png"


def stage_folder(out: Path, k: int, resolution: int) -> Path:
    """Where ``--all-stages`` puts the images of (0-based) stage ``k``."""
    return Path(out) / f"stage{k + 1}_{resolution}"


def label_sampling(labels, class_idx, balanced: bool) -> str:
    """How classes were chosen: what ``relaydiff eval`` needs to say FID or FID-CB."""
    if labels is None:
        return "unconditional"
    return "class-balanced" if balanced else "fixed" if class_idx is not None else "random"


def write_samples(model: RelayCascade, seeds: Sequence[int], out: str | Path, *, batch: int = 16,
                  class_idx: int | None = None, balanced: bool = False, all_stages: bool = False,
                  rank: int = 0, world: int = 1, progress: bool = True,
                  batch_invariant: bool = True) -> int:
    """Generate the seeds of this rank (``seeds[rank::world]``) that have no file yet.

    ``batch_invariant`` is passed to :meth:`RelayCascade.forward` (CPU: exact pixels per seed,
    whatever the batch, rank or thread count; ``False`` is about 2.5x faster).

    The final stage goes to ``OUT/``, lower stages (``all_stages``) to ``OUT/stage1_16/`` etc.
    Returns the number of new images. Rank 0 should call :func:`write_summary` afterwards.
    """
    out = Path(out)
    labels = model.labels_for(seeds, class_idx, balanced=balanced)
    position = {int(s): i for i, s in enumerate(seeds)}
    todo = [s for s in seeds[rank::world] if not seed_path(out, s).exists()]
    bar = tqdm(total=len(todo), desc=f"sampling (rank {rank})", unit="img",
               disable=not (progress and todo))
    last = len(model.configs) - 1
    for start in range(0, len(todo), batch):
        chunk = todo[start:start + batch]
        cls = None if labels is None else [int(labels[position[s]]) for s in chunk]
        images = model(chunk, class_idx=cls, batch_size=batch, batch_invariant=batch_invariant)
        # Lower stages first, the final stage last: its file marks the seed as done.
        for k, stage_images in enumerate(images):
            if k != last and not all_stages:
                continue
            target = out if k == last else stage_folder(out, k, model.resolutions[k])
            for seed, arr in zip(chunk, to_uint8(stage_images), strict=True):
                save_png(arr, seed_path(target, seed))
        bar.update(len(chunk))
    bar.close()
    return len(todo)


def write_summary(model: RelayCascade, seeds: Sequence[int], out: str | Path, *,
                  class_idx: int | None = None, balanced: bool = False) -> None:
    """``grid.png`` of the first 64 seeds (in every stage folder present) and ``labels.json``
    (the seeds, and each seed's class), the manifest :func:`sample_files` reads."""
    out = Path(out)
    folders = [out] + [stage_folder(out, k, r) for k, r in enumerate(model.resolutions[:-1])]
    for folder in folders:
        tiles = [load_image(seed_path(folder, s)) for s in seeds[:GRID_SIZE]
                 if seed_path(folder, s).exists()]
        if tiles:
            save_png(image_grid(tiles), folder / "grid.png")
    labels = model.labels_for(seeds, class_idx, balanced=balanced)
    write_json_atomic({
        "seeds": [int(x) for x in seeds],
        "label_sampling": label_sampling(labels, class_idx, balanced),
        "num_classes": model.num_classes,
        "resolutions": model.resolutions,
        "labels": None if labels is None else {str(s): int(c) for s, c in zip(seeds, labels,
                                                                               strict=True)},
    }, out / "labels.json")


def sample_files(folder: str | Path) -> list[Path] | None:
    """The sample images of a ``relaydiff sample`` folder, from its ``labels.json`` manifest
    (so grids and lower-stage folders are not mistaken for samples); ``None`` without one."""
    manifest = Path(folder) / "labels.json"
    if not manifest.is_file():
        return None
    seeds = read_json(manifest).get("seeds")
    if seeds is None:
        return None
    return [p for p in (seed_path(Path(folder), int(s)) for s in seeds) if p.exists()]
