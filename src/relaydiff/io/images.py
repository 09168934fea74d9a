"""Reading and writing image files: the one place that decodes and encodes pixels, and the one
place that maps uint8 pixels to and from the ``[-1, 1]`` range the models work in."""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageColor, UnidentifiedImageError

from .files import write_bytes_atomic

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError)


def list_images(root: str | Path) -> list[Path]:
    """All image files under ``root`` (recursive), sorted by relative path."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder of images")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def load_image(
    path: str | Path | BinaryIO,
    background: tuple[int, int, int] = (255, 255, 255),
    *,
    name: str | None = None,
) -> np.ndarray:
    """Decode ``path`` (a file name or an open binary file) to a writable ``H×W×3`` uint8 RGB
    array.

    Alpha is composited over ``background``; greyscale and palette images become RGB.
    Raises ``ValueError`` naming the file (``name`` if given, e.g. a member of a zip file) if it
    cannot be decoded.
    """
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                base = Image.new("RGBA", rgba.size, (*background, 255))
                im = Image.alpha_composite(base, rgba)
            return np.array(im.convert("RGB"), dtype=np.uint8)  # writable (torch.from_numpy)
    except _DECODE_ERRORS as e:
        raise _unreadable(name if name is not None else path, e) from None


def image_size(path: str | Path | BinaryIO, *, name: str | None = None) -> tuple[int, int]:
    """``(width, height)`` from the file header only (fast; a truncated body goes unnoticed).

    Raises ``ValueError`` naming the file if it is not an image (empty, text, unknown format).
    """
    try:
        with Image.open(path) as im:
            return im.size
    except _DECODE_ERRORS as e:
        raise _unreadable(name if name is not None else path, e) from None


def _unreadable(name: object, error: Exception) -> ValueError:
    return ValueError(f"{name}: not a readable image ({error}); remove or replace it")


def parse_color(color: str | Sequence[int]) -> tuple[int, int, int]:
    """An RGB triple from a colour name (``white``), ``#rrggbb`` or ``r,g,b`` (0-255 each)."""
    if not isinstance(color, str):
        rgb = tuple(int(c) for c in color)
    elif "," in color:
        try:
            rgb = tuple(int(c) for c in color.split(","))
        except ValueError:
            rgb = ()
    else:
        try:
            rgb = ImageColor.getrgb(color)[:3]
        except ValueError:
            rgb = ()
    if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
        raise ValueError(
            f"background colour {color!r} not understood; use a name (white), #rrggbb or r,g,b"
        )
    return rgb  # type: ignore[return-value]


def to_uint8(images) -> np.ndarray:
    """``N×C×H×W`` tensor in ``[-1, 1]`` → ``N×H×W×C`` uint8 (EDM's rounding)."""
    arr = (images.detach().float() * 127.5 + 128).clamp(0, 255).to("cpu").numpy()
    return arr.astype(np.uint8).transpose(0, 2, 3, 1)


def from_uint8(pixels, dtype=None):
    """uint8 pixels (a ``torch.uint8`` tensor of any layout, or an ``N×H×W×C`` NumPy array,
    which becomes ``N×C×H×W``) → a float tensor in ``[-1, 1]``: ``x / 127.5 − 1``."""
    import torch

    if isinstance(pixels, np.ndarray):
        pixels = torch.from_numpy(np.ascontiguousarray(pixels)).movedim(-1, -3)
    return pixels.to(dtype or torch.float32) / 127.5 - 1


def save_png(array: np.ndarray, path: str | Path) -> None:
    """Write an ``H×W×C`` uint8 array as PNG atomically (temporary file, then rename)."""
    buf = io.BytesIO()
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(buf, format="PNG")
    write_bytes_atomic(path, buf.getvalue(), durable=False)


def image_grid(images: Iterable[np.ndarray], columns: int | None = None) -> np.ndarray:
    """Tile equally sized ``H×W×C`` uint8 images into one grid image."""
    images = list(images)
    if not images:
        raise ValueError("no images to put in a grid")
    n = len(images)
    cols = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    h, w, c = images[0].shape
    grid = np.zeros((rows * h, cols * w, c), dtype=np.uint8)
    for k, im in enumerate(images):
        r, q = divmod(k, cols)
        grid[r * h:(r + 1) * h, q * w:(q + 1) * w] = im
    return grid
