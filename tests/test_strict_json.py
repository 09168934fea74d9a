"""Every JSON file relaydiff wrote during the test run is strict JSON (no NaN/Infinity).

``conftest.py`` runs this test last, so it sees the files of every test before it: everything
under pytest's temporary folder, what the suite added to relaydiff's cache, and the packaged
cascade's files. A ``.jsonl`` log is checked line by line.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from relaydiff.io.files import cache_root, loads_strict
from relaydiff.pretrained import pretrained_path

SESSION_START = time.time()


def _json_files(root: Path, newer_than: float | None = None) -> list[Path]:
    if not root.is_dir():
        return []
    found = []
    for path in root.rglob("*"):
        if path.suffix in (".json", ".jsonl") and path.is_file() and ".venv" not in path.parts:
            if newer_than is None or path.stat().st_mtime >= newer_than:
                found.append(path)
    return found


def test_strict_parser_refuses_non_finite_numbers():
    for text in ('{"a": NaN}', '{"a": Infinity}', '[-Infinity]'):
        with pytest.raises(ValueError, match="not strict JSON"):
            loads_strict(text)
    assert loads_strict('{"a": null, "b": 1e308}') == {"a": None, "b": 1e308}


def test_every_json_the_suite_wrote_is_strict(tmp_path_factory):
    files = (_json_files(tmp_path_factory.getbasetemp())
             + _json_files(cache_root(), newer_than=SESSION_START - 1)
             + _json_files(pretrained_path().parent))
    assert any(p.is_relative_to(pretrained_path().parent) for p in files)
    bad = []
    for path in files:
        text = path.read_text(encoding="utf-8")
        chunks = text.splitlines() if path.suffix == ".jsonl" else [text]
        for line, chunk in enumerate(chunks, 1):
            if not chunk.strip():
                continue
            try:
                loads_strict(chunk)
            except ValueError as e:
                bad.append(f"{path}:{line}: {e}")
    assert bad == [], "\n".join(bad[:20])
    print(f"{len(files)} JSON files checked ({os.environ.get('PYTEST_XDIST_WORKER', 'one process')})")
