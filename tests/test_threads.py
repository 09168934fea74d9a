"""The command line's CPU thread policy (src/relaydiff/app/threads.py): OpenMP workers spin only
briefly, set before torch loads, and a user's own setting is kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from relaydiff.app.threads import POLICY, apply_thread_policy

SRC = str(Path(__file__).resolve().parents[1] / "src")
# Runs a real command through the entry point, then reports what OpenMP was started with.
PROBE = """
import json, os, sys
from relaydiff.app import cli
before = "torch" in sys.modules
cli.main(sys.argv[1:])
import torch
print(json.dumps({"torch_before_main": before, "wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                  "spincount": os.environ.get("GOMP_SPINCOUNT")}))
"""


def _probe(tmp_path: Path, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    done = subprocess.run([sys.executable, "-c", PROBE, "sample", "--toy", "--seeds", "0",
                           "--out", str(tmp_path / "s")],
                          env={**clean, "PYTHONPATH": SRC, **env}, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_command_gets_the_policy_before_torch_loads(tmp_path):
    result = _probe(tmp_path)
    assert result["torch_before_main"] is False  # so the setting reaches OpenMP
    assert result["spincount"] == POLICY["GOMP_SPINCOUNT"] == "1000"
    assert result["wait_policy"] is None


def test_a_users_own_setting_is_kept(tmp_path):
    active = _probe(tmp_path / "a", OMP_WAIT_POLICY="ACTIVE")
    assert active["wait_policy"] == "ACTIVE" and active["spincount"] is None
    assert _probe(tmp_path / "b", GOMP_SPINCOUNT="300000")["spincount"] == "300000"


def test_nothing_is_set_once_torch_is_loaded():
    import torch  # noqa: F401 (loaded, as in this test process)

    environ: dict[str, str] = {}
    assert apply_thread_policy(environ) == {} and environ == {}
