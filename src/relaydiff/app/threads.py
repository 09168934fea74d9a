"""The command line's CPU thread policy: OpenMP workers that sleep, not spin, while they wait.

PyTorch's CPU wheels run their parallel kernels on GNU OpenMP (libgomp). By default its idle
workers *spin* for a while at every barrier before they sleep. On a machine whose cores are
shared with another busy process, a spinning worker burns the time slice that the worker it
waits for needs, and multi-threaded work collapses: on 2 cores with one busy process beside it,
batched sampling and training ran 5–30× slower than on one thread (measured numbers and the
benchmark: docs/train.md#threads-on-a-shared-machine, ``bench/bench_threads.py``).
``OMP_WAIT_POLICY=PASSIVE`` makes waiting workers sleep at once; on an idle machine it costs
nothing measurable for relaydiff's work, and with other processes beside it throughput degrades
gracefully with the share of the cores that is left.

OpenMP reads the setting once, when the library loads (the first ``import torch``), so
:func:`apply_thread_policy` runs first thing in the ``relaydiff`` entry point, before anything
imports torch. A value the user set (``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``) is kept. The
thread count stays torch's own (all cores; ``OMP_NUM_THREADS`` to change it).
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

POLICY = {"OMP_WAIT_POLICY": "PASSIVE"}
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
