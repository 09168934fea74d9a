"""Deprecated alias of :mod:`relaydiff.io.images` (removed in relaydiff 0.3)."""

from .._deprecated import warn_moved

warn_moved("relaydiff.data.images", "relaydiff.io.images")

from ..io.images import *  # noqa: E402, F403
