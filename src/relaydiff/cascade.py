"""``RelayCascade``: an ordered list of stages that generates images from seeds.

Stage 1 is an EDM diffusion at the lowest resolution; every later stage is a relay stage that
starts from ``up(x_low) + σ_0·n`` (docs/method.md §2.6) with its own scale factor, so cascades
such as 16→64 or 16→64→256 with any integer factors work. A relay or super-resolution stage
runs at any size that is a multiple of its patch size and of its network's downsampling, so the
last stage can be reused to go past the cascade's resolution (``to``, :meth:`RelayCascade.plan`),
and its denoiser can be evaluated in tiles of bounded memory (``tile``, :mod:`relaydiff.tiling`).
Every sample draws all of its randomness (class label, latents, sampler noise of every stage) from its own
``torch.Generator`` seeded with its seed, so an image depends on its seed only, never on the
batch it was generated in (docs/method.md §4 for the exact promise on CPUs).

Stage configs and their folders: :mod:`relaydiff.stage`; cascade folders and the packaged
cascades: :mod:`relaydiff.pretrained`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import nn

import relaydiff.stage as _stage  # the module itself, not through the package's __init__

from .networks import size_multiple
from .ops import noisy_condition, randn, relay_noise, upsample
from .pretrained import read_cascade, write_cascade
from .samplers import autoguidance, classifier_free_guidance, edm_sample, relay_sample
from .schedules import karras_sigmas
from .seeds import LABEL_STREAM, check_seeds
from .tiling import TiledDenoiser

EXACT_BATCH = 8  # samples (or tiles) per network call in exact (batch-invariant) CPU mode
REACHABLE_SHOWN = 4  # sizes beyond the cascade's own that an unreachable ``to`` lists


def conditioned(denoiser: Callable, cond_image: torch.Tensor, cond_sigma: torch.Tensor) -> Callable:
    """A super-resolution stage's denoiser with its conditioning bound, as the samplers call it:
    ``D(x, σ, labels)``. Guidance evaluates a batch twice (conditional and unconditional
    halves); the conditioning is repeated to match."""

    def bound(x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        reps, rest = divmod(x.shape[0], cond_image.shape[0])
        if rest:
            raise ValueError(f"a batch of {x.shape[0]} for {cond_image.shape[0]} conditioning images")
        return denoiser(x, sigma, labels, cond_image=cond_image.repeat(reps, 1, 1, 1),
                        cond_sigma=cond_sigma.repeat(reps))

    return bound


def seed_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per seed (the only source of randomness for that sample)."""
    return [torch.Generator().manual_seed(int(s) % (1 << 63)) for s in seeds]


class RelayCascade(nn.Module):
    """An ordered list of stages; stage 1 may be omitted for pure super-resolution cascades."""

    def __init__(self, configs: Sequence[_stage.StageConfig], denoisers: Sequence[nn.Module],
                 training: Sequence[dict] | None = None,
                 guides: Sequence[tuple[_stage.StageConfig, nn.Module] | None] | None = None) -> None:
        """``training``: optionally, how each stage was trained (saved with the cascade);
        ``guides``: optionally, per stage, the ``(config, denoiser)`` of its autoguidance guide."""
        super().__init__()
        if not configs or len(configs) != len(denoisers):
            raise ValueError("a cascade needs at least one stage, with one denoiser per config")
        for k, (prev, cur) in enumerate(itertools.pairwise(configs), start=2):
            if cur.kind not in ("relay", "sr"):
                raise ValueError(f"stage {k} must be a relay or super-resolution stage (only "
                                 "stage 1 can be 'edm')")
            if cur.input_resolution != prev.resolution:
                raise ValueError(
                    f"stage {k} starts from {cur.input_resolution}px (resolution {cur.resolution}"
                    f" / scale {cur.scale}) but stage {k - 1} makes {prev.resolution}px"
                )
            if cur.channels != prev.channels:
                raise ValueError(f"stage {k} has {cur.channels} channels, stage {k - 1} {prev.channels}")
        self.configs = list(configs)
        self.denoisers = nn.ModuleList(denoisers)
        self.training = None if training is None else [dict(t) for t in training]
        self.guide_configs: dict[int, _stage.StageConfig] = {}
        self.guides = nn.ModuleDict()
        for k, guide in enumerate(guides or []):
            if guide is not None:
                self.set_guide(k, *guide)

    def set_guide(self, k: int, config: _stage.StageConfig, denoiser: nn.Module) -> None:
        """Give (0-based) stage ``k`` an autoguidance guide (checked to be a model of the same
        stage)."""
        try:
            _stage.check_guide(self.configs[k], config)
        except ValueError as e:
            raise ValueError(f"stage {k + 1}: {e}") from None
        self.guide_configs[k] = config
        self.guides[str(k)] = denoiser

    # ------------------------------------------------------------------ properties
    @property
    def resolutions(self) -> list[int]:
        return [c.resolution for c in self.configs]

    @property
    def num_classes(self) -> int:
        return max(c.label_dim for c in self.configs)

    @property
    def device(self) -> torch.device:
        p = next(self.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    # ------------------------------------------------------------------ generation
    def labels_for(self, seeds: Sequence[int], class_idx: int | Sequence[int] | None = None,
                   balanced: bool = False) -> torch.Tensor | None:
        """Class indices per seed: given, class-balanced (``seed mod C``) or random per seed.

        Random classes come from a generator of their own (seed + ``LABEL_STREAM``), so an image
        depends only on its seed and class, whether the class was drawn or given.
        """
        c = self.num_classes
        if c == 0:
            if class_idx is not None or balanced:
                raise ValueError("class_idx/balanced given, but this cascade is unconditional "
                                 "(no stage has class labels)")
            return None
        if class_idx is not None:
            idx = torch.as_tensor(class_idx, dtype=torch.long).reshape(-1)
            if idx.numel() not in (1, len(seeds)):
                raise ValueError(f"got {idx.numel()} class indices for {len(seeds)} seeds")
            idx = idx.expand(len(seeds)).clone()
            bad = idx[(idx < 0) | (idx >= c)]
            if bad.numel():
                raise ValueError(f"class index {bad[0].item()} is out of range; this cascade has "
                                 f"{c} classes (0–{c - 1})")
            return idx
        if balanced:
            return torch.as_tensor([int(s) % c for s in seeds], dtype=torch.long)
        gens = seed_generators([int(s) + LABEL_STREAM for s in seeds])
        return torch.stack([torch.randint(c, (), generator=g) for g in gens])

    def forward(
        self,
        seeds: Sequence[int],
        *,
        class_idx: int | Sequence[int] | None = None,
        balanced: bool = False,
        low_res: torch.Tensor | None = None,
        batch_size: int = 16,
        dtype: torch.dtype | None = None,
        batch_invariant: bool = True,
        progress: Callable[[int], object] | None = None,
        to: int | None = None,
        tile: int = 0,
    ) -> list[torch.Tensor]:
        """Generate one image per seed; returns every step's images (``N×C×R_k×R_k`` in [-1, 1]):
        one per stage, and with ``to`` one per step of :meth:`plan`.
        Seeds lie in ``0..relaydiff.seeds.MAX_SEED`` (``ValueError`` otherwise: a larger seed
        would overlap another seed's label stream).

        ``batch_invariant`` (CPU): every network call sees exactly ``EXACT_BATCH`` samples and
        runs on one thread; groups of seeds run in parallel on as many threads as torch uses.
        Kernels then never see another batch shape or thread count, so pixels are bitwise
        identical on a given machine and software stack whatever ``batch_size``, the position in
        the batch, the number of ranks or threads (docs/method.md §4). ``batch_size`` applies
        to GPUs and to ``batch_invariant=False`` (batches of that size on all threads; results
        then agree to float rounding).

        With ``low_res`` (``N×C×R×R`` in [-1, 1]) the stages above resolution ``R`` relay those
        images instead of sampling stage 1 (super-resolution); the list then starts with them.
        ``progress`` is called with the number of finished samples after each batch.

        ``to``: the output size; the cascade's last stage is reused past its own resolution
        (:meth:`plan`; ``ValueError`` naming the reachable sizes otherwise). ``tile`` > 0
        evaluates every relay and super-resolution stage's denoiser in ``tile×tile`` tiles
        (:class:`relaydiff.tiling.TiledDenoiser`): memory bounded by the tile, the result
        seamless; the noise is drawn on the whole image, so it does not depend on ``tile``. In
        exact mode each such call sees ``EXACT_BATCH`` tiles, and the padding seeds of a group
        are dropped before the tiled stages.

        ``dtype``: the samplers' state. ``None``: float64, except in the tiled stages, which
        keep their image-sized buffers in float32 (half the memory; the networks run in float32
        either way).
        """
        seeds = [int(s) for s in seeds]
        check_seeds(seeds)
        if batch_size < 1:
            raise ValueError(f"batch size {batch_size} must be ≥ 1")
        if tile < 0:
            raise ValueError(f"tile {tile} must be ≥ 0 (0: untiled)")
        if low_res is not None:
            self._check_low_res(low_res)
            if low_res.shape[0] != len(seeds):
                raise ValueError(f"got {low_res.shape[0]} low-resolution images for {len(seeds)} seeds")
        plan = self.plan(None if low_res is None else low_res.shape[-1], to)
        labels = self.labels_for(seeds, class_idx, balanced)
        if not seeds:
            return []
        if batch_invariant and self.device.type == "cpu":
            return self._generate_exact(seeds, labels, low_res, plan, dtype, progress, tile)
        outputs: list[list[torch.Tensor]] = []
        with torch.no_grad():
            for start in range(0, len(seeds), batch_size):
                batch = seeds[start:start + batch_size]
                low = None if low_res is None else low_res[start:start + batch_size]
                idx = None if labels is None else labels[start:start + batch_size]
                outputs.append(self._generate(batch, idx, low, plan, dtype, tile))
                if progress is not None:
                    progress(len(batch))
        return [torch.cat(parts) for parts in zip(*outputs, strict=True)]

    def _generate_exact(self, seeds, labels, low_res, plan, dtype, progress, tile) -> list[torch.Tensor]:
        """Groups of ``EXACT_BATCH`` seeds (the last padded by repeating its first seed), each run
        single-threaded, the groups in parallel on ``torch.get_num_threads()`` threads. From the
        first tiled stage on, each image runs alone (its calls still see ``EXACT_BATCH`` tiles),
        the images in parallel: a few large images use every thread."""
        groups = []
        for start in range(0, len(seeds), EXACT_BATCH):
            take = list(range(start, min(start + EXACT_BATCH, len(seeds))))
            pad = [take[0]] * (EXACT_BATCH - len(take))
            groups.append((len(take), take + pad))
        split = next((i for i, (k, _) in enumerate(plan) if self._tiled(k, tile)), len(plan))
        head, tail = plan[:split], plan[split:]

        def run_head(group: tuple[int, list[int]]) -> tuple[list[torch.Tensor], list[tuple]]:
            n, rows = group
            idx = None if labels is None else labels[rows]
            low = None if low_res is None else low_res[rows].to(self.device, dtype or torch.float64)
            outs = [] if low is None else [low]
            with torch.no_grad():
                x, gens, idx = self._run_plan(head, low, seed_generators([seeds[i] for i in rows]),
                                              idx, dtype, tile, n, outs)
            images = [(x[i:i + 1], gens[i:i + 1], None if idx is None else idx[i:i + 1])
                      for i in range(n)] if tail else []
            return [o[:n].to(torch.float32).cpu() for o in outs], images

        def run_tail(image: tuple) -> list[torch.Tensor]:
            outs: list[torch.Tensor] = []
            with torch.no_grad():
                self._run_plan(tail, *image, dtype, tile, 1, outs)
            return [o.to(torch.float32).cpu() for o in outs]

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(max(1, min(threads, len(groups) if not tail else len(seeds)))) as pool:
                heads = []
                for (n, _), (outs, images) in zip(groups, pool.map(run_head, groups), strict=True):
                    heads.append((outs, images))
                    if progress is not None and not tail:
                        progress(n)
                outputs = []
                for outs, images in heads:
                    tails = []
                    for out in pool.map(run_tail, images):
                        tails.append(out)
                        if progress is not None:
                            progress(1)
                    outputs.append(outs + [torch.cat(parts) for parts in zip(*tails, strict=True)])
        finally:
            torch.set_num_threads(threads)
        return [torch.cat(parts) for parts in zip(*outputs, strict=True)]

    @staticmethod
    def _check_low_res(low_res: torch.Tensor) -> None:
        r = low_res.shape[-1]
        if low_res.dim() != 4 or low_res.shape[-2] != r:
            raise ValueError(f"low-resolution images must be N×C×R×R, got {tuple(low_res.shape)}")

    def size_multiple(self, k: int) -> int:
        """Stage ``k`` (0-based) runs at sizes that are multiples of this: its patch size and its
        network's downsampling (stage 1: only its own resolution)."""
        cfg = self.configs[k]
        if cfg.scale is None:
            return cfg.resolution
        return math.lcm(cfg.scale, size_multiple(self.denoisers[k].model))

    def _first_stage(self, start: int) -> int | None:
        """The stage whose input size is ``start`` px, if any."""
        return next((k for k, c in enumerate(self.configs)
                     if c.kind != "edm" and c.input_resolution == start), None)

    def plan(self, start: int | None = None, to: int | None = None) -> list[tuple[int, int]]:
        """The steps ``(stage index, output size)`` from ``start`` px images (``None``: from seeds,
        stage 1 first) to ``to`` px (``None``: the cascade's stages once).

        From ``start`` the stages run from the one whose input size is ``start`` (none: only
        reuses); past the last stage's output its last stage is reused (×its scale each time),
        as the paper reuses its 64→256 stage. A ``to`` that no chain reaches, or a size a stage
        cannot run at (not a multiple of :meth:`size_multiple`), raises one ``ValueError``
        naming the reachable sizes.
        """
        last = len(self.configs) - 1
        if start is None:
            if self.configs[0].kind != "edm":
                raise ValueError("this cascade has no stage 1; give low-resolution images to upscale")
            steps, res, first = [(0, self.configs[0].resolution)], self.configs[0].resolution, 1
        else:
            steps, res, first = [], int(start), self._first_stage(int(start))
            if first is None and to is None:
                starts = sorted({c.input_resolution for c in self.configs if c.kind != "edm"})
                raise ValueError(f"no stage starts from {res}px images; this cascade upscales from "
                                 f"{starts} px (give a target size to reuse its last stage)")
        for k in range(first if first is not None else last + 1, last + 1):
            res *= self.configs[k].scale
            steps.append((k, res))
        reuse = self.configs[last].scale
        if to is not None and to not in [r for _, r in steps]:
            while reuse and res < to:
                res *= reuse
                steps.append((last, res))
            if res != to:
                passed = [r for _, r in steps if r < to] or [r for _, r in steps[:1]]
                raise ValueError(self._unreachable(start, to, passed))
        if to is not None:
            steps = [(k, r) for k, r in steps if r <= to]
        for k, r in steps:
            m = self.size_multiple(k)
            if r % m:
                raise ValueError(f"stage {k + 1} cannot make {r}px images: its sizes are multiples "
                                 f"of {m} (patch size and network downsampling)")
        return steps

    def _unreachable(self, start: int | None, to: int, below: list[int]) -> str:
        """Why ``to`` px cannot be made from ``start`` (``below``: the sizes the chain passes
        on its way), with the sizes that can: those and a few more reuses."""
        reuse = self.configs[-1].scale
        shown = list(below)
        size = shown[-1] if shown else start
        for _ in range(REACHABLE_SHOWN if reuse else 0):
            size *= reuse
            shown.append(size)
        how = f" (its last stage ×{reuse} reused)" if reuse else ""
        origin = "from seeds" if start is None else f"from {start}px images"
        return (f"size {to} is not reachable {origin} with this cascade{how}; reachable sizes: "
                f"{', '.join(map(str, shown))}" + (", …" if reuse else ""))

    def _tiled(self, k: int, tile: int) -> bool:
        return tile > 0 and self.configs[k].kind != "edm"

    def _generate(self, seeds, idx, low, plan, dtype, tile) -> list[torch.Tensor]:
        """Run ``plan`` for one batch (all stages' images, float32 on the CPU)."""
        x = None if low is None else low.to(device=self.device, dtype=dtype or torch.float64)
        outs = [] if x is None else [x]
        self._run_plan(plan, x, seed_generators(seeds), idx, dtype, tile, None, outs)
        return [o.to(torch.float32).cpu() for o in outs]

    def _run_plan(self, plan, x, gens, idx, dtype, tile, n, outs: list) -> tuple:
        """Run ``plan``'s stages on ``x`` (``None`` before stage 1), appending each stage's images
        to ``outs``; returns the last ``(x, generators, labels)``. ``n`` (exact mode): the batch's
        real rows (the rest pad a group), kept alone from the first tiled stage on, whose calls
        then see ``EXACT_BATCH`` tiles."""
        for k, _ in plan:
            tiled = self._tiled(k, tile)
            if tiled and n is not None and x.shape[0] > n:
                x, gens = x[:n], gens[:n]
                idx = None if idx is None else idx[:n]
            state = dtype or (torch.float32 if tiled else torch.float64)
            x = self.run_stage(k, x, gens, idx, dtype=state, tile=tile,
                               tile_batch=EXACT_BATCH if n is not None else None)
            outs.append(x)
        return x, gens, idx

    def run_stage(self, k: int, x_low: torch.Tensor | None, generators: Sequence[torch.Generator],
                  class_idx: torch.Tensor | None = None, *, dtype: torch.dtype = torch.float64,
                  callback=None, tile: int = 0, tile_batch: int | None = None) -> torch.Tensor:
        """Run stage ``k`` (0-based) for one batch: stage 1 from latents drawn from ``generators``,
        a relay or super-resolution stage from ``x_low`` (any size whose ×scale is a multiple of
        :meth:`size_multiple`). Returns images clamped to [-1, 1]. ``callback(i, σ_i, x_i,
        denoised_i)`` sees every sampler step. ``tile`` > 0 (relay and super-resolution
        stages): the denoisers run in tiles, ``tile_batch`` tiles per call
        (:class:`relaydiff.tiling.TiledDenoiser`)."""
        cfg, den = self.configs[k], self.denoisers[k]
        device = self.device
        labels = None
        if cfg.label_dim and class_idx is not None:
            labels = _stage.one_hot(class_idx, cfg.label_dim, device)
        if cfg.kind != "edm":
            if x_low is None:
                raise ValueError(f"stage {k + 1} ({cfg.kind}) upscales {cfg.input_resolution}px "
                                 "images (or others whose size it can run at); give low-resolution "
                                 "images")
            if (x_low.shape[-1] * cfg.scale) % self.size_multiple(k):
                raise ValueError(f"stage {k + 1} ({cfg.kind}) upscales images whose size ×{cfg.scale} "
                                 f"is a multiple of {self.size_multiple(k)}; give low-resolution "
                                 "images of such a size")
            shape = (len(generators), cfg.channels, *(cfg.scale * d for d in x_low.shape[-2:]))
        else:
            shape = (len(generators), cfg.channels, cfg.resolution, cfg.resolution)
        guide = self.guides[str(k)] if str(k) in self.guides else None
        if tile and cfg.kind != "edm":
            align = self.size_multiple(k)
            den = TiledDenoiser(den, tile, align=align, tile_batch=tile_batch)
            guide = None if guide is None else TiledDenoiser(guide, tile, align=align,
                                                             tile_batch=tile_batch)
        if cfg.kind == "sr":
            low = x_low.to(device=device, dtype=dtype)
            cond = noisy_condition(low, cfg.sr.scale, cfg.sr.sample_level, generators)
            level = torch.full((low.shape[0],), cfg.sr.sample_level, device=device)
            den = conditioned(den, cond, level)
            guide = None if guide is None else conditioned(guide, cond, level)
        denoiser = self._guided(k, den, guide, labels)
        if cfg.kind in ("edm", "sr"):
            s = cfg.edm_sampler
            sigmas = karras_sigmas(s.steps, s.sigma_min, s.sigma_max, s.rho, truncate=s.sigma_trunc)
            b = cfg.block_noise
            if b is not None and sigmas[0].item() >= b.sigma_min:  # docs/method.md §1.2
                latents = relay_noise(shape, b.patch, b.alpha, generator=generators,
                                      device=device, dtype=dtype)
            else:
                latents = randn(shape, generators, device=device, dtype=dtype)
            if s.sigma_trunc is not None:  # x_0 = σ_0·latents = up(x_low) + σ_0·n
                latents.add_(upsample(low, cfg.sr.scale), alpha=1 / sigmas[0].item())
            x = edm_sample(denoiser, latents, sigmas,
                           labels=labels, churn=s.churn, s_min=s.s_min, s_max=s.churn_max,
                           s_noise=s.s_noise, order=s.order, sde_scale=s.sde_scale,
                           generator=generators, callback=callback)
            return x.clamp(-1, 1)
        r, s = cfg.relay, cfg.relay_sampler
        sigmas = karras_sigmas(s.steps, s.sigma_min, s.sigma_max, s.rho, truncate=s.sigma_trunc)
        # x_start = up(x_low) + σ_0·n, built in the noise's buffer (image-sized buffers count at
        # high resolution: none is kept that the sampler does not need)
        n = relay_noise(shape, r.scale, r.block_alpha, generator=generators, variant=r.variant,
                        device=device, dtype=dtype)
        x_start = n.mul_(sigmas[0].item()).add_(upsample(x_low.to(device=device, dtype=dtype), r.scale))
        n = None
        x = relay_sample(denoiser, x_start, sigmas, r.schedule(s.prob_length), r.scale,
                         labels=labels, eta=s.eta, block_alpha=r.block_alpha, order=s.order,
                         variant=r.variant, generator=generators, callback=callback)
        return x.clamp_(-1, 1)

    def _guided(self, k: int, den, guide, labels):
        """Stage ``k``'s denoiser with its guidance (docs/method.md §3), or as it is."""
        cfg = self.configs[k]
        g = cfg.guidance
        if g.scale == 1.0:
            return den
        smin, smax = ((cfg.edm_sampler.sigma_min, cfg.edm_sampler.sigma_max) if cfg.kind != "relay"
                      else (cfg.relay_sampler.sigma_min, cfg.relay_sampler.sigma_trunc))
        kw = {"schedule": g.schedule, "power": g.power, "sigma_min": smin, "sigma_max": smax,
              "interval": g.interval}
        if g.kind == "auto":
            if guide is None:
                raise ValueError(f"stage {k + 1}: guidance.kind is 'auto' but the stage has no guide "
                                 "network (cascade build --guide)")
            return autoguidance(den, guide, g.scale, **kw)
        return den if labels is None else classifier_free_guidance(den, g.scale, **kw)

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | Path, *, dtype: torch.dtype | None = None) -> None:
        """Write the cascade folder atomically (a temporary sibling folder, then a rename);
        ``dtype=torch.float16`` stores the weights in half precision (half the size; they are
        cast back to float32 when loaded)."""
        guides = [(self.guide_configs[k], self.guides[str(k)]) if k in self.guide_configs else None
                  for k in range(len(self.configs))]
        write_cascade(directory, self.configs, self.denoisers, self.training, guides, dtype)

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, device: torch.device | str = "cpu"
                        ) -> RelayCascade:
        """Load a cascade folder written by :meth:`save_pretrained` or ``relaydiff cascade build``,
        or a cascade shipped in the package by name (``"fluent-emoji-3d-16to64"``)."""
        configs, denoisers, training, guides = read_cascade(directory)
        return cls(configs, denoisers, training, guides).to(device)

    @classmethod
    def toy(cls, resolutions: Sequence[int] = (16, 64), *, channels: int = 3, label_dim: int = 0,
            seed: int = 0, steps: int = 8) -> RelayCascade:
        """An untrained cascade of tiny networks (tests, smoke runs, the first demo command)."""
        torch.manual_seed(seed)
        configs = []
        for k, res in enumerate(resolutions):
            net = {"name": "toy", "in_channels": channels, "channels": 16, "label_dim": label_dim}
            if k == 0:
                configs.append(_stage.StageConfig("edm", res, net, channels, label_dim,
                                                  edm_sampler=_stage.EDMSamplerConfig(steps=steps)))
            else:
                scale = res // resolutions[k - 1]
                if scale * resolutions[k - 1] != res:
                    raise ValueError(f"resolution {res} is not an integer multiple of "
                                     f"{resolutions[k - 1]}")
                configs.append(_stage.StageConfig(
                    "relay", res, net, channels, label_dim, relay=_stage.RelayConfig(scale=scale),
                    relay_sampler=_stage.RelaySamplerConfig(steps=4 * steps)))
        return cls(configs, [_stage.build_denoiser(c).eval() for c in configs])


def _power_of(n: int, base: int) -> bool:
    """Whether ``n`` is ``base^m`` for some ``m ≥ 0``."""
    while n > 1 and n % base == 0:
        n //= base
    return n == 1
