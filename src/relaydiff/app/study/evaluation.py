"""Evaluating one row-run of the study at each budget point: its sample sets, their metrics with
bootstrap intervals, and (main point) the NFE curve and artifact correction."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ...cascade import RelayCascade
from ...data.floors import data_images
from ...io.files import finite_or_none, read_json, write_json
from ...io.images import from_uint8, load_image
from ...io.sample_folder import seed_path
from ...metrics.evaluate import evaluate
from ...metrics.weights import load_inception
from ...training.checkpoint import list_snapshots
from ...training.export import load_stage_source
from ...version import __version__
from .config import HELDOUT_SEED0, METRICS, POINT_METRICS, TRAIN_SEED0
from .plan import Evaluation, Point, Stage1Cost
from .runs import (
    artifact_rows,
    lock,
    metrics_row,
    set_steps,
    stage_nfe,
    timed,
    upscale_into,
    write_seed_samples,
)

if TYPE_CHECKING:
    from .runner import Study


@dataclass
class SharedSets:
    """What every evaluation shares: sample counts, reference folders, the training images'
    pick for SR-FID train, the stage-1 samples and stage 1's cost."""

    n: int
    n_sr: int
    refs: dict[str, Path]
    train_pick: list[int]
    stage1_samples: Path
    stage1: Stage1Cost
    _low: dict[str, torch.Tensor] = field(default_factory=dict)


class Evaluator:
    """Evaluates :class:`~.plan.Evaluation` rows of one study into ``runs/<row>/result.json``."""

    def __init__(self, study: Study, shared: SharedSets) -> None:
        self.study, self.shared = study, shared
        self.world, self.log, self.progress = study.world, study.log, study.progress
        self.e = study.config.eval
        self._inception = None

    # -- metrics and sets ----------------------------------------------------------------
    def inception(self):
        """The Inception network, loaded once."""
        if self._inception is None:
            self._inception = load_inception()
        return self._inception

    def metrics(self, samples: Path, ref: Path, metrics=METRICS) -> dict:
        return metrics_row(evaluate(samples, ref, metrics, progress=False,
                                    inception=self.inception(), intervals=self.e.intervals))

    def low(self, part: str) -> torch.Tensor:
        """Low-resolution inputs at the stage-1 resolution: ``heldout`` (the first held-out
        images), ``train`` (the study's seeded pick) or ``stage1`` (stage 1's samples)."""
        got = self.shared._low.get(part)
        if got is None:
            s, r1 = self.study, self.study._stage1_resolution()
            if part == "stage1":
                got = from_uint8(np.stack([load_image(seed_path(self.shared.stage1_samples, k))
                                           for k in range(self.shared.n)]))
            else:
                root, idx = ((s.heldout_root, range(self.shared.n_sr)) if part == "heldout"
                             else (s.train_root, self.shared.train_pick))
                got = data_images(root, idx, r1).float()
            self.shared._low[part] = got
        return got

    def _set(self, cascade: RelayCascade, name: str, folder: Path, metrics) -> dict:
        """Make and measure one set: ``cascade`` (stage-1 samples relayed, or end-to-end
        samples, against all data), ``sr_heldout`` / ``sr_train`` (data images at the low
        resolution upscaled, against the same images)."""
        refs = self.shared.refs
        if name == "cascade" and cascade.configs[0].kind == "edm":
            write_seed_samples(self.world, cascade, self.shared.n, folder, self.progress)
        elif name == "cascade":
            upscale_into(self.world, cascade, self.low("stage1"), 0, folder, self.progress)
        else:
            part = name.removeprefix("sr_")
            seed0 = HELDOUT_SEED0 if part == "heldout" else TRAIN_SEED0
            upscale_into(self.world, cascade, self.low(part), seed0, folder, self.progress)
        ref = refs["all"] if name == "cascade" else refs[name.removeprefix("sr_")]
        return self.metrics(folder, ref, metrics)

    # -- one evaluation ------------------------------------------------------------------
    def run(self, ev: Evaluation) -> None:
        out = self.study.out / "runs" / ev.folder
        if (out / "result.json").is_file():
            self.log(f"{ev.folder}: done earlier")
            return
        with lock(out) as got:
            if not got:
                self.log(f"{ev.folder}: another process evaluates it; skipping")
                return
            start = time.perf_counter()
            parts: dict[str, float] = {}
            points = [self._point(ev, p, out / "eval" / f"x{p.multiple:g}", parts)
                      for p in ev.run.points]
            result = {
                "name": ev.variant, "seed": ev.run.seed, "main": ev.main, "control": ev.control,
                "of": ev.run.variant, "sample": list(ev.sample), "guide": ev.guide,
                "kind": ev.run.config.stage.kind,
                "config": self.study.run_config(ev.run).to_dict(),
                "threads": torch.get_num_threads(), "points": points,
                "timing": {"eval_seconds": time.perf_counter() - start,
                           "eval_seconds_by_part": parts},
                "relaydiff_version": __version__,
            }
            if self.world.is_main:
                write_json(finite_or_none(result), out / "result.json")
            self.log(f"{ev.folder}: done ({(time.perf_counter() - start) / 60:.1f} min)")

    def _snapshot(self, ev: Evaluation, p: Point) -> Path:
        run_dir = self.study.out / "runs" / ev.run.folder / "checkpoints"
        step = p.images // ev.run.config.batch
        for snap in list_snapshots(run_dir):
            if snap.name == f"ckpt-{step:08d}":
                return snap
        raise ValueError(f"{run_dir}: no snapshot at {p.images:,} images (point ×{p.multiple:g}); "
                         "train the run first")

    def _cascade(self, ev: Evaluation, p: Point) -> tuple[RelayCascade, dict]:
        """The evaluated stage at point ``p`` (its guide: the run's first-point snapshot)."""
        snap = self._snapshot(ev, p)
        cfg, den, _ = load_stage_source(snap)
        record = read_json(snap / "state.json")["cost"]
        stage = ev.stage(cfg)
        guides = None
        if ev.guide != 1:
            g_cfg, g_den, _ = load_stage_source(self._snapshot(ev, ev.run.points[0]))
            guides = [(g_cfg, g_den)]
        return RelayCascade([stage], [den], None, guides), record

    def _point(self, ev: Evaluation, p: Point, folder: Path, parts: dict) -> dict:
        cascade, record = self._cascade(ev, p)
        stage = cascade.configs[0]
        full = p.multiple == 1 and not ev.control
        metrics = METRICS if p.multiple == 1 else POINT_METRICS
        row: dict = {"multiple": p.multiple, "images": p.images, "flops": p.flops,
                     "total_flops": p.total_flops, "train_seconds": record.get("wall_seconds"),
                     "device_hours": record.get("device_hours"), "nfe": stage_nfe(stage),
                     "total_nfe": stage_nfe(stage) + (0 if stage.kind == "edm"
                                                      else self.shared.stage1.nfe)}
        part = functools.partial(timed, parts)
        sets = (["cascade"] if self.study.use_stage1 or stage.kind == "edm" else [])
        sets += [] if stage.kind == "edm" else ["sr_heldout"]
        sets += ["sr_train"] if full and stage.kind != "edm" else []
        self.log(f"  {ev.folder} ×{p.multiple:g}: {', '.join(sets)}")
        for name in sets:
            with part(name):
                row[name] = self._set(cascade, name, folder / name, metrics)
        if full:
            if stage.kind != "edm":
                with part("artifacts"):
                    row["artifact_correction"] = artifact_rows(
                        ev.variant, stage, cascade, self.low("heldout"), folder)
            with part("nfe_curve"):
                row["nfe_curve"] = self._nfe_curve(cascade, row, folder)
        return row

    def _nfe_curve(self, cascade: RelayCascade, row: dict, folder: Path) -> list[dict]:
        """FID of the curve's set (held-out SR; end to end: the samples) at each step count;
        the stage's own step count is the point's set itself."""
        stage, den = cascade.configs[0], cascade.denoisers[0]
        edm = stage.kind == "edm"
        own = row["cascade" if edm else "sr_heldout"]
        steps_list = self.e.relay_steps if stage.kind == "relay" else self.e.edm_steps
        rows = []
        for steps in steps_list:
            cfg = replace(stage, relay_sampler=replace(stage.relay_sampler),
                          edm_sampler=replace(stage.edm_sampler))
            set_steps(cfg, steps)
            if stage_nfe(cfg) == row["nfe"]:
                got = {k: own[k] for k in ("fid", "kid", "fid_ci95", "kid_ci95", "n_images",
                                           "reference") if k in own}
            else:
                one = RelayCascade([cfg], [den], None, [
                    (cascade.guide_configs[0], cascade.guides["0"])] if 0 in cascade.guide_configs
                    else None)
                got = self._set(one, "cascade" if edm else "sr_heldout", folder / f"steps_{steps}",
                                POINT_METRICS)
            rows.append({"steps": steps, "nfe": stage_nfe(cfg), **got})
        return rows
