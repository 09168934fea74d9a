"""Deprecated alias of :mod:`relaydiff.analysis.report` (removed in relaydiff 0.3)."""

from ._deprecated import warn_moved

warn_moved("relaydiff.report", "relaydiff.analysis.report")

from .analysis.report import *  # noqa: E402, F403
