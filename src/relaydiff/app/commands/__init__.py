"""Sub-commands of the ``relaydiff`` CLI, one module per command (group).

Each module imports only click at module level; everything else is imported inside the command
functions, so that ``relaydiff --help`` and argument errors answer without loading torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import click


def with_options(options: Sequence[Callable]) -> Callable:
    """Decorator applying a shared list of click options, in the listed order."""

    def apply(f: Callable) -> Callable:
        for option in reversed(options):
            f = option(f)
        return f

    return apply


def check_out(path: Path, flag: str = "--out") -> Path:
    """Refuse, before any compute, an output folder that is a file or cannot be written."""
    from ...io.files import check_writable_folder

    try:
        return check_writable_folder(path, flag)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
