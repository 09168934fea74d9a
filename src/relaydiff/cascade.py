"""``RelayCascade``: an ordered list of stages that generates images from seeds.

Stage 1 is an EDM diffusion at the lowest resolution; every later stage is a relay stage that
starts from ``up(x_low) + σ_0·n`` (DESIGN §1) with its own scale factor, so cascades such as
16→64 or 16→64→256 with any integer factors work. Every sample draws all of its randomness
(class label, latents, sampler noise of every stage) from its own ``torch.Generator`` seeded
with its seed, so an image depends on its seed only, never on the batch it was generated in.

On disk (``save_pretrained``/``from_pretrained``)::

    DIR/cascade.json            {"format": "relaydiff.cascade", "version": 1, "stages": [...]}
    DIR/<stage>/config.json     StageConfig as JSON
    DIR/<stage>/model.safetensors   weights of the raw network (EMA weights for trained stages)
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from . import __version__
from .config import from_dict, read_json, to_dict, write_json_atomic
from .networks import build_network
from .ops import check_variant, randn, relay_noise, upsample
from .precond import EDMPrecond
from .samplers import classifier_free_guidance, edm_sample, relay_sample
from .schedules import RelaySchedule, karras_sigmas

CASCADE_FORMAT = "relaydiff.cascade"
PRETRAINED = "fluent-emoji-3d-16to64"
LABEL_STREAM = 1 << 40  # offset of the seeds that draw random class labels


@dataclass
class EDMSamplerConfig:
    """Stage-1 sampler settings (EDM's Heun sampler with churn; ``sde_scale`` > 0: SDE variant)."""

    steps: int = 32
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    churn: float = 0.0
    s_min: float = 0.0
    s_max: float = math.inf
    s_noise: float = 1.0
    order: int = 2
    sde_scale: float = 0.0


@dataclass
class RelaySamplerConfig:
    """Relay-stage sampler settings: a ``steps``-point Karras grid truncated below ``sigma_trunc``.

    ``prob_length`` is the sampling ``L`` (None: the training ``L``; the released CelebA-HQ
    script samples with 1.05 after training with 0.89).
    """

    steps: int = 64
    sigma_min: float = 0.008
    sigma_max: float = 80.0
    rho: float = 7.0
    sigma_trunc: float = 0.9
    prob_length: float | None = None
    eta: float = 0.2
    order: int = 2


@dataclass
class GuidanceConfig:
    """Classifier-free guidance (``scale`` 1 disables it)."""

    scale: float = 1.0
    schedule: str = "constant"
    power: float = 1.0
    interval: tuple[float, float] | None = None


@dataclass
class RelayConfig:
    """The relay forward process of a stage (shared by its training and its sampler)."""

    scale: int = 4
    prob_length: float = 0.93
    blur_sigma_max: float = 3.0
    block_alpha: float = 0.15
    min_scale: float = 1e-3
    p_mean: float = -1.2
    p_std: float = 1.2
    variant: str = "paper"

    def schedule(self, prob_length: float | None = None) -> RelaySchedule:
        return RelaySchedule(prob_length or self.prob_length, self.blur_sigma_max,
                             self.p_mean, self.p_std, self.min_scale)


@dataclass
class StageConfig:
    """Everything that defines one stage apart from its weights."""

    kind: str
    resolution: int
    network: dict
    channels: int = 3
    label_dim: int = 0
    sigma_data: float = 0.5
    relay: RelayConfig | None = None
    edm_sampler: EDMSamplerConfig = field(default_factory=EDMSamplerConfig)
    relay_sampler: RelaySamplerConfig = field(default_factory=RelaySamplerConfig)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)

    def __post_init__(self) -> None:
        if self.kind not in ("edm", "relay"):
            raise ValueError(f"stage kind {self.kind!r} is unknown; use 'edm' or 'relay'")
        if self.kind == "relay":
            if self.relay is None:
                self.relay = RelayConfig()
            check_variant(self.relay.variant)
            if self.resolution % self.relay.scale:
                raise ValueError(f"relay scale {self.relay.scale} does not divide the stage "
                                 f"resolution {self.resolution}")

    @property
    def input_resolution(self) -> int:
        """Resolution of the images this stage starts from (its own for stage 1)."""
        return self.resolution // self.relay.scale if self.kind == "relay" else self.resolution

    @classmethod
    def from_dict(cls, data: dict, where: str = "stage config") -> StageConfig:
        return from_dict(cls, data, where)

    def to_dict(self) -> dict:
        return to_dict(self)


def build_denoiser(config: StageConfig) -> EDMPrecond:
    """The preconditioned denoiser of a stage with freshly initialised weights."""
    net = build_network(config.network)
    return EDMPrecond(net, sigma_data=config.sigma_data, label_dim=config.label_dim)


def pretrained_path(name: str = PRETRAINED) -> Path:
    """Folder of a cascade shipped inside the package (``relaydiff/pretrained/NAME``); see
    ``docs/pretrained.md``. ``RelayCascade.from_pretrained(pretrained_path())`` loads it."""
    return Path(__file__).parent / "pretrained" / name


@contextlib.contextmanager
def _onednn_disabled(disable: bool):
    """Temporarily switch oneDNN (mkldnn) convolutions off; restores the previous setting."""
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = before and not disable
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


def seed_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per seed (the only source of randomness for that sample)."""
    return [torch.Generator().manual_seed(int(s) % (1 << 63)) for s in seeds]


class RelayCascade(nn.Module):
    """An ordered list of stages; stage 1 may be omitted for pure super-resolution cascades."""

    def __init__(self, configs: Sequence[StageConfig], denoisers: Sequence[nn.Module]) -> None:
        super().__init__()
        if not configs or len(configs) != len(denoisers):
            raise ValueError("a cascade needs at least one stage, with one denoiser per config")
        for k, (prev, cur) in enumerate(itertools.pairwise(configs), start=2):
            if cur.kind != "relay":
                raise ValueError(f"stage {k} must be a relay stage (only stage 1 can be 'edm')")
            if cur.input_resolution != prev.resolution:
                raise ValueError(
                    f"stage {k} starts from {cur.input_resolution}px (resolution {cur.resolution}"
                    f" / scale {cur.relay.scale}) but stage {k - 1} makes {prev.resolution}px"
                )
            if cur.channels != prev.channels:
                raise ValueError(f"stage {k} has {cur.channels} channels, stage {k - 1} {prev.channels}")
        self.configs = list(configs)
        self.denoisers = nn.ModuleList(denoisers)

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
                raise ValueError("this cascade is unconditional; drop --class/--balanced")
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

    @torch.no_grad()
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
        progress=None,
    ) -> list[torch.Tensor]:
        """Generate one image per seed; returns every stage's images (``N×C×R_k×R_k`` in [-1, 1]).

        ``batch_invariant`` (CPU): run convolutions without oneDNN, whose kernels round
        differently for different batch sizes, so pixels are bitwise identical whatever the
        batch size or position (about 1.4× slower). On GPUs results agree to float rounding.

        With ``low_res`` (``N×C×R×R`` in [-1, 1]) the stages above resolution ``R`` relay those
        images instead of sampling stage 1 (super-resolution); the list then starts with them.
        ``progress`` is called with the number of finished samples after each batch.
        """
        seeds = [int(s) for s in seeds]
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
        outputs: list[list[torch.Tensor]] = []
        exact = batch_invariant and self.device.type == "cpu"
        with _onednn_disabled(exact):
            for start in range(0, len(seeds), batch_size):
                batch = seeds[start:start + batch_size]
                low = None if low_res is None else low_res[start:start + batch_size]
                idx = None if labels is None else labels[start:start + batch_size]
                outputs.append(self._generate(batch, idx, low, first, dtype))
                if progress is not None:
                    progress(len(batch))
        return [torch.cat(parts) for parts in zip(*outputs, strict=True)]

    def stage_after(self, low_res: torch.Tensor) -> int:
        """Index of the stage that relays images of ``low_res``'s size (``ValueError`` if none)."""
        r = low_res.shape[-1]
        if low_res.dim() != 4 or low_res.shape[-2] != r:
            raise ValueError(f"low-resolution images must be N×C×R×R, got {tuple(low_res.shape)}")
        for k, c in enumerate(self.configs):
            if c.kind == "relay" and c.input_resolution == r:
                return k
        starts = sorted({c.input_resolution for c in self.configs if c.kind == "relay"})
        raise ValueError(f"no stage starts from {r}px images; this cascade relays from {starts} px")

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
        a relay stage from ``x_low`` (its input resolution). Returns images clamped to [-1, 1].
        ``callback(i, σ_i, x_i, denoised_i)`` sees every sampler step (e.g. for trajectories)."""
        cfg, den = self.configs[k], self.denoisers[k]
        device = self.device
        labels = None
        if cfg.label_dim and class_idx is not None:
            labels = torch.nn.functional.one_hot(class_idx, cfg.label_dim).to(device, torch.float32)
        denoiser = den
        if cfg.guidance.scale != 1.0 and labels is not None:
            g = cfg.guidance
            smin, smax = ((cfg.edm_sampler.sigma_min, cfg.edm_sampler.sigma_max) if cfg.kind == "edm"
                          else (cfg.relay_sampler.sigma_min, cfg.relay_sampler.sigma_trunc))
            denoiser = classifier_free_guidance(den, g.scale, schedule=g.schedule, power=g.power,
                                                sigma_min=smin, sigma_max=smax, interval=g.interval)
        if cfg.kind == "edm":
            s = cfg.edm_sampler
            shape = (len(generators), cfg.channels, cfg.resolution, cfg.resolution)
            latents = randn(shape, generators, device=device, dtype=dtype)
            x = edm_sample(denoiser, latents, karras_sigmas(s.steps, s.sigma_min, s.sigma_max, s.rho),
                           labels=labels, churn=s.churn, s_min=s.s_min, s_max=s.s_max,
                           s_noise=s.s_noise, order=s.order, sde_scale=s.sde_scale,
                           generator=generators, callback=callback)
            return x.clamp(-1, 1)
        if x_low is None or x_low.shape[-1] != cfg.input_resolution:
            raise ValueError(f"stage {k + 1} relays {cfg.input_resolution}px images")
        r, s = cfg.relay, cfg.relay_sampler
        sigmas = karras_sigmas(s.steps, s.sigma_min, s.sigma_max, s.rho, truncate=s.sigma_trunc)
        up = upsample(x_low.to(device=device, dtype=dtype), r.scale)
        n = relay_noise(up.shape, r.scale, r.block_alpha, generator=generators, variant=r.variant,
                        device=device, dtype=dtype)
        x = relay_sample(denoiser, up + sigmas[0].item() * n, sigmas, r.schedule(s.prob_length),
                         r.scale, labels=labels, eta=s.eta, block_alpha=r.block_alpha, order=s.order,
                         variant=r.variant, generator=generators, callback=callback)
        return x.clamp(-1, 1)

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | Path) -> None:
        """Write the cascade atomically: a temporary sibling folder, then a rename."""
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise ValueError(f"{directory}: exists and is not a folder; choose another --out")
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        tmp.chmod(0o755)
        try:
            names = []
            for k, (cfg, den) in enumerate(zip(self.configs, self.denoisers, strict=True), 1):
                name = f"stage{k}_{cfg.kind}_{cfg.resolution}"
                names.append(name)
                write_json_atomic(cfg.to_dict(), tmp / name / "config.json")
                state = {key: v.detach().contiguous().cpu() for key, v in den.model.state_dict().items()}
                save_file(state, str(tmp / name / "model.safetensors"))
            write_json_atomic({"format": CASCADE_FORMAT, "version": 1, "stages": names,
                               "relaydiff_version": __version__}, tmp / "cascade.json")
            old = None
            if directory.exists():
                old = directory.with_name(f".{directory.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(directory, old)
            os.replace(tmp, directory)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, device: torch.device | str = "cpu"
                        ) -> RelayCascade:
        """Load a cascade folder written by :meth:`save_pretrained` or ``relaydiff cascade build``,
        or a cascade shipped in the package by name (``"fluent-emoji-3d-16to64"``)."""
        directory = Path(directory)
        if (not directory.exists() and len(directory.parts) == 1
                and pretrained_path(directory.name).is_dir()):
            directory = pretrained_path(directory.name)
        meta = read_json(directory / "cascade.json")
        if not isinstance(meta, dict) or meta.get("format") != CASCADE_FORMAT:
            raise ValueError(f"{directory / 'cascade.json'}: not a relaydiff cascade description")
        configs, denoisers = [], []
        for name in meta.get("stages", []):
            cfg = StageConfig.from_dict(read_json(directory / name / "config.json"),
                                        f"{directory / name / 'config.json'}")
            den = build_denoiser(cfg)
            weights = directory / name / "model.safetensors"
            if not weights.is_file():
                raise ValueError(f"{weights}: file not found")
            try:
                state = load_file(str(weights))
            except (SafetensorError, OSError) as e:
                raise ValueError(f"{weights}: unreadable weights ({e})") from None
            try:
                den.model.load_state_dict(state, strict=True)
            except RuntimeError as e:
                first_line = str(e).splitlines()[0]
                raise ValueError(f"{weights}: weights do not match {name}/config.json "
                                 f"({first_line})") from None
            configs.append(cfg)
            denoisers.append(den.eval())
        return cls(configs, denoisers).to(device)

    @classmethod
    def toy(cls, resolutions: Sequence[int] = (16, 64), *, channels: int = 3, label_dim: int = 0,
            seed: int = 0, steps: int = 8) -> RelayCascade:
        """An untrained cascade of tiny networks (tests, smoke runs, the first demo command)."""
        torch.manual_seed(seed)
        configs = []
        for k, res in enumerate(resolutions):
            net = {"name": "toy", "in_channels": channels, "channels": 16, "label_dim": label_dim}
            if k == 0:
                configs.append(StageConfig("edm", res, net, channels, label_dim,
                                           edm_sampler=EDMSamplerConfig(steps=steps)))
            else:
                scale = res // resolutions[k - 1]
                if scale * resolutions[k - 1] != res:
                    raise ValueError(f"resolution {res} is not an integer multiple of "
                                     f"{resolutions[k - 1]}")
                configs.append(StageConfig("relay", res, net, channels, label_dim,
                                           relay=RelayConfig(scale=scale),
                                           relay_sampler=RelaySamplerConfig(steps=4 * steps)))
        return cls(configs, [build_denoiser(c).eval() for c in configs])
