"""Deprecated alias of :mod:`relaydiff.io.files` (removed in relaydiff 0.3)."""

from .._deprecated import warn_moved

warn_moved("relaydiff.data.files", "relaydiff.io.files")

from ..io.files import *  # noqa: E402, F403
