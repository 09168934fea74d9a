"""Writing a cascade's images to PNG files: sample folders (one PNG per seed) and upscaled
images, resumable and shardable over torchrun ranks.

The folder layout and its ``labels.json`` manifest are :mod:`relaydiff.io.sample_folder`.
"""

from __future__ import annotations

import errno
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from .cascade import RelayCascade
from .io.files import write_failure
from .io.images import image_grid, load_image, save_png, to_uint8
from .io.sample_folder import label_sampling, seed_path, stage_folder, write_manifest

GRID_SIZE = 64
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the IEND chunk every complete PNG ends with


def complete_png(path: Path) -> bool:
    """Whether ``path`` holds a complete PNG; a damaged one (empty, truncated) is removed and
    named in a warning, to be generated again."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(size - len(PNG_END), 0))
            complete = size > len(PNG_END) and f.read() == PNG_END
    except FileNotFoundError:
        return False
    if not complete:
        warnings.warn(f"{path}: damaged image ({size} bytes, not a complete PNG); generating it "
                      "again", stacklevel=3)
        path.unlink()
    return complete


def _progress_bar(what: str, total: int, rank: int, world: int, show: bool) -> tqdm:
    """A bar of ``total`` images (hidden when there are none), naming the rank under torchrun."""
    desc = what if world == 1 else f"{what} (rank {rank})"
    return tqdm(total=total, desc=desc, unit="img", disable=not (show and total))


def write_samples(model: RelayCascade, seeds: Sequence[int], out: str | Path, *, batch: int = 16,
                  class_idx: int | None = None, balanced: bool = False, all_stages: bool = False,
                  rank: int = 0, world: int = 1, progress: bool = True,
                  batch_invariant: bool = True, to: int | None = None, tile: int = 0) -> int:
    """Generate the seeds of this rank (``seeds[rank::world]``) that have no complete file yet.

    ``batch_invariant``, ``to`` and ``tile`` are passed to :meth:`RelayCascade.forward` (CPU:
    exact pixels per seed, whatever the batch, rank or thread count). Files that exist but do not
    decode (a killed writer, a full disk) are named in a warning and generated again. A file that cannot be
    written stops the run with an ``OSError`` naming it; the progress bar then shows the images
    written, and those stay valid for a re-run to continue from.

    The final step goes to ``OUT/``, lower steps (``all_stages``) to ``OUT/stage1_16/`` etc.
    (one folder per step of :meth:`RelayCascade.plan`: a reused stage gets the next number).
    Returns the number of new images. Rank 0 should call :func:`write_summary` afterwards.
    """
    out = Path(out)
    labels = model.labels_for(seeds, class_idx, balanced=balanced)
    position = {int(s): i for i, s in enumerate(seeds)}
    todo = [s for s in seeds[rank::world] if not complete_png(seed_path(out, s))]
    bar = _progress_bar("sampling", len(todo), rank, world, progress)
    sizes = [r for _, r in model.plan(None, to)]
    last = len(sizes) - 1
    chunk_size = max(batch, 64)  # files are written after each chunk (resumable)
    written = 0
    try:
        for start in range(0, len(todo), chunk_size):
            chunk = todo[start:start + chunk_size]
            cls = None if labels is None else [int(labels[position[s]]) for s in chunk]
            images = model(chunk, class_idx=cls, batch_size=batch, batch_invariant=batch_invariant,
                           progress=bar.update, to=to, tile=tile)
            # Lower stages first, the final stage last: its file marks the seed as done.
            for k, stage_images in enumerate(images):
                if k != last and not all_stages:
                    continue
                target = out if k == last else stage_folder(out, k, sizes[k])
                for seed, arr in zip(chunk, to_uint8(stage_images), strict=True):
                    _save(arr, seed_path(target, seed), written)
                    written += k == last
    except BaseException:
        bar.n = written  # the bar counted computed images; it ends at those actually written
        raise
    finally:
        bar.close()
    return len(todo)


def _save(array, path: Path, written: int) -> None:
    """``save_png``, failing with one line that names the file and what to do."""
    try:
        save_png(array, path)
    except OSError as e:
        full = e.errno in (errno.ENOSPC, errno.EDQUOT)
        raise write_failure(path, e, ("free disk space or choose another --out, then " if full else "")
                            + f"run again: the {written} image(s) written so far are kept and "
                              "the run continues from them") from None


def write_summary(model: RelayCascade, seeds: Sequence[int], out: str | Path, *,
                  class_idx: int | None = None, balanced: bool = False, to: int | None = None) -> None:
    """``grid.png`` of the first 64 seeds (in every stage folder present) and the
    ``labels.json`` manifest (the seeds, and each seed's class)."""
    out = Path(out)
    sizes = [r for _, r in model.plan(None, to)]
    folders = [out] + [stage_folder(out, k, r) for k, r in enumerate(sizes[:-1])]
    for folder in folders:
        tiles = [load_image(seed_path(folder, s)) for s in seeds[:GRID_SIZE]
                 if seed_path(folder, s).exists()]
        if tiles:
            save_png(image_grid(tiles), folder / "grid.png")
    labels = model.labels_for(seeds, class_idx, balanced=balanced)
    write_manifest(out, seeds, sampling=label_sampling(labels, class_idx, balanced),
                   num_classes=model.num_classes, resolutions=sizes,
                   labels=None if labels is None else labels.tolist())


def write_upscaled(model: RelayCascade, low: torch.Tensor, seeds: Sequence[int],
                   paths: Sequence[Path], *, batch: int = 16, rank: int = 0, world: int = 1,
                   progress: bool = True, batch_invariant: bool = True, to: int | None = None,
                   tile: int = 0) -> int:
    """Relay the low-resolution images ``low`` (``N×C×R×R`` in [-1, 1]) through the stages above
    their resolution (to ``to`` px, reusing the last stage: :meth:`RelayCascade.plan`), image
    ``k`` with seed ``seeds[k]`` into the PNG file ``paths[k]``.

    Writes the images of this rank (``k ≡ rank mod world``) that have no complete file yet
    (damaged files are named in a warning and written again); ``batch_invariant`` and ``tile``
    as in :func:`write_samples`. Returns the number of new images.
    """
    todo = [k for k in range(rank, len(paths), world) if not complete_png(paths[k])]
    if not todo:
        return 0
    with _progress_bar("upscaling", len(todo), rank, world, progress) as bar:
        images = model([seeds[k] for k in todo], low_res=low[todo], batch_size=batch,
                       progress=bar.update, batch_invariant=batch_invariant, to=to, tile=tile)[-1]
    for k, arr in zip(todo, to_uint8(images), strict=True):
        save_png(arr, paths[k])
    return len(todo)
