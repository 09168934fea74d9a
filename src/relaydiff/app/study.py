"""``relaydiff study CONFIG``: relay diffusion against its alternatives at equal training compute.

A study trains one stage-1 model, then every variant of the higher stage (relay ablations, the
conditional super-resolution baseline, an end-to-end EDM model at the target resolution) under
the **same budget** (training FLOPs measured by the cost accounting, or wall-clock minutes),
evaluates each the same way and writes ``results.json`` and figures (docs/study.md).

Layout of ``OUT``::

    OUT/data/{train,heldout}/        the held-out split of the data set (relaydiff.data.split)
    OUT/stage1/                      the shared stage-1 training run (none with stage1.cascade)
    OUT/eval/stage1_samples/         its samples, relayed by every variant (cascade FID)
    OUT/eval/stage1.json             its record in results.json (run, cost, config, samples)
    OUT/eval/floors.json             split-half FID and the up(down(x)) floor
    OUT/runs/<variant>-s<seed>/      one training run per variant and seed
    OUT/runs/<variant>-s<seed>/result.json   its evaluation (written last: the variant is done)
    OUT/results.json, OUT/table.md, OUT/figures/   the aggregate (table.md: its summary as Markdown)

Every step is resumable: a killed study continues where it stopped, a finished variant (its
``result.json``) is never trained or evaluated again. ``--variants`` runs a subset, so that
several processes can share one study; a lock file keeps two from training the same run.
``stage1=False`` (``--no-stage1``) evaluates the higher stages without a stage 1: SR-FID, the
curves and artifact correction, no cascade FID (an end-to-end variant samples on its own).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..analysis.artifacts import artifact_correction
from ..cascade import RelayCascade
from ..config import from_dict, to_dict
from ..data.datasets import INFO_FILE, open_dataset
from ..data.floors import data_images, write_images, write_round_trip
from ..data.sources import default_dataset
from ..data.split import split_dataset
from ..io.distributed import World, init_world
from ..io.files import atomic_writer, finite_or_none, read_json, write_json
from ..io.images import image_grid, save_png, to_uint8
from ..metrics.evaluate import evaluate, folder_reference
from ..metrics.weights import load_inception
from ..schedules import karras_sigmas
from ..stage import StageConfig, build_denoiser
from ..training.checkpoint import list_snapshots, newest_state
from ..training.config import TrainConfig, apply_overrides, load_train_config
from ..training.cost import flops_per_image
from ..training.export import cascade_from_snapshots, load_stage_source
from ..training.loop import Trainer, make_loss
from ..version import __version__
from .generate import write_samples, write_summary

METRICS = ["fid", "sfid", "pr", "kid", "swd", "spectrum"]
HELDOUT_SEED0 = 1 << 20  # sampler seeds of the held-out upscaling (image k: HELDOUT_SEED0 + k)
TRAIN_SEED0 = 1 << 21  # … of the training-image upscaling
ARTIFACT_IMAGES = 16
GRID_IMAGES = 8


# ---------------------------------------------------------------------------- the config
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


# ---------------------------------------------------------------------------- helpers
class _Log:
    def __init__(self, out: Path) -> None:
        self.start = time.perf_counter()
        self.out = out

    def __call__(self, msg: str) -> None:
        print(f"[study {(time.perf_counter() - self.start) / 60:6.1f} min] {msg}", flush=True)


@contextlib.contextmanager
def _lock(folder: Path) -> Iterator[bool]:
    """An exclusive lock file in ``folder``; yields False when another process holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".study.lock"
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        pid = path.read_text().strip() if path.exists() else ""
        if pid.isdigit() and not _alive(int(pid)):
            path.unlink(missing_ok=True)  # left by a killed process
            with _lock(folder) as got:
                yield got
            return
        yield False
        return
    try:
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        yield True
    finally:
        path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stage_nfe(stage: StageConfig) -> int:
    """Denoiser evaluations per sample of a stage's sampler: one per σ of its grid (the last
    step, to σ = 0, returns the denoised image), Heun one more per step before it."""
    if stage.kind == "relay":
        s = stage.relay_sampler
        steps = len(karras_sigmas(s.steps, s.sigma_min, s.sigma_max, s.rho,
                                  truncate=s.sigma_trunc)) - 1
    else:
        s = stage.edm_sampler
        steps = s.steps
    return 2 * steps - 1 if s.order == 2 else steps


def _set_steps(stage: StageConfig, steps: int) -> None:
    if stage.kind == "relay":
        stage.relay_sampler.steps = steps
    else:
        stage.edm_sampler.steps = steps


def _metrics_row(res: dict) -> dict:
    keep = ("fid", "sfid", "precision", "recall", "kid", "swd", "spectrum", "n_images")
    return {k: res[k] for k in keep if k in res} | {"reference": res["reference"]}


@contextlib.contextmanager
def _timed(seconds: dict[str, float], name: str, *, keep_first: bool = False) -> Iterator[None]:
    """Add the seconds the ``with`` block takes to ``seconds[name]`` (``keep_first``: record
    them only if ``name`` has none yet, e.g. work that a rerun finds done)."""
    start = time.perf_counter()
    yield
    spent = time.perf_counter() - start
    seconds[name] = seconds.get(name, spent) if keep_first else seconds.get(name, 0.0) + spent


def _link_samples(src: Path, dst: Path, seeds: range) -> None:
    """Hard-link (or copy) the sample files of ``seeds`` from folder ``src`` into ``dst``."""
    from ..io.sample_folder import seed_path

    for seed in seeds:
        a, b = seed_path(src, seed), seed_path(dst, seed)
        if b.exists() or not a.is_file():
            continue
        b.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(a, b)
        except OSError:
            shutil.copyfile(a, b)


def _first_stage(name: str) -> RelayCascade:
    """The first stage (with its guide) of a cascade folder or packaged cascade ``name``."""
    try:
        cascade = RelayCascade.from_pretrained(name)
    except (ValueError, OSError) as e:
        raise ValueError(f"stage1.cascade {name!r}: {e}") from None
    if cascade.configs[0].kind != "edm":
        raise ValueError(f"stage1.cascade {name!r}: its first stage is a {cascade.configs[0].kind} "
                         "stage, not a stage 1 (edm)")
    guide = ((cascade.guide_configs[0], cascade.guides["0"]) if 0 in cascade.guide_configs
             else None)
    training = None if cascade.training is None else cascade.training[:1]
    return RelayCascade(cascade.configs[:1], list(cascade.denoisers)[:1], training, [guide])


# ---------------------------------------------------------------------------- the study
class Study:
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
        self.log = _Log(self.out)
        self._inception = None
        self.world: World | None = None
        for v in self.config.variants:  # every config must parse before anything is written
            for seed in v.seeds:
                self._variant_config(v, seed, 1)
        self._given_stage1: RelayCascade | None = None
        if self.config.stage1.cascade:
            self._given_stage1 = _first_stage(self.config.stage1.cascade)
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
        with _lock(self.out / "stage1") as got:
            if not got:
                raise ValueError(f"{self.out / 'stage1'}: another process trains stage 1; wait "
                                 "for it, or run this study with --train-only")
            self._train(cfg, self.out / "stage1", cap)

    def _inception_model(self):
        if self._inception is None:
            self._inception = load_inception()
        return self._inception

    def _eval(self, samples: Path, ref: Path, metrics=METRICS) -> dict:
        return _metrics_row(evaluate(samples, ref, metrics, progress=False,
                                     inception=self._inception_model()))

    def _shared_eval(self) -> None:
        """Stage-1 samples, the references (image folders and their Inception statistics) and
        the floors, computed once for every variant; the seconds each part took the first time
        it ran go to ``eval/timing.json`` (the study's own cost, not a variant's)."""
        e, ev = self.config.eval, self.out / "eval"
        timing_file = ev / "timing.json"
        timing = read_json(timing_file) if timing_file.is_file() else {}
        part = functools.partial(_timed, timing, keep_first=True)
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
        from ..io.images import from_uint8, load_image
        from ..io.sample_folder import seed_path

        return from_uint8(np.stack([load_image(seed_path(self.stage1_samples, s))
                                    for s in range(self.n)]))

    def _upscale(self, cascade: RelayCascade, low: torch.Tensor, seed0: int, out: Path) -> Path:
        """Relay/upscale ``low`` with seeds ``seed0 + k`` into the sample folder ``out``."""
        seeds = [seed0 + k for k in range(low.shape[0])]
        from ..io.sample_folder import seed_path

        w = self.world
        mine = [k for k in range(w.rank, len(seeds), w.size) if not seed_path(out, seeds[k]).exists()]
        if mine:
            images = cascade([seeds[k] for k in mine], low_res=low[mine])[-1]
            for k, arr in zip(mine, to_uint8(images), strict=True):
                save_png(arr, seed_path(out, seeds[k]))
        w.barrier()
        return out

    def _variant(self, v: StudyVariant, seed: int, evaluate: bool = True) -> None:
        run_dir = self.out / "runs" / f"{v.name}-s{seed}"
        if (run_dir / "result.json").is_file():
            self.log(f"{v.name} seed {seed}: done earlier")
            return
        with _lock(run_dir) as got:
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
        part = functools.partial(_timed, parts)

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
                result["artifact_correction"] = self._artifacts(v.name, stage_cfg, cascade, ev)
        with part("nfe_curve"):
            result["nfe_curve"] = self._nfe_curve(stage_cfg, den, ev, final)
        with part("compute_curve"):
            result["compute_curve"] = self._compute_curve(run_dir, ev, final, source["source"])
        return result, parts

    def _artifacts(self, name: str, stage_cfg: StageConfig, cascade: RelayCascade,
                   ev: Path) -> list[dict]:
        """Artifact correction of the first held-out images, and their grid ``artifacts.png``."""
        low = self._low("heldout")[:ARTIFACT_IMAGES]
        seeds = [HELDOUT_SEED0 + k for k in range(low.shape[0])]
        rows, columns = artifact_correction(
            {name: lambda x: cascade(seeds, low_res=x.float())[-1]}, low, stage_cfg.scale)
        shown = range(min(GRID_IMAGES, low.shape[0]))
        grid = image_grid(to_uint8(torch.stack([c[k] for k in shown for c in columns])),
                          columns=len(columns))
        save_png(grid, ev / "artifacts.png")
        return rows

    def _reuse(self, src: Path, dst: Path, seeds: range) -> None:
        """Samples of ``seeds`` already in ``src`` become ``dst``'s (linked once, on rank 0)."""
        if self.world.is_main:
            _link_samples(src, dst, seeds)
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
            _set_steps(cfg, steps)
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
        write_json(finite_or_none(out), self.out / "results.json")
        with atomic_writer(self.out / "table.md") as f:
            f.write(markdown_table(summary, results, shared).encode())
        if results:
            figures(out, self.out / "figures", self.out)
        self.log(f"wrote {self.out / 'results.json'} ({len(results)} runs)")
        return self.out / "results.json"


def _stat(runs: list[dict], section: str, key: str) -> dict:
    """Mean and spread (max − min over the seeds) of ``run[section][key]``."""
    vals = [r[section][key] for r in runs if r.get(section, {}).get(key) is not None]
    if not vals:
        return {"mean": None, "spread": None, "n": 0}
    return {"mean": float(np.mean(vals)), "spread": float(np.ptp(vals)), "n": len(vals)}


def summarize(results: list[dict], floors: dict) -> list[dict]:
    """One row per variant: mean and spread over seeds of its main numbers, then the floors."""
    rows = []
    for name in dict.fromkeys(r["name"] for r in results):
        runs = [r for r in results if r["name"] == name]

        def stat(path: tuple[str, str], runs=runs) -> dict:
            return _stat(runs, *path)

        rows.append({
            "variant": name, "kind": runs[0]["kind"], "main": runs[0]["main"],
            "seeds": [r["seed"] for r in runs],
            "budget_flops": [r["budget"]["flops"] for r in runs],
            "images": [r["budget"]["images"] for r in runs],
            "nfe": runs[0]["nfe"],
            "cascade_fid": stat(("cascade", "fid")), "cascade_kid": stat(("cascade", "kid")),
            "sr_heldout_fid": stat(("sr_heldout", "fid")), "sr_train_fid": stat(("sr_train", "fid")),
            "precision": stat(("cascade", "precision")), "recall": stat(("cascade", "recall")),
            "sr_heldout_precision": stat(("sr_heldout", "precision")),
            "sr_heldout_recall": stat(("sr_heldout", "recall")),
            "spectrum": stat(("sr_heldout", "spectrum")), "sfid": stat(("cascade", "sfid")),
        })
    rows.append({"variant": "floor: split-half (train vs held-out data)",
                 "sr_heldout_fid": {"mean": floors["split_half"]["fid"]}})
    rows.append({"variant": "floor: up(down(x)) of held-out data",
                 "sr_heldout_fid": {"mean": floors["up_down_heldout"]["fid"]}})
    return rows


def _cell(stat: dict | None, digits: int) -> str:
    """``mean ± half-spread`` (over seeds) of a summary statistic, ``—`` where there is none."""
    if not stat or stat.get("mean") is None:
        return "—"
    text = f"{stat['mean']:.{digits}f}"
    if stat.get("n", 1) > 1:
        text += f" ± {stat['spread'] / 2:.{digits}f}"
    return text


def markdown_table(summary: list[dict], results: list[dict], shared: dict | None = None) -> str:
    """The summary as a Markdown table (every value is ``results.json``'s ``summary``, rounded;
    ``±`` is half the spread over the seeds), with the evaluation / training time split, and
    the study's ``shared`` evaluation seconds (once for all runs) below it."""
    head = ("| variant | seeds | training GFLOPs | images | NFE | cascade FID | SR-FID held-out | "
            "SR-FID train | precision | recall | KID ×1e3 | spectrum | eval / train time |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for row in summary:
        runs = [r for r in results if r["name"] == row["variant"]]
        if not runs:  # a floor
            lines.append(f"| {row['variant']} | | | | | | {_cell(row['sr_heldout_fid'], 1)} "
                         "| | | | | | |")
            continue
        kid = row["cascade_kid"]
        kid = {**kid, "mean": kid["mean"] * 1e3, "spread": kid["spread"] * 1e3} \
            if kid.get("mean") is not None else kid
        ratio = sum(r["timing"]["eval_seconds"] for r in runs) / max(
            sum(r["timing"]["train_seconds"] for r in runs), 1e-9)
        lines.append(
            f"| {row['variant']}{' (main)' if row['main'] else ''} | "
            f"{', '.join(str(s) for s in row['seeds'])} | "
            f"{np.mean(row['budget_flops']) / 1e9:,.0f} | {int(np.mean(row['images'])):,} | "
            f"{row['nfe']} | {_cell(row['cascade_fid'], 1)} | {_cell(row['sr_heldout_fid'], 1)} | "
            f"{_cell(row['sr_train_fid'], 1)} | {_cell(row['precision'], 3)} | "
            f"{_cell(row['recall'], 3)} | {_cell(kid, 1)} | {_cell(row['spectrum'], 3)} | "
            f"{100 * ratio:.0f} % |")
    foot = ""
    if shared:
        spent = ", ".join(f"{k.replace('_', ' ')} {v:.0f} s" for k, v in shared.items())
        foot = f"\nShared evaluation, once for all {len(results)} runs: {spent}.\n"
    return head + "\n".join(lines) + "\n" + foot


def figures(results: dict, folder: Path, out: Path) -> None:
    """FID against training compute, FID against NFE, sample grids side by side, artifact
    correction per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    runs = results["variants"]

    def save(fig, name: str) -> None:
        fig.tight_layout()
        with atomic_writer(folder / name) as f:
            fig.savefig(f, format="png")
        plt.close(fig)

    for key, xlabel, name in (("compute_curve", "training FLOPs", "fid_vs_compute.png"),
                              ("nfe_curve", "denoiser evaluations per sample (NFE)",
                               "fid_vs_nfe.png")):
        fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
        for r in runs:
            pts = [(p["flops"] if key == "compute_curve" else p["nfe"], p["fid"]) for p in r[key]
                   if p.get("fid") is not None]
            if pts:
                x, y = zip(*sorted(pts), strict=True)
                ax.plot(x, y, marker="o", label=f"{r['name']} s{r['seed']}",
                        linestyle="-" if r["main"] else "--")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"FID@{results['study_config']['eval']['curve_samples']} (SR held-out; "
                      "edm64: samples)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        if key == "nfe_curve":
            ax.set_xscale("log")
        save(fig, name)
    from ..io.images import load_image
    from ..io.sample_folder import seed_path

    rows, labels = [], []
    first = {}
    for r in runs:
        first.setdefault(r["name"], r)
    for r in first.values():  # variants without cascade samples here (--no-stage1) are left out
        run = out / "runs" / f"{r['name']}-s{r['seed']}" / "eval" / "cascade"
        paths = [seed_path(run, s)
                 for s in range(min(GRID_IMAGES, results["study_config"]["eval"]["samples"]))]
        if not all(p.is_file() for p in paths):
            continue
        rows.append(np.concatenate([load_image(p) for p in paths], axis=1))
        labels.append(r["name"])
    if rows:
        fig, ax = plt.subplots(figsize=(8, 1.1 * len(rows) + 0.5), dpi=120)
        ax.imshow(np.concatenate(rows, axis=0), interpolation="nearest")
        h = rows[0].shape[0]
        ax.set_yticks([h * k + h // 2 for k in range(len(rows))], labels, fontsize=8)
        ax.set_xticks([])
        ax.set_title("the same 8 stage-1 samples through each variant (end to end: its own samples)",
                     fontsize=8)
        save(fig, "grids.png")
