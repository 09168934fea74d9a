"""Tests of the data pipeline: datasets, relay-consistent building, sources, sample photos."""

from __future__ import annotations

import copy
import json
import os
import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from relaydiff import ops
from relaydiff.app.cli import main as cli_main
from relaydiff.data import build as build_module
from relaydiff.data.build import build_dataset, check_resolutions
from relaydiff.data.datasets import (
    ImageFolderDataset,
    ZipDataset,
    flip_decision,
    open_dataset,
)
from relaydiff.data.photos import PHOTOS, sample_photos
from relaydiff.data.resample import area_downsample, square_resize
from relaydiff.data.sources import (
    EMOJI_DATASOURCE,
    FLUENT_EMOJI_3D,
    SourceUnavailableError,
    codepoints,
    emoji_categories,
    fetch_fluent_emoji_3d,
    npm_tarball,
)
from relaydiff.io.images import load_image

RNG = np.random.default_rng(1234)


def random_rgb(h: int, w: int) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def write(path: Path, array: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    try:
        cli_main(args)
        code = 0
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.array(im.convert("RGB"))


# --------------------------------------------------------------------------- datasets


def test_folder_labels_from_subfolders_and_formats(tmp_path):
    a = write(tmp_path / "cat" / "a.png", random_rgb(16, 16))
    b = write(tmp_path / "dog" / "deep" / "b.webp", random_rgb(16, 16), lossless=True)
    write(tmp_path / "dog" / "c.jpg", random_rgb(16, 16), quality=95)
    ds = ImageFolderDataset(tmp_path)
    assert ds.names == ["cat/a.png", "dog/c.jpg", "dog/deep/b.webp"]
    assert ds.class_names == ["cat", "dog"] and ds.num_classes == 2
    assert ds.labels == [0, 1, 1] and ds.resolution == 16 and len(ds) == 3
    image, label = ds[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 16, 16) and label == 0
    assert torch.equal(image, torch.from_numpy(pixels(a)).permute(2, 0, 1))
    assert torch.equal(ds[2][0], torch.from_numpy(pixels(b)).permute(2, 0, 1))


def test_unlabelled_folder_and_hidden_files(tmp_path):
    write(tmp_path / "x.png", random_rgb(8, 8))
    write(tmp_path / "y.png", random_rgb(8, 8))
    (tmp_path / ".DS_Store.png").write_bytes(b"not an image")  # hidden: ignored
    ds = ImageFolderDataset(tmp_path)
    assert ds.labels is None and ds.class_names is None and ds.num_classes == 0
    assert ds[1][1] == -1 and len(ds) == 2


def test_rgba_composited_on_background_and_grey_to_rgb(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[0, :, 3] = 0  # transparent row
    rgba[1, :, 3] = 255  # opaque row
    rgba[2:, :, 3] = 128
    write(tmp_path / "rgba" / "a.png", rgba)
    image = ImageFolderDataset(tmp_path / "rgba", background="#102030")[0][0].numpy()
    bg = np.array([16, 32, 48])
    assert (image[:, 0] == bg[:, None]).all()
    assert (image[:, 1] == np.array([200, 100, 50])[:, None]).all()
    blend = 128 / 255 * np.array([200, 100, 50]) + (1 - 128 / 255) * bg
    assert np.abs(image[:, 2].astype(float) - blend[:, None]).max() <= 1.0
    grey = RNG.integers(0, 256, (4, 4), dtype=np.uint8)
    Image.fromarray(grey, mode="L").save(tmp_path / "grey.png")
    (tmp_path / "grey").mkdir()
    shutil.move(tmp_path / "grey.png", tmp_path / "grey" / "g.png")
    image = ImageFolderDataset(tmp_path / "grey")[0][0].numpy()
    assert all((image[c] == grey).all() for c in range(3))


def test_decoded_images_are_writable_arrays(tmp_path):
    """torch.from_numpy warns on (and must not write through) a read-only array."""
    write(tmp_path / "a.png", RNG.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    decoded = load_image(tmp_path / "a.png")
    assert decoded.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.from_numpy(decoded)


def test_background_colour_errors(tmp_path):
    write(tmp_path / "a.png", random_rgb(4, 4))
    with pytest.raises(ValueError, match="background colour 'nocolour'"):
        ImageFolderDataset(tmp_path, background="nocolour")


def test_dataset_json_labels_and_zip_equivalence(tmp_path):
    root = tmp_path / "imgs"
    for k in range(3):
        write(root / "sub" / f"{k}.png", random_rgb(8, 8))
    meta = {"labels": [["sub/0.png", 2], ["sub/1.png", 0], ["sub/2.png", 2]]}
    (root / "dataset.json").write_text(json.dumps(meta))
    folder = ImageFolderDataset(root)
    assert folder.labels == [2, 0, 2] and folder.class_names == ["0", "1", "2"]
    zpath = tmp_path / "d.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for p in sorted(root.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(root).as_posix())
    zipped = ZipDataset(zpath)
    assert zipped.names == folder.names and zipped.labels == folder.labels
    assert open_dataset(zpath).names == folder.names
    for k in range(3):
        assert torch.equal(zipped[k][0], folder[k][0]) and zipped[k][1] == folder[k][1]
    clone = copy.deepcopy(zipped)  # what DataLoader workers do: no open zip handle travels
    assert clone._zip is None and torch.equal(clone[1][0], folder[1][0])
    meta["class_names"] = ["a", "b", "c"]
    meta["labels"].pop(1)
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"dataset\.json: no label for sub/1\.png"):
        ImageFolderDataset(root)


def test_unlabelled_dataset_json_and_bad_label(tmp_path):
    write(tmp_path / "a" / "x.png", random_rgb(4, 4))
    write(tmp_path / "b" / "y.png", random_rgb(4, 4))
    (tmp_path / "dataset.json").write_text('{"labels": null}')
    assert ImageFolderDataset(tmp_path).labels is None  # overrides the sub-folders
    (tmp_path / "dataset.json").write_text('{"labels": [["a/x.png", -1], ["b/y.png", 0]]}')
    with pytest.raises(ValueError, match=r"label of a/x\.png is -1"):
        ImageFolderDataset(tmp_path)


def test_resolution_centre_crop_and_resize(tmp_path):
    img = np.zeros((8, 12, 3), dtype=np.uint8)
    img[:, :2] = 255  # left and right margins are cut by the centre crop
    img[:, -2:] = 255
    img[:, 2:-2] = RNG.integers(0, 200, (8, 8, 3))
    write(tmp_path / "a.png", img)
    ds = ImageFolderDataset(tmp_path, resolution=4)
    expected = area_downsample(img[:, 2:-2], 2)  # 8→4 is an integer factor: exact area mean
    got = ds[0][0].permute(1, 2, 0).numpy()
    assert got.shape == (4, 4, 3) and (got == expected).all()
    assert ImageFolderDataset(tmp_path, resolution=8)[0][0].shape == (3, 8, 8)


def test_mixed_resolutions_error_names_two_files(tmp_path):
    write(tmp_path / "a.png", random_rgb(16, 16))
    write(tmp_path / "b.png", random_rgb(12, 20))
    with pytest.raises(ValueError) as e:
        ImageFolderDataset(tmp_path)
    msg = str(e.value)
    assert "a.png is 16×16" in msg and "b.png is 20×12" in msg
    assert "relaydiff data build" in msg and "--resolution" in msg
    assert ImageFolderDataset(tmp_path, resolution=8).resolution == 8


def test_non_square_without_resolution(tmp_path):
    write(tmp_path / "a.png", random_rgb(16, 20))
    with pytest.raises(ValueError, match=r"20×16, not square.*--resolution 16"):
        ImageFolderDataset(tmp_path)


@pytest.fixture
def bad_folder(tmp_path):
    root = tmp_path / "bad"
    for k in range(3):
        write(root / f"good{k}.png", random_rgb(16, 16))
    data = (root / "good0.png").read_bytes()
    (root / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "zero.png").write_bytes(b"")
    (root / "notes.jpg").write_text("this is a text file with an image suffix\n")
    return root


def test_bad_files_raise_naming_the_file(bad_folder):
    (bad_folder / "truncated.png").rename(bad_folder / "tmp.keep")
    with pytest.raises(ValueError, match=r"notes\.jpg: not a readable image"):
        ImageFolderDataset(bad_folder)
    (bad_folder / "notes.jpg").unlink()
    with pytest.raises(ValueError, match=r"zero\.png: not a readable image.*skip_bad"):
        ImageFolderDataset(bad_folder)
    (bad_folder / "zero.png").unlink()
    (bad_folder / "tmp.keep").rename(bad_folder / "truncated.png")
    ds = ImageFolderDataset(bad_folder)  # the header of a truncated PNG is intact …
    index = ds.names.index("truncated.png")
    with pytest.raises(ValueError, match=r"truncated\.png: not a readable image"):
        ds[index]  # … its body fails when decoded


def test_skip_bad_skips_and_counts(bad_folder):
    ds = ImageFolderDataset(bad_folder, skip_bad=True)
    assert ds.names == ["good0.png", "good1.png", "good2.png"]
    skipped = sorted(Path(f).name for f, _ in ds.skipped)
    assert skipped == ["notes.jpg", "truncated.png", "zero.png"]
    assert all(torch.is_tensor(ds[k][0]) for k in range(3))


def test_empty_and_missing_sources(tmp_path):
    with pytest.raises(ValueError, match="no images"):
        ImageFolderDataset(tmp_path)
    with pytest.raises(ValueError, match="no such folder or zip file"):
        open_dataset(tmp_path / "missing")
    (tmp_path / "x.zip").write_text("not a zip")
    with pytest.raises(ValueError, match=r"x\.zip: not a zip file"):
        open_dataset(tmp_path / "x.zip")


def test_flip_decision_is_a_deterministic_fair_coin():
    flips = np.array([flip_decision(7, 0, i) for i in range(4000)])
    assert abs(flips.mean() - 0.5) < 4 * np.sqrt(0.25 / 4000)
    again = np.array([flip_decision(7, 0, i) for i in range(4000)])
    assert (flips == again).all()
    next_epoch = np.array([flip_decision(7, 1, i) for i in range(4000)])
    other_seed = np.array([flip_decision(8, 0, i) for i in range(4000)])
    for other in (next_epoch, other_seed):  # independent coins agree about half the time
        assert abs((flips == other).mean() - 0.5) < 4 * np.sqrt(0.25 / 4000)
    with pytest.raises(ValueError):
        flip_decision(-1, 0, 0)


def test_dataset_xflip_follows_flip_decision(tmp_path):
    for k in range(12):
        write(tmp_path / f"{k:02d}.png", random_rgb(6, 6))
    plain = ImageFolderDataset(tmp_path)
    aug = ImageFolderDataset(tmp_path, xflip=True, seed=3)
    for epoch in (0, 5):
        aug.set_epoch(epoch)
        for k in range(12):
            expected = plain[k][0].flip(-1) if flip_decision(3, epoch, k) else plain[k][0]
            assert torch.equal(aug[k][0], expected)
    assert any(flip_decision(3, 0, k) for k in range(12))
    assert not all(flip_decision(3, 0, k) for k in range(12))


# --------------------------------------------------------------------------- resampling


def test_area_downsample_matches_brute_force_and_rounds_half_up():
    img = random_rgb(12, 24)
    for s in (1, 2, 3, 4, 6):
        got = area_downsample(img, s)
        for i in range(12 // s):
            for j in range(24 // s):
                block = img[i * s : (i + 1) * s, j * s : (j + 1) * s].astype(np.float64)
                expected = np.floor(block.mean(axis=(0, 1)) + 0.5)
                assert (got[i, j] == expected).all()
    half = np.array([[0, 1], [1, 0]], dtype=np.uint8)[..., None]  # mean 0.5 → 1
    assert area_downsample(half, 2)[0, 0, 0] == 1
    with pytest.raises(ValueError, match="factor 5 does not divide"):
        area_downsample(img, 5)


def test_square_resize_lanczos_for_non_integer_factor():
    img = random_rgb(30, 40)
    out = square_resize(img, 12)
    ref = np.asarray(Image.fromarray(img[:, 5:35]).resize((12, 12), Image.LANCZOS))
    assert out.shape == (12, 12, 3) and (out == ref).all()


# --------------------------------------------------------------------------- building


@pytest.fixture
def source(tmp_path):
    root = tmp_path / "src"
    for k in range(5):
        arr = random_rgb(40, 48)  # not square: centre crop to 40×40, resize 40→32 (Lanczos)
        write(root / ("red" if k % 2 else "blue") / f"im{k}.png", arr)
    return root


def test_build_is_relay_consistent(source, tmp_path):
    out = tmp_path / "built"
    info = build_dataset(source, out, 32, (8, 16, 4), progress=False)
    assert info["resolutions"] == [32, 16, 8, 4] and info["count"] == 5
    assert info["classes"] == ["blue", "red"] and info["class_counts"] == {"blue": 3, "red": 2}
    assert info["source"]["fingerprint"].startswith("sha256:")
    assert json.loads((out / "dataset_info.json").read_text()) == info
    names = sorted(p.relative_to(out / "32").as_posix() for p in (out / "32").rglob("*.png"))
    assert names == ["blue/im0.png", "blue/im2.png", "blue/im4.png", "red/im1.png", "red/im3.png"]
    m = 1e-3
    for name in names:
        high = pixels(out / "32" / name)
        crop = pixels(source / name)[:, 4:44]
        ref = np.asarray(Image.fromarray(crop).resize((32, 32), Image.LANCZOS))
        assert (high == ref).all()
        raw = torch.from_numpy(high).permute(2, 0, 1)[None].double()  # 0…255
        x = raw / 127.5 - 1
        for r in (16, 8, 4):
            s = 32 // r
            low = torch.from_numpy(pixels(out / str(r) / name)).permute(2, 0, 1)[None].double()
            # exact: the stored low image is the rounded block mean of the stored high image
            box = ops.downsample(raw, s)  # block means of integers: exact for s = 2^k
            assert torch.equal(low, torch.floor(box + 0.5))
            # relay consistency: up(low) equals the fully blurred high image
            blurred = ops.heat_blur(x, s, 1e4, min_scale=m)
            up = ops.upsample(low / 127.5 - 1, s)
            assert (up - blurred).abs().max() <= 0.5 / 127.5 + 2 * m + 1e-9
    # the test can fail: a bicubic low-resolution image is not relay-consistent
    bicubic = np.array(Image.fromarray(high).resize((4, 4), Image.BICUBIC))
    up = ops.upsample(torch.from_numpy(bicubic).permute(2, 0, 1)[None].double() / 127.5 - 1, 8)
    assert (up - ops.heat_blur(x, 8, 1e4, min_scale=m)).abs().max() > 0.5 / 127.5 + 2 * m
    low = open_dataset(out, resolution=8)
    assert low.resolution == 8 and low.labels == [0, 0, 0, 1, 1]
    assert low.class_names == ["blue", "red"] and len(open_dataset(out)) == 5
    with pytest.raises(ValueError, match="not 64"):
        open_dataset(out, resolution=64)
    with pytest.raises(ValueError, match="a multi-resolution dataset; open one of"):
        ImageFolderDataset(out)


def test_rebuild_is_idempotent_and_replaces_stale_output_only_with_overwrite(source, tmp_path, capsys):
    out = tmp_path / "built"
    build_dataset(source, out, 16, (8,), progress=False)
    stamp = (out / "8" / "blue" / "im0.png").stat().st_mtime_ns
    args = ["data", "build", str(source), "--out", str(out), "--resolution", "16", "--also", "8"]
    code, text, _ = run_cli(args, capsys)
    assert code == 0 and text.startswith("up to date: 5 images")
    assert (out / "8" / "blue" / "im0.png").stat().st_mtime_ns == stamp
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    (source / "red" / "im3.png").unlink()
    code, _, err = run_cli(args, capsys)
    assert code == 2 and f"--out {out}: already holds a data set built with other source files" in err
    assert "--overwrite" in err and err.count("\n") == 1
    code, _, err = run_cli([*args[:-2], "--also", "4"], capsys)
    assert code == 2 and "other settings (resolutions [16, 8] there, [16, 4] now)" in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    code, _, err = run_cli([*args, "--overwrite"], capsys)
    assert code == 0, err
    assert not (out / "8" / "red" / "im3.png").exists() and (out / "8" / "red").is_dir()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_interrupted_build_leaves_previous_output_intact(source, tmp_path, monkeypatch):
    out = tmp_path / "built"
    build_dataset(source, out, 16, (8,), progress=False)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    calls = []
    original = build_module.save_png

    def failing_save(array, path):
        calls.append(path)
        if len(calls) > 3:
            raise KeyboardInterrupt  # as if Ctrl-C hit in the middle of the build
        original(array, path)

    monkeypatch.setattr(build_module, "save_png", failing_save)
    with pytest.raises(KeyboardInterrupt):
        build_dataset(source, out, 16, (4,), progress=False, workers=1, overwrite=True)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    monkeypatch.undo()
    info = build_dataset(source, out, 16, (4,), progress=False, overwrite=True)  # re-run recovers
    assert info["resolutions"] == [16, 4] and not (out / "8").exists()


def test_build_at_lower_top_resolution_gives_the_same_images(tmp_path):
    root = tmp_path / "square"
    for k in range(3):
        write(root / f"{k}.png", random_rgb(32, 32))
    build_dataset(root, tmp_path / "a", 32, (16, 4), progress=False)
    build_dataset(root, tmp_path / "b", 16, (4,), progress=False)
    for k in range(3):  # 32→16 is the same exact area mean in both builds
        a = (tmp_path / "a" / "16" / f"{k}.png").read_bytes()
        assert a == (tmp_path / "b" / "16" / f"{k}.png").read_bytes()
        # 4 pixels: one rounding (from 32) against two (from the rounded 16): at most 1 apart
        a4, b4 = (pixels(tmp_path / d / "4" / f"{k}.png").astype(int) for d in "ab")
        assert np.abs(a4 - b4).max() <= 1


def test_build_from_zip_source(source, tmp_path):
    zpath = tmp_path / "src.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for p in sorted(source.rglob("*.png")):
            zf.write(p, p.relative_to(source).as_posix())
    a = build_dataset(source, tmp_path / "a", 16, (8,), progress=False)
    b = build_dataset(zpath, tmp_path / "b", 16, (8,), progress=False)
    assert a["source"]["fingerprint"] == b["source"]["fingerprint"]
    for p in (tmp_path / "a").rglob("*.png"):
        assert p.read_bytes() == (tmp_path / "b" / p.relative_to(tmp_path / "a")).read_bytes()


def test_scale_factor_must_divide(source, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"also=12: 32/12 is not an integer"):
        check_resolutions(32, (16, 12))
    with pytest.raises(ValueError, match="also=64"):
        check_resolutions(32, (64,))
    code, _, err = run_cli(["data", "build", str(source), "--out", str(tmp_path / "o"),
                            "--resolution", "32", "--also", "16,12"], capsys)  # fmt: skip
    assert code == 2 and err.startswith("error: --also 12:") and err.count("\n") == 1
    code, _, err = run_cli(["data", "build", str(source), "--out", str(tmp_path / "o"),
                            "--resolution", "32", "--also", "16,x"], capsys)  # fmt: skip
    assert code == 2 and "resolution 'x' is not an integer" in err
    assert not (tmp_path / "o").exists()


def test_output_path_is_a_file_or_foreign_folder(source, tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("keep me")
    code, _, err = run_cli(["data", "build", str(source), "--out", str(target),
                            "--resolution", "16"], capsys)  # fmt: skip
    assert code == 2 and "file.txt: exists and is a file" in err
    assert target.read_text() == "keep me"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"already holds 1 item\(s\) \(notes.txt\); give --overwrite"):
        build_dataset(source, foreign, 16, progress=False)
    assert (foreign / "notes.txt").read_text() == "mine"
    build_dataset(source, foreign, 16, progress=False, overwrite=True)
    assert not (foreign / "notes.txt").exists() and (foreign / "dataset_info.json").is_file()
    with pytest.raises(ValueError, match="overlaps the source"):
        build_dataset(source, source / "out", 16, progress=False)


def test_cli_build_bad_inputs_and_skip_bad(bad_folder, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["data", "build", str(bad_folder), "--out", str(out), "--resolution", "8"]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "not a readable image" in err and err.count("\n") == 1
    assert any(name in err for name in ("notes.jpg", "zero.png"))
    assert not out.exists()
    code, text, _ = run_cli([*args, "--skip-bad", "--also", "4"], capsys)
    assert code == 0 and "wrote: 3 images at 8×8, 4×4" in text
    assert "skipped 3 unreadable images" in text
    assert all(name in text for name in ("notes.jpg", "truncated.png", "zero.png"))
    info = json.loads((out / "dataset_info.json").read_text())
    assert info["count"] == 3 and len(info["skipped"]) == 3
    assert len(list((out / "4").glob("*.png"))) == 3


# --------------------------------------------------------------------------- sources


def test_codepoints_and_category_matching():
    assert codepoints("1f3f4-e0067_e0062_e0065.webp") == (0x1F3F4, 0xE0067, 0xE0062, 0xE0065)
    assert codepoints("0023-FE0F-20E3") == codepoints("23-fe0f-20e3") == (0x23, 0xFE0F, 0x20E3)
    with pytest.raises(ValueError, match=r"hello\.webp"):
        codepoints("hello.webp")
    records = [
        {"unified": "1F600", "non_qualified": None, "category": "Smileys & Emotion"},
        {"unified": "263A-FE0F", "non_qualified": "263A", "category": "Smileys & Emotion"},
        {
            "unified": "1F385",
            "category": "People & Body",
            "skin_variations": {"1F3FB": {"unified": "1F385-1F3FB", "non_qualified": None}},
        },
        {"unified": "1F3F4-E0067-E0062-E007F", "category": "Flags"},
    ]
    names = [
        "1f3f4-e0067_e0062.webp",  # tag terminator left out of the file name
        "1f385-1f3fb.webp",  # skin-tone variant
        "1f600.webp",
        "263a.webp",  # non-qualified
        "2764-fe0f.webp",  # unknown
        "263a-fe0f.webp",
    ]
    order = ["Smileys & Emotion", "People & Body", "Component", "Flags"]
    labels, classes = emoji_categories(names, records, order)
    assert classes == ["Smileys & Emotion", "People & Body", "Flags", "Other"]
    assert [classes[k] for k in labels] == [
        "Flags",
        "People & Body",
        "Smileys & Emotion",
        "Smileys & Emotion",
        "Other",
        "Smileys & Emotion",
    ]


def _no_npm_path(tmp_path: Path) -> str:
    """A PATH without npm (only a folder holding nothing)."""
    empty = tmp_path / "empty-bin"
    empty.mkdir(exist_ok=True)
    return str(empty)


def test_no_npm_and_no_cache_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", _no_npm_path(tmp_path))
    monkeypatch.setenv("RELAYDIFF_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SourceUnavailableError) as e:
        fetch_fluent_emoji_3d()
    tarball = tmp_path / "cache" / "npm" / FLUENT_EMOJI_3D.tarball
    assert "install Node.js/npm" in str(e.value) and str(tarball) in str(e.value)
    code, out, err = run_cli(["data", "fetch", "fluent-emoji-3d"], capsys)
    assert code == 2 and err.startswith("error: npm not found") and err.count("\n") == 1
    assert str(tarball) in err and out == ""
    tarball.parent.mkdir(parents=True)
    tarball.write_bytes(b"a damaged download")
    with pytest.raises(ValueError, match=f"{tarball.name}: SHA-256 is not"):
        npm_tarball(FLUENT_EMOJI_3D)
    assert tarball.read_bytes() == b"a damaged download"  # nothing deleted


@pytest.fixture(scope="module")
def npm_cache(tmp_path_factory):
    """One real `npm pack` of both packages per test session (the registry is reachable in CI)."""
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed: the real fetch cannot run (install Node.js/npm)")
    cache = tmp_path_factory.mktemp("relaydiff-cache")
    folder = fetch_fluent_emoji_3d(cache)
    return cache, folder


def test_fetch_fluent_emoji_3d_real(npm_cache):
    cache, folder = npm_cache
    webp = sorted(p.name for p in folder.glob("*.webp"))
    assert len(webp) == 3391
    for package in (FLUENT_EMOJI_3D, EMOJI_DATASOURCE):
        assert (cache / "npm" / package.tarball).is_file()
    meta = json.loads((folder / "dataset.json").read_text())
    assert [n for n, _ in meta["labels"]] == webp
    classes = meta["class_names"]
    label = {n: classes[c] for n, c in meta["labels"]}
    # known emoji (by Unicode's own grouping) land in their categories
    assert label["1f600.webp"] == "Smileys & Emotion"  # grinning face
    assert label["1f385-1f3fb.webp"] == "People & Body"  # Santa, light skin tone
    assert label["1f1fa-1f1f8.webp"] == "Flags"  # United States
    assert label["1f3f4-e0067_e0062_e0065_e006e_e0067.webp"] == "Flags"  # England
    assert label["23-fe0f-20e3.webp"] == label["0023-fe0f-20e3.webp"] == "Symbols"  # keycap #
    assert label["1f34e.webp"] == "Food & Drink"  # red apple
    assert "Other" not in classes and len(classes) == 9
    with Image.open(folder / "1f600.webp") as im:
        assert im.size == (256, 256) and im.mode == "RGBA"


def test_fetch_cli_reuses_cache_without_npm(npm_cache, tmp_path, monkeypatch, capsys):
    cache, folder = npm_cache
    monkeypatch.setenv("PATH", _no_npm_path(tmp_path))
    out = tmp_path / "emoji"
    args = ["data", "fetch", "fluent-emoji-3d", "--cache", str(cache), "--out", str(out)]
    code, text, err = run_cli([*args, "--limit", "24"], capsys)
    assert code == 0, err
    assert text.startswith("ready: 24 images at 64×64, 16×16") and str(out) in text
    ds64, ds16 = open_dataset(out, resolution=64), open_dataset(out, resolution=16)
    assert len(ds64) == len(ds16) == 24 and ds64.names == ds16.names
    assert ds64.labels == ds16.labels and ds64.num_classes == 9
    assert ds64[0][0].shape == (3, 64, 64) and ds16[0][0].shape == (3, 16, 16)
    x = ds64[5][0].double()[None]
    assert torch.equal(ds16[5][0].double()[None], torch.floor(ops.downsample(x, 4) + 0.5))
    # fully transparent 4×4 blocks of the 256-pixel source are white at 64 pixels
    with Image.open(folder / ds64.names[0].replace(".png", ".webp")) as im:
        alpha = np.asarray(im)[..., 3].reshape(64, 4, 64, 4).max(axis=(1, 3))
    assert (alpha == 0).any()
    assert (ds64[0][0].permute(1, 2, 0).numpy()[alpha == 0] == 255).all()
    stamp = (out / "dataset_info.json").stat().st_mtime_ns
    code, text, _ = run_cli([*args, "--limit", "24"], capsys)
    assert code == 0 and text.startswith("ready: 24 images")
    assert (out / "dataset_info.json").stat().st_mtime_ns == stamp  # nothing rebuilt
    assert not list(out.parent.glob(".emoji.*"))


# --------------------------------------------------------------------------- photos


def test_sample_photos_are_found_and_decode():
    photos = sample_photos()
    expected = []
    try:
        import skimage

        expected += [Path(skimage.data_dir) / f for f in PHOTOS["skimage"][1]]
    except ImportError:
        pass
    try:
        from sklearn.datasets import load_sample_images

        expected += [Path(f) for f in load_sample_images().filenames]
    except ImportError:
        pass
    try:
        from matplotlib import cbook

        expected.append(Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    except ImportError:
        pass
    if not expected:
        pytest.skip("none of scikit-image, scikit-learn, matplotlib is installed")
    assert sorted(map(os.path.realpath, photos)) == sorted(map(os.path.realpath, expected))
    for path in photos:
        with Image.open(path) as im:
            assert min(im.size) >= 256


def test_sample_photos_ignores_missing_packages(monkeypatch):
    monkeypatch.setattr("relaydiff.data.photos.PHOTOS", {"no_such_package_xyz": ("data", ("a.png",))})
    assert sample_photos() == []
