"""Output folders: when a command may write into one, and how it replaces one on request.

Every command that writes a folder calls :func:`claim_folder` before any compute:

* an absent or empty folder is written;
* a folder that holds files is refused with one line naming it and ``--overwrite`` (the
  user's files stay byte-identical), unless it holds the same command's own work with the same
  settings: a resumable command (``sample``, ``upscale``) records its settings in
  ``OUT/relaydiff-settings.json`` (:func:`filling_folder`), and a re-run with equal settings
  continues that work;
* with ``--overwrite`` the old content is replaced atomically: the new content is assembled in a
  temporary sibling folder and renamed into place at the end
  (:func:`relaydiff.io.files.atomic_folder`), so a failure or a kill midway leaves the old
  content as it was, never a mix.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .files import atomic_folder, check_writable_folder, dumps_json, loads_strict, read_json, write_json

SETTINGS_FILE = "relaydiff-settings.json"
SHOWN_NAMES = 3  # entries of an occupied folder named in the refusal


def occupied_error(path: Path, holds: str | None = None, flag: str = "--out") -> ValueError:
    """The refusal of an output folder that already holds ``holds`` (default: its first few
    entries) in one line: the folder, what it holds, and the two ways on."""
    if holds is None:
        holds = _contents(sorted(p.name for p in path.iterdir()), None, None)
    return ValueError(f"{flag} {path}: already holds {holds}; give --overwrite to replace its "
                      f"content, or choose another {flag}")


def _normal(settings: dict[str, Any]) -> Any:
    """``settings`` as they read back from JSON (tuples become lists), for comparison."""
    return loads_strict(dumps_json(settings))


def _recorded(path: Path) -> Any:
    """The settings recorded in ``path``; ``None`` when there is no (readable) record."""
    try:
        return read_json(path / SETTINGS_FILE)
    except ValueError:
        return None


def _change(key: str, old: Any, new: Any) -> str:
    """``--steps 4 there, 3 now`` (``--cascade differs`` for values too long to show)."""
    there, now = ("not given" if v is None else dumps_json(v, indent=None) for v in (old, new))
    return f"{key} differs" if max(len(there), len(now)) > 24 else f"{key} {there} there, {now} now"


def _contents(entries: list[str], old: Any, new: Any) -> str:
    """What an occupied folder holds, in words: another command's output, results of other
    settings (naming the first differences), or its first few entries."""
    if isinstance(old, dict) and isinstance(new, dict):
        if old.get("command") != new.get("command"):
            return f"the output of relaydiff {old.get('command')}"
        diffs = [_change(key, old.get(key), value) for key, value in new.items() if old.get(key) != value]
        return "results of other settings" + (f" ({'; '.join(diffs[:2])})" if diffs else "")
    shown = ", ".join(entries[:SHOWN_NAMES]) + (", …" if len(entries) > SHOWN_NAMES else "")
    return f"{len(entries)} item(s) ({shown})"


def claim_folder(path: str | Path, *, overwrite: bool, settings: dict[str, Any] | None = None,
                 flag: str = "--out") -> bool:
    """Check the output folder ``path`` before any compute; returns whether its content is to
    be replaced (``overwrite`` given and the folder holds something else).

    ``settings`` (resumable commands, with a ``"command"`` key): what determines the output; a
    folder whose record equals them is continued (``False``). Without ``settings`` (a command
    that writes the whole folder at once, through :func:`~relaydiff.io.files.atomic_folder`) any
    content counts as something else. ``ValueError`` naming ``path``, what it holds and
    ``--overwrite`` when it is occupied and ``overwrite`` is not given; ``ValueError`` too when
    ``path`` is a file or cannot be written (:func:`~relaydiff.io.files.check_writable_folder`).
    """
    path = Path(path)
    entries = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    wanted = None if settings is None else _normal(settings)
    old = _recorded(path) if entries and wanted is not None else None
    resume = bool(entries) and wanted is not None and old == wanted
    replace = bool(entries) and not resume
    if replace and not overwrite:
        raise occupied_error(path, _contents(entries, old, wanted), flag)
    check_writable_folder(path, flag, sibling=replace or settings is None)
    return replace


@contextlib.contextmanager
def filling_folder(path: str | Path, *, replace: bool,
                   settings: dict[str, Any] | None = None) -> Iterator[Path]:
    """The folder to write the output of a resumable command into, with ``settings`` recorded
    first (so that an interrupted run is recognised and continued).

    ``replace`` (from :func:`claim_folder`): a temporary sibling, renamed over ``path`` when the
    ``with`` block completes (on an exception it is removed and ``path`` is untouched);
    otherwise ``path`` itself, where files are added one by one (resumable).
    """
    path = Path(path)
    with atomic_folder(path) if replace else contextlib.nullcontext(path) as folder:
        folder.mkdir(parents=True, exist_ok=True)
        if settings is not None:
            write_json(settings, folder / SETTINGS_FILE)
        yield folder
