"""One stage of a cascade: its configuration schema, its denoiser, and its folder on disk.

A stage is everything but the weights (:class:`StageConfig`: kind, resolution, network, relay
process, sampler and guidance settings) plus a preconditioned denoiser built from it
(:func:`build_denoiser`). Training writes the config into every checkpoint; a cascade folder
holds one stage folder per stage::

    STAGE/config.json          StageConfig as strict JSON
    STAGE/model.safetensors    weights of the raw network (EMA weights for trained stages)

Equations: docs/method.md §1 (stage 1) and §2 (relay stages).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import from_dict, to_dict
from .io.files import read_json, write_json
from .io.tensors import load_tensors, save_tensors
from .networks import build_network
from .networks.unet import uninitialized
from .ops import canonical_variant
from .precond import EDMPrecond
from .schedules import RelaySchedule

STAGE_KINDS = ("edm", "relay", "sr")
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class EDMSamplerConfig:
    """Stage-1 and super-resolution sampler settings (EDM's Heun sampler with churn;
    ``sde_scale`` > 0: SDE variant).

    ``s_max`` ``None`` means no upper limit of the churn range (EDM's ``S_max = ∞``).
    ``sigma_trunc`` (super-resolution stages only; ``None``: from pure noise at ``sigma_max``):
    keep the grid's ``σ_i < sigma_trunc`` and start SDEdit-style from ``up(x_low) + σ_0·n``,
    the relay stage's truncated start with white noise (docs/method.md §7).
    """

    steps: int = 32
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    churn: float = 0.0
    s_min: float = 0.0
    s_max: float | None = None
    s_noise: float = 1.0
    order: int = 2
    sde_scale: float = 0.0
    sigma_trunc: float | None = None

    def __post_init__(self) -> None:
        if self.s_max is not None and math.isinf(self.s_max) and self.s_max > 0:
            self.s_max = None  # files written before strict JSON say Infinity

    @property
    def churn_max(self) -> float:
        return math.inf if self.s_max is None else self.s_max


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
    """Guidance of a stage (``scale`` 1 disables it): ``kind`` ``"cfg"`` (classifier-free: the
    zero label guides) or ``"auto"`` (autoguidance: the stage's guide network, a smaller or less
    trained model of the same stage, guides; docs/method.md §3)."""

    scale: float = 1.0
    schedule: str = "constant"
    power: float = 1.0
    interval: tuple[float, float] | None = None
    kind: str = "cfg"

    def __post_init__(self) -> None:
        if self.kind not in ("cfg", "auto"):
            raise ValueError(f"guidance.kind {self.kind!r} is unknown; use cfg or auto")


@dataclass
class BlockNoiseConfig:
    """Block noise in an EDM stage (the study's end-to-end control; docs/method.md §1.2): at
    noise levels ``σ ≥ sigma_min`` its noise is the relay noise ``(ε + α·Block_s)/√(1+α²)`` of
    block size ``patch`` (§2.3) instead of white ``ε``, in training and in the sampler's initial
    latents (drawn at ``σ_max``); below ``sigma_min``, and the churn's noise, stay white."""

    alpha: float = 0.15
    patch: int = 4
    sigma_min: float = 1.0


@dataclass
class RelayConfig:
    """The relay forward process of a stage (shared by its training and its sampler).

    ``variant`` (:data:`relaydiff.ops.VARIANTS`, one name for the training and the sampler):
    ``"trapezoidal"`` (the paper's block noise and training bounds, sampled with the trapezoidal
    Heun corrector) or ``"official"`` (the released code's numerics,
    docs/official-differences.md). Files saying ``"paper"`` (the old name of ``"trapezoidal"``)
    load as ``"trapezoidal"``.
    """

    scale: int = 4
    prob_length: float = 0.93
    blur_sigma_max: float = 3.0
    block_alpha: float = 0.15
    min_scale: float = 1e-3
    p_mean: float = -1.2
    p_std: float = 1.2
    variant: str = "trapezoidal"

    def __post_init__(self) -> None:
        self.variant = canonical_variant(self.variant, warn=False)

    def schedule(self, prob_length: float | None = None) -> RelaySchedule:
        return RelaySchedule(prob_length or self.prob_length, self.blur_sigma_max,
                             self.p_mean, self.p_std, self.min_scale)


@dataclass
class SRConfig:
    """A conditional super-resolution stage (docs/method.md §7): the baseline relay diffusion
    is compared with (SR3 / CDM / Imagen style).

    Trained with noise-conditioning augmentation ``σ_aug ~ U(0, aug_max)`` on the
    low-resolution input; sampled from pure noise with the stage's EDM sampler, conditioned on
    the low-resolution image corrupted at the fixed level ``sample_level``.
    """

    scale: int = 4
    aug_max: float = 1.0
    sample_level: float = 0.1


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
    sr: SRConfig | None = None
    edm_sampler: EDMSamplerConfig = field(default_factory=EDMSamplerConfig)
    relay_sampler: RelaySamplerConfig = field(default_factory=RelaySamplerConfig)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    block_noise: BlockNoiseConfig | None = None

    def __post_init__(self) -> None:
        if self.kind not in STAGE_KINDS:
            raise ValueError(f"stage kind {self.kind!r} is unknown; use one of "
                             f"{', '.join(map(repr, STAGE_KINDS))}")
        if self.kind == "relay":
            if self.relay is None:
                self.relay = RelayConfig()
        if self.kind == "sr":
            if self.sr is None:
                self.sr = SRConfig()
            if not 0 <= self.sr.sample_level <= self.sr.aug_max:
                raise ValueError(f"sr.sample_level {self.sr.sample_level} must lie in [0, "
                                 f"sr.aug_max = {self.sr.aug_max}], the levels it was trained on")
        b = self.block_noise
        if b is not None and (self.kind != "edm" or b.patch < 1 or self.resolution % b.patch
                              or not (math.isfinite(b.alpha) and b.alpha >= 0)):
            raise ValueError(f"block_noise {b}: an edm stage's setting, with alpha ≥ 0 and a patch "
                             f"that divides the resolution {self.resolution}")
        if self.edm_sampler.sigma_trunc is not None and self.kind != "sr":
            raise ValueError(f"edm_sampler.sigma_trunc starts from an upsampled image: a "
                             f"super-resolution stage's setting, not an {self.kind} stage's; "
                             "leave it out")
        if self.scale is not None and (self.scale < 1 or self.resolution % self.scale):
            raise ValueError(f"{self.kind} scale {self.scale} does not divide the stage "
                             f"resolution {self.resolution}")

    @property
    def scale(self) -> int | None:
        """The factor from the input resolution to this stage's (``None`` for stage 1)."""
        return {"relay": self.relay, "sr": self.sr}[self.kind].scale if self.kind != "edm" else None

    @property
    def input_resolution(self) -> int:
        """Resolution of the images this stage starts from (its own for stage 1)."""
        return self.resolution if self.scale is None else self.resolution // self.scale

    def network_config(self) -> dict:
        """The network config with what the stage kind implies: a super-resolution network
        takes the conditioning image as ``channels`` more input channels and the noise level."""
        if self.kind != "sr":
            return self.network
        implied = {"in_channels": 2 * self.channels, "out_channels": self.channels,
                   "cond_level": True}
        for key, value in implied.items():
            if key in self.network and self.network[key] != value:
                raise ValueError(f"network.{key} is {self.network[key]!r}, but a super-resolution "
                                 f"stage's network needs {value!r}; leave network.{key} out")
        return {**self.network, **implied}

    @classmethod
    def from_dict(cls, data: dict, where: str = "stage config") -> StageConfig:
        return from_dict(cls, data, where)

    def to_dict(self) -> dict:
        return to_dict(self)


def build_denoiser(config: StageConfig, *, initialize: bool = True) -> EDMPrecond:
    """The preconditioned denoiser of a stage with freshly initialised weights
    (``initialize=False``: uninitialised, for weights loaded right after)."""
    with contextlib.nullcontext() if initialize else uninitialized():
        net = build_network(config.network_config())
    return EDMPrecond(net, sigma_data=config.sigma_data, label_dim=config.label_dim)


def stage_denoiser(config: StageConfig, weights: dict[str, torch.Tensor], source: str | Path,
                   where: str = "the stage config") -> EDMPrecond:
    """The denoiser of ``config`` holding ``weights`` (a state dict of the raw network: a stage
    folder's, a snapshot's EMA, a post-hoc EMA), loaded strictly; eval mode, on the CPU. Weights
    that do not fit raise ``ValueError`` naming their ``source`` and the config (``where``)."""
    denoiser = build_denoiser(config, initialize=False)
    try:
        denoiser.model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        first_line = str(e).splitlines()[0]
        raise ValueError(f"{source}: weights do not match {where} ({first_line})") from None
    return denoiser.eval()


def save_stage(folder: str | Path, config: StageConfig, denoiser: EDMPrecond,
               dtype: torch.dtype | None = None) -> None:
    """Write ``config.json`` and ``model.safetensors`` into ``folder`` (a folder being built,
    e.g. inside :func:`relaydiff.io.files.atomic_folder`); floating-point weights stored as
    ``dtype`` (None: as they are; loading casts them back to the network's precision)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(config.to_dict(), folder / CONFIG_FILE, durable=False)
    state = denoiser.model.state_dict()
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    save_tensors(state, folder / WEIGHTS_FILE, durable=True)


def load_stage(folder: str | Path) -> tuple[StageConfig, EDMPrecond]:
    """Read a stage folder; returns its config and its denoiser (eval mode, on the CPU). A
    missing, unreadable or mismatched weights file raises ``ValueError`` naming it."""
    folder = Path(folder)
    where = folder / CONFIG_FILE
    config = StageConfig.from_dict(read_json(where), str(where))
    weights = folder / WEIGHTS_FILE
    return config, stage_denoiser(config, load_tensors(weights), weights, f"{folder.name}/{CONFIG_FILE}")


def check_guide(stage: StageConfig, guide: StageConfig) -> None:
    """Refuse a guide network that is not a model of the same stage (kind, resolution, channels,
    classes, scale and relay process), naming the first difference."""
    def identity(c: StageConfig) -> dict:
        return {"kind": c.kind, "resolution": c.resolution, "channels": c.channels,
                "label_dim": c.label_dim, "scale": c.scale, "relay": c.relay, "sr": c.sr}

    mine, theirs = identity(stage), identity(guide)
    for key, value in mine.items():
        if theirs[key] != value:
            raise ValueError(f"the guide's {key} is {theirs[key]!r} but the stage's is {value!r}; a "
                             "guide must be a (smaller or less trained) model of the same stage")


def is_stage_folder(path: str | Path) -> bool:
    return (Path(path) / CONFIG_FILE).is_file() and (Path(path) / WEIGHTS_FILE).is_file()


def one_hot(class_idx: torch.Tensor, label_dim: int, device: torch.device) -> torch.Tensor:
    """EDM's one-hot label rows for class indices."""
    return torch.nn.functional.one_hot(class_idx, label_dim).to(device, torch.float32)
