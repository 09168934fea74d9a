"""Deprecated alias of :mod:`relaydiff.app.cli` (removed in relaydiff 0.3)."""

from ._deprecated import warn_moved

warn_moved("relaydiff.cli", "relaydiff.app.cli")

from .app.cli import *  # noqa: E402, F403
