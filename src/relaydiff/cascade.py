"""``RelayCascade``: an ordered list of stages that generates images from seeds.

Stage 1 is an EDM diffusion at the lowest resolution; every later stage is a relay stage that
starts from ``up(x_low) + σ_0·n`` (docs/method.md §2.6) with its own scale factor, so cascades
such as 16→64 or 16→64→256 with any integer factors work. Every sample draws all of its
randomness (class label, latents, sampler noise of every stage) from its own
``torch.Generator`` seeded with its seed, so an image depends on its seed only, never on the
batch it was generated in (docs/method.md §4 for the exact promise on CPUs).

Stage configs and their folders: :mod:`relaydiff.stage`; cascade folders and the packaged
cascades: :mod:`relaydiff.pretrained`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import nn

import relaydiff.stage as _stage  # the module itself, not through the package's __init__

from .ops import noisy_condition, randn, relay_noise, upsample
from .pretrained import read_cascade, write_cascade
from .samplers import autoguidance, classifier_free_guidance, edm_sample, relay_sample
from .schedules import karras_sigmas
from .seeds import LABEL_STREAM, check_seeds

EXACT_BATCH = 8  # samples per network call in exact (batch-invariant) CPU mode


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
        dtype: torch.dtype = torch.float64,
        batch_invariant: bool = True,
        progress: Callable[[int], object] | None = None,
    ) -> list[torch.Tensor]:
        """Generate one image per seed; returns every stage's images (``N×C×R_k×R_k`` in [-1, 1]).
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
        """
        seeds = [int(s) for s in seeds]
        check_seeds(seeds)
        if batch_size < 1:
            raise ValueError(f"batch size {batch_size} must be ≥ 1")
        first = 0
        if low_res is not None:
            first = self.stage_after(low_res)
            if low_res.shape[0] != len(seeds):
                raise ValueError(f"got {low_res.shape[0]} low-resolution images for {len(seeds)} seeds")
        elif self.configs[0].kind != "edm":
            raise ValueError("this cascade has no stage 1; give low-resolution images to upscale")
        labels = self.labels_for(seeds, class_idx, balanced)
        if not seeds:
            return []
        if batch_invariant and self.device.type == "cpu":
            return self._generate_exact(seeds, labels, low_res, first, dtype, progress)
        outputs: list[list[torch.Tensor]] = []
        with torch.no_grad():
            for start in range(0, len(seeds), batch_size):
                batch = seeds[start:start + batch_size]
                low = None if low_res is None else low_res[start:start + batch_size]
                idx = None if labels is None else labels[start:start + batch_size]
                outputs.append(self._generate(batch, idx, low, first, dtype))
                if progress is not None:
                    progress(len(batch))
        return [torch.cat(parts) for parts in zip(*outputs, strict=True)]

    def _generate_exact(self, seeds, labels, low_res, first, dtype, progress) -> list[torch.Tensor]:
        """Groups of ``EXACT_BATCH`` seeds (the last padded by repeating its first seed), each run
        single-threaded, the groups in parallel on ``torch.get_num_threads()`` threads."""
        groups = []
        for start in range(0, len(seeds), EXACT_BATCH):
            take = list(range(start, min(start + EXACT_BATCH, len(seeds))))
            pad = [take[0]] * (EXACT_BATCH - len(take))
            groups.append((len(take), take + pad))

        def run(group: tuple[int, list[int]]) -> list[torch.Tensor]:
            n, rows = group
            idx = None if labels is None else labels[rows]
            low = None if low_res is None else low_res[rows]
            with torch.no_grad():
                outs = self._generate([seeds[i] for i in rows], idx, low, first, dtype)
            return [o[:n] for o in outs]

        threads = torch.get_num_threads()
        outputs = []
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(max(1, min(threads, len(groups)))) as pool:
                for (n, _), out in zip(groups, pool.map(run, groups), strict=True):
                    outputs.append(out)
                    if progress is not None:
                        progress(n)
        finally:
            torch.set_num_threads(threads)
        return [torch.cat(parts) for parts in zip(*outputs, strict=True)]

    def stage_after(self, low_res: torch.Tensor) -> int:
        """Index of the stage that relays images of ``low_res``'s size (``ValueError`` if none)."""
        r = low_res.shape[-1]
        if low_res.dim() != 4 or low_res.shape[-2] != r:
            raise ValueError(f"low-resolution images must be N×C×R×R, got {tuple(low_res.shape)}")
        for k, c in enumerate(self.configs):
            if c.kind != "edm" and c.input_resolution == r:
                return k
        starts = sorted({c.input_resolution for c in self.configs if c.kind != "edm"})
        raise ValueError(f"no stage starts from {r}px images; this cascade upscales from {starts} px")

    def _generate(self, seeds, idx, low, first, dtype) -> list[torch.Tensor]:
        gens = seed_generators(seeds)
        x = None if low is None else low.to(device=self.device, dtype=dtype)
        outs = [] if x is None else [x]
        for k in range(first, len(self.configs)):
            x = self.run_stage(k, x, gens, idx, dtype=dtype)
            outs.append(x)
        return [o.to(torch.float32).cpu() for o in outs]

    def run_stage(self, k: int, x_low: torch.Tensor | None, generators: Sequence[torch.Generator],
                  class_idx: torch.Tensor | None = None, *, dtype: torch.dtype = torch.float64,
                  callback=None) -> torch.Tensor:
        """Run stage ``k`` (0-based) for one batch: stage 1 from latents drawn from ``generators``,
        a relay or super-resolution stage from ``x_low`` (its input resolution). Returns images
        clamped to [-1, 1]. ``callback(i, σ_i, x_i, denoised_i)`` sees every sampler step."""
        cfg, den = self.configs[k], self.denoisers[k]
        device = self.device
        labels = None
        if cfg.label_dim and class_idx is not None:
            labels = _stage.one_hot(class_idx, cfg.label_dim, device)
        if cfg.kind != "edm" and (x_low is None or x_low.shape[-1] != cfg.input_resolution):
            raise ValueError(f"stage {k + 1} ({cfg.kind}) upscales {cfg.input_resolution}px images; "
                             "give low-resolution images of that size")
        guide = self.guides[str(k)] if str(k) in self.guides else None
        if cfg.kind == "sr":
            low = x_low.to(device=device, dtype=dtype)
            cond = noisy_condition(low, cfg.sr.scale, cfg.sr.sample_level, generators)
            level = torch.full((low.shape[0],), cfg.sr.sample_level, device=device)
            den = conditioned(den, cond, level)
            guide = None if guide is None else conditioned(guide, cond, level)
        denoiser = self._guided(k, den, guide, labels)
        if cfg.kind in ("edm", "sr"):
            s = cfg.edm_sampler
            shape = (len(generators), cfg.channels, cfg.resolution, cfg.resolution)
            latents = randn(shape, generators, device=device, dtype=dtype)
            x = edm_sample(denoiser, latents, karras_sigmas(s.steps, s.sigma_min, s.sigma_max, s.rho),
                           labels=labels, churn=s.churn, s_min=s.s_min, s_max=s.churn_max,
                           s_noise=s.s_noise, order=s.order, sde_scale=s.sde_scale,
                           generator=generators, callback=callback)
            return x.clamp(-1, 1)
        r, s = cfg.relay, cfg.relay_sampler
        sigmas = karras_sigmas(s.steps, s.sigma_min, s.sigma_max, s.rho, truncate=s.sigma_trunc)
        up = upsample(x_low.to(device=device, dtype=dtype), r.scale)
        n = relay_noise(up.shape, r.scale, r.block_alpha, generator=generators, variant=r.variant,
                        device=device, dtype=dtype)
        x = relay_sample(denoiser, up + sigmas[0].item() * n, sigmas, r.schedule(s.prob_length),
                         r.scale, labels=labels, eta=s.eta, block_alpha=r.block_alpha, order=s.order,
                         variant=r.variant, generator=generators, callback=callback)
        return x.clamp(-1, 1)

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
