"""One streaming pass over images: Inception features, SWD descriptors, power spectrum.

Under ``torchrun`` (``torch.distributed`` initialised) every rank reads the images
``rank, rank + world_size, …``; features and descriptors are gathered back into the set's order
with ``all_gather`` and the power spectra summed with ``all_reduce``, so every rank ends with the
same result as one process would. Inception runs in float32 with TF32 disabled.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ..io.distributed import current_world
from . import spectrum as spectrum_mod
from . import swd as swd_mod
from .inception import InceptionV3

SWD_PER_IMAGE = 128
SWD_MAX_DESCRIPTORS = 1 << 15


@dataclass
class Collected:
    """What one pass produced; fields are ``None`` when not requested."""

    n_images: int
    resolution: tuple[int, int]
    pool: np.ndarray | None = None
    spatial: np.ndarray | None = None
    logits: np.ndarray | None = None
    swd: list[torch.Tensor] | None = None
    spectrum: torch.Tensor | None = None
    fingerprint: str | None = None


def swd_per_image(n_images: int, max_descriptors: int = SWD_MAX_DESCRIPTORS) -> int:
    """Neighbourhoods per image and level: 128 (Progressive GAN) capped at ``max_descriptors``."""
    return max(1, min(SWD_PER_IMAGE, math.ceil(max_descriptors / max(n_images, 1))))


def _gather_in_order(local: torch.Tensor, n_total: int) -> torch.Tensor:
    """Rows held round-robin by the ranks (``rank, rank + W, …``) → all rows in set order."""
    world = current_world()[1]
    if world == 1:
        return local
    per_rank = math.ceil(n_total / world)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" \
        else torch.device("cpu")
    padded = torch.zeros(per_rank, *local.shape[1:], dtype=local.dtype, device=device)
    padded[:len(local)] = local.to(device)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    rows = torch.stack(parts, 1).reshape(per_rank * world, *local.shape[1:])
    return rows[:n_total].cpu()


@contextmanager
def _exact_float32() -> Iterator[None]:
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def collect(batches: Iterable[torch.Tensor], n_total: int, *, model: InceptionV3 | None = None,
            swd: bool = False, spectrum: bool = False, seed: int = 0, progress: bool = True,
            desc: str = "images") -> Collected:
    """Stream uint8 ``N×3×H×W`` batches (this rank's share of ``n_total`` images) once."""
    rank, world = current_world()
    pools, spatials, logits, levels = [], [], [], []
    power = None
    resolution = None
    digest = hashlib.sha256() if world == 1 else None
    per_image = swd_per_image(n_total)
    n_local = 0
    bar = tqdm(total=n_total, desc=desc, unit="img", disable=not progress or rank != 0)
    with torch.inference_mode(), _exact_float32(), bar:
        for batch in batches:
            if resolution is None:
                resolution = tuple(batch.shape[-2:])
            n_local += len(batch)
            if digest is not None:
                digest.update(str(tuple(batch.shape[1:])).encode())
                digest.update(batch.numpy().tobytes())
            if model is not None:
                out = model(batch)
                pools.append(out.pool.cpu())
                spatials.append(out.spatial.cpu())
                if out.logits is not None:
                    logits.append(out.logits.cpu())
            if swd:
                # Patch positions of image k (in set order) come from the seed (seed, k).
                first = rank + world * (n_local - len(batch))
                gens = [torch.Generator().manual_seed(seed * n_total + first + world * j)
                        for j in range(len(batch))]
                pyramid = swd_mod.laplacian_pyramid(batch)
                levels.append([swd_mod.patch_descriptors(lv, per_image, gens).half()
                               for lv in pyramid])
            if spectrum:
                part = spectrum_mod.power_spectrum_sum(batch)
                power = part if power is None else power + part
            bar.update(len(batch) * world)
    if resolution is None:
        raise ValueError(f"no {desc} to evaluate")
    result = Collected(n_images=n_local, resolution=resolution,
                       fingerprint=digest.hexdigest() if digest is not None else None)
    if world > 1:
        counts = torch.tensor([n_local], dtype=torch.float64)
        dist.all_reduce(counts)
        result.n_images = int(counts.item())

    def rows(parts: list[torch.Tensor]) -> torch.Tensor:
        return _gather_in_order(torch.cat(parts), n_total)

    if model is not None:
        result.pool = rows(pools).numpy()  # float32; statistics are taken in float64
        result.spatial = rows(spatials).numpy()
        result.logits = rows(logits).numpy() if logits else None
    if swd:
        # One row per image (its `per_image` descriptors) while gathering, then one per patch.
        result.swd = [rows([lv[i].reshape(-1, per_image, lv[i].shape[1]) for lv in levels])
                      .flatten(0, 1) for i in range(len(levels[0]))]
    if spectrum:
        if world > 1:
            dist.all_reduce(power)
        result.spectrum = spectrum_mod.radial_profile(power / (result.n_images * 3))
    return result
