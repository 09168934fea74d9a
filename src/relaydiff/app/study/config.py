"""The study's config: data, stage 1, budget, variants and evaluation (docs/study.md)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ...config import from_dict
from ...io.files import read_json
from ...training.config import apply_overrides

METRICS = ["fid", "sfid", "pr", "kid", "swd", "spectrum"]
HELDOUT_SEED0 = 1 << 20  # sampler seeds of the held-out upscaling (image k: HELDOUT_SEED0 + k)
TRAIN_SEED0 = 1 << 21  # … of the training-image upscaling
ARTIFACT_IMAGES = 16
GRID_IMAGES = 8


@dataclass
class StudyData:
    """``path``: a built data set (``relaydiff data build``) with the stage-1 and target
    resolutions; empty: fluent-emoji-3d. ``heldout`` images (a seeded choice) are never
    trained on by the higher stages."""

    path: str = ""
    heldout: int = 256
    split_seed: int = 0


@dataclass
class StudyStage1:
    """The shared stage 1: a training config (path relative to the study config), overrides,
    its data (``"all"`` the whole data set or ``"train"`` the training split), and a cap on its
    wall-clock training minutes (``None``: train for the config's ``total_images``). Or
    ``cascade``: a cascade folder or packaged cascade name whose first stage (with its guide,
    guidance and sampler settings) is the stage 1; nothing is trained and the training fields
    are unused."""

    config: str = ""
    set: list[str] = field(default_factory=list)
    data: str = "train"
    max_minutes: float | None = None
    cascade: str = ""


@dataclass
class StudyBudget:
    """Every higher stage gets the same budget: ``flops`` (training FLOPs = images seen ×
    measured FLOPs per image) or ``minutes`` (wall-clock on this machine)."""

    kind: str = "flops"
    value: float = 0.0


@dataclass
class StudyVariant:
    """One row: a higher-stage training config (relay, sr, or an edm stage at the target
    resolution, i.e. end to end), overrides, training seeds; ``main`` marks the main comparison;
    ``sample_levels`` (sr) the conditioning noise levels to evaluate."""

    name: str
    config: str
    set: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    main: bool = False
    sample_levels: list[float] = field(default_factory=list)


@dataclass
class StudyEval:
    """Sample counts (equal for every set of a variant) and the sweeps of the figures."""

    samples: int = 256
    curve_samples: int = 64
    curve_points: int = 3
    relay_steps: list[int] = field(default_factory=lambda: [10, 20, 40])
    edm_steps: list[int] = field(default_factory=lambda: [4, 8, 16])


@dataclass
class StudyConfig:
    variants: list[StudyVariant]
    stage1: StudyStage1 = field(default_factory=StudyStage1)
    budget: StudyBudget = field(default_factory=StudyBudget)
    data: StudyData = field(default_factory=StudyData)
    eval: StudyEval = field(default_factory=StudyEval)
    description: str = ""

    def __post_init__(self) -> None:
        if self.budget.kind not in ("flops", "minutes"):
            raise ValueError(f"budget.kind {self.budget.kind!r} is unknown; use flops or minutes")
        if not (math.isfinite(self.budget.value) and self.budget.value > 0):
            raise ValueError(f"budget.value {self.budget.value!r} must be a positive number "
                             f"(of {self.budget.kind})")
        if self.stage1.data not in ("all", "train"):
            raise ValueError(f"stage1.data {self.stage1.data!r}: use all or train")
        names = [v.name for v in self.variants]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"variants: give at least one, each with its own name (got {names})")
        for v in self.variants:
            if not v.seeds:
                raise ValueError(f"variant {v.name!r}: seeds is empty")
        e = self.eval
        if min(e.samples, e.curve_samples) < 2 or e.curve_points < 1:
            raise ValueError("eval.samples and eval.curve_samples must be ≥ 2, curve_points ≥ 1")


def load_study(path: str | Path, overrides: Sequence[str] = ()) -> tuple[StudyConfig, Path]:
    """The study config with ``--set KEY=VALUE`` ``overrides`` applied (e.g.
    ``budget.value=3.6e13``), and the folder its relative config paths are resolved against."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a study config is a JSON object")
    data = apply_overrides(data, overrides, where="--set")
    data["variants"] = [from_dict(StudyVariant, v, f"{path}: variants[{k}]")
                        for k, v in enumerate(data.get("variants") or [])]
    return from_dict(StudyConfig, data, str(path)), path.parent


