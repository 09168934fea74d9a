"""Finished work and the user's files are never overwritten or deleted without ``--overwrite``.

Every command that writes a folder refuses one that already holds files, with one line naming
the folder and ``--overwrite``, and leaves the files byte-identical; a resumable command
continues its own unfinished work of the same settings; with ``--overwrite`` the old content is
replaced atomically, so an exception or a kill midway leaves it as it was.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import one_line, run_cli
from PIL import Image
from released_helpers import edm_network_record, write_snapshot
from training_helpers import image_folder, posthoc_config

import relaydiff.app.posthoc
import relaydiff.pretrained
from relaydiff import RelayCascade
from relaydiff.io.out_folder import SETTINGS_FILE
from relaydiff.networks import build_network
from relaydiff.precond import EDMPrecond
from relaydiff.stage import load_stage
from relaydiff.training.loop import train

NOTES = b"my notes: keep them\n"
UNET = dict(model_channels=8, channel_mult=[1], num_blocks=1, attn_resolutions=[], dropout=0.0)


def files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder``: relative path → bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def user_folder(path: Path) -> Path:
    """A folder of the user's that holds ``notes.txt``."""
    path.mkdir(parents=True)
    (path / "notes.txt").write_bytes(NOTES)
    return path


def refused(result: tuple[int, str, str], out: Path) -> None:
    one_line(result, f"--out {out}: already holds")
    assert "give --overwrite" in result[2], result[2]


def hidden(parent: Path) -> list[str]:
    """Temporary folders left beside the outputs (none after a completed or failed command)."""
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


@pytest.fixture(scope="module")
def toy_stages(tmp_path_factory) -> list[Path]:
    """The two stage folders of the toy 16→64 cascade (what `cascade build --stage` takes)."""
    root = tmp_path_factory.mktemp("toy") / "cascade"
    RelayCascade.toy().save_pretrained(root)
    return sorted(p for p in root.iterdir() if p.is_dir())


@pytest.fixture
def low_res(tmp_path) -> Path:
    """Two 16-px images to upscale."""
    return image_folder(tmp_path / "in", 2, 16)


COMMANDS = {
    "sample": lambda d: ["sample", "--toy", "--seeds", "0"],
    "upscale": lambda d: ["upscale", "--toy", "--input", d["images"]],
    "cascade build": lambda d: ["cascade", "build", "--stage", d["stage"]],
    "convert": lambda d: ["convert", d["pkl"]],
    "ema reconstruct": lambda d: ["ema", "reconstruct", d["run"], "--sigma-rel", "0.07"],
    "ema sweep": lambda d: ["ema", "sweep", d["run"], "--sigma-rel", "0.05:0.1:2", "--ref",
                            d["images"]],
    "analyze spectrum": lambda d: ["analyze", "spectrum", "--input", d["images"], "--low", "4",
                                   "--high", "16"],
    "data build": lambda d: ["data", "build", d["images"], "--resolution", "16"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_folder_holding_the_users_files_is_refused_and_kept(command, tmp_path, toy_stages,
                                                              low_res, capsys):
    (tmp_path / "run").mkdir()
    inputs = {"images": low_res, "stage": toy_stages[0], "run": tmp_path / "run",
              "pkl": write_snapshot(tmp_path / "net.pkl", edm_network_record(
                  EDMPrecond(build_network({"name": "unet", "img_resolution": 16, **UNET})), UNET, 16))}
    out = user_folder(tmp_path / "out")
    refused(run_cli(*COMMANDS[command](inputs), "--out", out, capsys=capsys), out)
    assert files(out) == {"notes.txt": NOTES} and not hidden(tmp_path)


def test_upscale_keeps_a_user_file_of_an_output_name_unless_overwrite(tmp_path, low_res, capsys):
    out = tmp_path / "out"
    out.mkdir()
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(out / "img000.png")  # the user's own
    before = files(out)
    result = run_cli("upscale", "--toy", "--input", low_res, "--out", out, capsys=capsys)
    refused(result, out)
    assert "img000.png" in result[2] and files(out) == before
    code, text, err = run_cli("upscale", "--toy", "--input", low_res, "--out", out, "--overwrite",
                              capsys=capsys)
    assert code == 0 and "2 image(s) upscaled" in text, err
    assert sorted(files(out)) == ["img000.png", "img001.png", SETTINGS_FILE]
    assert Image.open(out / "img000.png").size == (64, 64) and not hidden(tmp_path)


def test_upscale_rerun_completes_same_settings_and_refuses_other_settings(tmp_path, low_res, capsys):
    out = tmp_path / "out"
    args = ("upscale", "--toy", "--input", low_res, "--out", out)
    assert run_cli(*args, capsys=capsys)[0] == 0
    first = files(out)
    (out / "img001.png").unlink()  # an interrupted run: one output missing
    code, text, _ = run_cli(*args, capsys=capsys)
    assert code == 0 and "1 image(s) upscaled to 64px" in text and "(1 already there)" in text
    assert files(out) == first  # the same bytes as in one go
    result = run_cli(*args, "--input-noise", "0.1", capsys=capsys)
    refused(result, out)
    assert "--input-noise 0.0 there, 0.1 now" in result[2] and files(out) == first
    code, _, err = run_cli(*args, "--input-noise", "0.1", "--overwrite", capsys=capsys)
    assert code == 0, err
    after = files(out)
    assert after["img000.png"] != first["img000.png"] and after["img001.png"] != first["img001.png"]
    assert json.loads(after[SETTINGS_FILE])["--input-noise"] == 0.1 and not hidden(tmp_path)


KILL_ON_SECOND_FILE = """\
import os, signal, sys
import relaydiff.io.images as images
original, calls = images.save_png, []
def killed(array, path):
    calls.append(path)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    original(array, path)
images.save_png = killed
from relaydiff.app.cli import main
main(sys.argv[1:])
"""


def test_upscale_overwrite_killed_midway_leaves_the_earlier_results(tmp_path, low_res, capsys):
    out = tmp_path / "out"
    args = ["upscale", "--toy", "--input", str(low_res), "--out", str(out)]
    assert run_cli(*args, capsys=capsys)[0] == 0
    first = files(out)
    r = subprocess.run([sys.executable, "-c", KILL_ON_SECOND_FILE, *args, "--input-noise", "0.1",
                        "--overwrite"], capture_output=True, text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert files(out) == first  # not a mix of old and new outputs
    code, _, err = run_cli(*args, "--input-noise", "0.1", "--overwrite", capsys=capsys)
    assert code == 0 and json.loads((out / SETTINGS_FILE).read_text())["--input-noise"] == 0.1, err


def test_sample_continues_its_own_folder_and_refuses_other_settings(tmp_path, capsys):
    out = tmp_path / "s"
    assert run_cli("sample", "--toy", "--seeds", "0-1", "--out", out, capsys=capsys)[0] == 0
    code, text, _ = run_cli("sample", "--toy", "--seeds", "0-2", "--out", out, capsys=capsys)
    assert code == 0 and "1 new image(s)" in text and "(2 already there)" in text
    before = files(out)
    result = run_cli("sample", "--toy", "--seeds", "0-2", "--steps", "3", "--out", out,
                     capsys=capsys)
    refused(result, out)
    assert "--steps not given there, 3 now" in result[2] and files(out) == before
    code, text, err = run_cli("sample", "--toy", "--seeds", "0-2", "--steps", "3", "--out", out,
                              "--overwrite", capsys=capsys)
    assert code == 0 and "3 new image(s)" in text, err
    assert files(out)["000000/000000.png"] != before["000000/000000.png"] and not hidden(tmp_path)


def test_cascade_build_refuses_an_existing_cascade_and_overwrite_replaces_it_atomically(
        tmp_path, toy_stages, capsys, monkeypatch):
    out = tmp_path / "cascade"
    stages = [arg for stage in toy_stages for arg in ("--stage", stage)]
    assert run_cli("cascade", "build", *stages, "--out", out, capsys=capsys)[0] == 0
    before = files(out)
    result = run_cli("cascade", "build", *stages[:2], "--out", out, capsys=capsys)
    refused(result, out)
    assert "cascade.json" in result[2] and files(out) == before

    original = relaydiff.pretrained.save_stage

    def interrupted(*args, **kwargs):  # Ctrl-C once the new cascade's first stage is written
        original(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(relaydiff.pretrained, "save_stage", interrupted)
    code, _, _ = run_cli("cascade", "build", *stages[:2], "--out", out, "--overwrite", capsys=capsys)
    assert code == 130 and files(out) == before and not hidden(tmp_path)
    monkeypatch.undo()
    code, text, err = run_cli("cascade", "build", *stages[:2], "--out", out, "--overwrite",
                              capsys=capsys)
    assert code == 0 and "1 stage(s)" in text, err
    assert len(RelayCascade.from_pretrained(out).configs) == 1 and not hidden(tmp_path)


def test_convert_replaces_a_folder_only_with_overwrite(tmp_path, capsys):
    den = EDMPrecond(build_network({"name": "unet", "img_resolution": 16, **UNET}))
    pkl = write_snapshot(tmp_path / "net.pkl", edm_network_record(den, UNET, 16))
    out = user_folder(tmp_path / "stage")
    refused(run_cli("convert", pkl, "--out", out, capsys=capsys), out)
    assert files(out) == {"notes.txt": NOTES}
    code, _, err = run_cli("convert", pkl, "--out", out, "--overwrite", capsys=capsys)
    assert code == 0, err
    assert sorted(files(out)) == ["config.json", "model.safetensors", "source.json"]
    assert load_stage(out)[0].resolution == 16 and not hidden(tmp_path)


def test_ema_reconstruct_replaces_a_stage_only_with_overwrite_and_atomically(tmp_path, capsys,
                                                                             monkeypatch):
    train(posthoc_config(image_folder(tmp_path / "d", 8, 16), 48), tmp_path / "run", progress=False)
    out = tmp_path / "stage"
    args = ("ema", "reconstruct", tmp_path / "run", "--out", out, "--sigma-rel")
    assert run_cli(*args, "0.07", capsys=capsys)[0] == 0
    before = files(out)
    result = run_cli(*args, "0.09", capsys=capsys)
    refused(result, out)
    assert "config.json" in result[2] and files(out) == before

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(relaydiff.app.posthoc, "save_stage", disk_full)
    assert run_cli(*args, "0.09", "--overwrite", capsys=capsys)[0] == 2
    assert files(out) == before and not hidden(tmp_path)
    monkeypatch.undo()
    assert run_cli(*args, "0.09", "--overwrite", capsys=capsys)[0] == 0
    after = files(out)
    assert json.loads(after["source.json"])["posthoc_ema"]["sigma_rel"] == 0.09
    assert after["model.safetensors"] != before["model.safetensors"] and not hidden(tmp_path)
