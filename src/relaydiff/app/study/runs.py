"""What the study's runs share: progress lines, run locks, timing, sample links, a given stage 1."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from ...analysis.artifacts import artifact_correction
from ...cascade import RelayCascade
from ...io.distributed import World
from ...io.images import image_grid, save_png, to_uint8
from ...sample_writer import write_samples, write_summary, write_upscaled
from ...schedules import karras_sigmas
from ...stage import StageConfig
from .config import ARTIFACT_IMAGES, GRID_IMAGES, HELDOUT_SEED0


class StudyLog:
    """Progress lines on stdout, stamped with the minutes since the study started."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self, msg: str) -> None:
        print(f"[study {(time.perf_counter() - self.start) / 60:6.1f} min] {msg}", flush=True)


@contextlib.contextmanager
def lock(folder: Path) -> Iterator[bool]:
    """An exclusive lock file in ``folder``; yields False when another process holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".study.lock"
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        pid = path.read_text().strip() if path.exists() else ""
        if pid.isdigit() and not alive(int(pid)):
            path.unlink(missing_ok=True)  # left by a killed process
            with lock(folder) as got:
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


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stage_nfe(stage: StageConfig) -> int:
    """Denoiser evaluations per sample of a stage's sampler: one per σ of its (truncated) grid
    (the last step, to σ = 0, returns the denoised image), Heun one more per step before it;
    a guided stage (``guidance.scale`` ≠ 1) evaluates its guide too, so twice as many."""
    s = stage.relay_sampler if stage.kind == "relay" else stage.edm_sampler
    steps = len(karras_sigmas(s.steps, s.sigma_min, s.sigma_max, s.rho,
                              truncate=s.sigma_trunc)) - 1
    nfe = 2 * steps - 1 if s.order == 2 else steps
    return nfe * (2 if stage.guidance.scale != 1 else 1)


def write_seed_samples(world: World, cascade: RelayCascade, n: int, folder: Path,
                       progress: bool) -> None:
    """Seeds ``0..n-1`` of ``cascade`` into a sample folder, shared out over torchrun ranks."""
    seeds = list(range(n))
    write_samples(cascade, seeds, folder, rank=world.rank, world=world.size, progress=progress)
    world.barrier()
    if world.is_main:
        write_summary(cascade, seeds, folder)
    world.barrier()


def upscale_into(world: World, cascade: RelayCascade, low: torch.Tensor, seed0: int, out: Path,
                 progress: bool) -> None:
    """Relay/upscale ``low`` with seeds ``seed0 + k`` into the sample folder ``out``, shared out
    over torchrun ranks."""
    from ...io.sample_folder import seed_path

    seeds = [seed0 + k for k in range(low.shape[0])]
    write_upscaled(cascade, low, seeds, [seed_path(out, s) for s in seeds], rank=world.rank,
                   world=world.size, progress=progress)
    world.barrier()


def set_steps(stage: StageConfig, steps: int) -> None:
    if stage.kind == "relay":
        stage.relay_sampler.steps = steps
    else:
        stage.edm_sampler.steps = steps


def metrics_row(res: dict) -> dict:
    keep = ("fid", "sfid", "precision", "recall", "kid", "swd", "spectrum", "n_images",
            "fid_ci95", "kid_ci95", "intervals")
    return {k: res[k] for k in keep if k in res} | {"reference": res["reference"]}


@contextlib.contextmanager
def timed(seconds: dict[str, float], name: str, *, keep_first: bool = False) -> Iterator[None]:
    """Add the seconds the ``with`` block takes to ``seconds[name]`` (``keep_first``: record
    them only if ``name`` has none yet, e.g. work that a rerun finds done)."""
    start = time.perf_counter()
    yield
    spent = time.perf_counter() - start
    seconds[name] = seconds.get(name, spent) if keep_first else seconds.get(name, 0.0) + spent


def first_stage(name: str) -> RelayCascade:
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




def artifact_rows(name: str, stage_cfg: StageConfig, cascade: RelayCascade, heldout_low: torch.Tensor,
                  ev: Path) -> list[dict]:
    """Artifact correction of the first held-out low-resolution images (their upscaling seeds),
    and their grid ``ev/artifacts.png``."""
    low = heldout_low[:ARTIFACT_IMAGES]
    seeds = [HELDOUT_SEED0 + k for k in range(low.shape[0])]
    rows, columns = artifact_correction(
        {name: lambda x: cascade(seeds, low_res=x.float())[-1]}, low, stage_cfg.scale)
    shown = range(min(GRID_IMAGES, low.shape[0]))
    grid = image_grid(to_uint8(torch.stack([c[k] for k in shown for c in columns])),
                      columns=len(columns))
    save_png(grid, ev / "artifacts.png")
    return rows
