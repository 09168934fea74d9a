"""Deprecated alias of :mod:`relaydiff.io.distributed` (removed in relaydiff 0.3)."""

from .._deprecated import warn_moved

warn_moved("relaydiff.training.distributed", "relaydiff.io.distributed")

from ..io.distributed import *  # noqa: E402, F403
