"""The training data order: global sample ``g`` is a pure function of ``(seed, g)``.

Epoch ``e = g // N`` visits the ``N`` images in the permutation drawn from
``numpy.random.default_rng([seed, e])``; sample ``g`` is image ``perm_e[g mod N]``, mirrored
when :func:`relaydiff.data.flip_decision` says so and, with ``data.crop``, cut to the window
:func:`crop_window` draws from ``(seed, e, index)`` (docs/train.md#crop-training). Step ``t``
trains on the samples ``g ∈ [t·B, (t+1)·B)``; device ``r`` of ``W`` takes the ``r``-th slice
of ``B/W`` of them, split into micro-batches. Resuming therefore needs only the step number,
and the global batch is the same whatever the number of devices.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from ..data import flip_decision
from ..io.images import from_uint8

CROP_STREAM = 1  # seed-sequence word that keeps the crop positions apart from the flips


def crop_window(seed: int, epoch: int, index: int, size: int, crop: int, align: int) -> tuple[int, int]:
    """``(top, left)`` of the ``crop×crop`` window of item ``index`` in ``epoch``: uniform over
    the positions that are multiples of ``align`` (the relay patch size, so that the window is
    patch-aligned), a function of ``(seed, epoch, index)`` only, so a resumed run cuts exactly
    the same windows."""
    positions = (size - crop) // align + 1
    rng = np.random.default_rng([seed, epoch, index, CROP_STREAM])
    top, left = rng.integers(positions, size=2)
    return int(top) * align, int(left) * align


class GlobalSampleDataset(torch.utils.data.Dataset):
    """Wraps an image dataset: item ``g`` is ``(image in [-1, 1], label, g)`` of global sample ``g``;
    ``crop`` (pixels, with window positions on a grid of ``align``) cuts a window from it."""

    def __init__(self, dataset, seed: int, xflip: bool, crop: int | None = None, align: int = 1) -> None:
        self.dataset = dataset
        self.seed = int(seed)
        self.xflip = bool(xflip)
        self.crop, self.align = crop, int(align)
        self._perm: tuple[int, np.ndarray] | None = None

    def index(self, g: int) -> tuple[int, int]:
        """``(epoch, dataset index)`` of global sample ``g``."""
        n = len(self.dataset)
        epoch, pos = divmod(int(g), n)
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(n))
        return epoch, int(self._perm[1][pos])

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, g: int) -> tuple[torch.Tensor, int, int]:
        epoch, index = self.index(g)
        image, label = self.dataset[index]
        if self.xflip and flip_decision(self.seed, epoch, index):
            image = image.flip(-1)
        if self.crop:
            top, left = crop_window(self.seed, epoch, index, image.shape[-1], self.crop, self.align)
            image = image[..., top:top + self.crop, left:left + self.crop]
        return from_uint8(image), int(label), int(g)


class StepBatches(torch.utils.data.Sampler):
    """Micro-batches of global sample indices for one device, from step ``start_step`` on."""

    def __init__(
        self, batch: int, per_device: int, rank: int, world_size: int, start_step: int, total_steps: int
    ) -> None:
        self.batch, self.per_device = batch, per_device
        self.rank, self.world_size = rank, world_size
        self.start_step, self.total_steps = start_step, total_steps

    def __len__(self) -> int:
        return (self.total_steps - self.start_step) * self.batch // (self.per_device * self.world_size)

    def __iter__(self) -> Iterator[list[int]]:
        share = self.batch // self.world_size
        for step in range(self.start_step, self.total_steps):
            first = step * self.batch + self.rank * share
            for m in range(0, share, self.per_device):
                yield list(range(first + m, first + m + self.per_device))
