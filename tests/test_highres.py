"""High resolution from a cascade: stages at any size, the last stage reused past the cascade's
resolution (``to``), tiled evaluation (``tile``) from the library and the command line, and
packaged cascades that share stages."""

from __future__ import annotations

import gc
import warnings

import numpy as np
import pytest
import torch
from cli_helpers import one_line, run_cli
from PIL import Image

from relaydiff import RelayCascade
from relaydiff.io.files import read_json, write_json
from relaydiff.ops import upsample
from relaydiff.pretrained import cascade_fingerprint, read_cascade, write_cascade
from relaydiff.samplers import relay_sample
from relaydiff.schedules import RelaySchedule, karras_sigmas
from relaydiff.stage import RelayConfig, RelaySamplerConfig, StageConfig, build_denoiser
from relaydiff.tiling import TiledDenoiser


def unet_relay_cascade() -> RelayCascade:
    """A toy stage 1 at 8 px and a relay stage ×4 whose UNet downsamples by 8 (four levels)."""
    torch.manual_seed(0)
    toy = RelayCascade.toy((8, 32))
    net = {"name": "unet", "img_resolution": 32, "model_channels": 8, "channel_mult": [1, 1, 1, 1],
           "num_blocks": 1, "attn_resolutions": []}
    relay = StageConfig("relay", 32, net, relay=RelayConfig(scale=4),
                        relay_sampler=RelaySamplerConfig(steps=6))
    return RelayCascade([toy.configs[0], relay], [toy.denoisers[0], build_denoiser(relay).eval()])


def test_plan_reuses_the_last_stage_and_names_reachable_sizes():
    c = RelayCascade.toy((16, 64))
    assert c.plan() == [(0, 16), (1, 64)]
    assert c.plan(None, 1024) == [(0, 16), (1, 64), (1, 256), (1, 1024)]
    assert c.plan(None, 16) == [(0, 16)]
    assert c.plan(16) == [(1, 64)]
    assert c.plan(64, 1024) == [(1, 256), (1, 1024)]
    assert c.plan(128, 512) == [(1, 512)]  # no stage starts at 128 px: the last one, reused
    with pytest.raises(ValueError, match=r"size 1000 is not reachable from seeds .*×4 reused.*"
                                         r"reachable sizes: 16, 64, 256, 1024, 4096"):
        c.plan(None, 1000)
    with pytest.raises(ValueError, match=r"not reachable from 64px images.*: 256, 1024"):
        c.plan(64, 100)
    with pytest.raises(ValueError, match="no stage starts from 32px"):
        c.plan(32)


def test_a_size_the_network_cannot_run_at_is_refused_in_one_line():
    c = unet_relay_cascade()
    assert c.size_multiple(1) == 8
    assert c.plan(8, 128) == [(1, 32), (1, 128)]
    with pytest.raises(ValueError, match=r"stage 2 cannot make 36px images: its sizes are multiples of 8"):
        c.plan(9, 36)


def test_a_relay_stage_runs_at_sizes_it_was_not_trained_at():
    """The 32-px relay stage relays 16-px images to 64 px; where its UNet's receptive field sees
    only the image, each quadrant of a 2×2 mosaic of inputs gives what the input alone gives."""
    c = unet_relay_cascade()
    low = c(seeds=[0], dtype=torch.float64)[0]
    out = c(seeds=[0], low_res=low, to=32, dtype=torch.float64)[-1]
    assert out.shape == (1, 3, 32, 32)
    big = c(seeds=[0], low_res=upsample(low, 2), dtype=torch.float64, to=64)[-1]
    assert big.shape == (1, 3, 64, 64) and torch.isfinite(big).all()
    assert not torch.equal(big[..., :32, :32], out)  # a new image, not a copy


def test_tiled_sampling_equals_untiled_when_the_receptive_field_fits_the_halo():
    """The toy network sees 3 pixels around each output pixel and has no normalisation: with a
    halo of ≥ 6 pixels (the default for tiles of ≥ 96) the tiles are exact, and the noise
    (drawn on the whole image from each seed) does not depend on the tile size."""
    c = RelayCascade.toy((16, 64))
    untiled = c(seeds=[3, 4], to=256, dtype=torch.float64)
    for tile in (96, 128):
        tiled = c(seeds=[3, 4], to=256, dtype=torch.float64, tile=tile)
        for a, b in zip(untiled, tiled, strict=True):
            assert (a - b).abs().max() < 1e-12
    alone = c(seeds=[4], to=256, dtype=torch.float64, tile=96)[-1]
    assert torch.equal(alone[0], c(seeds=[3, 4], to=256, dtype=torch.float64, tile=96)[-1][1])


def test_exact_mode_drops_group_padding_before_tiled_stages(monkeypatch):
    """One seed in exact mode: stage 1 sees a padded group of 8, the tiled stages the real image
    only (each network call then holds exactly 8 tiles)."""
    c = RelayCascade.toy((16, 64))
    batches = []
    real_forward = c.denoisers[1].forward
    monkeypatch.setattr(c.denoisers[1], "forward",
                        lambda x, *a, **k: batches.append(x.shape) or real_forward(x, *a, **k))
    c(seeds=[5], to=256, tile=64)
    assert batches and all(s[0] == 8 for s in batches)
    halo = TiledDenoiser(c.denoisers[1], 64, align=c.size_multiple(1)).halo
    assert {s[-1] for s in batches} <= {64, 64 + 2 * halo}


def test_sample_and_upscale_to_a_size_tiled_from_the_command_line(tmp_path, capsys):
    out, big = tmp_path / "s", tmp_path / "big"
    code, _, err = run_cli("sample", "--toy", "--seeds", "0-1", "--to", "256", "--tile", "64",
                           "--all-stages", "--out", out, capsys=capsys)
    assert code == 0, err
    assert Image.open(out / "000000" / "000001.png").size == (256, 256)
    assert Image.open(out / "stage2_64" / "000000" / "000001.png").size == (64, 64)
    assert read_json(out / "labels.json")["resolutions"] == [16, 64, 256]
    code, _, err = run_cli("upscale", "--toy", "--input", out, "--to", "1024",  # a sample folder:
                           "--tile", "128", "--out", big, capsys=capsys)  # its samples only
    assert code == 0, err
    assert sorted(p.relative_to(big).as_posix() for p in big.rglob("*.png")) == [
        "000000/000000.png", "000000/000001.png"]
    assert Image.open(big / "000000" / "000001.png").size == (1024, 1024)
    one_line(run_cli("sample", "--toy", "--seeds", "0", "--to", "1000", "--out", tmp_path / "x",
                     capsys=capsys), "--to")
    one_line(run_cli("upscale", "--toy", "--input", out / "000000", "--to", "300",
                     "--out", tmp_path / "y", capsys=capsys), "reachable sizes: 1024, 4096")
    one_line(run_cli("upscale", "--toy", "--input", out / "000000", "--out", tmp_path / "z",
                     capsys=capsys), "no stage starts from 256px")


def test_tile_zero_is_untiled_and_the_tile_is_a_recorded_setting(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_cli("sample", "--toy", "--seeds", "2", "--to", "256", "--out", a, capsys=capsys)[0] == 0
    assert run_cli("sample", "--toy", "--seeds", "2", "--to", "256", "--tile", "0", "--out", b,
                   capsys=capsys)[0] == 0
    png = "000000/000002.png"
    assert np.array_equal(np.asarray(Image.open(a / png)), np.asarray(Image.open(b / png)))
    one_line(run_cli("sample", "--toy", "--seeds", "2", "--to", "256", "--tile", "64", "--out", a,
                     capsys=capsys), "--tile")


def test_a_packaged_cascade_may_share_stages_with_another(tmp_path, monkeypatch):
    """``NAME/STAGE`` entries load that packaged cascade's stage; the fingerprint covers its
    files; entries pointing anywhere else are refused."""
    import relaydiff.pretrained as pretrained

    monkeypatch.setattr(pretrained, "pretrained_path", lambda name="base": tmp_path / "pkg" / name)
    base = RelayCascade.toy((16, 64))
    base.save_pretrained(tmp_path / "pkg" / "base")
    names = read_json(tmp_path / "pkg" / "base" / "cascade.json")["stages"]
    ext = tmp_path / "ext"
    torch.manual_seed(1)
    top = RelayCascade.toy((16, 64, 128))
    write_cascade(ext, top.configs, top.denoisers, shared=[f"base/{n}" for n in names] + [None])
    assert read_json(ext / "cascade.json")["stages"][:2] == [f"base/{n}" for n in names]
    assert sorted(p.name for p in ext.iterdir()) == ["cascade.json", "stage3_relay_128"]
    loaded = RelayCascade.from_pretrained(ext)
    assert loaded.resolutions == [16, 64, 128]
    for k, source in ((0, base), (1, base), (2, top)):
        for p, q in zip(loaded.denoisers[k].parameters(), source.denoisers[k].parameters(), strict=True):
            assert torch.equal(p, q)
    before = cascade_fingerprint(ext)
    weights = tmp_path / "pkg" / "base" / names[1] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b" ")
    assert cascade_fingerprint(ext) != before
    for bad in (f"../base/{names[0]}", f"/etc/{names[0]}", "no-such-cascade/x", "base/x/y"):
        write_json({"format": "relaydiff.cascade", "version": 1, "stages": [bad]},
                   ext / "cascade.json")
        with pytest.raises(ValueError, match="neither a stage folder of this cascade nor NAME/STAGE"):
            read_cascade(ext)


def test_exact_mode_tiles_groups_in_parallel_threads_without_mixing_their_statistics():
    """Two groups of 8 seeds on two threads tile the same GroupNorm network at once; each
    image equals the one sampled alone (each thread routes the network's GroupNorms through its
    own statistics)."""
    c = unet_relay_cascade()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        together = c(seeds=list(range(16)), to=128, tile=32)[-1]
    finally:
        torch.set_num_threads(threads)
    for s in (0, 9, 15):
        assert torch.equal(together[s], c(seeds=[s], to=128, tile=32)[-1][0])


def test_upscale_your_own_jpegs_of_an_odd_size_to_a_reachable_size(tmp_path, capsys):
    """A folder as a user has it: 40×40 JPEGs (no stage starts at 40 px) beside a text file;
    ``--to 160`` relays them with the last stage, and names stay the user's."""
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for name in ("cat.jpg", "dog.JPG"):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(photos / name, quality=85)
    (photos / "notes.txt").write_text("mine")
    out = tmp_path / "big"
    code, _, err = run_cli("upscale", "--toy", "--input", photos, "--to", "160", "--out", out,
                           capsys=capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.glob("*.png")) == ["cat.png", "dog.png"]
    assert Image.open(out / "cat.png").size == (160, 160)
    assert (photos / "notes.txt").read_text() == "mine"
    one_line(run_cli("upscale", "--toy", "--input", photos, "--out", tmp_path / "x", capsys=capsys),
             "no stage starts from 40px")


@pytest.mark.parametrize("order", [1, 2])
def test_relay_sampler_keeps_few_image_sized_buffers(order):
    """At large sizes every image-sized buffer costs (100 MB per float64 image at 2048 px): while
    the network runs, the relay sampler keeps alive only its start state, its current state (or,
    in a corrector, ``γ·x + noise``, ``L(D(x))`` and the corrector's input), nothing else."""
    shape = (1, 3, 32, 32)
    most = []

    def denoiser(x, sigma, labels):
        with warnings.catch_warnings():  # isinstance on torch's deprecated aliases warns
            warnings.simplefilter("ignore", FutureWarning)
            live = {t.untyped_storage().data_ptr() for t in gc.get_objects()
                    if isinstance(t, torch.Tensor) and t.shape == shape}
        most.append(len(live))
        return x * 0.5

    gens = [torch.Generator().manual_seed(0)]
    sigmas = karras_sigmas(10, 0.008, 80.0, 7.0, truncate=0.9)
    x_start = torch.randn(shape, dtype=torch.float64)
    relay_sample(denoiser, x_start, sigmas, RelaySchedule(0.93, 3.0), 4, eta=0.2, order=order, generator=gens)
    assert max(most) <= (4 if order == 2 else 2), most


def test_tiled_stages_keep_their_state_in_float32_by_default(monkeypatch):
    """``dtype=None``: stage 1 and untiled stages in float64, tiled stages in float32 (half the
    image-sized memory); an explicit ``dtype`` sets every stage. The noise is drawn in float64
    either way, so the precision changes a sample by rounding only."""
    c = RelayCascade.toy((16, 64))
    used = []
    run_stage = c.run_stage
    monkeypatch.setattr(c, "run_stage", lambda k, *a, dtype, **kw: used.append(dtype)
                        or run_stage(k, *a, dtype=dtype, **kw))
    default = c(seeds=[2], to=256, tile=128)[-1]
    assert used == [torch.float64, torch.float32, torch.float32]
    untiled = c(seeds=[2], to=256)[-1]
    assert used[3:] == [torch.float64] * 3
    wide = c(seeds=[2], to=256, tile=128, dtype=torch.float64)[-1]
    assert used[6:] == [torch.float64] * 3
    assert not torch.equal(default, wide)
    assert (default - wide).abs().max() < 1e-4  # the same noise, rounded: the same sample
    assert (untiled - wide).abs().max() < 1e-12  # the toy's receptive field fits the halo


def test_tiled_upscale_of_a_users_folder_gives_each_image_as_alone(tmp_path, capsys):
    """Three odd-size JPEGs as a user has them: with ``--tile`` (exact mode) the images run
    through the tiled stage in parallel, and each is bitwise the image it gives when upscaled
    alone. An ``--out`` that already holds a file of theirs is refused in one line, untouched."""
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(1)
    names = ("a.jpg", "b.jpeg", "c.JPG")
    for name in names:
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(photos / name, quality=80)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "keep.txt").write_text("mine")
    one_line(run_cli("upscale", "--toy", "--input", photos, "--to", "160", "--tile", "64", "--out",
                     theirs, capsys=capsys), "already holds 1 item(s) (keep.txt)")
    assert [p.name for p in theirs.iterdir()] == ["keep.txt"]
    out = tmp_path / "big"
    code, _, err = run_cli("upscale", "--toy", "--input", photos, "--to", "160", "--tile", "64",
                           "--out", out, capsys=capsys)
    assert code == 0, err
    for i, name in enumerate(names):  # image i uses seed --seed + i
        alone_in = tmp_path / f"in-{name}"
        alone_in.mkdir()
        (alone_in / name).write_bytes((photos / name).read_bytes())
        alone_out = tmp_path / f"out-{name}"
        code, _, err = run_cli("upscale", "--toy", "--input", alone_in, "--seed", str(i), "--to", "160",
                               "--tile", "64", "--out", alone_out, capsys=capsys)
        assert code == 0, err
        stem = name.rsplit(".", 1)[0] + ".png"
        together = np.asarray(Image.open(out / stem))
        assert together.shape == (160, 160, 3)
        assert np.array_equal(together, np.asarray(Image.open(alone_out / stem)))
