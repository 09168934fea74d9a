"""Sub-commands of the ``relaydiff`` CLI, one module per command (group)."""

from __future__ import annotations

from collections.abc import Callable, Sequence


def with_options(options: Sequence[Callable]) -> Callable:
    """Decorator applying a shared list of click options, in the listed order."""

    def apply(f: Callable) -> Callable:
        for option in reversed(options):
            f = option(f)
        return f

    return apply
