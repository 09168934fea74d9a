"""The training loop of one stage (EDM stage 1, relay or super-resolution), alone or under
``torchrun``.

Every step ``t`` trains on the global samples ``g ∈ [t·B, (t+1)·B)`` (``training.data``).
Randomness is a function of the seed and the step: σ and the noise of sample ``g`` come from
a generator seeded with ``(seed, g)``, and the global torch RNG (network dropout, label
dropout) is reseeded with ``(seed, t, rank)`` at each step. A resumed run therefore repeats
exactly what an uninterrupted run does, and with ``noise_rng="per_sample"`` and no dropout
the weights do not depend on the number of processes.

Per step (following EDM's ``training_loop.py``):
``lr = lr_max·min(images_seen / rampup_images, 1)``; gradient of
``scale·Σ_{g in batch} loss_g / B`` (each process scales its share so that DDP's gradient
average equals the mean over the global batch); non-finite gradient entries replaced as in
EDM; Adam step; EMA update (``training.ema``). A step whose loss is non-finite on any process
is skipped; after ``max_bad_steps`` such steps training stops with an error.
"""

from __future__ import annotations

import contextlib
import functools
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..data import open_dataset
from ..io.distributed import World, close_world, init_world
from ..io.images import from_uint8, save_png
from ..losses import EDMLoss, RelayLoss, SRLoss
from ..networks import size_multiple
from ..stage import build_denoiser, one_hot
from .augment import augment
from .checkpoint import (
    Snapshot,
    list_snapshots,
    resolve_snapshot,
    rng_state,
    save_snapshot,
    set_rng_state,
)
from .config import TrainConfig
from .cost import TrainingCost, flops_per_image
from .data import GlobalSampleDataset, StepBatches
from .ema import EMA
from .events import Clock, LossWindow, Schedule, agreed_stop, stop_requests
from .grids import sample_grid, stage_samples
from .logging import RunLog, SigmaBands
from .posthoc_ema import PowerEMA
from .setup import check_crop, check_resume, resolve_stage, wrong_resolution

AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
SAMPLE_STREAM = 1  # seed-sequence stream of the per-sample generators
STEP_STREAM = 2  # seed-sequence stream of the per-step global RNG seeds
DEVICE_STREAM = 3  # seed-sequence stream of the per-device generators (noise_rng="per_device")


def derived_seed(*words: int) -> int:
    """A 63-bit seed that is a function of ``words`` only (numpy's SeedSequence hashing)."""
    state = np.random.SeedSequence([int(w) for w in words]).generate_state(2, np.uint32)
    return (int(state[0]) << 31 | int(state[1])) & ((1 << 63) - 1)


def make_loss(config: TrainConfig) -> EDMLoss | RelayLoss | SRLoss:
    """The loss of the stage: EDM's for stage 1, the relay loss (λ clamped) for relay stages,
    the conditioned EDM loss with noise-conditioning augmentation for super-resolution stages."""
    stage, loss = config.stage, config.loss
    if stage.kind == "edm":
        b = stage.block_noise
        return EDMLoss(loss.p_mean, loss.p_std, stage.sigma_data,
                       None if b is None else (b.alpha, b.patch, b.sigma_min))
    if stage.kind == "sr":
        return SRLoss(stage.sr.scale, stage.sr.aug_max, loss.p_mean, loss.p_std, stage.sigma_data)
    r = stage.relay
    return RelayLoss(r.schedule(), r.scale, r.block_alpha, loss.sigma_floor, loss.weight_max,
                     stage.sigma_data, r.variant)


@dataclass
class TrainResult:
    """What a finished (or time-limited) run leaves behind."""

    step: int
    images_seen: int
    snapshot: Path
    cost: TrainingCost
    finished: bool
    stopped_by: str | None = None  # "time" (max_minutes) or a signal name ("SIGTERM"), if stopped early


class Trainer:
    """Sets up one stage's training from a :class:`TrainConfig` and runs it."""

    def __init__(
        self, config: TrainConfig, out: str | Path, *, resume: str | None = None, world: World | None = None
    ) -> None:
        self.world = world or init_world(config.device)
        self.out = Path(out)
        d = config.data
        if not d.path:
            raise ValueError("data.path is empty; set it to the training images (a folder, a zip "
                             "file or a `relaydiff data build` output)")
        self.dataset = open_dataset(
            d.path,
            resolution=config.stage.resolution,
            skip_bad=d.skip_bad,
            background=d.background,
            limit=d.limit,
        )
        resized = self.dataset.resized()
        if resized is not None and not d.resize:
            raise ValueError(wrong_resolution(d.path, resized, config.stage))
        if self.dataset.skipped:
            reason = self.dataset.skipped[0][1]
            warnings.warn(
                f"skipped {len(self.dataset.skipped)} unreadable image(s), e.g. {reason}", stacklevel=2
            )
        self.config = resolve_stage(config, self.dataset.num_classes, d.path)
        self.per_device, self.accum = self.config.micro_batch(self.world.size)
        if not resume and list_snapshots(self.out / "checkpoints"):
            raise ValueError(
                f"{self.out} already holds checkpoints; resume from them (resume='auto') or train "
                "into another folder"
            )
        snapshot = resolve_snapshot(resume, run_dir=self.out) if resume else None
        if snapshot is not None:
            check_resume(self.config, snapshot)
        self._build(snapshot)

    # ------------------------------------------------------------------ set-up
    def _build(self, snapshot: Snapshot | None) -> None:
        cfg, dev = self.config, self.world.device
        torch.manual_seed(cfg.seed)
        den = build_denoiser(cfg.stage)
        net_res = getattr(den.model, "img_resolution", cfg.stage.resolution)
        if net_res != cfg.stage.resolution:
            raise ValueError(
                f"stage.network.img_resolution is {net_res} but stage.resolution is "
                f"{cfg.stage.resolution}; make them equal"
            )
        check_crop(cfg, size_multiple(den.model))
        if cfg.augment.p > 0:
            want = cfg.augment.label_dim
            have = getattr(den.model, "augment_dim", 0)
            if have != want:
                raise ValueError(f"augment.p is {cfg.augment.p} but the network takes {have} "
                                 f"augmentation labels; set stage.network.augment_dim={want} (the "
                                 "labels of the enabled transforms) or augment.p=0")
        den.autocast_dtype = AUTOCAST[cfg.precision]
        self.denoiser = den.to(dev).train()
        self.ema = EMA(self.denoiser, cfg.ema.halflife_images, cfg.ema.rampup_ratio)
        self.phema = (PowerEMA(self.denoiser.model, cfg.ema.posthoc_sigma_rels)
                      if cfg.ema.posthoc_sigma_rels else None)
        self._fid_tools = None  # (reference, Inception), loaded on first use
        o = cfg.optim
        self.optimizer = torch.optim.Adam(self.denoiser.parameters(), lr=o.lr, betas=o.betas, eps=o.eps)
        self.loss_fn = make_loss(cfg)
        self.step, self.bad_steps = 0, 0
        self.cost = TrainingCost()
        self.resumed_from = snapshot.path if snapshot is not None else None
        if snapshot is not None:
            self.denoiser.model.load_state_dict(snapshot.model, strict=True)
            self.ema.module.model.load_state_dict(snapshot.ema, strict=True)
            if self.phema is not None:
                self.phema.load(snapshot.extra["posthoc"])
            self.optimizer.load_state_dict(snapshot.optimizer)
            s = snapshot.state
            self.step, self.bad_steps = s["step"], s["bad_steps"]
            self.cost = TrainingCost.from_dict(s["cost"])
            set_rng_state(s["rng"])
        if not self.cost.flops_per_image:
            side = cfg.data.crop or cfg.stage.resolution  # a crop costs its own pixels only
            shape = (cfg.stage.channels, side, side)
            self.cost.flops_per_image = flops_per_image(
                self.denoiser, self.loss_fn, shape, cfg.stage.label_dim, dev
            )
        self.model: torch.nn.Module = self.denoiser
        if self.world.size > 1:
            # EDM's augmentation map (``augment_dim`` > 0) gets no input without augmentation.
            unused = getattr(den.model, "map_augment", None) is not None and cfg.augment.p == 0
            self.model = DistributedDataParallel(
                self.denoiser, device_ids=[dev] if dev.type == "cuda" else None, find_unused_parameters=unused
            )
        if cfg.compile:
            self.model = torch.compile(self.model)

    def _loader(self) -> torch.utils.data.DataLoader:
        cfg = self.config
        data = GlobalSampleDataset(self.dataset, cfg.seed, cfg.data.xflip, cfg.data.crop,
                                   cfg.stage.scale or 1)
        batches = StepBatches(
            cfg.batch, self.per_device, self.world.rank, self.world.size, self.step, cfg.total_steps
        )
        return torch.utils.data.DataLoader(
            data,
            batch_sampler=batches,
            num_workers=cfg.data.workers,
            pin_memory=self.world.device.type == "cuda",
        )

    def _generators(self, indices: torch.Tensor, micro: int):
        cfg, dev = self.config, self.world.device
        if cfg.noise_rng == "per_sample":
            return [
                torch.Generator().manual_seed(derived_seed(cfg.seed, SAMPLE_STREAM, g))
                for g in indices.tolist()
            ]
        seed = derived_seed(cfg.seed, DEVICE_STREAM, self.step, self.world.rank, micro)
        return torch.Generator(dev).manual_seed(seed)

    # ------------------------------------------------------------------ one step
    def train_step(self, micro_batches) -> tuple[torch.Tensor, SigmaBands]:
        """One optimiser step over this process's micro-batches; returns (loss sum & count, bands)."""
        cfg, dev, world = self.config, self.world.device, self.world
        torch.manual_seed(derived_seed(cfg.seed, STEP_STREAM, self.step, world.rank))
        images_seen = self.step * cfg.batch
        lr = cfg.optim.lr * min(images_seen / max(cfg.optim.rampup_images, 1e-8), 1.0)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        bands = SigmaBands()
        totals = torch.zeros(3, dtype=torch.float64)  # loss sum, sample count, non-finite flag
        factor = cfg.loss.scale * world.size / cfg.batch
        for m, (images, labels, indices) in enumerate(micro_batches):
            images = images.to(dev, non_blocking=True)
            onehot = None
            if self.config.stage.label_dim:
                onehot = one_hot(labels, cfg.stage.label_dim, dev)
            gens = self._generators(indices, m)
            sigma = self.loss_fn.sample_sigma(images.shape[0], generator=gens, device=dev)
            model = self.model
            if cfg.augment.p > 0:
                images, aug_labels = augment(images, cfg.augment, gens, cfg.stage.scale or 1)
                model = functools.partial(self.model, augment_labels=aug_labels)
            sync = m == len(micro_batches) - 1 or not isinstance(self.model, DistributedDataParallel)
            with contextlib.nullcontext() if sync else self.model.no_sync():
                per_sample = self.loss_fn(model, images, sigma, onehot, generator=gens)
                (per_sample.sum() * factor).backward()
            totals[0] += per_sample.detach().double().sum().cpu()
            totals[1] += per_sample.shape[0]
            bands.add(sigma, per_sample)
        totals[2] = float(not torch.isfinite(totals[0]))
        totals = world.sum(totals)
        if totals[2] > 0:
            self.bad_steps += 1
            self.optimizer.zero_grad(set_to_none=True)
            if self.bad_steps > cfg.max_bad_steps:
                raise RuntimeError(
                    f"the loss was non-finite in {self.bad_steps} steps (more than "
                    f"max_bad_steps={cfg.max_bad_steps}); lower optim.lr or check "
                    "the data"
                )
            warnings.warn(
                f"step {self.step}: non-finite loss, step skipped ({self.bad_steps}/{cfg.max_bad_steps})",
                stacklevel=2,
            )
        else:
            for p in self.denoiser.parameters():
                if p.grad is not None:
                    torch.nan_to_num(p.grad, nan=0.0, posinf=1e5, neginf=-1e5, out=p.grad)
            self.optimizer.step()
            self.ema.update(self.denoiser, cfg.batch, images_seen)
            if self.phema is not None:
                self.phema.update(self.denoiser.model, images_seen + cfg.batch, cfg.batch)
        self.step += 1
        return totals, bands

    def grad_norm(self) -> float:
        norms = [p.grad.detach().norm() for p in self.denoiser.parameters() if p.grad is not None]
        return torch.stack(norms).norm().item() / self.config.loss.scale if norms else 0.0

    # ------------------------------------------------------------------ persistence
    def save(self, cost: TrainingCost) -> Path:
        """Write snapshot ``ckpt-<step>`` (main process) and wait for it on every process."""
        root = self.out / "checkpoints"
        if self.world.is_main:
            images = self.step * self.config.batch
            state = {
                "config": self.config.to_dict(),
                "step": self.step,
                "images_seen": images,
                "bad_steps": self.bad_steps,
                "cost": cost.to_dict(),
                "device": self.world.device.type,
                "devices": self.world.size,
                "rng": rng_state(),
                "data_order": {
                    "seed": self.config.seed,
                    "dataset_size": len(self.dataset),
                    "next_sample": images,
                    "epoch": images // len(self.dataset),
                    "xflip": self.config.data.xflip,
                },
            }
            save_snapshot(
                root,
                self.step,
                model=self.denoiser.model.state_dict(),
                ema=self.ema.module.model.state_dict(),
                optimizer=self.optimizer.state_dict(),
                state=state,
                keep=self.config.checkpoint.keep,
                extra=None if self.phema is None else {"posthoc": self.phema.tensors()},
            )
        self.world.barrier()
        return root / f"ckpt-{self.step:08d}"

    # ------------------------------------------------------------------ the periodic events
    def _real(self, n: int) -> torch.Tensor | None:
        """The first ``n`` training images in [-1, 1] (what a relay stage's samples relay)."""
        if self.config.stage.kind == "edm":
            return None
        return from_uint8(torch.stack([self.dataset[i][0] for i in range(n)]))

    def _fid(self, log: RunLog) -> None:
        """Log the small-sample FID of the EMA network (``log.fid_every_images``)."""
        from ..metrics.evaluate import periodic_fid
        from ..metrics.reference import Reference
        from ..metrics.weights import load_inception

        cfg = self.config.log
        if self._fid_tools is None:
            if not cfg.fid_reference:
                raise ValueError("log.fid_every_images needs log.fid_reference (a file from "
                                 "`relaydiff eval ref DATASET --out REF.npz`)")
            self._fid_tools = (Reference.load(cfg.fid_reference),
                               load_inception(device=self.world.device))
        n = min(cfg.fid_images, len(self.dataset))
        images = stage_samples(self.config.stage, self.ema.module, self._real(n), n)
        result = periodic_fid(images.split(64), *self._fid_tools)
        log.record("fid", self.step, {result["name"]: result["fid"]})
        log.scalar(f"metrics/{result['name']}", self.step, result["fid"])

    def _grid(self, log: RunLog) -> None:
        cfg = self.config
        n = min(cfg.log.grid_size, len(self.dataset))
        grid = sample_grid(cfg.stage, self.ema.module, self._real(n), n)
        save_png(grid, self.out / "samples" / f"grid-{self.step * cfg.batch:012d}.png")
        log.image("samples/ema", self.step, grid)

    def _report(self, log: RunLog | None, bar: tqdm, window: LossWindow, clock: Clock) -> None:
        """Log the mean loss (overall and per σ band) since the last report, lr, grad norm and
        speed; then start the next window."""
        now = time.perf_counter()
        stats = self.world.sum(torch.cat([window.totals[:2], window.bands.stats]))
        images = int(window.totals[1].item()) * self.world.size
        values = {
            "images_seen": self.step * self.config.batch,
            "loss": (stats[0] / stats[1]).item(),
            "lr": self.optimizer.param_groups[0]["lr"],
            "grad_norm": self.grad_norm(),
            "images_per_s": images / max(now - window.start, 1e-9),
            "bad_steps": self.bad_steps,
            **window.bands.means(stats[2:]),
        }
        if log is not None:
            log.record("train", self.step, values)
            left = clock.minutes_left(now)
            bar.set_postfix(loss=f"{values['loss']:.4f}", img_s=f"{values['images_per_s']:.1f}",
                            **({} if left is None else {"left": f"{max(left, 0):.1f}min"}))
        window.restart(now)

    def _posthoc_snapshot(self) -> None:
        """Store the post-hoc EMA averages of this step in ``RUN/posthoc/``."""
        folder = self.out / "posthoc"
        folder.mkdir(parents=True, exist_ok=True)
        self.phema.save_snapshots(folder, self.step * self.config.batch, self.step,
                                  getattr(torch, self.config.ema.posthoc_dtype))

    def _checkpoint(self, clock: Clock) -> Path:
        """Add the wall-clock time since the previous checkpoint to the cost; write a snapshot."""
        self.cost.images_seen = self.step * self.config.batch
        self.cost.add_time(clock.lap(), self.world.size)
        return self.save(self.cost)

    # ------------------------------------------------------------------ the loop
    def _open_log(self) -> RunLog | None:
        """The run's log, its ``start`` record written (main process; ``None`` elsewhere)."""
        if not self.world.is_main:
            return None
        self.out.mkdir(parents=True, exist_ok=True)
        log = RunLog(self.out, self.config.log.tensorboard)
        log.record("start", self.step, {
            "config": self.config.to_dict(),
            "devices": self.world.size,
            "batch_per_device": self.per_device,
            "accumulation": self.accum,
            "skipped_images": len(self.dataset.skipped),
            "flops_per_image": self.cost.flops_per_image,
        })
        return log

    def _progress_bar(self, show: bool) -> tqdm:
        """Images seen of the total; speed, loss and minutes left in the postfix."""
        cfg = self.config
        return tqdm(total=cfg.total_steps * cfg.batch, initial=self.step * cfg.batch, unit="img",
                    desc=f"train {cfg.stage.kind} {cfg.stage.resolution}px", disable=not show,
                    dynamic_ncols=True)

    def run(self, max_minutes: float | None = None, progress: bool = True) -> TrainResult:
        """Train until ``total_images`` (or ``max_minutes``, or a stop signal), then write a final
        snapshot. After each step the periodic events (:class:`~.events.Schedule`) follow in a
        fixed order: loss report, stop agreement, post-hoc EMA snapshot, checkpoint, grid, FID."""
        cfg = self.config
        log = self._open_log()
        clock = Clock(max_minutes)
        bar = self._progress_bar(show=log is not None and progress)
        window = LossWindow(clock.start)
        every = Schedule.of(cfg, main=log is not None, posthoc=self.phema is not None)
        batches = iter(self._loader())
        snapshot, saved_step, stopped_by = self.resumed_from, self.step, None
        try:
            with stop_requests() as requests:
                while self.step < cfg.total_steps:
                    before = self.step * cfg.batch
                    window.add(*self.train_step([next(batches) for _ in range(self.accum)]))
                    bar.update(cfg.batch)
                    images = self.step * cfg.batch
                    if every.log.crossed(before, images) or self.step == cfg.total_steps:
                        self._report(log, bar, window, clock)
                    stopped_by = agreed_stop(self.world, requests, clock)  # all stop after one step
                    if every.posthoc.crossed(before, images):  # first: a checkpoint implies it exists
                        self._posthoc_snapshot()
                    if every.checkpoint.crossed(before, images) or stopped_by:
                        snapshot, saved_step = self._checkpoint(clock), self.step
                    if stopped_by:
                        break
                    if every.grid.crossed(before, images):
                        self._grid(log)
                    if every.fid.crossed(before, images):
                        self._fid(log)
                if saved_step != self.step or snapshot is None:
                    snapshot = self._checkpoint(clock)
            finished = self.step >= cfg.total_steps
            if log is not None:
                log.record("end", self.step, {"finished": finished, "stopped_by": stopped_by,
                                              **self.cost.to_dict()})
        except (ValueError, RuntimeError) as e:
            if str(e).startswith("Caught "):  # re-raised from a DataLoader worker
                raise type(e)(_worker_message(e)) from None
            raise
        finally:
            bar.close()
            if log is not None:
                log.close()
        return TrainResult(self.step, self.step * cfg.batch, snapshot, self.cost, finished,
                           stopped_by)


def _worker_message(error: Exception) -> str:
    """DataLoader workers re-raise errors with a traceback; keep only the final message."""
    last = [ln for ln in str(error).splitlines() if ln.strip()][-1]
    return last.split(": ", 1)[1] if last.startswith(("ValueError: ", "RuntimeError: ")) else last


def train(
    config: TrainConfig,
    out: str | Path,
    *,
    resume: str | None = None,
    max_minutes: float | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train one stage (see :class:`Trainer`); joins/leaves torchrun's process group."""
    world = init_world(config.device)
    try:
        return Trainer(config, out, resume=resume, world=world).run(max_minutes, progress)
    finally:
        close_world(world)
