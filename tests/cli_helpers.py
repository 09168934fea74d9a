"""Running the ``relaydiff`` command line in tests: in a subprocess or in this process, and the
check that a refusal is one line ``error: …`` with exit status 2 and no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from relaydiff.app.cli import main


def run(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
    """``python -m relaydiff ARGS`` in a subprocess."""
    return subprocess.run([sys.executable, "-m", "relaydiff", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def run_cli(*args, capsys) -> tuple[int, str, str]:
    """``relaydiff ARGS`` through its ``main()`` in this process (monkeypatches apply):
    exit status, stdout, stderr."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
        raise SystemExit(0)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def one_line(r: subprocess.CompletedProcess | tuple[int, str, str], needle: str) -> None:
    """Exit status 2, exactly one ``error:`` line, ``needle`` in stderr, no traceback."""
    code, _, err = (r.returncode, r.stdout, r.stderr) if isinstance(r, subprocess.CompletedProcess) else r
    assert code == 2, (code, err[-2000:])
    assert needle in err, err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
