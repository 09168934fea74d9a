"""The study's runner: trains every run of the plan and evaluates every evaluation, resumably."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ...cascade import RelayCascade
from ...config import to_dict
from ...data.datasets import INFO_FILE, open_dataset
from ...data.floors import data_images, write_images
from ...data.sources import default_dataset
from ...data.split import split_dataset
from ...io.distributed import init_world
from ...io.files import finite_or_none, read_json, write_json
from ...metrics.evaluate import folder_reference
from ...training.checkpoint import list_snapshots, newest_state
from ...training.config import TrainConfig, load_train_config
from ...training.export import cascade_from_snapshots
from ...training.loop import Trainer
from ...version import __version__
from .config import StudyConfig, load_study
from .evaluation import Evaluator, SharedSets
from .floors import study_floors
from .plan import Plan, Stage1Cost, TrainedRun, build_plan, measured_flops, variant_config
from .report import summarize, write_report
from .runs import StudyLog, first_stage, lock, stage_nfe, timed, write_seed_samples


def stage1_seconds(record: dict) -> float:
    """Stage 1's training wall-clock from its record: the run trained here, or a given cascade's
    training record (device-hours, its guide's added)."""
    if "trained" in record:
        return float(record["trained"]["wall_seconds"])
    training = record.get("training") or {}
    hours = (training.get("device_hours") or 0.0) + ((training.get("guide") or {}).get(
        "device_hours") or 0.0)
    return 3600.0 * hours


class Study:
    """One study: its config, output folder, plan and runs (docs/study.md)."""

    def __init__(self, config_path: str | Path, out: str | Path, *, only: list[str] | None = None,
                 seeds: list[int] | None = None, progress: bool = True, train_only: bool = False,
                 stage1: bool = True, overrides: Sequence[str] = ()) -> None:
        self.config, self.base = load_study(config_path, overrides)
        self.overrides = list(overrides)
        self.config_path = Path(config_path)
        self.out = Path(out)
        self.progress = progress
        c: StudyConfig = self.config
        known = [v.name for v in c.variants]
        for name in only or []:
            if name not in known:
                raise ValueError(f"--variants {name}: not in {config_path} (known: "
                                 f"{', '.join(known)})")
        self.only = only
        have = {seed for v in c.variants if not only or v.name in only for seed in v.seeds}
        for seed in seeds or []:
            if seed not in have:
                raise ValueError(f"--seeds {seed}: no selected variant has that training seed "
                                 f"(they have {', '.join(map(str, sorted(have)))})")
        self.seeds = seeds
        self.train_only = train_only
        self.use_stage1 = stage1
        self.log = StudyLog()
        # Every config file is read once, here, and must parse before anything is written.
        self.configs = {(v.name, seed): variant_config(v, seed, self.base)
                        for v in c.variants if not v.of for seed in v.seeds}
        self._given_stage1: RelayCascade | None = None
        self._s1: TrainConfig | None = None
        if c.stage1.cascade:
            self._given_stage1 = first_stage(c.stage1.cascade)
        elif not c.stage1.config:
            raise ValueError(f"{self.config_path}: stage1.config is empty; name a training config")
        else:
            self._s1 = load_train_config(self._path(c.stage1.config), c.stage1.set)

    # -- configs and the plan ------------------------------------------------------------
    def _path(self, name: str) -> Path:
        p = Path(name)
        return p if p.is_absolute() else self.base / p

    def _stage1_resolution(self) -> int:
        if self._given_stage1 is not None:
            return self._given_stage1.resolutions[0]
        return self._stage1_config().stage.resolution

    def _stage1_config(self) -> TrainConfig:
        """The stage-1 training config (on its data once the data is split)."""
        cfg = self._s1
        if hasattr(self, "data_root"):
            root = self.data_root if self.config.stage1.data == "all" else self.train_root
            cfg = replace(cfg, data=replace(cfg.data, path=str(root / str(cfg.stage.resolution))))
        return cfg

    def _stage1_cost(self, num_classes: int) -> Stage1Cost:
        """Stage 1's training FLOPs (guide included) and NFE: planned from its config, or from a
        given cascade's training record."""
        given = self._given_stage1
        if given is None:
            cfg = self._stage1_config()
            fpi = measured_flops(cfg, num_classes)
            images = cfg.total_steps * cfg.batch
            return Stage1Cost(float(images * fpi), stage_nfe(cfg.stage),
                              {"source": "planned from its config", "images": images,
                               "flops_per_image": fpi, "guide": None})
        record = (given.training or [None])[0]
        if not record or not record.get("flops_per_image"):
            raise ValueError(f"stage1.cascade {self.config.stage1.cascade!r}: its first stage has "
                             "no training record with its FLOPs; the study charges every variant "
                             "its stage 1, so give a cascade that records them")
        guide = record.get("guide") or {}
        flops = (record["images_seen"] * record["flops_per_image"]
                 + guide.get("images_seen", 0) * guide.get("flops_per_image", 0))
        return Stage1Cost(float(flops), stage_nfe(given.configs[0]),
                          {"source": self.config.stage1.cascade, **record})

    def _plan(self) -> Plan:
        classes = open_dataset(self.data_root, resolution=self.resolution).num_classes
        if self._given_stage1 is not None:
            s1 = self._given_stage1.configs[0]
            cond = s1.label_dim > 0
        else:
            cfg = self._stage1_config()
            s1, cond = cfg.stage, cfg.cond
        return build_plan(self.config, self.configs, self._stage1_cost(classes), classes, s1, cond)

    def _chosen(self, name: str, seed: int) -> bool:
        return (not self.only or name in self.only) and (not self.seeds or seed in self.seeds)

    # -- phases --------------------------------------------------------------------------
    def run(self) -> Path:
        self.world = init_world()
        self.log(f"study {self.config_path} → {self.out}")
        self._data()
        self.plan = self._plan()
        runs = [r for r in self.plan.runs
                if any(self._chosen(e.variant, r.seed) for e in self.plan.evaluations
                       if e.run is r)]
        for r in runs if self.train_only else []:  # the higher stages need no stage 1 to train
            self._train_run(r)
        if self.train_only:
            return self.out / "runs"
        if self.use_stage1:
            self._stage1()
        self._shared_eval()
        for r in runs:
            self._train_run(r)
        for ev in self.plan.evaluations:
            if self._chosen(ev.variant, ev.run.seed):
                self.evaluator.run(ev)
        return self.aggregate()

    def write_plan(self) -> Path:
        """``OUT/plan.json``: every run with its budget points (images, FLOPs, totals), every
        evaluation and stage 1's cost, without training or evaluating anything."""
        self.world = init_world()
        self._data()
        self.plan = self._plan()
        record = {
            "study_config": to_dict(self.config), "overrides": self.overrides,
            "stage1_cost": to_dict(self.plan.stage1),
            "runs": [{"run": r.folder, "kind": r.config.stage.kind, "batch": r.config.batch,
                      "flops_per_image": r.flops_per_image,
                      "points": [to_dict(p) for p in r.points]} for r in self.plan.runs],
            "evaluations": [{"row": e.folder, "of": e.run.folder, "control": e.control,
                             "sample": list(e.sample), "guide": e.guide}
                            for e in self.plan.evaluations],
            "total_training_images": sum(r.points[-1].images for r in self.plan.runs),
        }
        path = self.out / "plan.json"
        if self.world.is_main:
            write_json(finite_or_none(record), path)
        self.log(f"wrote {path}: {len(self.plan.runs)} runs, {len(self.plan.evaluations)} "
                 f"evaluations, {record['total_training_images']:,} training images")
        return path

    def _data(self) -> None:
        d = self.config.data
        if d.path:
            root = Path(d.path)
            if not (root / INFO_FILE).is_file():
                raise ValueError(f"data.path {root}: not a built data set; make one with "
                                 "`relaydiff data build SRC --out DIR --resolution R --also r`")
        else:
            root = default_dataset((64, 16))
        info = read_json(root / INFO_FILE)
        need = {self._stage1_resolution()}
        for v in self.config.variants:
            if not v.of:
                st = self.configs[v.name, v.seeds[0]].stage
                need |= {st.resolution, st.input_resolution}
        missing = sorted(need - {int(r) for r in info["resolutions"]})
        if missing:
            raise ValueError(f"data.path {root}: built at {info['resolutions']} px, the study needs "
                             f"{sorted(need)}; rebuild with `relaydiff data build … --also "
                             f"{','.join(map(str, missing))}`")
        if not 1 <= d.heldout <= info["count"] - 2:
            raise ValueError(f"data.heldout {d.heldout}: the data set has {info['count']} images; "
                             f"hold out between 1 and {info['count'] - 2}")
        self.data_root = root
        self.train_root, self.heldout_root = split_dataset(root, self.out / "data", d.heldout,
                                                           d.split_seed)
        self.resolution = max(need)
        self.log(f"data {root}: {info['count'] - d.heldout} training, {d.heldout} held-out images")

    def _train(self, cfg: TrainConfig, run_dir: Path) -> dict:
        """Train (or continue) one run until ``total_images``; returns its cost."""
        state = newest_state(run_dir)
        if state is not None and state["step"] >= cfg.total_steps:
            return state["cost"]
        trainer = Trainer(cfg, run_dir, world=self.world,
                          resume="auto" if list_snapshots(run_dir / "checkpoints") else None)
        result = trainer.run(progress=self.progress)
        if result.stopped_by is not None:
            raise KeyboardInterrupt
        return result.cost.to_dict()

    def run_config(self, run: TrainedRun, images: int | None = None) -> TrainConfig:
        """``run``'s training config on the study's training split, to ``images`` (default: its
        last point's)."""
        data = replace(run.config.data, path=str(self.train_root / str(run.config.stage.resolution)))
        return replace(run.config, data=data, total_images=images or run.config.total_images)

    def _train_run(self, run: TrainedRun) -> None:
        """Train ``run`` point by point: to each budget point's images, a snapshot, then on (the
        same states as one straight run: resuming is bitwise, docs/train.md)."""
        run_dir = self.out / "runs" / run.folder
        with lock(run_dir / "checkpoints") as got:
            if not got:
                self.log(f"{run.folder}: another process trains it; skipping")
                return
            for p in run.points:
                state = newest_state(run_dir)
                if state is not None and state["step"] * run.config.batch >= p.images:
                    continue
                self.log(f"{run.folder}: training {run.config.stage.kind} "
                         f"{run.config.stage.resolution}px to {p.images:,} images (point ×{p.multiple:g})")
                self._train(self.run_config(run, p.images), run_dir)

    def _stage1(self) -> None:
        if self._given_stage1 is not None:
            self.log(f"stage 1: the first stage of {self.config.stage1.cascade} (not trained here)")
            return
        cfg = self._stage1_config()
        self.log(f"stage 1: {cfg.stage.kind} {cfg.stage.resolution}px, {cfg.total_images:,} images")
        with lock(self.out / "stage1") as got:
            if not got:
                raise ValueError(f"{self.out / 'stage1'}: another process trains stage 1; wait "
                                 "for it, or run this study with --train-only")
            self._train(cfg, self.out / "stage1")

    def _shared_eval(self) -> SharedSets:
        """Stage-1 samples, the reference image folders and the floors, made once for every
        evaluation; the seconds each part took the first time it ran go to ``eval/timing.json``
        (the study's own cost, not a variant's)."""
        e, ev = self.config.eval, self.out / "eval"
        timing_file = ev / "timing.json"
        timing = read_json(timing_file) if timing_file.is_file() else {}
        part = functools.partial(timed, timing, keep_first=True)
        res = self.resolution
        heldout = len(open_dataset(self.heldout_root, resolution=res))
        n_sr = min(e.samples, heldout)
        refs = {"all": ev / f"ref_all_{res}", "heldout": ev / f"ref_heldout_{res}",
                "train": ev / f"ref_train_{res}"}
        n_all = len(open_dataset(self.data_root, resolution=res))
        write_images(data_images(self.data_root, range(n_all), res), refs["all"])
        write_images(data_images(self.heldout_root, range(n_sr), res), refs["heldout"])
        train_n = len(open_dataset(self.train_root, resolution=res))
        pick = np.random.default_rng(self.config.data.split_seed + 1).permutation(
            train_n)[:n_sr].tolist()
        write_images(data_images(self.train_root, pick, res), refs["train"])
        shared = SharedSets(n=e.samples, n_sr=n_sr, refs=refs, train_pick=pick,
                            stage1_samples=ev / "stage1_samples", stage1=self.plan.stage1)
        self.evaluator = Evaluator(self, shared)
        if self.use_stage1 and not (ev / "stage1.json").is_file():  # written when all are done
            with part("stage1_samples"):
                self._stage1_samples(ev, shared)
        with part("references"):  # cached by content: later evaluations and reruns only read them
            self.log("references: Inception statistics of the data sets (cached)")
            for folder in refs.values():
                folder_reference(folder, self.evaluator.inception(), progress=False)
        floors_file = ev / "floors.json"
        if not floors_file.is_file():
            self.log("floors: data against data at each metric's protocol, and up(down(x))")
            with part("floors"):
                floors = study_floors(self, self.evaluator)
                if self.world.is_main:
                    write_json(finite_or_none(floors), floors_file)
        if self.world.is_main:
            write_json(timing, timing_file)
        self.world.barrier()
        return shared

    def _stage1_samples(self, ev: Path, shared: SharedSets) -> None:
        """Seeds ``0..n-1`` of stage 1 with the study's sampler settings, and its record."""
        given = self._given_stage1
        if given is not None:
            stage1 = given
        else:
            stage1 = cascade_from_snapshots([self.out / "stage1"])
            wanted = self._stage1_config().stage  # the study's sampler settings, not the snapshot's
            stage1.configs[0].edm_sampler = wanted.edm_sampler
            stage1.configs[0].guidance = wanted.guidance
        self.log(f"stage 1 samples: {shared.n} seeds")
        write_seed_samples(self.world, stage1, shared.n, shared.stage1_samples, self.progress)
        if not self.world.is_main:
            return
        record = {"samples": shared.n, "cost": to_dict(self.plan.stage1),
                  "config": stage1.configs[0].to_dict()}
        if given is not None:
            record |= {"cascade": self.config.stage1.cascade,
                       "training": (given.training or [None])[0],
                       "guide": 0 in given.guide_configs}
        else:
            record |= {"run": str(self.out / "stage1"),
                       "trained": newest_state(self.out / "stage1")["cost"]}
        write_json(finite_or_none(record), ev / "stage1.json")

    # -- the aggregate -------------------------------------------------------------------
    def aggregate(self) -> Path:
        """``results.json``, ``table.md`` and the figures from every finished evaluation."""
        results = []
        for ev in self.plan.evaluations:
            f = self.out / "runs" / ev.folder / "result.json"
            if f.is_file():
                results.append(read_json(f))
        floors = read_json(self.out / "eval" / "floors.json")
        s1_file = self.out / "eval" / "stage1.json"
        timing_file = self.out / "eval" / "timing.json"
        out_s1 = read_json(s1_file) if s1_file.is_file() else None
        out = {
            "relaydiff_version": __version__,
            "study_config": to_dict(self.config),
            "config_file": str(self.config_path),
            "overrides": self.overrides,
            "threads": torch.get_num_threads(),
            "data": {"root": str(self.data_root), "train": str(self.train_root),
                     "heldout": str(self.heldout_root), "split_seed": self.config.data.split_seed},
            "stage1": out_s1,
            "stage1_cost": to_dict(self.plan.stage1),
            "floors": floors,
            "shared_eval_seconds_by_part": read_json(timing_file) if timing_file.is_file() else {},
            "variants": results,
            "summary": summarize(results, floors, stage1_seconds(out_s1) if out_s1 else 0.0),
        }
        path = write_report(out, self.out)
        self.log(f"wrote {path} ({len(results)} evaluations)")
        return path
