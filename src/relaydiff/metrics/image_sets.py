"""Image sets the metrics read, streamed in batches: a folder of image files, or an ``.npz`` with
``arr_0`` (N×H×W×3 uint8, ADM's sample/reference batch format).

A folder written by ``relaydiff sample`` holds only the seeds listed in its ``labels.json``
(grids and ``--all-stages`` folders are not samples). Modes: every image becomes RGB (alpha
composited over white, greyscale replicated; see :func:`relaydiff.io.images.load_image`).
Sizes: all images of a set must share the first image's size; a different size is refused with
the file's name, never silently resized (the Inception resizes every set to 299×299 itself,
like the reference implementations).
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from ..io.images import list_images, load_image
from ..io.sample_folder import sample_files

ARRAY_KEY = "arr_0"


def npy_header(f: BinaryIO) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Shape, Fortran order and dtype from an ``.npy`` stream's header, leaving it at the data
    (reads no array data, so it never unpickles anything)."""
    version = np.lib.format.read_magic(f)
    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                   else np.lib.format.read_array_header_2_0)
    return read_header(f)


@contextmanager
def _npy_member(path: Path, key: str) -> Iterator[tuple[object, tuple[int, ...], np.dtype]]:
    """An open stream positioned at the data of ``key`` inside the ``.npz``, its shape, dtype."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"{path}: not a readable .npz file ({e}); write it again") from None
    with archive as z:
        if f"{key}.npy" not in z.namelist():
            raise ValueError(f"{path}: no array {key!r} in this .npz (expected N×H×W×3 uint8)")
        with z.open(f"{key}.npy") as f:
            shape, fortran, dtype = npy_header(f)
            if fortran:
                raise ValueError(f"{path}: {key} is stored in Fortran order; save it C-ordered")
            yield f, shape, dtype


class ImageSet:
    """A folder of images or an ``.npz`` with ``arr_0``; yields uint8 ``N×3×H×W`` tensors."""

    def __init__(self, path: str | Path, threads: int = 8) -> None:
        self.path = Path(path)
        self.threads = threads
        if self.path.is_dir():
            self.files = sample_files(self.path) or list_images(self.path)
            if not self.files:
                raise ValueError(f"{self.path}: no image files (.png, .jpg, .webp, .bmp) found")
            h, w, _ = load_image(self.files[0]).shape
            self.count = len(self.files)
        elif self.path.suffix == ".npz" and self.path.is_file():
            self.files = []
            with _npy_member(self.path, ARRAY_KEY) as (_, shape, dtype):
                if len(shape) != 4 or shape[-1] != 3 or dtype != np.uint8:
                    raise ValueError(f"{self.path}: {ARRAY_KEY} has shape {shape} and dtype "
                                     f"{dtype}; expected N×H×W×3 uint8 images")
                self.count, h, w = shape[0], shape[1], shape[2]
        else:
            raise ValueError(f"{self.path}: not a folder of images or an .npz with {ARRAY_KEY}")
        self.resolution = (h, w)

    def __len__(self) -> int:
        return self.count

    def _load_checked(self, path: Path) -> np.ndarray:
        image = load_image(path)
        if image.shape[:2] != self.resolution:
            h, w = self.resolution
            raise ValueError(f"{path}: image is {image.shape[0]}×{image.shape[1]} but the set's "
                             f"first image is {h}×{w}; all images of a set must have one size")
        return image

    def _folder_batches(self, indices: list[int], batch_size: int) -> Iterator[np.ndarray]:
        with ThreadPoolExecutor(self.threads) as pool:
            for i in range(0, len(indices), batch_size):
                chunk = [self.files[k] for k in indices[i:i + batch_size]]
                yield np.stack(list(pool.map(self._load_checked, chunk)))

    def _npz_batches(self, indices: list[int], batch_size: int) -> Iterator[np.ndarray]:
        wanted = set(indices)
        h, w = self.resolution
        per_image = h * w * 3
        with _npy_member(self.path, ARRAY_KEY) as (f, _, _):
            pending: list[np.ndarray] = []
            for start in range(0, self.count, batch_size):
                n = min(batch_size, self.count - start)
                raw = f.read(n * per_image)
                if len(raw) != n * per_image:
                    raise ValueError(f"{self.path}: {ARRAY_KEY} is truncated at image {start}")
                block = np.frombuffer(raw, np.uint8).reshape(n, h, w, 3)
                pending.extend(block[k - start] for k in range(start, start + n) if k in wanted)
                while len(pending) >= batch_size:
                    yield np.stack(pending[:batch_size])
                    pending = pending[batch_size:]
            if pending:
                yield np.stack(pending)

    def batches(self, batch_size: int = 64, rank: int = 0,
                world_size: int = 1) -> Iterator[torch.Tensor]:
        """uint8 ``N×3×H×W`` batches of the images ``rank, rank + world_size, …`` in order."""
        indices = list(range(rank, self.count, world_size))
        reader = self._folder_batches if self.files else self._npz_batches
        for batch in reader(indices, batch_size):
            yield torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)))

