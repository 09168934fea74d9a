"""`relaydiff demo --smoke` end to end, the demo's bad-input handling, and its parts: the metric
sentences, the split of the training cap, the progress lines."""

from __future__ import annotations

import html.parser
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

SECTIONS = ["samples", "three-stages", "trajectories", "metrics", "snr", "block-noise", "artifacts",
            "training"]


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


@dataclass
class Smoke:
    out: Path
    env: dict  # its own empty cache of reference statistics; data and weights shared
    args: list[str]
    stdout: str


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Smoke:
    from relaydiff.io.files import cache_root

    tmp = tmp_path_factory.mktemp("demo")
    real = cache_root()
    (tmp / "cache").mkdir()
    if (real / "inception").is_dir():
        (tmp / "cache" / "inception").symlink_to(real / "inception")
    env = {**os.environ, "RELAYDIFF_CACHE": str(tmp / "cache")}
    args = ["demo", "--smoke", "--out", str(tmp / "out"), "--cache", str(real)]
    r = run(*args, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return Smoke(tmp / "out", env, args, r.stdout)


def test_smoke_report_has_every_section_and_valid_images(smoke):
    parser = _Report()
    parser.feed((smoke.out / "report.html").read_text())
    assert parser.sections == SECTIONS
    expected = {"samples/stage1_16/grid.png": 16, "samples/grid.png": 64}
    for src in parser.images:
        path = smoke.out / src
        with Image.open(path) as im:
            im.load()
            assert im.size[0] > 0 and im.size[1] > 0
            if src in expected:  # grids tile whole images of the stage's resolution
                assert im.size[0] % expected[src] == 0 and im.size[1] % expected[src] == 0
    with Image.open(smoke.out / "samples" / "000000" / "000000.png") as im:
        assert im.size == (64, 64)
    with Image.open(smoke.out / "samples" / "stage1_16" / "000000" / "000000.png") as im:
        assert im.size == (16, 16)
    for folder, size in (("samples_256", 256), ("samples_256/stage2_64", 64),
                         ("samples_256/stage1_16", 16)):
        with Image.open(smoke.out / folder / "000000" / "000000.png") as im:
            assert im.size == (size, size)
    with Image.open(smoke.out / "figures" / "three_stages.png") as im:
        assert im.size[0] >= 3 * 256 and im.size[1] >= 256


def test_smoke_metrics_are_finite_numbers(smoke):
    results = json.loads((smoke.out / "results.json").read_text())
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
        assert (smoke.out / "samples" / name).read_bytes() == (tmp_path / "s" / name).read_bytes()
    text = (smoke.out / "report.html").read_text()
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
    runs = results["your_training"]
    assert all(run["cut_short"] and run["cost"]["images_seen"] > 0 for run in runs.values())
    assert runs["relay_16to64"]["minutes_share"] >= 0.0001 / 2  # stage 1 cannot take it all
    assert "Notice: stage1_16 and relay_16to64 did not reach their images budget" in (
        out / "report.html").read_text()


def test_smoke_training_gives_each_stage_its_share_and_shows_both(smoke):
    results = json.loads((smoke.out / "results.json").read_text())["your_training"]
    assert list(results) == ["stage1_16", "relay_16to64"]
    first, relay = results["stage1_16"], results["relay_16to64"]
    assert first["minutes_share"] == 3.0  # half of the default 6-minute cap
    assert relay["minutes_share"] == pytest.approx(6.0 - first["minutes_used"])
    for stage in (first, relay):
        assert stage["cost"]["images_seen"] == stage["images_budget"] == 48
        assert 0 < stage["minutes_used"] <= stage["minutes_share"]
    section = (smoke.out / "report.html").read_text().split('<section id="training">')[1]
    section = section.split("</section>")[0]
    assert "stage1_16 saw 48 of its 48 training images" in section
    assert "relay_16to64 saw 48 of its 48 training images" in section
    assert "loss curves: stage1_16 and relay_16to64" in section
    assert "at most 3.0 min more (its share: 3.0 min of the 6-minute cap)" in smoke.stdout


def test_rerun_continues_without_redoing_and_says_what_it_reuses(smoke):
    """The first run computed the reference statistics (its cache was empty) and said so; the
    re-run reads them from the cache, silently, and names the training it reuses."""
    assert "Inception features of the reference (48 data images) computed" in smoke.stdout
    before = (smoke.out / "samples" / "000000" / "000000.png").stat().st_mtime_ns
    r = run(*smoke.args, env=smoke.env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (smoke.out / "samples" / "000000" / "000000.png").stat().st_mtime_ns == before
    assert "Inception features of the reference" not in r.stdout
    for name in ("stage1_16", "relay_16to64"):
        assert f"{name}: finished earlier (48 images in " in r.stdout
    assert "more minutes" not in r.stdout and "training stage1_16" not in r.stdout


def test_metric_sentences_follow_the_numbers():
    from relaydiff.analysis.floor_comparison import explain_metrics, summary

    samples = {"FID": 78.8, "KID ×1e3": 20.0, "precision": 0.6, "recall": 0.5, "SWD ×1e3": 64.0,
               "spectrum distance (dB)": math.nan}
    floor = {"FID": 192.6, "KID ×1e3": 150.0, "precision": 0.4, "recall": 0.3, "SWD ×1e3": 33.0,
             "spectrum distance (dB)": 1.0}
    text = explain_metrics([samples, floor])
    assert ("The samples beat the up(down(x)) floor on FID, KID ×1e3, precision and recall, but "
            "not on SWD ×1e3 (64.0 vs 33.0).") in text
    assert "<b>SWD ×1e3</b>" in text and "do not beat the floor (64.0 vs 33.0)" in text
    assert "Losing to it on SWD ×1e3" in text and "Inception-feature metrics" not in text
    assert "spectrum distance" not in text.split("SWD and the spectrum distance")[0]  # no NaN row

    # The reverse: worse on the Inception metrics (precision/recall: higher is better), better
    # on SWD.
    reverse = summary(floor | {"SWD ×1e3": 33.0}, samples | {"SWD ×1e3": 64.0})
    assert reverse.startswith("The samples beat the up(down(x)) floor on SWD ×1e3, but not on "
                              "FID (192.6 vs 78.8), KID ×1e3 (150.0 vs 20.0), precision (0.4 vs "
                              "0.6) and recall (0.3 vs 0.5).")
    assert "Inception-feature metrics" in reverse and "Beating it on SWD ×1e3" in reverse
    assert "Losing to it" not in reverse
    assert summary(samples | {"SWD ×1e3": 1.0}, floor).startswith(
        "The samples beat the up(down(x)) floor on every metric here")
    assert summary(floor, floor).startswith("The samples do not beat the up(down(x)) floor on "
                                            "any metric")


def test_each_stage_gets_its_share_of_the_cap_even_when_stage_1_overruns(tmp_path, monkeypatch):
    """The old failure: stage 1 took the whole cap and the relay stage trained one step."""
    from relaydiff.app import demo_training
    from relaydiff.app.demo_log import Clock
    from relaydiff.training.cost import TrainingCost

    asked = {}

    def train(cfg, run_dir, *, resume, max_minutes, progress):
        overrun = 1.5 if run_dir.name == "stage1_16" else 1.0  # a busy machine: 50 % over
        asked[run_dir.name] = max_minutes
        cost = TrainingCost(images_seen=cfg.batch, wall_seconds=60 * max_minutes * overrun)
        return type("Result", (), {"finished": False, "images_seen": cfg.batch, "cost": cost})

    monkeypatch.setattr(demo_training, "train", train)
    runs = demo_training.train_stages(tmp_path, tmp_path / "data", 6.0, 0, False, Clock())
    assert asked == {"stage1_16": 3.0, "relay_16to64": 3.0}
    assert [r["minutes_share"] for r in runs.values()] == [3.0, 3.0]
    assert all(r["cut_short"] for r in runs.values())
    assert demo_training.stage_minutes(6.0, 1.0) == (3.0, 5.0)  # stage 1's leftover goes on
    text = demo_training.training_text(runs, 6.0)
    assert "stage1_16 saw 32 of its 14,400 training images in 4.5 min of its 3.0 min" in text
    assert "relay_16to64 saw 8 of its 6,000 training images in 3.0 min of its 3.0 min" in text
    assert ("Notice: stage1_16 and relay_16to64 did not reach their images budget within their "
            "share of the 6-minute cap") in text


def test_the_loss_figure_has_a_panel_per_stage():
    from relaydiff.analysis.plotting import plot_loss_curves

    fig = plot_loss_curves({"stage1_16": [(32, 1.0), (64, 0.5)], "relay_16to64": []})
    first, relay = fig.axes
    assert (first.get_title(), relay.get_title()) == ("stage1_16", "relay_16to64")
    assert list(first.lines[0].get_xdata()) == [32, 64] and not relay.lines
    assert [t.get_text() for t in relay.texts] == ["no loss logged yet"]


def test_progress_lines_give_counts_and_elapsed_time_while_the_block_runs(capsys):
    from relaydiff.app.demo_log import Clock, progress

    done = []
    with progress(Clock(), "sampling", lambda: f"{len(done)}/4 images written", every=0.05):
        for _ in range(4):
            time.sleep(0.08)
            done.append(1)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) >= 3
    assert all(line.startswith("[demo ") and "] sampling: " in line and
               line.endswith(" min so far") for line in lines)
    assert "/4 images written" in lines[0] and lines[-1] != lines[0]
    time.sleep(0.1)
    assert capsys.readouterr().out == ""  # no line after the block


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
