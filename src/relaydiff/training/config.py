"""Training configuration: a JSON file whose ``stage`` section is a :class:`StageConfig`.

A config names the stage to train (so a finished run goes straight into a cascade), the data,
the batch, the optimiser (Adam with EDM's learning-rate ramp-up), the EMA, the loss and the
snapshot/logging cadence. ``--set a.b=value`` overrides any key; values are parsed as JSON
(``1e-4``, ``true``, ``[1, 2]``) and taken as strings otherwise. Unknown keys raise a
``ValueError`` that names the key and the closest valid one.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..config import from_dict, to_dict
from ..io.files import read_json
from ..stage import StageConfig
from .augment import AugmentConfig


@dataclass
class DataConfig:
    """Where the training images come from (folder, zip or ``relaydiff data build`` output).

    A relay stage reads images at its own (high) resolution only; its low-resolution inputs
    ``up(down(x))`` are the fully blurred images the relay loss makes from them. Images that
    are not stored at the stage's resolution are refused unless ``resize`` is set (a relay
    stage trained on upsampled images learns to make blurry ones).

    ``crop`` (relay and super-resolution stages): train on ``crop×crop`` windows of the images
    (pixels at the stage's resolution; a multiple of the relay patch size and of the network's
    downsampling), cut at patch-aligned positions drawn per image and epoch. The relay forward
    process is local to each patch, so a window of a relay-noised image is the relay-noised
    window (docs/train.md#crop-training).
    """

    path: str = ""
    xflip: bool = False
    skip_bad: bool = False
    background: str = "white"
    limit: int | None = None
    workers: int = 0
    resize: bool = False
    crop: int | None = None


@dataclass
class OptimConfig:
    """Adam; ``lr(images) = lr·min(images / rampup_images, 1)`` (EDM's ramp-up)."""

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    rampup_images: int = 10_000_000


@dataclass
class EMAConfig:
    """EMA half-life in training images; ``rampup_ratio`` caps it at that fraction of images seen.

    ``posthoc_sigma_rels`` (e.g. ``[0.05, 0.10]``) also tracks power-function EMAs of those
    relative widths and stores their snapshots every ``posthoc_every_images`` in
    ``RUN/posthoc/`` (in ``posthoc_dtype``: float16 as EDM2, half the disk), from which
    ``relaydiff ema reconstruct`` makes any other width after training (EDM2's post-hoc EMA,
    docs/quality.md). The half-life EMA stays the one a cascade
    gets from ``cascade build``.
    """

    halflife_images: float = 500_000
    rampup_ratio: float | None = 0.05
    posthoc_sigma_rels: list[float] = field(default_factory=list)
    posthoc_every_images: int = 0
    posthoc_dtype: str = "float16"

    def __post_init__(self) -> None:
        if self.posthoc_dtype not in ("float16", "float32"):
            raise ValueError(f"ema.posthoc_dtype {self.posthoc_dtype!r} must be float16 or float32")
        if self.posthoc_sigma_rels and self.posthoc_every_images < 1:
            raise ValueError("ema.posthoc_every_images must be ≥ 1 when ema.posthoc_sigma_rels is set")
        for s in self.posthoc_sigma_rels:
            if not 0 < s < 0.2887:
                raise ValueError(f"ema.posthoc_sigma_rels: {s} must lie in (0, 0.288)")


@dataclass
class LossConfig:
    """EDM σ distribution (stage 1), relay σ floor and weight clamp, and a static loss scale.

    ``scale`` multiplies the loss and divides the gradient back out: it only changes fp16
    rounding (EDM's ``loss_scaling``), never the update in exact arithmetic.
    """

    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_floor: float = 7.5e-3
    weight_max: float = 1e5
    scale: float = 1.0


@dataclass
class CheckpointConfig:
    """Snapshot every ``every_images`` images (and at the end); keep the last ``keep``."""

    every_images: int = 1_000_000
    keep: int = 3


@dataclass
class LogConfig:
    """JSON-lines/TensorBoard scalars every ``every_steps``; EMA sample grids every ``grid_every_images``.

    ``fid_every_images`` > 0 also logs the FID of ``fid_images`` EMA samples against
    ``fid_reference`` (a ``relaydiff eval ref`` file), as ``FID@n``: a small-sample FID, biased
    upwards and only comparable with FIDs of the same ``n``.
    """

    every_steps: int = 50
    grid_every_images: int = 0
    grid_size: int = 16
    tensorboard: bool = True
    fid_every_images: int = 0
    fid_images: int = 256
    fid_reference: str = ""


@dataclass
class TrainConfig:
    """One training run of one stage.

    ``batch`` is the global batch; ``batch_per_device`` (default: ``batch / devices``) sets the
    micro-batch, so ``batch = batch_per_device × devices × accumulation steps``.
    ``noise_rng``: ``"per_sample"`` draws σ and noise of global sample ``g`` from a generator
    seeded with ``(seed, g)`` (results independent of the number of devices); ``"per_device"``
    uses one generator per device and micro-batch (faster on GPUs, still exactly resumable).
    ``precision``: ``fp32``, ``bf16`` or ``fp16`` autocast of the network (GPU only).
    ``description``: free text for people (where the values come from); training ignores it.
    """

    stage: StageConfig
    data: DataConfig = field(default_factory=DataConfig)
    cond: bool = False
    batch: int = 64
    batch_per_device: int | None = None
    total_images: int = 1_000_000
    seed: int = 0
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    precision: str = "fp32"
    compile: bool = False
    max_bad_steps: int = 100
    noise_rng: str = "per_sample"
    device: str | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if self.batch < 1 or self.total_images < 1:
            raise ValueError(f"batch ({self.batch}) and total_images ({self.total_images}) must be ≥ 1")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision {self.precision!r} is unknown; use fp32, bf16 or fp16")
        if self.noise_rng not in ("per_sample", "per_device"):
            raise ValueError(f"noise_rng {self.noise_rng!r} is unknown; use per_sample or per_device")
        if self.checkpoint.keep < 1:
            raise ValueError(f"checkpoint.keep must be ≥ 1, got {self.checkpoint.keep}")

    @property
    def total_steps(self) -> int:
        return -(-self.total_images // self.batch)

    def micro_batch(self, world_size: int) -> tuple[int, int]:
        """``(batch_per_device, accumulation steps)`` for ``world_size`` devices."""
        if self.batch % world_size:
            raise ValueError(
                f"batch {self.batch} does not split over {world_size} devices; use a multiple of {world_size}"
            )
        per_device = self.batch_per_device or self.batch // world_size
        accum, rest = divmod(self.batch, per_device * world_size)
        if rest or accum < 1:
            raise ValueError(
                f"batch {self.batch} is not batch_per_device {per_device} × "
                f"{world_size} devices × an integer number of accumulation steps"
            )
        return per_device, accum

    @classmethod
    def from_dict(cls, data: dict, where: str = "config") -> TrainConfig:
        if not isinstance(data, dict) or "stage" not in data:
            raise ValueError(f'{where}: a training config needs a "stage" section (a stage config)')
        return from_dict(cls, data, where)

    def to_dict(self) -> dict:
        return to_dict(self)


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(data: dict, overrides: Sequence[str], where: str = "override") -> dict:
    """Apply ``key.sub=value`` overrides to a config dict (a copy); unknown keys fail later."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{where} {item!r}: expected KEY=VALUE, e.g. optim.lr=2e-4")
        node = data
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None and part not in node:
                child = node[part] = {}
            if not isinstance(child, dict):
                path = ".".join(parts[: depth + 1])
                raise ValueError(f"{where} {item!r}: {path} is not a section")
            node = child
        node[parts[-1]] = _parse_value(value)
    return data


def config_path(name: str) -> Path:
    """A training config shipped inside the package (``relaydiff/configs/NAME.json``)."""
    return Path(__file__).parents[1] / "configs" / f"{name}.json"


def _nested(key: str, outer: str) -> bool:
    """Whether the dotted ``key`` is ``outer`` or lies inside it."""
    return key == outer or key.startswith(outer + ".")


def load_train_config(path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a training config file and apply ``--set`` overrides.

    A bad value is one line: the file, the dotted key, the problem and, where the value came
    from ``--set``, that override (``cfg.json: optim.lr: expected a number, got 'abc' (from
    --set optim.lr=abc)``)."""
    data = read_json(path)
    try:
        return TrainConfig.from_dict(apply_overrides(data, overrides), where="")
    except ValueError as e:
        key = str(e).split(":", 1)[0]
        given = [o for o in overrides if _nested(o.split("=", 1)[0], key) or _nested(key, o.split("=", 1)[0])]
        raise ValueError(f"{path}: {e}" + (f" (from --set {given[-1]})" if given else "")) from None


def config_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts."""
    keys = sorted(set(old) | set(new))
    out = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, name + ".")
        elif a != b:
            out.append(name)
    return out
