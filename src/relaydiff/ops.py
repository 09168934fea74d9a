"""Pure tensor operations of Relay Diffusion: patch DCT, heat-dissipation blur, block noise.

Every function works on tensors of shape ``(..., H, W)`` (usually ``N×C×H×W``), preserves dtype
and device, and is written as a few small matrix products without loops over patches.
Equations: docs/method.md §2.1 (patch DCT), §2.2 (heat dissipation), §2.3 (block noise, the
paper's Eq. 8). The names of the two relay numerics, used by every module, are defined here
(:data:`VARIANTS`, :func:`canonical_variant`; §2.7).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F

Generator = torch.Generator | Sequence[torch.Generator] | None

VARIANTS = ("trapezoidal", "official")
"""The two relay numerics, one name each for the forward process (block noise, training bounds)
and the sampler (docs/method.md §2.7): ``"trapezoidal"``, this project's default (the paper's
equations, with the trapezoidal Heun corrector), and ``"official"``, the released code's numerics
(docs/official-differences.md)."""

VARIANT_ALIASES = {"paper": "trapezoidal"}
"""Old names of :data:`VARIANTS` (relaydiff 0.1), accepted everywhere; stage files keep them."""


def check_labels(labels: torch.Tensor | None, n: int) -> None:
    """Raise a ``ValueError`` unless ``labels`` is ``None`` or has one row per sample."""
    if labels is not None and (labels.dim() == 0 or labels.shape[0] != n):
        raise ValueError(f"labels have shape {tuple(labels.shape)} for a batch of {n} samples; "
                         "pass one label (row) per sample")


def canonical_variant(variant: str, *, warn: bool = True) -> str:
    """The :data:`VARIANTS` name of relay variant ``variant``; an unknown name raises a
    ``ValueError`` listing the valid ones. An old name (:data:`VARIANT_ALIASES`) gives its new
    name, with a ``DeprecationWarning`` unless ``warn=False`` (files on disk keep old names)."""
    if variant in VARIANT_ALIASES:
        new = VARIANT_ALIASES[variant]
        if warn:
            warnings.warn(f"variant={variant!r} is the old name of variant={new!r}; use {new!r} "
                          "(docs/method.md §2.7)", DeprecationWarning, stacklevel=3)
        return new
    if variant not in VARIANTS:
        old = ", ".join(f"{a} = {n}" for a, n in VARIANT_ALIASES.items())
        raise ValueError(f"variant={variant!r} is unknown; use one of {', '.join(VARIANTS)} "
                         f"(old name: {old})")
    return variant


def _check_patch(shape: Sequence[int], p: int) -> None:
    if not isinstance(p, int) or p < 1:
        raise ValueError(f"patch size p={p!r} must be a positive integer")
    if len(shape) < 2:
        raise ValueError(f"expected a tensor of shape (..., H, W), got shape {tuple(shape)}")
    h, w = shape[-2], shape[-1]
    if h % p or w % p:
        raise ValueError(
            f"image size {h}×{w} is not divisible by the patch size {p}; "
            f"crop or pad to a multiple of {p}"
        )


@lru_cache(maxsize=32)
def _dct_matrix64(p: int) -> torch.Tensor:
    i = torch.arange(p, dtype=torch.float64)[:, None]
    j = torch.arange(p, dtype=torch.float64)[None, :]
    m = torch.cos(math.pi * (2 * j + 1) * i / (2 * p))
    scale = torch.full((p, 1), math.sqrt(2.0 / p), dtype=torch.float64)
    scale[0] = math.sqrt(1.0 / p)
    return m * scale


def dct_matrix(
    p: int, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> torch.Tensor:
    """Orthonormal DCT-II matrix ``M[i, j] = c_i·cos(π(2j+1)i/(2p))`` (``c_0=√(1/p)``, else ``√(2/p)``)."""
    return _dct_matrix64(p).to(device=device, dtype=dtype)


def _block_diagonal(m: torch.Tensor, k: int) -> torch.Tensor:
    """``diag(m, …, m)`` with ``k`` copies of ``m`` (``p×p`` or batched ``(N, p, p)``)."""
    p = m.shape[-1]
    eye = torch.eye(k, dtype=m.dtype, device=m.device)
    out = torch.einsum("ab,...ij->...aibj", eye, m)
    return out.reshape(*m.shape[:-2], k * p, k * p)


def _group(length: int, p: int, width: int = 16) -> int:
    """How many neighbouring patches one block-diagonal matrix of size ≤ ``width`` covers."""
    return max(d for d in range(1, max(1, width // p) + 1) if (length // p) % d == 0)


def _apply_patchwise(x: torch.Tensor, left: torch.Tensor, right_t: torch.Tensor) -> torch.Tensor:
    """Compute ``left @ P @ right_t`` for every ``p×p`` patch ``P`` of ``x``.

    ``left`` and ``right_t`` are ``p×p`` matrices, or ``(N, p, p)`` per-sample matrices when
    ``x`` has shape ``(N, …, H, W)``. A few neighbouring patches are handled by one
    block-diagonal matrix: the same result, but matrix products of inner size about 16 run
    several times faster than products of inner size ``p``.
    """
    p = left.shape[-1]
    *lead, h, w = x.shape
    per_sample = left.dim() == 3
    n = x.shape[0] if per_sample else 1
    kw, kh = _group(w, p), _group(h, p)
    right_t = _block_diagonal(right_t, kw)
    y = torch.matmul(x.reshape(n, -1, kw * p), right_t if per_sample else right_t.unsqueeze(0))
    left = _block_diagonal(left, kh)
    # a 4-D left factor makes this a batched product on y's own layout; a 2-D one would let
    # matmul fold it as yᵀ·leftᵀ, copying the image twice more (transposed input and output)
    y = torch.matmul(left.unsqueeze(1) if per_sample else left[None, None], y.reshape(n, -1, kh * p, w))
    return y.reshape(*lead, h, w)


def patch_dct(x: torch.Tensor, p: int) -> torch.Tensor:
    """Patch-wise orthonormal 2-D DCT-II: every ``p×p`` patch ``P`` becomes ``M P Mᵀ``.

    The coefficient ``(i, j)`` of the patch at grid position ``(a, b)`` is stored at pixel
    ``(a·p + i, b·p + j)``, so the output has the shape of ``x``.
    """
    _check_patch(x.shape, p)
    m = dct_matrix(p, dtype=x.dtype, device=x.device)
    return _apply_patchwise(x, m, m.T)


def patch_idct(X: torch.Tensor, p: int) -> torch.Tensor:
    """Inverse of :func:`patch_dct`: every ``p×p`` patch ``X`` becomes ``Mᵀ X M``."""
    _check_patch(X.shape, p)
    m = dct_matrix(p, dtype=X.dtype, device=X.device)
    return _apply_patchwise(X, m.T, m)


def _check_blur_sigma(blur_sigma: float | torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(blur_sigma, torch.Tensor):  # the tables are built on the CPU, then moved
        b = blur_sigma.detach().to("cpu", dtype)
    else:
        b = torch.as_tensor(blur_sigma, dtype=dtype)
    if b.dim() > 1:
        raise ValueError(f"blur_sigma must be a float or a tensor of shape (N,), got shape {tuple(b.shape)}")
    if not torch.isfinite(b).all() or (b < 0).any():
        raise ValueError(f"blur_sigma must be finite and ≥ 0, got {b.tolist()}")
    return b


def _check_min_scale(min_scale: float) -> None:
    if not 0.0 <= min_scale <= 1.0:
        raise ValueError(f"min_scale={min_scale} must lie in [0, 1]")


def heat_attenuation(
    p: int, blur_sigma: float | torch.Tensor, min_scale: float = 1e-3, *, dtype=torch.float64
) -> torch.Tensor:
    """Attenuation ``a_b(i,j) = (1−m)·exp(−(ω_i²+ω_j²)·b²/2) + m`` with ``ω_i = π·i/p``.

    Returns a ``p×p`` table for a scalar ``b`` and an ``(N, p, p)`` stack for ``b`` of shape ``(N,)``.
    """
    _check_min_scale(min_scale)
    b = _check_blur_sigma(blur_sigma, dtype)
    omega = math.pi * torch.arange(p, dtype=dtype) / p
    freq2 = omega[:, None] ** 2 + omega[None, :] ** 2
    decay = torch.exp(-freq2 * (b[..., None, None] ** 2 / 2))
    return (1 - min_scale) * decay + min_scale


def heat_blur(
    x: torch.Tensor, p: int, blur_sigma: float | torch.Tensor, min_scale: float = 1e-3
) -> torch.Tensor:
    """Patch-wise heat dissipation ``Blur(x, b) = IDCT(a_b ⊙ DCT(x))`` (docs/method.md §2.2).

    ``blur_sigma`` is a float or a per-sample tensor of shape ``(N,)``. ``b = 0`` is the identity;
    ``b → ∞`` keeps only each patch's mean, i.e. ``up(down(x))`` up to ``min_scale``.

    The table ``a_b = (1−m)·e⊗e + m`` with ``e_i = exp(−ω_i²b²/2)`` is separable plus a
    constant, so the operator is ``G P Gᵀ + m·P`` per patch with ``G = Mᵀ diag(√(1−m)·e) M``:
    two small matrix products instead of a DCT, a product and an inverse DCT.
    """
    _check_patch(x.shape, p)
    _check_min_scale(min_scale)
    b = _check_blur_sigma(blur_sigma, torch.float64)
    if b.dim() == 1 and b.shape[0] != x.shape[0]:
        raise ValueError(f"blur_sigma has {b.shape[0]} entries for a batch of {x.shape[0]}")
    omega = math.pi * torch.arange(p, dtype=torch.float64) / p
    e = math.sqrt(1 - min_scale) * torch.exp(-(omega**2) * (b[..., None] ** 2 / 2))
    m = _dct_matrix64(p)
    g = (m.T * e.unsqueeze(-2)) @ m
    g = g.to(device=x.device, dtype=x.dtype)
    out = _apply_patchwise(x, g, g.transpose(-1, -2))
    return out.add_(x, alpha=min_scale) if min_scale else out


def downsample(x: torch.Tensor, s: int) -> torch.Tensor:
    """Area (box) downsampling by an integer factor ``s`` (``s×s`` average pooling)."""
    _check_patch(x.shape, s)
    *lead, h, w = x.shape
    return x.reshape(*lead, h // s, s, w // s, s).mean(dim=(-3, -1))


def upsample(x: torch.Tensor, s: int) -> torch.Tensor:
    """Nearest-neighbour upsampling by an integer factor ``s``."""
    if not isinstance(s, int) or s < 1:
        raise ValueError(f"scale factor s={s!r} must be a positive integer")
    *lead, h, w = x.shape
    return x.reshape(*lead, h, 1, w, 1).expand(*lead, h, s, w, s).reshape(*lead, h * s, w * s)


def noisy_condition(x_low: torch.Tensor, s: int, level: float | torch.Tensor,
                    generator: Generator = None) -> torch.Tensor:
    """Noise-conditioning augmentation of a super-resolution stage (docs/method.md §7):
    ``up(x_low + σ_aug·ε, s)`` with ``ε`` white noise at the low resolution and ``σ_aug`` a float
    or a per-sample tensor ``(N,)``."""
    level = torch.as_tensor(level, dtype=x_low.dtype, device=x_low.device)
    if level.dim() == 1:
        if level.shape[0] != x_low.shape[0]:
            raise ValueError(f"{level.shape[0]} noise levels for {x_low.shape[0]} images")
        level = level.reshape(-1, *([1] * (x_low.dim() - 1)))
    eps = randn(x_low.shape, generator, device=x_low.device, dtype=x_low.dtype)
    return upsample(x_low + level * eps, s)


def randn(
    shape: Sequence[int],
    generator: Generator = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Standard normal noise; ``generator`` may be one generator or one per sample (``shape[0]``).

    With per-sample generators every sample's values depend on its own generator only, so they
    do not change with the batch size or the position in the batch. Values are drawn in float64
    on the generator's device, then rounded to ``dtype`` (default: torch's) and moved to
    ``device``: the same generator gives the same noise, up to rounding, in every precision, so
    a sample's content does not depend on the sampler state's ``dtype``.
    """
    shape = tuple(int(s) for s in shape)
    dtype = dtype or torch.get_default_dtype()
    if generator is None or isinstance(generator, torch.Generator):
        gen_device = generator.device if generator is not None else device
        out = torch.randn(shape, generator=generator, device=gen_device, dtype=torch.float64)
        return out.to(device=device or out.device, dtype=dtype)
    gens = list(generator)
    if len(gens) != shape[0]:
        raise ValueError(f"got {len(gens)} generators for a batch of {shape[0]} samples")
    out = torch.empty(shape, device=gens[0].device if gens else device, dtype=dtype)
    for row, g in zip(out, gens, strict=True):  # one sample's float64 values at a time
        row.copy_(torch.randn(shape[1:], generator=g, device=g.device, dtype=torch.float64))
    return out.to(device) if device is not None else out


def _official_box(g: torch.Tensor, s: int) -> torch.Tensor:
    """``(1/s)·Σ_{dx,dy<s} roll(g, (dx, dy))`` as a circular ``s×s`` box sum (released code)."""
    *lead, h, w = g.shape
    flat = g.reshape(-1, 1, h, w)
    # roll by (dx, dy) reads g[i−dx, j−dy]: a window reaching s−1 pixels up and left, circularly.
    # The box is separable: a sum of s rows, then of s columns (avg_pool's 1/s each, times s).
    rows = F.avg_pool2d(F.pad(flat, (0, 0, s - 1, 0), mode="circular"), (s, 1), stride=1)
    box = F.avg_pool2d(F.pad(rows, (s - 1, 0, 0, 0), mode="circular"), (1, s), stride=1)
    return box.mul_(s).reshape(*lead, h, w)


def block_noise(
    shape: Sequence[int],
    s: int,
    *,
    generator: Generator = None,
    variant: str = "trapezoidal",
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Block noise ``Block_s`` of unit per-pixel variance.

    ``variant="trapezoidal"`` (the paper's Eq. 8; old name ``"paper"``): one standard normal value
    per ``s×s`` block aligned with the patch grid (nearest-upsampled white noise).
    ``variant="official"``: the released code's circular sliding box filter
    ``(1/s)·Σ_{dx,dy<s} roll(g, (dx, dy))`` of one full-resolution white noise ``g``.
    """
    variant = canonical_variant(variant)
    shape = tuple(int(v) for v in shape)
    _check_patch(shape, s)
    if variant == "trapezoidal":
        *lead, h, w = shape
        low = randn((*lead, h // s, w // s), generator, device=device, dtype=dtype)
        return upsample(low, s)
    return _official_box(randn(shape, generator, device=device, dtype=dtype), s)


def relay_noise(
    shape: Sequence[int],
    s: int,
    alpha: float,
    *,
    generator: Generator = None,
    variant: str = "trapezoidal",
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Relay noise ``n``: white noise mixed with block noise of scale ``alpha`` (paper Eq. 8).

    ``"trapezoidal"`` (the paper's; old name ``"paper"``): ``n = (ε + α·Block_s)/√(1+α²)``
    (per-pixel variance 1). ``"official"``: ``n = ε + α·Block_s`` with the box-filter block noise
    (variance ``1+α²``). ``ε`` is drawn before the block noise.
    """
    variant = canonical_variant(variant)
    if not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"block noise scale alpha={alpha} must be finite and ≥ 0")
    shape = tuple(int(v) for v in shape)
    _check_patch(shape, s)
    eps = randn(shape, generator, device=device, dtype=dtype)
    if variant == "official":
        if alpha == 0:
            return eps
        return eps.add_(block_noise(shape, s, generator=generator, variant=variant,
                                    device=device, dtype=dtype), alpha=alpha)
    *lead, h, w = shape
    low = randn((*lead, h // s, w // s), generator, device=device, dtype=dtype)
    c = 1.0 / math.sqrt(1.0 + alpha * alpha)
    out = eps.mul_(c).reshape(*lead, h // s, s, w // s, s)
    out.add_(low.mul_(alpha * c).reshape(*lead, h // s, 1, w // s, 1))
    return out.reshape(shape)
