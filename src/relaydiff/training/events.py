"""What happens between training steps: the periods of a run's events, its clock, the loss window
of its log, and stop requests (signals, the time limit) that every process agrees on.

A period is counted in training images: an event with period ``P`` is due after the step that
takes the count of images seen from ``before`` past a multiple of ``P`` (``Every.crossed``).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..io.distributed import World
from .config import TrainConfig
from .logging import SigmaBands


@dataclass(frozen=True)
class Every:
    """A period of ``images`` training images; ``0``: never."""

    images: int

    def crossed(self, before: int, after: int) -> bool:
        """Whether a multiple of the period lies in ``(before, after]`` (images seen)."""
        return self.images > 0 and after // self.images > before // self.images


@dataclass(frozen=True)
class Schedule:
    """The periods of a run's events on this process (a process that does not do an event
    has the period ``Every(0)``)."""

    log: Every  # the loss report (all processes: it all-reduces)
    posthoc: Every  # post-hoc EMA snapshots (main process, with ema.posthoc_sigma_rels)
    checkpoint: Every  # snapshots (all processes: they wait for the main one)
    grid: Every  # EMA sample grids (main process)
    fid: Every  # small-sample FID (main process)

    @classmethod
    def of(cls, config: TrainConfig, *, main: bool, posthoc: bool) -> Schedule:
        """The schedule of ``config`` on the main process (``main``) or another one; ``posthoc``:
        whether the run keeps post-hoc EMA."""
        def on_main(images: int) -> Every:
            return Every(images if main else 0)

        return cls(
            log=Every(config.log.every_steps * config.batch),
            posthoc=on_main(config.ema.posthoc_every_images if posthoc else 0),
            checkpoint=Every(config.checkpoint.every_images),
            grid=on_main(config.log.grid_every_images),
            fid=on_main(config.log.fid_every_images),
        )


class Clock:
    """Wall-clock time of a run: its time limit, and the time not yet added to its cost."""

    def __init__(self, max_minutes: float | None) -> None:
        self.max_minutes = max_minutes
        self.start = self.mark = time.perf_counter()

    def minutes_left(self, now: float) -> float | None:
        return None if self.max_minutes is None else self.max_minutes - (now - self.start) / 60

    def over(self) -> bool:
        """Whether the time limit (``max_minutes``) has passed."""
        return self.max_minutes is not None and time.perf_counter() - self.start > 60 * self.max_minutes

    def lap(self) -> float:
        """Seconds since the previous lap (or the start)."""
        now = time.perf_counter()
        seconds, self.mark = now - self.mark, now
        return seconds


class LossWindow:
    """The loss sum, sample count and σ-band losses of this process since the last report."""

    def __init__(self, start: float) -> None:
        self.totals = torch.zeros(3, dtype=torch.float64)  # loss sum, sample count, bad-step flags
        self.bands = SigmaBands()
        self.start = start

    def add(self, totals: torch.Tensor, bands: SigmaBands) -> None:
        """Add one step's ``(totals, bands)`` (what ``Trainer.train_step`` returns)."""
        self.totals += totals
        self.bands.stats += bands.stats

    def restart(self, now: float) -> None:
        self.totals.zero_()
        self.bands.reset()
        self.start = now


@contextlib.contextmanager
def stop_requests() -> Iterator[dict]:
    """While active, SIGINT and SIGTERM do not kill the process but set ``flags["signal"]``
    (the training loop then writes a checkpoint and returns); a second signal raises
    ``KeyboardInterrupt`` at once. Only the main thread can install handlers; elsewhere the
    flags never change."""
    flags: dict = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield flags
        return

    def handler(signum, frame) -> None:
        if flags["signal"] is not None:
            raise KeyboardInterrupt
        flags["signal"] = signal.Signals(signum).name

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flags
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def agreed_stop(world: World, requests: dict, clock: Clock) -> str | None:
    """Why every process stops after this step: a signal's name (``requests`` of
    :func:`stop_requests` on any process), ``"time"`` (the main process's clock), or ``None``."""
    flags = torch.zeros(2)
    if world.is_main:
        flags[0] = float(clock.over())
    flags[1] = float(requests["signal"] is not None)
    flags = world.sum(flags)
    if flags[1] > 0:
        return requests["signal"] or "signal"
    return "time" if flags[0] > 0 else None
