"""The demo's terminal output: one line per step, on stdout, prefixed with the minutes since the
start, and a progress line every :data:`PROGRESS_SECONDS` inside the long steps (sampling,
metrics, training), so a log file or a terminal shows that work is going on and how far it is."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

PROGRESS_SECONDS = 30.0


class Clock:
    """Minutes since the demo started; :meth:`log` prints a line with them."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def minutes(self) -> float:
        return (time.perf_counter() - self.start) / 60

    def log(self, msg: str) -> None:
        print(f"[demo {self.minutes:5.1f} min] {msg}", flush=True)


@contextmanager
def progress(clock: Clock, what: str, status: Callable[[], str] | None = None,
             every: float = PROGRESS_SECONDS) -> Iterator[None]:
    """While the block runs, log ``what: status(), N.N min so far`` every ``every`` seconds.

    A daemon thread does it: the library calls inside the block (sampling, Inception features,
    training) report no progress to the demo themselves. ``status`` reads how far they are
    (e.g. files written); without it the line gives the elapsed time only."""
    start = time.perf_counter()
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every):
            done = f"{status()}, " if status is not None else ""
            clock.log(f"{what}: {done}{(time.perf_counter() - start) / 60:.1f} min so far")

    thread = threading.Thread(target=beat, name="demo-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
