"""Deprecated alias of :mod:`relaydiff.app.demo` (removed in relaydiff 0.3)."""

from ._deprecated import warn_moved

warn_moved("relaydiff.demo", "relaydiff.app.demo")

from .app.demo import *  # noqa: E402, F403
