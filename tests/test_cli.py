"""The command line: help texts, sampling to PNG files, resumption and one-line errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from relaydiff.app.cli import cli

CONTRACT = ["train", "sample", "upscale", "eval", "data", "analyze", "demo"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "relaydiff", *args], capture_output=True,
                          text=True, timeout=300)


def test_every_command_has_help():
    assert run("--help").returncode == 0
    for name in cli.commands:
        r = run(name, "--help")
        assert r.returncode == 0 and "Usage" in r.stdout, (name, r.stderr)


def test_sample_writes_pngs_and_resumes(tmp_path):
    out = tmp_path / "s"
    r = run("sample", "--toy", "--out", str(out), "--seeds", "0-4", "--batch", "2")
    assert r.returncode == 0, r.stderr
    files = sorted((out / "000000").glob("*.png"))
    assert [f.name for f in files] == [f"{i:06d}.png" for i in range(5)]
    assert np.asarray(Image.open(files[0])).shape == (64, 64, 3)
    assert (out / "grid.png").exists() and (out / "labels.json").exists()
    before = {f: f.stat().st_mtime_ns for f in files}
    r = run("sample", "--toy", "--out", str(out), "--seeds", "0-5")
    assert r.returncode == 0 and "1 new image(s)" in r.stdout
    assert all(f.stat().st_mtime_ns == t for f, t in before.items())


@pytest.mark.parametrize("args, needle", [
    (["sample", "--toy", "--seeds", "3-1"], "range '3-1' is empty"),
    (["sample", "--toy", "--seeds", "x"], "'x' is not a seed"),
    (["sample", "--cascade", "/nonexistent/dir"], "cascade.json: file not found"),
    (["sample", "--toy", "--class", "2"], "unconditional"),
])
def test_bad_input_is_one_line(tmp_path, args, needle):
    r = run(*args, "--out", str(tmp_path / "o"))
    assert r.returncode != 0
    assert needle in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_out_path_that_is_a_file_is_refused_and_kept(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("keep me")
    r = run("sample", "--toy", "--out", str(f))
    assert r.returncode != 0 and "exists and is a file" in r.stderr
    assert f.read_text() == "keep me"


def test_upscale_relays_user_images(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(2):
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(src / f"{i}.png")
    r = run("upscale", "--toy", "--input", str(src), "--out", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr
    assert np.asarray(Image.open(tmp_path / "o" / "1.png")).shape == (64, 64, 3)
    Image.fromarray(np.zeros((24, 24, 3), np.uint8)).save(src / "odd.png")
    r = run("upscale", "--toy", "--input", str(src), "--out", str(tmp_path / "o2"))
    assert r.returncode == 2 and "different sizes" in r.stderr


@pytest.mark.parametrize("command", [["upscale", "--toy"], ["analyze", "spectrum"]])
def test_bad_input_folders_are_one_line_and_nothing_is_lost(tmp_path, command):
    """Empty, missing and unreadable input folders, and an --out that is a file."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad").mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "bad" / "fine.png")
    (tmp_path / "bad" / "broken.png").write_bytes(b"not a png")
    keep = tmp_path / "keep.txt"
    keep.write_text("keep me")
    cases = [
        (["--input", str(tmp_path / "empty"), "--out", str(tmp_path / "o")], "holds no PNG"),
        (["--input", str(tmp_path / "missing"), "--out", str(tmp_path / "o")], "not a folder"),
        (["--input", str(tmp_path / "bad"), "--out", str(tmp_path / "o")],
         "broken.png: not a readable image"),
        (["--input", str(tmp_path / "bad"), "--out", str(keep)], "exists and is a file"),
    ]
    for args, needle in cases:
        r = run(*command, *args)
        assert r.returncode == 2 and needle in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert keep.read_text() == "keep me" and not (tmp_path / "o").exists()


def test_sample_without_cascade_uses_the_pretrained_one(tmp_path):
    from relaydiff.pretrained import pretrained_path

    assert (pretrained_path() / "cascade.json").is_file()
    r = run("sample", "--out", str(tmp_path / "p"), "--seeds", "0-1", "--relay-steps", "8",
            "--steps", "4")
    assert r.returncode == 0, r.stderr
    exact = [np.asarray(Image.open(tmp_path / "p" / "000000" / f"00000{i}.png")) for i in (0, 1)]
    assert exact[1].shape == (64, 64, 3)
    # --fast (oneDNN kept on CPU) changes only the rounding: the same images within a level or so.
    r = run("sample", "--out", str(tmp_path / "f"), "--seeds", "0-1", "--relay-steps", "8",
            "--steps", "4", "--fast")
    assert r.returncode == 0, r.stderr
    for i in (0, 1):
        fast = np.asarray(Image.open(tmp_path / "f" / "000000" / f"00000{i}.png"))
        assert np.abs(fast.astype(int) - exact[i]).mean() < 1.0


def test_torchrun_two_ranks_write_the_same_pngs_as_one_process(tmp_path):
    """Seeds dealt over 2 torchrun ranks (gloo, CPU) with batch 7 give byte-identical files to
    one process with batch 1; a second run over the same folder writes nothing new."""
    seeds = ["--seeds", "0-8", "--toy", "--steps", "4", "--relay-steps", "12"]
    one = run("sample", *seeds, "--batch", "1", "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--master_port=29517", "-m", "relaydiff", "sample", *seeds, "--batch", "7",
           "--out", str(tmp_path / "two")]
    two = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("0*.png"))
    assert len(files) == 9
    for f in files:
        assert (tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes(), f
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "rank 0: 0 new image(s)" in again.stdout + again.stderr
