"""The study's runner: trains and evaluates every variant of a study config, resumably."""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ...cascade import RelayCascade
from ...config import to_dict
from ...data.datasets import INFO_FILE, open_dataset
from ...data.floors import data_images, write_images, write_round_trip
from ...data.sources import default_dataset
from ...data.split import split_dataset
from ...io.distributed import World, init_world
from ...io.files import finite_or_none, read_json, write_json
from ...metrics.evaluate import evaluate, folder_reference
from ...metrics.weights import load_inception
from ...sample_writer import write_samples, write_summary, write_upscaled
from ...stage import StageConfig, build_denoiser
from ...training.checkpoint import list_snapshots, newest_state
from ...training.config import TrainConfig, apply_overrides, load_train_config
from ...training.cost import flops_per_image
from ...training.export import cascade_from_snapshots, load_stage_source
from ...training.loop import Trainer, make_loss
from ...version import __version__
from .config import HELDOUT_SEED0, METRICS, TRAIN_SEED0, StudyVariant, load_study
from .report import summarize, write_report
from .runs import (
    StudyLog,
    artifact_rows,
    first_stage,
    link_samples,
    lock,
    metrics_row,
    set_steps,
    stage_nfe,
    timed,
)


class Study:
    """One study: its config, output folder and runs (docs/study.md)."""

    def __init__(self, config_path: str | Path, out: str | Path, *, only: list[str] | None = None,
                 seeds: list[int] | None = None, progress: bool = True, train_only: bool = False,
                 stage1: bool = True, overrides: Sequence[str] = ()) -> None:
        self.config, self.base = load_study(config_path, overrides)
        self.overrides = list(overrides)
        self.config_path = Path(config_path)
        self.out = Path(out)
        self.progress = progress
        known = [v.name for v in self.config.variants]
        for name in only or []:
            if name not in known:
                raise ValueError(f"--variants {name}: not in {config_path} (known: "
                                 f"{', '.join(known)})")
        self.only = only
        have = {seed for v in self.config.variants if not only or v.name in only for seed in v.seeds}
        for seed in seeds or []:
            if seed not in have:
                raise ValueError(f"--seeds {seed}: no selected variant has that training seed "
                                 f"(they have {', '.join(map(str, sorted(have)))})")
        self.seeds = seeds
        self.train_only = train_only
        self.use_stage1 = stage1
        self.log = StudyLog()
        self._inception = None
        self.world: World | None = None
        for v in self.config.variants:  # every config must parse before anything is written
            for seed in v.seeds:
                self._variant_config(v, seed, 1)
        self._given_stage1: RelayCascade | None = None
        if self.config.stage1.cascade:
            self._given_stage1 = first_stage(self.config.stage1.cascade)
        else:
            self._stage1_config()

    # -- configs -------------------------------------------------------------------------
    def _path(self, name: str) -> Path:
        p = Path(name)
        return p if p.is_absolute() else self.base / p

    def _stage1_resolution(self) -> int:
        if self._given_stage1 is not None:
            return self._given_stage1.resolutions[0]
        return self._stage1_config().stage.resolution

    def _stage1_config(self) -> TrainConfig:
        s1 = self.config.stage1
        if not s1.config:
            raise ValueError(f"{self.config_path}: stage1.config is empty; name a training config")
        cfg = load_train_config(self._path(s1.config), s1.set)
        if hasattr(self, "data_root"):
            root = self.data_root if s1.data == "all" else self.train_root
            cfg = load_train_config(self._path(s1.config), [
                *s1.set, f"data.path={root / str(cfg.stage.resolution)}"])
        return cfg

    def _variant_config(self, v: StudyVariant, seed: int, total_images: int) -> TrainConfig:
        over = [*v.set, f"seed={seed}", f"total_images={total_images}"]
        cfg = load_train_config(self._path(v.config), over)
        if hasattr(self, "train_root"):
            cfg = load_train_config(self._path(v.config), [
                *over, f"data.path={self.train_root / str(cfg.stage.resolution)}"])
        if cfg.stage.kind != "edm" and cfg.stage.scale is None:
            raise ValueError(f"variant {v.name!r}: stage has no scale")
        if v.sample_levels and cfg.stage.kind != "sr":
            raise ValueError(f"variant {v.name!r}: sample_levels apply to sr stages only")
        return cfg

    def _budget_images(self, v: StudyVariant, seed: int) -> tuple[TrainConfig, dict]:
        """The variant's training config with ``total_images`` from the budget."""
        cfg = self._variant_config(v, seed, 1)
        stage = cfg.stage
        fpi = flops_per_image(build_denoiser(stage, initialize=False), make_loss(cfg),
                              (stage.channels, stage.resolution, stage.resolution), stage.label_dim)
        b = self.config.budget
        if b.kind == "flops":
            steps = max(1, int(b.value // (fpi * cfg.batch)))
            images = steps * cfg.batch
        else:
            images = 10**12  # the clock decides
        cfg = self._variant_config(v, seed, images)
        return cfg, {"kind": b.kind, "value": b.value, "flops_per_image": fpi,
                     "images": images if b.kind == "flops" else None}

    # -- phases --------------------------------------------------------------------------
    def run(self) -> Path:
        self.world = init_world()
        self.log(f"study {self.config_path} → {self.out}")
        self._data()
        chosen = [(v, seed) for v in self.config.variants if not self.only or v.name in self.only
                  for seed in v.seeds if not self.seeds or seed in self.seeds]
        if self.train_only:  # the higher stages need no stage 1 to train
            for v, seed in chosen:
                self._variant(v, seed, evaluate=False)
            return self.out / "runs"
        if self.use_stage1:
            self._stage1()
        self._shared_eval()
        for v, seed in chosen:
            self._variant(v, seed)
        return self.aggregate()

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
            st = self._variant_config(v, v.seeds[0], 1).stage
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

    def _train(self, cfg: TrainConfig, run_dir: Path, cap_minutes: float | None) -> dict:
        """Train (or continue) one run until ``total_images`` or, with ``cap_minutes``, until its
        accumulated wall-clock training time reaches the cap; returns its cost."""
        state = newest_state(run_dir)
        used = 0.0 if state is None else state["cost"]["wall_seconds"] / 60
        if state is not None and (state["step"] >= cfg.total_steps or
                                  (cap_minutes is not None and used >= cap_minutes)):
            return state["cost"]
        trainer = Trainer(cfg, run_dir, world=self.world,
                          resume="auto" if list_snapshots(run_dir / "checkpoints") else None)
        left = None if cap_minutes is None else cap_minutes - used
        result = trainer.run(max_minutes=left, progress=self.progress)
        if result.stopped_by not in (None, "time"):
            raise KeyboardInterrupt
        return result.cost.to_dict()

    def _stage1(self) -> None:
        if self._given_stage1 is not None:
            self.log(f"stage 1: the first stage of {self.config.stage1.cascade} (not trained here)")
            return
        cfg = self._stage1_config()
        cap = self.config.stage1.max_minutes
        limit = f", at most {cap:g} min" if cap is not None else ""
        self.log(f"stage 1: {cfg.stage.kind} {cfg.stage.resolution}px, {cfg.total_images:,} "
                 f"images{limit}")
        with lock(self.out / "stage1") as got:
            if not got:
                raise ValueError(f"{self.out / 'stage1'}: another process trains stage 1; wait "
                                 "for it, or run this study with --train-only")
            self._train(cfg, self.out / "stage1", cap)

    def _inception_model(self):
        if self._inception is None:
            self._inception = load_inception()
        return self._inception

    def _eval(self, samples: Path, ref: Path, metrics=METRICS) -> dict:
        return metrics_row(evaluate(samples, ref, metrics, progress=False,
                                     inception=self._inception_model()))

    def _shared_eval(self) -> None:
        """Stage-1 samples, the references (image folders and their Inception statistics) and
        the floors, computed once for every variant; the seconds each part took the first time
        it ran go to ``eval/timing.json`` (the study's own cost, not a variant's)."""
        e, ev = self.config.eval, self.out / "eval"
        timing_file = ev / "timing.json"
        timing = read_json(timing_file) if timing_file.is_file() else {}
        part = functools.partial(timed, timing, keep_first=True)
        self.n = e.samples
        res = self.resolution
        heldout = len(open_dataset(self.heldout_root, resolution=res))
        self.n_sr = min(e.samples, heldout)
        self.refs = {"all": ev / f"ref_all_{res}", "heldout": ev / f"ref_heldout_{res}",
                     "train": ev / f"ref_train_{res}"}
        n_all = len(open_dataset(self.data_root, resolution=res))
        write_images(data_images(self.data_root, range(n_all), res), self.refs["all"])
        write_images(data_images(self.heldout_root, range(self.n_sr), res), self.refs["heldout"])
        train_n = len(open_dataset(self.train_root, resolution=res))
        self.train_pick = np.random.default_rng(self.config.data.split_seed + 1).permutation(
            train_n)[:self.n_sr].tolist()
        write_images(data_images(self.train_root, self.train_pick, res), self.refs["train"])
        self.stage1_samples = ev / "stage1_samples"
        if self.use_stage1 and not (ev / "stage1.json").is_file():  # written when all are done
            with part("stage1_samples"):
                self._stage1_samples(ev)
        with part("references"):  # cached by content: later variants and reruns only read them
            self.log("references: Inception statistics of the data sets (cached)")
            for folder in self.refs.values():
                folder_reference(folder, self._inception_model(), progress=False)
        floors_file = ev / "floors.json"
        if not floors_file.is_file():
            self.log("floors: split-half FID and up(down(x)) of the held-out images")
            with part("floors"):
                scale = res // self._stage1_resolution()
                write_round_trip(self.heldout_root, ev / "floor_up_down", self.n_sr, scale)
                floors = {"n": self.n_sr,
                          "split_half": self._eval(self.refs["train"], self.refs["heldout"]),
                          "up_down_heldout": self._eval(ev / "floor_up_down",
                                                        self.refs["heldout"])}
                write_json(finite_or_none(floors), floors_file)
        if self.world.is_main:
            write_json(timing, timing_file)

    def _stage1_samples(self, ev: Path) -> None:
        """Seeds ``0..n-1`` of stage 1 with the study's sampler settings, and its record."""
        given = self._given_stage1
        if given is not None:
            stage1 = given
        else:
            stage1 = cascade_from_snapshots([self.out / "stage1"])
            wanted = self._stage1_config().stage  # the study's sampler settings, not the snapshot's
            stage1.configs[0].edm_sampler = wanted.edm_sampler
            stage1.configs[0].guidance = wanted.guidance
        self.log(f"stage 1 samples: {self.n} seeds")
        self._write_samples(stage1, self.n, self.stage1_samples)
        if not self.world.is_main:
            return
        if given is not None:
            record = {"cascade": self.config.stage1.cascade,
                      "training": (given.training or [None])[0],
                      "config": given.configs[0].to_dict(),
                      "guide": 0 in given.guide_configs, "samples": self.n}
        else:
            s1 = newest_state(self.out / "stage1")
            record = {"run": str(self.out / "stage1"), "cost": s1["cost"], "config": s1["config"],
                      "samples": self.n}
        write_json(finite_or_none(record), ev / "stage1.json")

    def _write_samples(self, cascade: RelayCascade, n: int, folder: Path) -> None:
        """Seeds ``0..n-1`` of ``cascade`` into a sample folder, shared out over torchrun ranks."""
        w = self.world
        write_samples(cascade, list(range(n)), folder, rank=w.rank, world=w.size,
                      progress=self.progress)
        w.barrier()
        if w.is_main:
            write_summary(cascade, list(range(n)), folder)
        w.barrier()

    def _low(self, part: str) -> torch.Tensor:
        """The low-resolution inputs of the SR sets (``heldout``: the first images; ``train``:
        the study's seeded pick), at the stage-1 resolution."""
        r1 = self._stage1_resolution()
        root, idx = ((self.heldout_root, range(self.n_sr)) if part == "heldout"
                     else (self.train_root, self.train_pick))
        return data_images(root, idx, r1).float()

    def _stage1_low(self) -> torch.Tensor:
        from ...io.images import from_uint8, load_image
        from ...io.sample_folder import seed_path

        return from_uint8(np.stack([load_image(seed_path(self.stage1_samples, s))
                                    for s in range(self.n)]))

    def _upscale(self, cascade: RelayCascade, low: torch.Tensor, seed0: int, out: Path) -> None:
        """Relay/upscale ``low`` with seeds ``seed0 + k`` into the sample folder ``out``, shared
        out over torchrun ranks."""
        from ...io.sample_folder import seed_path

        seeds = [seed0 + k for k in range(low.shape[0])]
        w = self.world
        write_upscaled(cascade, low, seeds, [seed_path(out, s) for s in seeds], rank=w.rank,
                       world=w.size, progress=self.progress)
        w.barrier()

    def _variant(self, v: StudyVariant, seed: int, evaluate: bool = True) -> None:
        run_dir = self.out / "runs" / f"{v.name}-s{seed}"
        if (run_dir / "result.json").is_file():
            self.log(f"{v.name} seed {seed}: done earlier")
            return
        with lock(run_dir) as got:
            if not got:
                self.log(f"{v.name} seed {seed}: another process works on it; skipping")
                return
            cfg, budget = self._budget_images(v, seed)
            minutes = self.config.budget.value if self.config.budget.kind == "minutes" else None
            every = max(cfg.batch, (cfg.total_images // self.config.eval.curve_points)
                        // cfg.batch * cfg.batch)
            over = [f"checkpoint.every_images={every}",
                    f"checkpoint.keep={self.config.eval.curve_points + 1}"]
            cfg = TrainConfig.from_dict(apply_overrides(cfg.to_dict(), over))
            amount = f"{cfg.total_images:,} images" if minutes is None else f"{minutes:g} min"
            self.log(f"{v.name} seed {seed}: training {cfg.stage.kind} {cfg.stage.resolution}px, "
                     f"{amount}")
            t0 = time.perf_counter()
            cost = self._train(cfg, run_dir, minutes)
            t_train = cost["wall_seconds"]
            if not evaluate:
                return
            t1 = time.perf_counter()
            result, parts = self._evaluate_variant(v, seed, cfg, run_dir)
            t_eval = time.perf_counter() - t1
            result.update({
                "name": v.name, "seed": seed, "main": v.main, "kind": cfg.stage.kind,
                "config": cfg.to_dict(), "budget": {**budget, "images": cost["images_seen"],
                                                    "flops": cost["images_seen"] * budget[
                                                        "flops_per_image"]},
                "cost": cost, "timing": {"train_seconds": t_train, "eval_seconds": t_eval,
                                         "eval_seconds_by_part": parts,
                                         "this_session_train_seconds": t1 - t0},
                "relaydiff_version": __version__,
            })
            write_json(finite_or_none(result), run_dir / "result.json")
            self.log(f"{v.name} seed {seed}: done (eval {t_eval / 60:.1f} min, "
                     f"training {t_train / 60:.1f} min)")

    def _evaluate_variant(self, v: StudyVariant, seed: int, cfg: TrainConfig,
                          run_dir: Path) -> tuple[dict, dict[str, float]]:
        """The variant's metrics, and the seconds each part of the evaluation took."""
        ev = run_dir / "eval"
        stage_cfg, den, source = load_stage_source(run_dir)
        e = self.config.eval
        result: dict = {"nfe": stage_nfe(stage_cfg)}
        parts: dict[str, float] = {}  # seconds per part of the evaluation
        part = functools.partial(timed, parts)

        cascade = RelayCascade([stage_cfg], [den])
        if stage_cfg.kind == "edm":  # end to end at the target resolution
            with part("cascade"):
                self._write_samples(cascade, self.n, ev / "cascade")
                result["cascade"] = self._eval(ev / "cascade", self.refs["all"])
            final = ev / "cascade"  # seeds 0…: the first curve_samples are the curves' sets
        else:
            sets = "SR held-out and training" + (", cascade" if self.use_stage1 else "")
            self.log(f"  {v.name}: {sets} ({self.n_sr} each)")
            if self.use_stage1:
                with part("cascade"):
                    self._upscale(cascade, self._stage1_low(), 0, ev / "cascade")
                    result["cascade"] = self._eval(ev / "cascade", self.refs["all"])
            with part("sr_heldout"):
                self._upscale(cascade, self._low("heldout"), HELDOUT_SEED0, ev / "sr_heldout")
                result["sr_heldout"] = self._eval(ev / "sr_heldout", self.refs["heldout"])
            with part("sr_train"):
                self._upscale(cascade, self._low("train"), TRAIN_SEED0, ev / "sr_train")
                result["sr_train"] = self._eval(ev / "sr_train", self.refs["train"])
            final = ev / "sr_heldout"
            if v.sample_levels:
                result["sample_levels"] = []
                own = cfg.stage.sr.sample_level
                with part("sample_levels"):
                    for level in v.sample_levels:
                        stage_cfg.sr.sample_level = level
                        folder = ev / f"level_{level:g}"
                        if level == own:  # the held-out set's first images
                            self._reuse(ev / "sr_heldout", folder,
                                        range(HELDOUT_SEED0, HELDOUT_SEED0 + e.curve_samples))
                        self._upscale(cascade, self._low("heldout")[:e.curve_samples],
                                      HELDOUT_SEED0, folder)
                        result["sample_levels"].append({"level": level, **self._eval(
                            folder, self.refs["heldout"], ["fid", "kid"])})
                stage_cfg.sr.sample_level = cfg.stage.sr.sample_level
            with part("artifacts"):
                result["artifact_correction"] = artifact_rows(v.name, stage_cfg, cascade,
                                                              self._low("heldout"), ev)
        with part("nfe_curve"):
            result["nfe_curve"] = self._nfe_curve(stage_cfg, den, ev, final)
        with part("compute_curve"):
            result["compute_curve"] = self._compute_curve(run_dir, ev, final, source["source"])
        return result, parts

    def _reuse(self, src: Path, dst: Path, seeds: range) -> None:
        """Samples of ``seeds`` already in ``src`` become ``dst``'s (linked once, on rank 0)."""
        if self.world.is_main:
            link_samples(src, dst, seeds)
        self.world.barrier()

    def _quick_fid(self, stage_cfg: StageConfig, den, folder: Path, same_as: Path | None) -> dict:
        """FID and KID of ``curve_samples`` images: held-out SR for higher stages, samples
        against all data for an end-to-end stage. ``same_as``: a sample folder this setting
        already filled with the same seeds, whose first images are used instead of sampling."""
        n = self.config.eval.curve_samples
        edm = stage_cfg.kind == "edm"
        seeds = range(n) if edm else range(HELDOUT_SEED0, HELDOUT_SEED0 + n)
        if same_as is not None:
            self._reuse(same_as, folder, seeds)
        cascade = RelayCascade([stage_cfg], [den])
        if edm:
            self._write_samples(cascade, n, folder)
            return self._eval(folder, self.refs["all"], ["fid", "kid"])
        self._upscale(cascade, self._low("heldout")[:n], HELDOUT_SEED0, folder)
        return self._eval(folder, self.refs["heldout"], ["fid", "kid"])

    def _nfe_curve(self, stage_cfg: StageConfig, den, ev: Path, final: Path) -> list[dict]:
        e = self.config.eval
        steps_list = e.relay_steps if stage_cfg.kind == "relay" else e.edm_steps
        own = (stage_cfg.relay_sampler if stage_cfg.kind == "relay" else stage_cfg.edm_sampler).steps
        rows = []
        for steps in steps_list:
            cfg = StageConfig.from_dict(stage_cfg.to_dict())
            set_steps(cfg, steps)
            rows.append({"steps": steps, "nfe": stage_nfe(cfg),
                         **self._quick_fid(cfg, den, ev / f"steps_{steps}",
                                           final if steps == own else None)})
        return rows

    def _compute_curve(self, run_dir: Path, ev: Path, final: Path, evaluated: str) -> list[dict]:
        """FID at each kept snapshot; the ``evaluated`` one reuses the first samples of ``final``."""
        rows = []
        for snap in list_snapshots(run_dir / "checkpoints"):
            cfg, den, record = load_stage_source(snap)
            images = record["images_seen"]
            rows.append({"images": images, "flops": images * record["flops_per_image"],
                         **self._quick_fid(cfg, den, ev / f"at_{images}",
                                           final if str(snap) == evaluated else None)})
        return rows

    # -- the aggregate -------------------------------------------------------------------
    def aggregate(self) -> Path:
        """``results.json``, ``table.md`` and the figures from every finished run's result."""
        results = []
        for v in self.config.variants:
            for seed in v.seeds:
                f = self.out / "runs" / f"{v.name}-s{seed}" / "result.json"
                if f.is_file():
                    results.append(read_json(f))
        floors = read_json(self.out / "eval" / "floors.json")
        s1_file = self.out / "eval" / "stage1.json"
        timing_file = self.out / "eval" / "timing.json"
        shared = read_json(timing_file) if timing_file.is_file() else {}
        summary = summarize(results, floors)
        out = {
            "relaydiff_version": __version__,
            "study_config": to_dict(self.config),
            "config_file": str(self.config_path),
            "overrides": self.overrides,
            "data": {"root": str(self.data_root), "train": str(self.train_root),
                     "heldout": str(self.heldout_root), "heldout_images": self.n_sr,
                     "split_seed": self.config.data.split_seed},
            "stage1": read_json(s1_file) if s1_file.is_file() else None,
            "metric_references": {k: str(p) for k, p in self.refs.items()},
            "floors": floors,
            "shared_eval_seconds_by_part": shared,
            "variants": results,
            "summary": summary,
        }
        path = write_report(out, self.out)
        self.log(f"wrote {path} ({len(results)} runs)")
        return path


