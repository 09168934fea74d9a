"""EDM's geometric augmentation with augmentation labels (Karras et al. 2022, Appendix F.2; the
transforms of Karras et al. 2020, "Training GANs with Limited Data").

Each transform is applied to a sample with probability ``p × multiplier`` and reported to the
network through ``augment_labels`` (EDM's non-leaking augmentation: the network learns what was
done, and sampling passes no labels, i.e. "nothing"). The labels have EDM's layout, in this
order, for the transforms whose multiplier is > 0:

    xflip (1), yflip (1), translate_int (2: tx/(W·max), ty/(H·max)), scale (1: log2 s / std),
    rotate_frac (2: cos θ − 1, sin θ), aniso (2: w·cos r, w·sin r), translate_frac (2: tx, ty / std)

— with EDM's training settings (``xflip``, ``yflip``, ``scale``, ``rotate_frac``, ``aniso``,
``translate_frac``) the 9 labels of ``augment_dim = 9``. Flips and integer translations move
pixels (translation mirrors at the image edges); scaling, rotation, anisotropic scaling and
fractional translation compose one inverse matrix per sample and resample bilinearly with
reflection at the borders (EDM resamples bicubically with wavelet anti-aliasing; relaydiff keeps
the simpler filter).

Every random draw of sample ``g`` comes from that sample's own generator, so augmentation is a
function of ``(seed, g)`` and a resumed run repeats it exactly. A relay or SR stage augments its
high-resolution image, from which its low-resolution view is made, so both see the same
transform; its integer translations are multiples of the stage's scale factor, so that the
low-resolution view is exactly the translated low-resolution image (see
:func:`reflect_translate`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..ops import Generator


@dataclass
class AugmentConfig:
    """Probability ``p`` (0 disables augmentation) and EDM's per-transform multipliers and
    ranges (defaults: EDM's ``--augment`` training settings)."""

    p: float = 0.0
    xflip: float = 1e8
    yflip: float = 1.0
    translate_int: float = 0.0
    translate_int_max: float = 0.125
    scale: float = 1.0
    rotate_frac: float = 1.0
    aniso: float = 1.0
    translate_frac: float = 1.0
    scale_std: float = 0.2
    rotate_frac_max: float = 1.0
    aniso_std: float = 0.2
    aniso_rotate_prob: float = 0.5
    translate_frac_std: float = 0.125

    def __post_init__(self) -> None:
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"augment.p {self.p} must lie in [0, 1] (a probability)")
        for name in ("xflip", "yflip", "translate_int", "scale", "rotate_frac", "aniso",
                     "translate_frac"):
            if getattr(self, name) < 0:
                raise ValueError(f"augment.{name} {getattr(self, name)} must be ≥ 0")

    @property
    def label_dim(self) -> int:
        """Number of augmentation labels (what the network's ``augment_dim`` must be)."""
        sizes = {"xflip": 1, "yflip": 1, "translate_int": 2, "scale": 1, "rotate_frac": 2,
                 "aniso": 2, "translate_frac": 2}
        return sum(n for name, n in sizes.items() if getattr(self, name) > 0)


def _uniform(gens: Sequence[torch.Generator], shape=()) -> torch.Tensor:
    return torch.stack([torch.rand(shape, generator=g, dtype=torch.float64) for g in gens])


def _normal(gens: Sequence[torch.Generator], shape=()) -> torch.Tensor:
    return torch.stack([torch.randn(shape, generator=g, dtype=torch.float64) for g in gens])


def _matrix(rows: list[list]) -> torch.Tensor:
    """``(N, 3, 3)`` from rows of per-sample tensors or numbers."""
    n = next(e for row in rows for e in row if isinstance(e, torch.Tensor)).shape[0]
    return torch.stack([torch.stack([e if isinstance(e, torch.Tensor) else
                                     torch.full((n,), float(e), dtype=torch.float64) for e in row],
                                    -1) for row in rows], -2)


def scale_inv(sx, sy) -> torch.Tensor:
    return _matrix([[1 / sx, 0, 0], [0, 1 / sy, 0], [0, 0, 1]])


def rotate_inv(theta) -> torch.Tensor:
    """Inverse of the rotation by ``theta``."""
    return _matrix([[torch.cos(theta), torch.sin(theta), 0], [-torch.sin(theta), torch.cos(theta), 0],
                    [0, 0, 1]])


def translate_inv(tx, ty) -> torch.Tensor:
    return _matrix([[1, 0, -tx], [0, 1, -ty], [0, 0, 1]])


def reflect_translate(images: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    """Shift every image by integer ``(tx, ty)`` pixels (``(N,)`` each), mirroring at the image
    edges (symmetric reflection, edge pixels repeated: ``m = (x − tx) mod 2W``, ``x ← m`` if
    ``m < W`` else ``2W − 1 − m``). Mirroring about the edge, not the edge pixel's centre as EDM
    does, makes a shift by a multiple of ``k`` commute with ``k×k`` area downsampling when ``k``
    divides the size, border included."""
    n, c, h, w = images.shape

    def mirrored(shift: torch.Tensor, size: int) -> torch.Tensor:
        m = (torch.arange(size, device=images.device)[None, :] - shift[:, None]) % (2 * size)
        return torch.where(m < size, m, 2 * size - 1 - m)

    x, y = mirrored(tx, w), mirrored(ty, h)
    rows = torch.gather(images, 2, y[:, None, :, None].expand(n, c, h, w))
    return torch.gather(rows, 3, x[:, None, None, :].expand(n, c, h, w))


def warp(images: torch.Tensor, g_inv: torch.Tensor) -> torch.Tensor:
    """Resample with the per-sample inverse matrices ``g_inv`` (``(N, 3, 3)``, pixel units around
    the image centre): output pixel ``q`` takes the input at ``g_inv·q``; bilinear, reflection."""
    n, c, h, w = images.shape
    # Normalised coordinates (align_corners=True): u = (x − cx) / cx with cx = (W − 1) / 2.
    to_px = torch.diag(torch.tensor([(w - 1) / 2, (h - 1) / 2, 1.0], dtype=torch.float64))
    theta = (torch.linalg.inv(to_px) @ g_inv @ to_px)[:, :2, :]
    grid = F.affine_grid(theta.to(images.dtype), [n, c, h, w], align_corners=True)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=True)


def augment(images: torch.Tensor, config: AugmentConfig, generators: Generator,
            translate_step: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Augmented ``N×C×H×W`` images in [-1, 1] and their ``(N, label_dim)`` labels.

    ``generators``: one per sample (or one for all). ``translate_step``: integer translations are
    multiples of it (a relay stage's scale factor)."""
    n, _, h, w = images.shape
    gens = [generators] * n if generators is None or isinstance(generators, torch.Generator) \
        else list(generators)
    c, device = config, images.device
    labels: list[torch.Tensor] = []

    def chosen(mult: float) -> torch.Tensor:
        return _uniform(gens) < mult * c.p

    for mult, dim in ((c.xflip, 3), (c.yflip, 2)):
        if mult > 0:
            flip = (_uniform(gens) < 0.5) & chosen(mult)
            images = torch.where(flip.to(device)[:, None, None, None], images.flip(dim), images)
            labels.append(flip.double())
    if c.translate_int > 0:
        t = (_uniform(gens, (2,)) * 2 - 1) * chosen(c.translate_int)[:, None]
        tx = (t[:, 0] * w * c.translate_int_max / translate_step).round() * translate_step
        ty = (t[:, 1] * h * c.translate_int_max / translate_step).round() * translate_step
        images = reflect_translate(images, tx.long().to(device), ty.long().to(device))
        labels += [tx / (w * c.translate_int_max), ty / (h * c.translate_int_max)]
    eye = torch.eye(3, dtype=torch.float64).expand(n, 3, 3)
    g_inv = eye
    if c.scale > 0:
        v = _normal(gens) * chosen(c.scale)
        s = torch.exp2(v * c.scale_std)
        g_inv = g_inv @ scale_inv(s, s)
        labels.append(v)
    if c.rotate_frac > 0:
        theta = (_uniform(gens) * 2 - 1) * math.pi * c.rotate_frac_max * chosen(c.rotate_frac)
        g_inv = g_inv @ rotate_inv(theta)
        labels += [theta.cos() - 1, theta.sin()]
    if c.aniso > 0:
        v = _normal(gens) * chosen(c.aniso)
        r = (_uniform(gens) * 2 - 1) * math.pi * (_uniform(gens) < c.aniso_rotate_prob)
        s = torch.exp2(v * c.aniso_std)
        g_inv = g_inv @ rotate_inv(-r) @ scale_inv(s, 1 / s) @ rotate_inv(r)
        labels += [v * r.cos(), v * r.sin()]
    if c.translate_frac > 0:
        t = _normal(gens, (2,)) * chosen(c.translate_frac)[:, None]
        g_inv = g_inv @ translate_inv(t[:, 0] * w * c.translate_frac_std,
                                      t[:, 1] * h * c.translate_frac_std)
        labels += [t[:, 0], t[:, 1]]
    moved = (g_inv != eye).flatten(1).any(1).to(device)
    if moved.any():  # untransformed samples are not resampled at all
        images = images.clone()
        images[moved] = warp(images[moved], g_inv[moved.cpu()].to(device))
    out = torch.stack(labels, 1) if labels else torch.zeros(n, 0, dtype=torch.float64)
    return images, out.to(device=device, dtype=torch.float32)
