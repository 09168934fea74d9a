"""Sub-commands of the ``relaydiff`` CLI, one module per command (group).

Each module imports only click at module level; everything else is imported inside the command
functions, so that ``relaydiff --help`` and argument errors answer without loading torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click


def with_options(options: Sequence[Callable]) -> Callable:
    """Decorator applying a shared list of click options, in the listed order."""

    def apply(f: Callable) -> Callable:
        for option in reversed(options):
            f = option(f)
        return f

    return apply


def check_out(path: Path, flag: str = "--out", *, sibling: bool = False) -> Path:
    """Refuse, before any compute, an output folder that is a file or cannot be written
    (``sibling``: in its parent, where a replacement is assembled)."""
    from ...io.files import check_writable_folder

    try:
        return check_writable_folder(path, flag, sibling=sibling)
    except ValueError as e:
        raise click.UsageError(str(e)) from None


overwrite_option = click.option(
    "--overwrite", is_flag=True,
    help="Replace what --out already holds (atomically: the old content stays until the new "
         "one is complete); without it, a folder that holds other files or results is refused.")


def claim_out(path: Path, overwrite: bool, settings: dict[str, Any] | None = None,
              flag: str = "--out") -> bool:
    """Refuse, before any compute, an output folder that holds files unless ``--overwrite``
    (see :func:`relaydiff.io.out_folder.claim_folder`); returns whether to replace it."""
    from ...io.out_folder import claim_folder

    try:
        return claim_folder(path, overwrite=overwrite, settings=settings, flag=flag)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
