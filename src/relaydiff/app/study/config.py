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
POINT_METRICS = ["fid", "kid"]  # the curves' and the controls' metrics
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
    """The shared stage 1: a training config (path relative to the study config), overrides
    and its data (``"all"`` the whole data set or ``"train"`` the training split). Or
    ``cascade``: a cascade folder or packaged cascade name whose first stage (with its guide,
    guidance and sampler settings) is the stage 1; nothing is trained, its training record
    gives its cost (guide included), and the training fields are unused."""

    config: str = ""
    set: list[str] = field(default_factory=list)
    data: str = "train"
    cascade: str = ""


@dataclass
class StudyBudget:
    """Training FLOPs of every variant's whole pipeline at the main budget point: ``total`` =
    stage 1 (its guide included) + the higher stage for a cascade, the model alone end to end.
    ``points``: the budget points, as multiples ``m`` of the higher stage's share ``total − S``
    (``S``: stage 1's FLOPs); at point ``m`` every variant's total is ``S + m·(total − S)``
    (1 is the main point and must be among them)."""

    total: float = 0.0
    points: list[float] = field(default_factory=lambda: [1.0])


@dataclass
class StudyVariant:
    """One row. A trained variant names a training ``config`` (relay, sr, or an edm stage at the
    target resolution, i.e. end to end) with overrides ``set`` and training ``seeds``. A control
    names ``of``, a trained variant whose runs (all its seeds) it evaluates again with the stage
    settings ``sample`` (e.g. ``edm_sampler.order=1``), trained nothing. ``guide``: evaluate
    with autoguidance by the run's own snapshot at the first budget point, at this weight
    (docs/method.md §3; 1: none). ``main`` marks the main comparison."""

    name: str
    config: str = ""
    set: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    main: bool = False
    of: str = ""
    sample: list[str] = field(default_factory=list)
    guide: float = 1.0


@dataclass
class StudyEval:
    """Sample count of every set (curves and controls included), the bootstrap resamples of
    the intervals, the random splits of the data-vs-data floors and the NFE sweep."""

    samples: int = 256
    intervals: int = 1000
    floor_splits: int = 10
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
        b = self.budget
        if not (math.isfinite(b.total) and b.total > 0):
            raise ValueError(f"budget.total {b.total!r} must be a positive number of FLOPs")
        if 1.0 not in b.points or any(not (math.isfinite(m) and m > 0) for m in b.points):
            raise ValueError(f"budget.points {b.points}: positive multiples, 1 among them")
        b.points = sorted(set(b.points))
        if self.stage1.data not in ("all", "train"):
            raise ValueError(f"stage1.data {self.stage1.data!r}: use all or train")
        names = [v.name for v in self.variants]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"variants: give at least one, each with its own name (got {names})")
        trained = {v.name: v for v in self.variants if not v.of}
        for v in self.variants:
            if bool(v.config) == bool(v.of):
                raise ValueError(f"variant {v.name!r}: give either config (a trained variant) "
                                 "or of (a control of one), not both or neither")
            if v.of:
                if v.of not in trained:
                    raise ValueError(f"variant {v.name!r}: of {v.of!r} is not a trained variant "
                                     f"(they are {', '.join(trained)})")
                if v.set:
                    raise ValueError(f"variant {v.name!r}: a control trains nothing; put stage "
                                     "settings in sample, not set")
                v.seeds = list(trained[v.of].seeds)
            if not v.seeds or len(set(v.seeds)) != len(v.seeds):
                raise ValueError(f"variant {v.name!r}: seeds {v.seeds} must be distinct, at least one")
            if v.guide < 1:
                raise ValueError(f"variant {v.name!r}: guide {v.guide} must be ≥ 1 (1: none)")
        if any(v.guide != 1 for v in self.variants) and len(b.points) < 2:
            raise ValueError("a guided control needs a second budget point (its guide)")
        e = self.eval
        if e.samples < 2 or e.intervals < 0 or e.floor_splits < 1:
            raise ValueError("eval.samples must be ≥ 2, eval.intervals ≥ 0, eval.floor_splits ≥ 1")


def load_study(path: str | Path, overrides: Sequence[str] = ()) -> tuple[StudyConfig, Path]:
    """The study config with ``--set KEY=VALUE`` ``overrides`` applied (e.g.
    ``budget.total=3e14``), and the folder its relative config paths are resolved against."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a study config is a JSON object")
    data = apply_overrides(data, overrides, where="--set")
    data["variants"] = [from_dict(StudyVariant, v, f"{path}: variants[{k}]")
                        for k, v in enumerate(data.get("variants") or [])]
    return from_dict(StudyConfig, data, str(path)), path.parent
