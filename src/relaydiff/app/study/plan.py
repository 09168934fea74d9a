"""The study's frozen plan: every training run and every evaluation, with its whole-pipeline
cost, built once from the config (docs/study.md, "Budget")."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

from ...stage import GuidanceConfig, StageConfig, build_denoiser
from ...training.config import TrainConfig, apply_overrides, load_train_config
from ...training.cost import flops_per_image
from ...training.loop import make_loss
from ...training.setup import resolve_stage
from .config import StudyConfig, StudyVariant


@dataclass(frozen=True)
class Stage1Cost:
    """Training FLOPs of the shared stage 1 (its guide included), its NFE per sample (guided
    steps counted twice) and where the figures come from."""

    flops: float
    nfe: int
    record: dict


@dataclass(frozen=True)
class Point:
    """One budget point of a run: the higher stage's ``multiple``, the images its network
    trains on, their FLOPs and the pipeline's total (stage 1 included for a cascade)."""

    multiple: float
    images: int
    flops: float
    total_flops: float


@dataclass(frozen=True)
class TrainedRun:
    """One training run: a trained variant at one seed, its config (``total_images`` that of
    the last point) and its budget points."""

    variant: str
    seed: int
    config: TrainConfig
    flops_per_image: int
    points: tuple[Point, ...]

    @property
    def folder(self) -> str:
        return f"{self.variant}-s{self.seed}"

    def point(self, multiple: float) -> Point:
        return next(p for p in self.points if p.multiple == multiple)


@dataclass(frozen=True)
class Evaluation:
    """One row-run of the results: a trained run evaluated as it is (``control`` False) or as a
    control (``sample``: stage settings; ``guide`` > 1: autoguided by the run's own first-point
    snapshot at that weight)."""

    variant: str
    run: TrainedRun
    main: bool
    control: bool
    sample: tuple[str, ...]
    guide: float

    @property
    def folder(self) -> str:
        return f"{self.variant}-s{self.run.seed}"

    def stage(self, trained: StageConfig) -> StageConfig:
        """The stage as this evaluation samples it: the trained stage with ``sample`` applied
        and, for ``guide`` > 1, autoguidance at that weight (docs/method.md §3)."""
        stage = StageConfig.from_dict(apply_overrides(trained.to_dict(), self.sample,
                                                      where=f"variant {self.variant}: sample"))
        if self.guide != 1:
            stage = replace(stage, guidance=GuidanceConfig(scale=self.guide, kind="auto"))
        return stage


@dataclass(frozen=True)
class Plan:
    stage1: Stage1Cost
    runs: tuple[TrainedRun, ...]
    evaluations: tuple[Evaluation, ...]


def variant_config(v: StudyVariant, seed: int, base: Path) -> TrainConfig:
    """A trained variant's training config at ``seed`` (its data path is set when it trains)."""
    path = Path(v.config) if Path(v.config).is_absolute() else base / v.config
    cfg = load_train_config(path, [*v.set, f"seed={seed}"])
    if cfg.stage.kind != "edm" and cfg.stage.scale is None:
        raise ValueError(f"variant {v.name!r}: stage has no scale")
    return cfg


def measured_flops(cfg: TrainConfig, num_classes: int) -> int:
    """Training FLOPs of one image of ``cfg`` (docs/method.md §6), labels as the data gives."""
    cfg = resolve_stage(cfg, num_classes, "the study's data")
    st = cfg.stage
    return flops_per_image(build_denoiser(st, initialize=False), make_loss(cfg),
                           (st.channels, st.resolution, st.resolution), st.label_dim)


def _points(study: StudyConfig, fpi: int, batch: int, stage1: float, end_to_end: bool
            ) -> tuple[Point, ...]:
    share = study.budget.total - stage1
    points = []
    for m in study.budget.points:
        target = stage1 + m * share
        own = target if end_to_end else m * share
        images = max(1, math.floor(own / (fpi * batch))) * batch
        total = images * fpi + (0 if end_to_end else stage1)
        points.append(Point(m, images, float(images * fpi), float(total)))
    return tuple(points)


def _check_end_to_end(v: StudyVariant, cfg: TrainConfig, stage1: StageConfig | None,
                      stage1_cond: bool) -> None:
    """An end-to-end variant gets stage 1's conditioning and guidance (the comparison's terms)."""
    if stage1 is None:
        return
    if cfg.cond != stage1_cond or cfg.stage.guidance != stage1.guidance:
        raise ValueError(
            f"variant {v.name!r}: an end-to-end model is compared with stage 1's conditioning and "
            f"guidance (cond {stage1_cond}, guidance {stage1.guidance}); it has cond {cfg.cond}, "
            f"guidance {cfg.stage.guidance}: set them alike in its config")


def build_plan(study: StudyConfig, configs: dict[tuple[str, int], TrainConfig], stage1: Stage1Cost,
               num_classes: int, stage1_config: StageConfig | None = None,
               stage1_cond: bool = False) -> Plan:
    """Every run and evaluation of ``study``; ``configs``: each trained variant's training config
    by ``(name, seed)`` (:func:`variant_config`); ``stage1``: the shared stage 1's cost,
    ``stage1_config``/``stage1_cond`` its stage and conditioning (end-to-end variants must match
    them; ``None``: a given cascade's, checked the same way through its config)."""
    if study.budget.total <= stage1.flops:
        raise ValueError(f"budget.total {study.budget.total:.3g} FLOPs is not above stage 1's "
                         f"{stage1.flops:.3g}: raise it, or train a smaller stage 1")
    runs: dict[str, list[TrainedRun]] = {}
    for v in study.variants:
        if v.of:
            continue
        runs[v.name] = []
        for seed in v.seeds:
            cfg = configs[v.name, seed]
            e2e = cfg.stage.kind == "edm"
            if e2e:
                _check_end_to_end(v, cfg, stage1_config, stage1_cond)
            fpi = measured_flops(cfg, num_classes)
            points = _points(study, fpi, cfg.batch, stage1.flops, e2e)
            cfg = replace(cfg, total_images=points[-1].images,
                          checkpoint=replace(cfg.checkpoint, every_images=10**15,
                                             keep=len(points) + 1))
            runs[v.name].append(TrainedRun(v.name, seed, cfg, fpi, points))
    evaluations = []
    for v in study.variants:
        if v.guide != 1 and runs[v.of or v.name][0].config.stage.kind == "edm":
            raise ValueError(f"variant {v.name!r}: an end-to-end model is guided as stage 1 is "
                             "(its config's guidance); guide applies to relay and sr stages")
        for run in runs[v.of or v.name]:
            ev = Evaluation(v.name, run, v.main, bool(v.of), tuple(v.sample), v.guide)
            ev.stage(run.config.stage)  # the sample settings must apply before anything runs
            evaluations.append(ev)
    return Plan(stage1, tuple(r for rs in runs.values() for r in rs), tuple(evaluations))
