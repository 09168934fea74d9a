"""The command line's CPU thread policy: OpenMP workers that spin only briefly while they wait.

PyTorch's CPU wheels run their parallel kernels on GNU OpenMP (libgomp). By default an idle
worker *spins* for about 300,000 iterations (a few milliseconds) at every barrier before it
sleeps. On a machine whose cores are shared with another busy process, a spinning worker burns
the time slice that the worker it waits for needs, and multi-threaded work collapses: on 2 cores
with one busy process beside it, training and batched sampling kept 3–31 % of their idle speed
(docs/train.md#threads-on-a-shared-machine, ``bench/bench_threads.py``). Sleeping at once
(``OMP_WAIT_POLICY=PASSIVE``) keeps 50–87 % under that load but costs 8–15 % on an idle machine
(every parallel region then waits for a wake-up); a short spin of 1,000 iterations
(``GOMP_SPINCOUNT=1000``, about 10 µs) keeps 37–59 % under load for about 5 % idle, the
best trade-off measured, and is relaydiff's policy.

OpenMP reads the setting once, when the library loads (the first ``import torch``), so
:func:`apply_thread_policy` runs first thing in the ``relaydiff`` entry point, before anything
imports torch. A value the user set (``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``) is kept. The
thread count stays torch's own (all cores; ``OMP_NUM_THREADS`` to change it).
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

POLICY = {"GOMP_SPINCOUNT": "1000"}
# Settings of the user's that decide how OpenMP workers wait; any of them keeps ours off.
USER_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def apply_thread_policy(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set :data:`POLICY` in ``environ`` (default ``os.environ``) unless the user chose how
    OpenMP workers wait, or torch is already imported (then it would not take effect).

    Returns the variables it set (empty when it set none).
    """
    environ = os.environ if environ is None else environ
    if "torch" in sys.modules or any(key in environ for key in USER_SETTINGS):
        return {}
    environ.update(POLICY)
    return dict(POLICY)
