"""Resampling of ``H×W×C`` uint8 images: centre crop, resize, exact area downsampling.

A relay cascade needs low-resolution data that is the block average of its high-resolution
data (docs/method.md §5): with ``low = area_downsample(high, s)``, nearest upsampling gives
``up(low) = Blur(high, ∞)`` up to the rounding to integers (docs/method.md §2.2).
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def center_crop_box(width: int, height: int) -> tuple[int, int, int, int]:
    """``(left, top, right, bottom)`` of the largest centred square in a ``width×height`` image."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def square_resize(image: np.ndarray, resolution: int) -> np.ndarray:
    """Centre-crop ``image`` to a square and resize it to ``resolution×resolution``.

    Integer downscaling factors use :func:`area_downsample` (building at 64 pixels from 256-pixel
    sources gives the 64-pixel images of a 256-pixel build); other sizes use Lanczos resampling.
    """
    h, w = image.shape[:2]
    left, top, right, bottom = center_crop_box(w, h)
    square = image[top:bottom, left:right]
    side = square.shape[0]
    if side == resolution:
        return np.ascontiguousarray(square)
    if side % resolution == 0:
        return area_downsample(square, side // resolution)
    resized = Image.fromarray(square).resize((resolution, resolution), Image.LANCZOS)
    return np.asarray(resized, dtype=np.uint8)


def area_downsample(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor×factor`` blocks of an ``H×W×C`` uint8 image, rounded half up.

    The block sum ``S`` of ``n = factor²`` pixels is exact in integers, and
    ``⌊S/n + 1/2⌋ = ⌊(2S + n) / 2n⌋``, so the mean is rounded once, without float error.
    """
    h, w, c = image.shape
    if factor < 1 or h % factor or w % factor:
        raise ValueError(f"downsampling factor {factor} does not divide the image size {w}×{h}")
    n = factor * factor
    rows = image.astype(np.int64).reshape(h // factor, factor, w // factor * factor * c).sum(axis=1)
    sums = rows.reshape(h // factor, w // factor, factor, c).sum(axis=2)
    return ((2 * sums + n) // (2 * n)).astype(np.uint8)
