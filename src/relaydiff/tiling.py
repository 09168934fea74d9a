"""Tiled evaluation of a stage's denoiser, with whole-image GroupNorm statistics.

A relay or super-resolution stage samples images larger than it was trained on with bounded
memory when only its denoiser call is tiled: the samplers keep the full-size state and draw all
noise on it (so samples do not depend on the tile size), and :class:`TiledDenoiser` evaluates the
network on windows of one size and blends their outputs. GroupNorm layers normalise with the
whole image's statistics, gathered over the tiles' cores in an earlier pass and carried relative
to each window's own (docs/networks.md, "Sampling at other sizes and in tiles").
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

STATS_MODES = ("previous", "fresh", "tile")

Statistics = dict[str, tuple[torch.Tensor, torch.Tensor]]
"""Per GroupNorm module (its name in the denoiser): the whole-image mean and variance of its
input, each ``(N, groups)`` float64."""


class _Gathered(NamedTuple):
    """What one pass gathered for one GroupNorm layer: the whole image's mean and variance
    ``(N, groups)`` and each window's own mean and variance plus ε ``(N, windows, groups)``,
    float64."""

    mean: torch.Tensor
    var: torch.Tensor
    window_mean: torch.Tensor
    window_var_eps: torch.Tensor


# --------------------------------------------------------------------------- geometry

@dataclass(frozen=True)
class _Axis:
    """The cores ``[c0, c1)`` along one image axis, the origins of their windows (all of size
    ``window``) and each core's blending weight over the whole axis (float64)."""

    cores: tuple[tuple[int, int], ...]
    origins: tuple[int, ...]
    window: int
    weights: tuple[torch.Tensor, ...]


def _ramp(distance: torch.Tensor, width: int) -> torch.Tensor:
    """0 → 1 linearly over ``distance ∈ [0, width]`` (a step at 0 for ``width = 0``)."""
    if width == 0:
        return (distance > 0).to(torch.float64)
    return (distance / width).clamp(0, 1)


@functools.lru_cache(maxsize=32)
def _axis(length: int, tile: int, halo: int) -> _Axis:
    """Cores of ``tile`` pixels (the last one may be smaller) in windows of ``tile + 2·halo``
    pixels, shifted inward at the image edges; an axis no longer than a window is one core.
    A core's weight ramps linearly across ``[b − halo//2, b + halo//2]`` around each boundary
    ``b`` with a neighbouring core (1 − the neighbour's weight there), so it is 0 within
    ``halo//2`` pixels of its window's edges inside the image; the weights are divided by their
    sum at each pixel (1 up to rounding for ``halo ≤ tile``), so the blend needs no image-sized
    normaliser."""
    window = min(tile + 2 * halo, length)
    bounds = [0, length] if window == length else [*range(0, length, tile), length]
    cores = tuple(itertools.pairwise(bounds))
    origins = tuple(min(max(c0 - halo, 0), length - window) for c0, _ in cores)
    centre = torch.arange(length, dtype=torch.float64) + 0.5
    band = halo // 2
    weights = []
    for c0, c1 in cores:
        w = torch.ones(length, dtype=torch.float64)
        if c0 > 0:
            w = w * _ramp(centre - (c0 - band), 2 * band)
        if c1 < length:
            w = w * _ramp(c1 + band - centre, 2 * band)
        weights.append(w)
    total = torch.stack(weights).sum(0)
    return _Axis(cores, origins, window, tuple(w / total for w in weights))


class _Window(NamedTuple):
    """One window of an image: its origin, its core in window pixels ``(y0, y1, x0, x1)`` and
    its blending weight as the rows' and the columns' factor."""

    y: int
    x: int
    core: tuple[int, int, int, int]
    weight_y: torch.Tensor
    weight_x: torch.Tensor


class _Plan(NamedTuple):
    """The windows of one image size."""

    rows: _Axis
    cols: _Axis
    windows: list[_Window]

    @property
    def size(self) -> tuple[int, int]:
        return self.rows.window, self.cols.window


def _plan_of(rows: _Axis, cols: _Axis) -> _Plan:
    windows = []
    for (r0, r1), oy, wy in zip(rows.cores, rows.origins, rows.weights, strict=True):
        for (c0, c1), ox, wx in zip(cols.cores, cols.origins, cols.weights, strict=True):
            windows.append(_Window(oy, ox, (r0 - oy, r1 - oy, c0 - ox, c1 - ox),
                                   wy[oy:oy + rows.window], wx[ox:ox + cols.window]))
    return _Plan(rows, cols, windows)


# --------------------------------------------------------------------------- the denoiser's inputs

class _Inputs:
    """The denoiser's arguments, cut per window: ``x`` and tensors of its height and width by the
    window, per-sample tensors (first dimension ``N``) by the window's sample."""

    def __init__(self, x: torch.Tensor, sigma, labels: torch.Tensor | None, kwargs: dict) -> None:
        n, hw = x.shape[0], x.shape[-2:]
        sigma = torch.as_tensor(sigma, device=x.device)
        if sigma.numel() == 1:
            sigma = sigma.reshape(1).expand(n)
        if sigma.shape[0] != n:
            raise ValueError(f"sigma has shape {tuple(sigma.shape)} for a batch of {n}")
        if labels is not None and labels.shape[0] != n:
            raise ValueError(f"labels have shape {tuple(labels.shape)} for a batch of {n}")
        self.x, self.sigma, self.labels, self.kwargs = x, sigma, labels, kwargs
        self.spatial = {k for k, v in kwargs.items()
                        if isinstance(v, torch.Tensor) and v.dim() >= 3 and v.shape[-2:] == hw}
        for k in self.spatial:
            if kwargs[k].shape[0] != n:
                raise ValueError(f"{k} has shape {tuple(kwargs[k].shape)}: an image-sized argument "
                                 f"needs one image per sample ({n})")
        self.per_sample = {k for k, v in kwargs.items() if k not in self.spatial
                           and isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == n}

    def take(self, samples: list[int], windows: list[_Window], size: tuple[int, int]
             ) -> tuple[tuple, dict]:
        """The arguments of one network call on ``windows`` of ``samples``."""
        h, w = size
        idx = torch.tensor(samples)

        def cut(t: torch.Tensor) -> torch.Tensor:
            return torch.stack([t[n, ..., win.y:win.y + h, win.x:win.x + w]
                                for n, win in zip(samples, windows, strict=True)])

        kwargs = {k: cut(v) if k in self.spatial else v[idx] if k in self.per_sample else v
                  for k, v in self.kwargs.items()}
        labels = None if self.labels is None else self.labels[idx]
        return (cut(self.x), self.sigma[idx], labels), kwargs


# --------------------------------------------------------------------------- GroupNorm statistics

@dataclass
class _Call:
    """The windows of one network call as the GroupNorm layers see them: each window's sample,
    its index among its image's windows and its core; the first ``real`` windows are not
    padding."""

    samples: torch.Tensor
    slots: torch.Tensor
    cores: list[tuple[int, int, int, int]]
    size: tuple[int, int]
    real: int
    scaled: dict[tuple[int, int], list[tuple[int, int, int, int]]] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)

    def feature_cores(self, name: str, feature: tuple[int, int]) -> list[tuple[int, int, int, int]]:
        """The windows' cores in the pixels of layer ``name``'s ``feature`` map (the window
        downsampled by an integer factor)."""
        if feature not in self.scaled:
            self.scaled[feature] = _scaled_cores(name, self.cores, self.size, feature)
        return self.scaled[feature]


def _scaled_cores(name: str, cores: list[tuple[int, int, int, int]], size: tuple[int, int],
                  feature: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    (wh, ww), (fh, fw) = size, feature
    f = wh // fh if fh else 0
    if not f or f * fh != wh or f * fw != ww:
        raise ValueError(f"GroupNorm {name!r}: its {fh}x{fw} input is not the {wh}x{ww} window "
                         "downsampled by an integer factor")
    if any(v % f for core in cores for v in core):
        raise ValueError(f"GroupNorm {name!r} runs at 1/{f} of the window size but the tiles are "
                         f"not on that grid; pass align a multiple of {f}")
    return [(y0 // f, y1 // f, x0 // f, x1 // f) for y0, y1, x0, x1 in cores]


def _normalise(x: torch.Tensor, norm: nn.GroupNorm, mean: torch.Tensor, var: torch.Tensor
               ) -> torch.Tensor:
    """GroupNorm of ``x`` with given per-window ``mean`` and ``var`` ``(B, groups)`` (at least
    float32, like GroupNorm under autocast), run as one inference-mode batch norm over the
    ``B·C`` channels (PyTorch's fused kernel)."""
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    b, c = x.shape[:2]
    per_group = c // norm.num_groups

    def per_channel(t: torch.Tensor) -> torch.Tensor:
        return t.repeat_interleave(per_group, 1).reshape(-1).to(x.dtype)

    weight, bias = ((norm.weight.to(x.dtype).repeat(b), norm.bias.to(x.dtype).repeat(b))
                    if norm.affine else (None, None))
    out = F.batch_norm(x.reshape(1, b * c, *x.shape[2:]), per_channel(mean), per_channel(var),
                       weight, bias, training=False, eps=norm.eps)
    return out.reshape(x.shape)


def _group_moments(x: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Mean and variance per group of channels of ``x`` ``(…, C, H, W)`` → ``(…, groups)``,
    float64, and the count per group. Each row is summed first in ``x``'s precision (at least
    float32; its sum and its sum of squares), the rows' sums in float64: two fast reductions
    over the innermost axis, also on a strided window of a larger map."""
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    *lead, c, h, w = x.shape
    s1 = x.sum(-1).to(torch.float64).reshape(*lead, groups, -1).sum(-1)
    s2 = torch.linalg.vector_norm(x, 2, -1).to(torch.float64).square().reshape(*lead, groups, -1).sum(-1)
    count = c // groups * h * w
    mean = s1 / count
    return mean, (s2 / count - mean.square()).clamp_min(0), count


def _whole_image_target(use: _Gathered, call: _Call, now: tuple[torch.Tensor, torch.Tensor],
                        eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and variance to normalise each window with: the whole image's, as they stood
    relative to the window's own statistics when gathered, applied to the window's statistics
    now (``m + (μ − m_g)·s``, ``(σ² + ε)·s² − ε`` with ``s² = (v + ε)/(v_g + ε)``). Equal to the
    gathered ``μ, σ²`` when the window's input is what it was then; a window whose input has
    changed by an affine map since is normalised as GroupNorm would (it keeps its invariance)."""
    n, k = call.samples, call.slots
    mean_now, var_eps_now = now
    scale2 = var_eps_now / use.window_var_eps[n, k]
    mean = mean_now + (use.mean[n] - use.window_mean[n, k]) * scale2.sqrt()
    return mean, (use.var[n] + eps) * scale2 - eps


class _Pass:
    """The GroupNorm layers during one gathering pass over all windows: they normalise with
    ``use`` (the whole-image statistics of each sample relative to each window's; ``None``: the
    window's own) and record each window's own statistics and the mean, variance and count of
    their input over each window's core."""

    def __init__(self, n_images: int, n_windows: int, use: dict[str, _Gathered] | None) -> None:
        self.shape, self.use = (n_images, n_windows), use
        # name → (N, windows, 5, groups): the core's mean, variance, count; the window's mean, var + ε
        self.moments: dict[str, torch.Tensor] = {}
        self.call: _Call | None = None

    def forward(self, name: str, norm: nn.GroupNorm) -> Callable[[torch.Tensor], torch.Tensor]:
        def run(x: torch.Tensor) -> torch.Tensor:
            call = self.call
            if x.dim() != 4 or x.shape[0] != len(call.cores):
                raise ValueError(f"GroupNorm {name!r} normalises a {tuple(x.shape)} tensor; tiling "
                                 f"needs N×C×H×W feature maps of the {len(call.cores)} windows")
            if name in call.seen:
                raise ValueError(f"GroupNorm {name!r} runs twice in one forward; tiled statistics "
                                 "need one call per layer")
            call.seen.add(name)
            mean, var, _ = _group_moments(x, norm.num_groups)
            own = mean, var + norm.eps
            self._record(name, norm, x, call, own)
            if self.use is None:
                return _normalise(x, norm, mean, var)
            return _normalise(x, norm, *_whole_image_target(self.use[name], call, own, norm.eps))

        return run

    def _record(self, name: str, norm: nn.GroupNorm, x: torch.Tensor, call: _Call,
                window: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Each real window's statistics and its core's mean, variance and count per group,
        computed from that window alone."""
        parts = []
        for k, (y0, y1, x0, x1) in enumerate(call.feature_cores(name, x.shape[2:])[:call.real]):
            mean, var, count = _group_moments(x[k, :, y0:y1, x0:x1], norm.num_groups)
            parts.append(torch.stack([mean, var, torch.full_like(mean, count)]))
        if name not in self.moments:
            self.moments[name] = x.new_zeros((*self.shape, 5, norm.num_groups), dtype=torch.float64)
        real = slice(0, call.real)
        self.moments[name][call.samples[real], call.slots[real]] = torch.cat(
            [torch.stack(parts), window[0][real, None], window[1][real, None]], 1)

    def gathered(self) -> dict[str, _Gathered]:
        """Per layer, the whole-image mean and variance per sample, the cores' moments combined
        in window order (the same order for an image whatever else is in the batch:
        ``μ = Σ n_k·m_k / n``, ``σ² = Σ n_k·(v_k + (m_k − μ)²) / n``), and each window's own."""
        stats = {}
        for name, moments in self.moments.items():
            counts = moments[:, :, 2]
            total = counts[:, 0].clone()
            weighted = moments[:, 0, 0] * counts[:, 0]
            for k in range(1, moments.shape[1]):
                total += counts[:, k]
                weighted += moments[:, k, 0] * counts[:, k]
            mean = weighted / total
            spread = (moments[:, 0, 1] + (moments[:, 0, 0] - mean).square()) * counts[:, 0]
            for k in range(1, moments.shape[1]):
                spread += (moments[:, k, 1] + (moments[:, k, 0] - mean).square()) * counts[:, k]
            stats[name] = _Gathered(mean, spread / total, moments[:, :, 3], moments[:, :, 4])
        return stats


_ACTIVE = threading.local()  # this thread's GroupNorm passes: id(module) → (pass, name)
_INSTALLED: dict[int, int] = {}  # id(module) → how many threads route it now
_LOCK = threading.Lock()


def _dispatch(module: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """A routed module's ``forward``: through this thread's pass, if it has one for the module,
    else GroupNorm as usual (another thread may be tiling the same network)."""
    routed = getattr(_ACTIVE, "passes", {}).get(id(module))
    if routed is None:
        return nn.GroupNorm.forward(module, x)
    gn, name = routed
    return gn.forward(name, module)(x)


@contextlib.contextmanager
def _routed(norms: dict[str, nn.GroupNorm], gn: _Pass | None) -> Iterator[None]:
    """Inside the block every module of ``norms`` runs through ``gn`` in this thread (nothing
    changes for ``None``); threads that share the network route their own passes, and the
    modules' own ``forward`` is restored when the last of them leaves, errors included."""
    if gn is None:
        yield
        return
    passes = _ACTIVE.__dict__.setdefault("passes", {})
    with _LOCK:
        for name, m in norms.items():
            if not _INSTALLED.get(id(m)):
                m.forward = functools.partial(_dispatch, m)
            _INSTALLED[id(m)] = _INSTALLED.get(id(m), 0) + 1
            passes[id(m)] = (gn, name)
    try:
        yield
    finally:
        with _LOCK:
            for m in norms.values():
                passes.pop(id(m), None)
                _INSTALLED[id(m)] -= 1
                if not _INSTALLED[id(m)]:
                    del _INSTALLED[id(m)], m.forward


# --------------------------------------------------------------------------- the wrapper

class TiledDenoiser:
    """``denoiser`` evaluated in tiles, callable like it: ``D(x, sigma, labels=None, **kwargs)``.

    The image is cut into ``tile×tile`` cores (the last row and column may be smaller), each
    evaluated in a window that adds ``halo`` pixels of context on every side (shifted inward at
    the image edges, so all windows have one size; an image no larger than a window is one
    window). The output blends the windows: a core's weight is 1 inside it and ramps linearly
    to 0 across ``halo // 2`` pixels on either side of its boundary with a neighbouring core, so a
    network whose receptive field reaches at most ``halo // 2`` pixels and that has no global
    normalisation gives exactly its untiled output. ``halo`` defaults to the smallest multiple
    of ``align`` that is at least ``max(tile // 16, 1)``. Window origins and cores lie on
    multiples of ``align``; pass ``align = lcm(size_multiple(network), patch size)`` so every
    window sees the whole image's pooling grid.

    Arguments: ``sigma`` (a scalar, ``(N,)`` or ``(N, 1, 1, 1)``), ``labels`` and keyword tensors
    whose first dimension is ``N`` go to each window by its sample; keyword tensors of ``x``'s
    height and width (a super-resolution stage's ``cond_image``) are cut like ``x``; anything
    else is passed as it is. ``tile_batch`` windows go through the network per call, the last
    call padded by repeating a window (``None``: all windows of the batch in one call).

    GroupNorm (``stats``): every ``torch.nn.GroupNorm`` inside ``denoiser`` normalises each
    window with its sample's whole-image statistics. A gathering pass records, per layer and
    sample, the mean, variance and count of the layer's input over each window's core (the
    cores partition the image; their moments, combined in float64, give the whole image's mean
    ``μ`` and variance ``σ²``) and each
    window's own mean ``m_g`` and variance ``v_g``. A using pass normalises a window whose input
    now has mean ``m`` and variance ``v`` with the mean ``m + (μ − m_g)·s`` and the variance
    ``(σ² + ε)·s² − ε``, ``s² = (v + ε)/(v_g + ε)``: exactly ``μ, σ²`` when the input is the one
    gathered, and, unlike frozen ``μ, σ²``, invariant to an affine change of the window's input
    since, which keeps statistics carried from pass to pass stable (docs/networks.md).
    ``"previous"``: a call uses what was gathered while evaluating the previous call on the same
    batch shape (one pass per call; the first call after :meth:`reset`, or after the shape
    changed, normalises with tile-local statistics while it gathers). ``"fresh"``: every call
    gathers (with the
    previous call's statistics, or tile-local ones) and then uses what it gathered (two
    passes). ``"tile"``: tile-local statistics (one pass; for comparison). Networks without
    GroupNorm, and images that fit one window, always take one plain pass. Call :meth:`reset`
    before a new batch of images.

    Runs without gradients (sampling only); the network's activations are those of one call.
    """

    def __init__(self, denoiser: nn.Module, tile: int, *, halo: int | None = None, align: int = 1,
                 tile_batch: int | None = None, stats: str = "previous") -> None:
        if align < 1:
            raise ValueError(f"align={align} must be a positive integer")
        if tile < 1 or tile % align:
            raise ValueError(f"tile={tile} must be a positive multiple of align={align}")
        if halo is None:
            halo = -(-max(tile // 16, 1) // align) * align
        if halo < 0 or halo % align:
            raise ValueError(f"halo={halo} must be a non-negative multiple of align={align}")
        if tile_batch is not None and tile_batch < 1:
            raise ValueError(f"tile_batch={tile_batch} must be ≥ 1 (or None: all windows at once)")
        if stats not in STATS_MODES:
            raise ValueError(f"stats={stats!r}: use one of {STATS_MODES}")
        self.denoiser, self.tile, self.halo, self.align = denoiser, tile, halo, align
        self.tile_batch, self.stats = tile_batch, stats
        self.norms = {name: m for name, m in denoiser.named_modules() if isinstance(m, nn.GroupNorm)}
        self._gathered: dict[str, _Gathered] | None = None
        self._shape: torch.Size | None = None

    def reset(self) -> None:
        """Forget the gathered statistics (call before a new batch of images)."""
        self._gathered, self._shape = None, None

    def __call__(self, x: torch.Tensor, sigma, labels: torch.Tensor | None = None,
                 **kwargs) -> torch.Tensor:
        plan = self._plan(x)
        inputs = _Inputs(x, sigma, labels, kwargs)
        with torch.no_grad():
            if self.stats == "tile" or not self.norms or len(plan.windows) == 1:
                return self._run(inputs, plan, None, gather=False)[0]
            if x.shape != self._shape:
                self.reset()
            prior = self._gathered
            if self.stats == "fresh":
                prior = self._run(inputs, plan, prior, gather=True, blend=False)[1]
            out, self._gathered = self._run(inputs, plan, prior, gather=True)
            self._shape = x.shape
            return out

    def gather(self, x: torch.Tensor, sigma, labels: torch.Tensor | None = None,
               **kwargs) -> Statistics:
        """One gathering pass with tile-local statistics (the first pass after :meth:`reset`):
        each GroupNorm's whole-image mean and variance of its input, by module name. The
        statistics kept for the next call are left as they are."""
        plan = self._plan(x)
        with torch.no_grad():
            gathered = self._run(_Inputs(x, sigma, labels, kwargs), plan, None, gather=True, blend=False)[1]
        return {name: (g.mean, g.var) for name, g in gathered.items()}

    def _plan(self, x: torch.Tensor) -> _Plan:
        if x.dim() != 4:
            raise ValueError(f"x must be N×C×H×W, got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % self.align or w % self.align:
            raise ValueError(f"x is {h}x{w}: height and width must be multiples of align={self.align}")
        return _plan_of(_axis(h, self.tile, self.halo), _axis(w, self.tile, self.halo))

    def _run(self, inputs: _Inputs, plan: _Plan, use: dict[str, _Gathered] | None, *, gather: bool,
             blend: bool = True) -> tuple[torch.Tensor | None, dict[str, _Gathered] | None]:
        """One pass over all windows: the blended output (``blend``) and, with ``gather``, the
        GroupNorm statistics it gathered while normalising with ``use``."""
        n = inputs.x.shape[0]
        jobs = [(s, k) for s in range(n) for k in range(len(plan.windows))]
        size = self.tile_batch or len(jobs)
        gn = _Pass(n, len(plan.windows), use) if gather else None
        out = None
        with _routed(self.norms, gn):
            for start in range(0, len(jobs), size):
                chunk = jobs[start:start + size]
                real = len(chunk)
                chunk += [chunk[-1]] * (size - real)
                samples = [s for s, _ in chunk]
                windows = [plan.windows[k] for _, k in chunk]
                if gn is not None:
                    gn.call = _Call(torch.tensor(samples), torch.tensor([k for _, k in chunk]),
                                    [win.core for win in windows], plan.size, real)
                args, kwargs = inputs.take(samples, windows, plan.size)
                y = self.denoiser(*args, **kwargs)
                if blend:
                    out = _accumulate(out, y, samples[:real], windows, inputs.x.shape)
        return out, None if gn is None else gn.gathered()


def _accumulate(out: torch.Tensor | None, y: torch.Tensor, samples: list[int], windows: list[_Window],
                shape: torch.Size) -> torch.Tensor:
    """Add the weighted outputs ``y`` of the (real) windows into the full-size ``out``."""
    if out is None:
        out = y.new_zeros((shape[0], y.shape[1], *shape[2:]))
    h, w = y.shape[-2:]
    for k, n in enumerate(samples):
        win = windows[k]
        weight = torch.outer(win.weight_y, win.weight_x).to(y)
        out[n, :, win.y:win.y + h, win.x:win.x + w] += y[k] * weight
    return out
