"""`relaydiff demo --smoke` end to end, and the demo's bad-input handling."""

from __future__ import annotations

import html.parser
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

SECTIONS = ["samples", "trajectories", "metrics", "snr", "block-noise", "artifacts", "training"]


class _Report(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.images: list[str] = []
        self.cells: list[str] = []
        self._in_td = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append(attrs["id"])
        elif tag == "img":
            self.images.append(attrs["src"])
        self._in_td = tag == "td"

    def handle_data(self, data):
        if self._in_td:
            self.cells.append(data)


def run(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "relaydiff", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "out"
    r = run("demo", "--smoke", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_smoke_report_has_every_section_and_valid_images(smoke):
    parser = _Report()
    parser.feed((smoke / "report.html").read_text())
    assert parser.sections == SECTIONS
    expected = {"samples/stage1_16/grid.png": 16, "samples/grid.png": 64}
    for src in parser.images:
        path = smoke / src
        with Image.open(path) as im:
            im.load()
            assert im.size[0] > 0 and im.size[1] > 0
            if src in expected:  # grids tile whole images of the stage's resolution
                assert im.size[0] % expected[src] == 0 and im.size[1] % expected[src] == 0
    with Image.open(smoke / "samples" / "000000" / "000000.png") as im:
        assert im.size == (64, 64)
    with Image.open(smoke / "samples" / "stage1_16" / "000000" / "000000.png") as im:
        assert im.size == (16, 16)


def test_smoke_metrics_are_finite_numbers(smoke):
    results = json.loads((smoke / "results.json").read_text())
    assert len(results["metrics"]) == 2
    for row in results["metrics"]:
        numbers = [v for k, v in row.items() if k not in ("images",)]
        assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in numbers), row
    for run in results["your_training"].values():
        assert run["cost"]["images_seen"] > 0 and run["cost"]["flops_per_image"] > 0
        assert run["cut_short"] is False


def test_report_samples_are_the_packaged_cascades_pixels(smoke, tmp_path):
    """The report's grids show the packaged cascade: the same files `relaydiff sample` writes."""
    r = run("sample", "--seeds", "0-3", "--out", str(tmp_path / "s"))
    assert r.returncode == 0, r.stderr
    for seed in range(4):
        name = f"000000/{seed:06d}.png"
        assert (smoke / "samples" / name).read_bytes() == (tmp_path / "s" / name).read_bytes()
    text = (smoke / "report.html").read_text()
    assert "Samples of the packaged cascade" in text and "Your training run" in text
    assert "training images" in text  # your run's samples are labelled with images seen


def test_the_packaged_training_line_gives_each_guides_cost():
    from relaydiff.app.demo import _trained

    stage = {"stage": "stage1_edm_16", "images_seen": 310464, "device_hours": 1.0334, "device": "cpu",
             "guide": {"images_seen": 16000, "device_hours": 0.0203, "device": "cpu"}}
    assert _trained(stage) == ("stage1_edm_16: 310,464 images, 1.03 cpu-hours (its autoguidance "
                               "guide: 16,000 images, 0.02 cpu-hours)")
    del stage["guide"]
    assert _trained(stage) == "stage1_edm_16: 310,464 images, 1.03 cpu-hours"


def test_a_tiny_cap_cuts_training_short_with_a_notice(tmp_path):
    out = tmp_path / "capped"
    r = run("demo", "--smoke", "--out", str(out), "--minutes", "0.0001")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "NOTICE" in r.stdout and "cap" in r.stdout
    results = json.loads((out / "results.json").read_text())
    assert all(run["cut_short"] for run in results["your_training"].values())
    assert "Notice: the" in (out / "report.html").read_text()


def test_rerun_continues_without_redoing(smoke):
    before = (smoke / "samples" / "000000" / "000000.png").stat().st_mtime_ns
    r = run("demo", "--smoke", "--out", str(smoke))
    assert r.returncode == 0, r.stderr[-2000:]
    assert (smoke / "samples" / "000000" / "000000.png").stat().st_mtime_ns == before


def test_bad_input(tmp_path):
    f = tmp_path / "file"
    f.write_text("keep")
    for args, needle in ((["--minutes", "0"], "--minutes"), (["--out", str(f)], "is a file")):
        r = run("demo", "--smoke", *args)
        assert r.returncode == 2 and needle in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert f.read_text() == "keep"


def test_no_npm_and_no_cached_data_is_one_clear_line(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    os.symlink(sys.executable, bin_dir / "python")
    env = {**os.environ, "PATH": str(bin_dir), "RELAYDIFF_CACHE": str(tmp_path / "empty-cache")}
    assert shutil.which("npm", path=env["PATH"]) is None
    r = run("demo", "--smoke", "--out", str(tmp_path / "o"), env=env)
    assert r.returncode != 0
    assert "npm" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
