"""Files that are either complete or absent: atomic file and folder writes, strict JSON, hashes.

Every file relaydiff writes goes through :func:`atomic_writer` (one file) or
:func:`atomic_folder` (a folder of files, e.g. a cascade stage or a checkpoint): the data is
written under a temporary name in the destination's folder and renamed into place at the end,
so an interrupted or failed write never leaves a half-written file and never damages what was
there before.

JSON is written strictly (no ``NaN``/``Infinity``, which other JSON parsers reject); values that
have no finite number (e.g. "no limit") are written as ``null`` (:func:`finite_or_none`). Old
files with ``Infinity`` still load.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_writer(path: str | Path, *, durable: bool = True) -> Iterator[BinaryIO]:
    """A binary file that becomes ``path`` only when the ``with`` block completes.

    It is a temporary file in the same folder, renamed over ``path`` (``os.replace``) at the
    end; on any exception it is removed and ``path`` is untouched. ``durable`` also flushes the
    file to disk (``fsync``) before the rename, so that it survives a power loss; bulk writes of
    many files whose completion another file records skip it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | Path, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_writer`)."""
    with atomic_writer(path, durable=durable) as f:
        f.write(data)


def fsync_tree(folder: Path) -> None:
    """Flush every file of ``folder`` (recursively) and the folders themselves to disk."""
    for path in sorted(folder.rglob("*"), reverse=True):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_folder(path: str | Path, *, tmp_prefix: str | None = None) -> Iterator[Path]:
    """A folder that becomes ``path`` only when the ``with`` block completes.

    Yields an empty temporary sibling folder to fill. At the end its files are flushed to disk,
    an existing ``path`` is moved aside, the new folder renamed into place and the old one
    removed; on any exception the temporary folder is removed and ``path`` is untouched.
    ``tmp_prefix`` names the temporary folder (default ``.<name>.``), so that a reader can
    ignore, and a later writer remove, what a killed process left behind.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path}: exists and is not a folder; choose another output folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=tmp_prefix or f".{path.name}.", dir=path.parent))
    try:
        tmp.chmod(0o777 & ~_UMASK)
        yield tmp
        fsync_tree(tmp)
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_writable_folder(path: str | Path, what: str = "--out", *, sibling: bool = False) -> Path:
    """Make sure ``path`` is, or can become, a folder this process can write into, before any
    compute is spent; ``ValueError`` naming ``path`` otherwise. Creates nothing: the check
    makes and removes a temporary folder in ``path`` or its nearest existing parent.

    ``sibling``: the folder is assembled as a temporary sibling and renamed into place
    (:func:`atomic_folder`), so it is its parent that must be writable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path}: exists and is a file; give a folder")
    probe = path.parent if sibling else path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"{what} {path}: {probe} is a file, so no folder can be made there")
    try:
        with tempfile.TemporaryDirectory(prefix=".relaydiff-probe-", dir=probe):
            pass
    except OSError as e:
        raise ValueError(f"{what} {path}: cannot write in {probe} ({e.strerror or e}); choose a "
                         "folder you can write to") from None
    return path


def write_failure(path: str | Path, error: OSError, advice: str = "") -> OSError:
    """The ``OSError`` to raise when writing ``path`` failed with ``error``: one line naming the
    file and the reason in words ("no space left on the device"), then ``advice`` (what to do).
    Keeps ``error.errno``."""
    reason = {errno.ENOSPC: "no space left on the device",
              errno.EDQUOT: "disk quota exceeded"}.get(error.errno or 0) or error.strerror or str(error)
    failure = OSError(f"{path}: could not write ({reason})" + (f"; {advice}" if advice else ""))
    failure.errno = error.errno
    return failure


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """relaydiff's cache folder: ``cache_dir``, else ``$RELAYDIFF_CACHE``, else
    ``~/.cache/relaydiff`` (downloads, built data sets, reference statistics)."""
    if cache_dir is not None:
        root = Path(cache_dir).expanduser()
    else:
        env = os.environ.get("RELAYDIFF_CACHE")
        root = Path(env).expanduser() if env else Path.home() / ".cache" / "relaydiff"
    if root.exists() and not root.is_dir():
        raise ValueError(f"cache folder {root} is a file; give a folder (or remove the file)")
    return root


# ---------------------------------------------------------------------------- JSON
def finite_or_none(obj: Any) -> Any:
    """``obj`` with every non-finite float (``nan``, ``±inf``) replaced by ``None`` (recursively
    through dicts, lists and tuples), for values whose "no number" is meaningful."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def dumps_json(obj: Any, *, indent: int | None = 2) -> str:
    """Strict JSON text: ``ValueError`` on ``NaN``/``Infinity`` (map them with
    :func:`finite_or_none` where "no number" is meant)."""
    try:
        return json.dumps(obj, indent=indent, ensure_ascii=False, allow_nan=False)
    except ValueError as e:
        raise ValueError(f"{e}: relaydiff writes strict JSON; use None for 'no value'") from None


def write_json(obj: Any, path: str | Path, *, durable: bool = True) -> None:
    """Write ``obj`` as strict, indented UTF-8 JSON to ``path`` atomically."""
    write_bytes_atomic(path, (dumps_json(obj) + "\n").encode("utf-8"), durable=durable)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not strict JSON")


def loads_strict(text: str) -> Any:
    """Parse JSON text, refusing the non-standard constants ``NaN``, ``Infinity``, ``-Infinity``."""
    return json.loads(text, parse_constant=_reject_constant)


def read_json(path: str | Path) -> Any:
    """Read a JSON file (old files with ``Infinity`` are accepted); a missing or corrupt file
    raises ``ValueError`` naming it."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}); fix or delete the file") from None


# ---------------------------------------------------------------------------- hashes
def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(items: Iterable[tuple[str, bytes]]) -> str:
    """``sha256:<hex>`` over (name, content) pairs, order-sensitive and unambiguous."""
    h = hashlib.sha256()
    for name, data in items:
        encoded = name.encode("utf-8")
        h.update(len(encoded).to_bytes(8, "little") + encoded)
        h.update(len(data).to_bytes(8, "little") + data)
    return "sha256:" + h.hexdigest()
