"""Deprecated alias of :mod:`relaydiff.app.generate` (removed in relaydiff 0.3)."""

from ._deprecated import warn_moved

warn_moved("relaydiff.generate", "relaydiff.app.generate")

from .app.generate import *  # noqa: E402, F403
