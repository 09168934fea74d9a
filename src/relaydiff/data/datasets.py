"""Image datasets: folders and EDM-style zip files of images with optional class labels.

Items are ``(image, label)`` with ``image`` a ``C×H×W`` ``torch.uint8`` tensor (RGB) and
``label`` an ``int`` (``-1`` when the data set is unlabelled). Labels come from a
``dataset.json`` at the root (EDM's format: ``{"labels": [[relative_path, class], ...]}``,
optionally ``"class_names": [...]``) or, without it, from the names of the top-level
sub-folders when there are at least two.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import numpy as np
import torch

from ..io.files import read_json
from ..io.images import IMAGE_SUFFIXES, image_size, list_images, load_image, parse_color
from .resample import square_resize

LABELS_FILE = "dataset.json"
INFO_FILE = "dataset_info.json"


def flip_decision(seed: int, epoch: int, index: int) -> bool:
    """Whether item ``index`` is mirrored in ``epoch``: a fair coin that depends on
    ``(seed, epoch, index)`` only, so a resumed run sees exactly the same augmentation."""
    if min(seed, epoch, index) < 0:
        raise ValueError(f"seed, epoch and index must be ≥ 0, got {(seed, epoch, index)}")
    return bool(np.random.default_rng([seed, epoch, index]).random() < 0.5)


class ImageDataset(torch.utils.data.Dataset):
    """Common behaviour of :class:`ImageFolderDataset` and :class:`ZipDataset`.

    Args:
        resolution: output size; images are centre-cropped and resized to it when needed.
            ``None`` requires all images to share one square size.
        background: colour that transparent pixels are composited over (name, ``#rrggbb``,
            ``r,g,b`` or a triple).
        skip_bad: decode every image once at construction and leave out those that fail
            (listed in ``.skipped``) instead of raising ``ValueError`` naming the file.
        xflip: mirror images horizontally, decided by :func:`flip_decision`.
        seed: seed of the flip decisions; call :meth:`set_epoch` once per epoch.
        limit: use only the first ``limit`` images (in sorted order).
    """

    def __init__(
        self,
        *,
        resolution: int | None = None,
        background: str | Sequence[int] = "white",
        skip_bad: bool = False,
        xflip: bool = False,
        seed: int = 0,
        limit: int | None = None,
    ) -> None:
        self.background = parse_color(background)
        self.xflip = bool(xflip)
        self.seed = int(seed)
        self.epoch = 0
        names = [n for n in self._list_names() if not _hidden(n)]
        if limit is not None:
            if limit < 1:
                raise ValueError(f"limit must be a positive number of images, got {limit}")
            names = names[:limit]
        if not names:
            raise ValueError(
                f"{self.source}: no images ({', '.join(IMAGE_SUFFIXES)}) found; "
                "point to a folder or zip file that contains some"
            )
        self.skipped: list[tuple[str, str]] = []
        sizes: dict[str, tuple[int, int]] = {}
        for name in names:
            try:
                sizes[name] = self._probe(name, decode=skip_bad)
            except ValueError as e:
                if not skip_bad:
                    raise ValueError(f"{e}, or leave such files out with skip_bad "
                                     "(data.skip_bad in a training config)") from None
                self.skipped.append((self.display_name(name), str(e)))
        if not sizes:
            raise ValueError(f"{self.source}: none of the {len(names)} images could be read")
        self.names: list[str] = list(sizes)
        self.native_sizes: dict[tuple[int, int], str] = {}  # (width, height) → an image of it
        for name, size in sizes.items():
            self.native_sizes.setdefault(size, name)
        self.resolution = self._check_resolution(resolution, sizes)
        self.labels, self.class_names = self._load_labels()

    # -- what a concrete source provides -------------------------------------------------------
    source: str

    def _list_names(self) -> list[str]:
        """Relative POSIX paths of the image files, sorted."""
        raise NotImplementedError

    def _open(self, name: str) -> BinaryIO:
        """An open binary file for image ``name``."""
        raise NotImplementedError

    def _read_labels_file(self) -> Any | None:
        """The parsed ``dataset.json`` at the root, or ``None`` if there is none."""
        raise NotImplementedError

    def display_name(self, name: str) -> str:
        """How error messages name image ``name``."""
        return f"{self.source}/{name}"

    # -- dataset interface ---------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.names)

    @property
    def num_classes(self) -> int:
        """Number of classes (0 when unlabelled)."""
        return len(self.class_names) if self.class_names is not None else 0

    def set_epoch(self, epoch: int) -> None:
        """Select the flip decisions of ``epoch``."""
        self.epoch = int(epoch)

    def read_bytes(self, name: str) -> bytes:
        """The encoded bytes of image ``name`` (as stored in the folder or zip file)."""
        with self._open(name) as f:
            return f.read()

    def image_array(self, index: int) -> np.ndarray:
        """Image ``index`` as an ``R×R×3`` uint8 array, without augmentation."""
        name = self.names[index]
        with self._open(name) as f:
            image = load_image(f, self.background, name=self.display_name(name))
        if image.shape[:2] != (self.resolution, self.resolution):
            image = square_resize(image, self.resolution)
        return image

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.image_array(index)
        if self.xflip and flip_decision(self.seed, self.epoch, index):
            image = image[:, ::-1]
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return tensor, (self.labels[index] if self.labels is not None else -1)

    # -- construction helpers ------------------------------------------------------------------
    def resized(self) -> tuple[str, tuple[int, int]] | None:
        """An image (name, (width, height)) that is not stored at ``resolution`` and is therefore
        resized when read, or ``None`` when every image has the data set's resolution."""
        for size, name in self.native_sizes.items():
            if size != (self.resolution, self.resolution):
                return self.display_name(name), size
        return None

    def _probe(self, name: str, decode: bool) -> tuple[int, int]:
        with self._open(name) as f:
            if not decode:
                return image_size(f, name=self.display_name(name))
            image = load_image(f, self.background, name=self.display_name(name))
        return image.shape[1], image.shape[0]

    def _check_resolution(self, resolution: int | None, sizes: dict[str, tuple[int, int]]) -> int:
        if resolution is not None:
            if int(resolution) != resolution or resolution < 1:
                raise ValueError(f"resolution must be a positive integer, got {resolution!r}")
            return int(resolution)
        first: dict[tuple[int, int], str] = {}
        for name, size in sizes.items():
            first.setdefault(size, name)
            if len(first) == 2:
                (s1, n1), (s2, n2) = first.items()
                raise ValueError(
                    f"{self.source}: images have different sizes ({n1} is {s1[0]}×{s1[1]}, "
                    f"{n2} is {s2[0]}×{s2[1]}); pass a resolution or make a uniform copy with "
                    f"`relaydiff data build {self.source} --out DIR --resolution R`"
                )
        ((w, h),) = first
        if w != h:
            raise ValueError(
                f"{self.source}: images are {w}×{h}, not square; pass a resolution or make a "
                f"centre-cropped copy with `relaydiff data build {self.source} --out DIR "
                f"--resolution {min(w, h)}`"
            )
        return w

    def _load_labels(self) -> tuple[list[int] | None, list[str] | None]:
        meta = self._read_labels_file()
        if meta is not None:
            return labels_from_json(meta, self.names, self.display_name(LABELS_FILE))
        return labels_from_folders(self.names)


class ImageFolderDataset(ImageDataset):
    """Images found recursively under ``root`` (PNG, JPEG, WebP, BMP; hidden files ignored)."""

    def __init__(self, root: str | Path, **kwargs: Any) -> None:
        self.root = Path(root)
        self.source = str(self.root)
        if (self.root / INFO_FILE).is_file():
            raise ValueError(
                f"{root}: a multi-resolution dataset; open one of its resolution folders "
                f"({root}/<res>) or use open_dataset({str(root)!r}, resolution=R)"
            )
        super().__init__(**kwargs)

    def _list_names(self) -> list[str]:
        return [p.relative_to(self.root).as_posix() for p in list_images(self.root)]

    def _open(self, name: str) -> BinaryIO:
        return open(self.root / name, "rb")

    def _read_labels_file(self) -> Any | None:
        path = self.root / LABELS_FILE
        return read_json(path) if path.is_file() else None


class ZipDataset(ImageDataset):
    """Images inside an EDM-style zip file (``dataset.json`` at the zip's root for labels)."""

    def __init__(self, path: str | Path, **kwargs: Any) -> None:
        self.path = Path(path)
        self.source = str(self.path)
        if not self.path.is_file() or not zipfile.is_zipfile(self.path):
            raise ValueError(f"{self.path}: not a zip file; give a zip file or a folder of images")
        self._zip: zipfile.ZipFile | None = None
        super().__init__(**kwargs)

    def _archive(self) -> zipfile.ZipFile:
        if self._zip is None:  # opened lazily, once per process (DataLoader workers)
            self._zip = zipfile.ZipFile(self.path)
        return self._zip

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_zip": None}

    def _list_names(self) -> list[str]:
        return sorted(
            info.filename
            for info in self._archive().infolist()
            if not info.is_dir() and PurePosixPath(info.filename).suffix.lower() in IMAGE_SUFFIXES
        )

    def _open(self, name: str) -> BinaryIO:
        return io.BytesIO(self._archive().read(name))

    def _read_labels_file(self) -> Any | None:
        try:
            data = self._archive().read(LABELS_FILE)
        except KeyError:
            return None
        try:
            return json.loads(data.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{self.display_name(LABELS_FILE)}: not valid JSON ({e})") from None


def _hidden(name: str) -> bool:
    return any(part.startswith(".") for part in PurePosixPath(name).parts)


def labels_from_json(
    meta: Any, names: Sequence[str], where: str
) -> tuple[list[int] | None, list[str] | None]:
    """Labels of ``names`` from EDM's ``{"labels": [[name, class], ...]}`` (``null``: none)."""
    if not isinstance(meta, dict) or "labels" not in meta:
        raise ValueError(f'{where}: expected an object with "labels": [[path, class], ...] or null')
    if meta["labels"] is None:
        return None, None
    try:
        table = {str(k): v for k, v in meta["labels"]}
    except (TypeError, ValueError):
        raise ValueError(f'{where}: "labels" must be a list of [path, class] pairs') from None
    labels = []
    for name in names:
        if name not in table:
            raise ValueError(f'{where}: no label for {name}; add ["{name}", class] or remove it')
        label = table[name]
        if not isinstance(label, int) or isinstance(label, bool) or label < 0:
            raise ValueError(f"{where}: label of {name} is {label!r}, expected an integer ≥ 0")
        labels.append(label)
    class_names = meta.get("class_names")
    if class_names is None:
        return labels, [str(k) for k in range(max(labels) + 1)]
    if not isinstance(class_names, list) or len(class_names) <= max(labels):
        raise ValueError(
            f'{where}: "class_names" must be a list with a name for each class 0..{max(labels)}'
        )
    return labels, [str(c) for c in class_names]


def labels_from_folders(names: Sequence[str]) -> tuple[list[int] | None, list[str] | None]:
    """Class = top-level sub-folder, when every image is in one and there are at least two."""
    parts = [PurePosixPath(n).parts for n in names]
    if any(len(p) < 2 for p in parts):
        return None, None
    classes = sorted({p[0] for p in parts})
    if len(classes) < 2:
        return None, None
    index = {c: k for k, c in enumerate(classes)}
    return [index[p[0]] for p in parts], classes


def open_dataset(path: str | Path, resolution: int | None = None, **kwargs: Any) -> ImageDataset:
    """A dataset from a folder, an EDM-style zip file or a ``relaydiff data build`` output.

    For a built multi-resolution dataset (a folder with ``dataset_info.json``) the sub-folder
    of ``resolution`` is used (the highest one when ``resolution`` is ``None``).
    """
    path = Path(path)
    if path.is_dir() and (path / INFO_FILE).is_file():
        info = read_json(path / INFO_FILE)
        if not isinstance(info, dict) or not isinstance(info.get("resolutions"), list):
            raise ValueError(f"{path / INFO_FILE}: no resolutions listed; rebuild the dataset")
        available = [int(r) for r in info["resolutions"]]
        chosen = max(available) if resolution is None else resolution
        if chosen not in available:
            raise ValueError(
                f"{path}: built at resolutions {available}, not {chosen}; rebuild it with "
                f"`relaydiff data build … --also {chosen}` or pick one of those"
            )
        return ImageFolderDataset(path / str(chosen), resolution=chosen, **kwargs)
    if path.is_dir():
        return ImageFolderDataset(path, resolution=resolution, **kwargs)
    if path.is_file():
        return ZipDataset(path, resolution=resolution, **kwargs)
    raise ValueError(f"{path}: no such folder or zip file")
