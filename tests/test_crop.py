"""Crop training (``data.crop``, docs/train.md#crop-training): the relay forward process of a
patch-aligned window is the window of the relay forward process, the windows are drawn
reproducibly, bad crops are refused in one line, and crop-trained runs resume bit for bit.

Also: the CelebA-HQ 256→512 and 256→1024 relay configs load with the stated resolutions."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
from cli_helpers import one_line, run_cli
from PIL import Image
from safetensors.torch import load_file
from training_helpers import config_dict, one_thread, tiny_unet, toy_network  # noqa: F401 (autouse)

import relaydiff.losses
from relaydiff.data import flip_decision
from relaydiff.io.images import from_uint8
from relaydiff.ops import downsample, heat_blur, relay_noise, upsample
from relaydiff.stage import RelayConfig, build_denoiser
from relaydiff.training.checkpoint import list_snapshots
from relaydiff.training.config import TrainConfig, load_train_config
from relaydiff.training.cost import flops_per_image
from relaydiff.training.data import crop_window
from relaydiff.training.loop import Trainer, make_loss, train

CONFIGS = Path(__file__).parents[1] / "configs"
RES, CROP, P = 32, 16, 4  # stage resolution, crop and relay patch size of the tiny runs




@pytest.fixture(scope="module")
def noise32(tmp_path_factory) -> Path:
    """16 PNGs of uniform random pixels, 32×32: every 4-aligned window of them is unique."""
    root = tmp_path_factory.mktemp("crop") / "noise32"
    root.mkdir()
    rng = np.random.default_rng(123)
    for k in range(16):
        Image.fromarray(rng.integers(0, 256, (RES, RES, 3), dtype=np.uint8)).save(root / f"img{k:03d}.png")
    return root


def window(x: torch.Tensor, top: int, left: int, size: int) -> torch.Tensor:
    return x[..., top:top + size, left:left + size]


def rounding_close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to float rounding: at most 16 ulps of the largest magnitude."""
    tol = 16 * torch.finfo(a.dtype).eps * max(a.abs().max().item(), 1.0)
    return (a - b).abs().max().item() <= tol


# ------------------------------------------------------------------ the forward process is local
BLURS = [0.0, 0.4, 1.0, 3.0, 100.0, "per-sample"]
ALIGNED = [(0, 0, 16), (4, 8, 12), (16, 12, 8), (8, 0, 24), (28, 28, 4), (0, 0, 32)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("blur", BLURS)
def test_blur_of_aligned_crop_is_crop_of_blur(dtype, blur):
    """Equal to float rounding, not bitwise: ``heat_blur`` multiplies block-diagonal matrices whose
    size follows the image width, and BLAS rounds products of other shapes differently."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, RES, RES, generator=gen, dtype=dtype)
    b = torch.tensor([0.2, 1.5, 6.0]) if blur == "per-sample" else blur
    whole = heat_blur(x, P, b)
    for top, left, size in ALIGNED:
        crop = heat_blur(window(x, top, left, size), P, b)
        assert rounding_close(crop, window(whole, top, left, size)), (top, left, size)
    if blur != 0.0:  # a window off the patch grid mixes pixels of two patches: not the same blur
        shifted = heat_blur(window(x, 1, 2, 16), P, b)
        assert (shifted - window(whole, 1, 2, 16)).abs().max() > 1e-3


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_relay_mean_of_aligned_crop_is_crop_of_relay_mean(monkeypatch, dtype):
    """The denoiser input of the relay loss with its noise set to zero: the loss's own blur."""
    seen: list[torch.Tensor] = []

    def zero_noise(shape, *args, dtype=None, device=None, **kwargs):
        return torch.zeros(shape, dtype=dtype, device=device)

    def denoiser(x, sigma, labels):
        seen.append(x.clone())
        return x

    monkeypatch.setattr(relaydiff.losses, "relay_noise", zero_noise)
    relay = RelayConfig(scale=P, prob_length=0.89, blur_sigma_max=2.0)
    loss = relaydiff.losses.RelayLoss(relay.schedule(), P, relay.block_alpha)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(4, 3, RES, RES, generator=gen, dtype=dtype) * 2 - 1
    sigma = torch.tensor([0.01, 0.3, 2.0, 40.0], dtype=dtype)
    loss(denoiser, x, sigma)
    whole = seen.pop()
    s = relay.schedule()
    assert torch.equal(whole, heat_blur(x, P, s.blur_sigma_at(sigma), s.min_scale))
    assert not rounding_close(whole, x)  # σ = 40 blurs its image flat
    for top, left, size in ALIGNED:
        loss(denoiser, window(x, top, left, size), sigma)
        assert rounding_close(seen.pop(), window(whole, top, left, size)), (top, left, size)
    loss(denoiser, window(x, 2, 2, 16), sigma)
    assert (seen.pop() - window(whole, 2, 2, 16)).abs().max() > 1e-3


@pytest.mark.parametrize("s", [2, 4, 8])
def test_downsample_of_aligned_crop_is_crop_of_downsample(s):
    x = torch.randn(2, 3, RES, RES, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
    low = downsample(x, s)
    for top, left, size in [(0, 0, 16), (8, 16, 16), (24, 0, 8), (0, 8, 24)]:
        crop = window(x, top, left, size)
        assert torch.equal(downsample(crop, s), window(low, top // s, left // s, size // s))
        assert torch.equal(upsample(downsample(crop, s), s), window(upsample(low, s), top, left, size))
    shifted = window(x, 1, 0, 16)  # off the grid: box averages of other pixels
    assert not torch.allclose(downsample(shifted, s), window(low, 0, 0, 16 // s))


# ------------------------------------------------------------------ the noise of a crop
def noise_stats(n: torch.Tensor, p: int) -> dict[str, tuple[float, float]]:
    """Per-pixel variance, covariance of two pixels of one ``p×p`` block and of two neighbours
    across a block edge: (mean over samples, its standard error)."""
    s, c, h, w = n.shape
    n = n.double()
    blocks = n.reshape(s, c, h // p, p, w // p, p)
    total, squares = blocks.sum((3, 5)), (blocks**2).sum((3, 5))
    per_sample = {
        "var": (n**2).mean((1, 2, 3)),
        "within": ((total**2 - squares) / (p * p * (p * p - 1))).mean((1, 2, 3)),
        "across": ((n[..., :, p - 1:w - 1:p] * n[..., :, p::p]).mean((1, 2, 3))
                   + (n[..., p - 1:h - 1:p, :] * n[..., p::p, :]).mean((1, 2, 3))) / 2,
    }
    return {k: (v.mean().item(), v.std().item() / math.sqrt(s)) for k, v in per_sample.items()}


@pytest.mark.parametrize("alpha", [0.15, 1.0])
def test_noise_of_crop_has_the_statistics_of_the_whole(alpha):
    samples, full, crop = 20_000, 24, 12
    expected = {"var": 1.0, "within": alpha**2 / (1 + alpha**2), "across": 0.0}
    drawn = relay_noise((samples, 1, crop, crop), P, alpha, generator=torch.Generator().manual_seed(2))
    whole = relay_noise((samples, 1, full, full), P, alpha, generator=torch.Generator().manual_seed(3))
    cut = noise_stats(window(whole, 4, 8, crop), P)
    own = noise_stats(drawn, P)
    for key, value in expected.items():
        for name, stats in (("drawn at crop size", own), ("crop of full size", cut)):
            mean, se = stats[key]
            assert abs(mean - value) < 5 * se, (name, key, mean, value, se)
        gap = abs(own[key][0] - cut[key][0])
        assert gap < 5 * math.hypot(own[key][1], cut[key][1]), (key, own[key], cut[key])
    if alpha >= 1:  # off the patch grid the window's "blocks" straddle the noise's: detectable
        mean, se = noise_stats(window(whole, 5, 9, crop), P)["within"]
        assert abs(mean - expected["within"]) > 20 * se


# ------------------------------------------------------------------ crop_window
def test_crop_window_is_aligned_inside_deterministic_and_uniform():
    size, crop, align = 32, 16, 4
    grid = range(0, size - crop + 1, align)
    counts = {(t, left): 0 for t in grid for left in grid}
    changed = 0
    for index in range(500):
        for epoch in range(4):
            top, left = crop_window(9, epoch, index, size, crop, align)
            assert (top, left) in counts  # multiple of align, window inside the image
            assert crop_window(9, epoch, index, size, crop, align) == (top, left)
            counts[top, left] += 1
        changed += crop_window(9, 0, index, size, crop, align) != crop_window(9, 1, index, size, crop, align)
    assert changed > 0.85 * 500  # 24 of 25 position pairs differ
    assert min(counts.values()) > 0  # every position appears
    assert scipy.stats.chisquare(list(counts.values())).pvalue > 1e-6
    other_seed = [crop_window(10, 0, i, size, crop, align) for i in range(50)]
    assert other_seed != [crop_window(9, 0, i, size, crop, align) for i in range(50)]
    assert {crop_window(9, 0, i, size, size, align) for i in range(20)} == {(0, 0)}
    assert {crop_window(9, 0, i, 8, 6, 1) for i in range(400)} == {(a, b) for a in range(3) for b in range(3)}


def crop_config(data: Path, network: dict | None = None, **overrides) -> dict:
    """A relay stage at 32 px (patch 4) training on 16×16 crops of flipped images."""
    return config_dict(data, kind="relay", res=RES, network=network,
                       data={"path": str(data), "xflip": True, "crop": CROP}, **overrides)


def test_loader_yields_the_windows_of_the_flipped_images(tmp_path, noise32):
    cfg = TrainConfig.from_dict(crop_config(noise32, total_images=64))
    trainer = Trainer(cfg, tmp_path / "run")
    n = len(trainer.dataset)
    seen, flips = set(), set()
    for images, _, indices in trainer._loader():
        assert images.shape == (4, 3, CROP, CROP)
        for image, g in zip(images, indices.tolist(), strict=True):
            epoch = g // n
            index = int(np.random.default_rng([cfg.seed, epoch]).permutation(n)[g % n])
            full = from_uint8(trainer.dataset[index][0])
            matches = [(flip, top, left)
                       for flip in (False, True)
                       for top in range(0, RES - CROP + 1)
                       for left in range(0, RES - CROP + 1)
                       if torch.equal(window(full.flip(-1) if flip else full, top, left, CROP), image)]
            want = (flip_decision(cfg.seed, epoch, index), *crop_window(cfg.seed, epoch, index, RES, CROP, P))
            assert matches == [want], (g, matches, want)
            assert want[1] % P == 0 and want[2] % P == 0
            seen.add(want[1:])
            flips.add(want[0])
    assert flips == {False, True} and len(seen) > 8


# ------------------------------------------------------------------ refused crops
@pytest.mark.parametrize(
    ("name", "kind", "network", "crop", "needles"),
    [
        ("off the patch grid", "relay", toy_network(), 18, ["data.crop is 18", "multiple of 4"]),
        ("larger than the stage", "relay", toy_network(), 36,
         ["data.crop is 36", "at most the stage resolution 32"]),
        ("not a multiple of the downsampling", "relay", {**tiny_unet(RES), "channel_mult": [1, 2, 2, 2]}, 12,
         ["data.crop is 12", "multiple of 8", "downsampling 8"]),
        ("on an EDM stage 1", "edm", toy_network(), 16, ["data.crop is 16", "remove data.crop"]),
    ],
)
def test_bad_crop_is_refused_in_one_line(tmp_path, noise32, capsys, name, kind, network, crop, needles):
    cfg = config_dict(noise32, kind=kind, res=RES, network=network, data={"path": str(noise32)})
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    result = run_cli("train", path, "--set", f"data.crop={crop}", "--out", tmp_path / "run",
                     "--no-progress", capsys=capsys)
    for needle in needles:
        one_line(result, needle)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_crop_is_refused_for_the_official_variant(tmp_path, noise32, capsys):
    """The official block noise wraps around the image's edges: crops would not be windows."""
    cfg = config_dict(noise32, kind="relay", res=RES, network=toy_network(), data={"path": str(noise32)})
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    one_line(run_cli("train", path, "--set", "data.crop=16", "--set", "stage.relay.variant=official",
                     "--out", tmp_path / "run", "--no-progress", capsys=capsys), "relay.variant 'official'")
    assert not (tmp_path / "run" / "checkpoints").exists()


# ------------------------------------------------------------------ resume
def snapshot_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Model, EMA and optimizer tensors of a snapshot folder."""
    return {f"{name}/{k}": v for name in ("model", "ema", "optimizer")
            for k, v in load_file(str(path / f"{name}.safetensors")).items()}


def test_crop_training_resumes_bitwise_and_costs_the_crop(tmp_path, noise32):
    def config(total: int) -> TrainConfig:
        return TrainConfig.from_dict(crop_config(noise32, network=tiny_unet(RES, dropout=0.2),
                                                 total_images=total))

    full = train(config(48), tmp_path / "full", progress=False)
    train(config(24), tmp_path / "split", progress=False)
    rest = train(config(48), tmp_path / "split", resume="auto", progress=False)
    assert rest.step == full.step == 12
    a, b = snapshot_tensors(full.snapshot), snapshot_tensors(rest.snapshot)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    mid = list_snapshots(tmp_path / "split" / "checkpoints")[0]
    assert not torch.equal(load_file(str(mid / "ema.safetensors"))["enc.32x32_conv.weight"],
                           b["ema/enc.32x32_conv.weight"])
    cfg = config(48)
    state = json.loads((rest.snapshot / "state.json").read_text())
    den, loss = build_denoiser(cfg.stage), make_loss(cfg)
    crop_flops = flops_per_image(den, loss, (3, CROP, CROP))
    assert state["config"]["data"]["crop"] == CROP
    assert state["cost"]["flops_per_image"] == crop_flops
    assert crop_flops < flops_per_image(den, loss, (3, RES, RES)) / 3


# ------------------------------------------------------------------ the 512 and 1024 configs
@pytest.mark.parametrize(("name", "resolution", "scale"),
                         [("celebahq512_relay", 512, 2), ("celebahq1024_relay", 1024, 4)])
def test_celebahq_high_resolution_relay_configs(name, resolution, scale):
    cfg = load_train_config(CONFIGS / f"{name}.json")
    base = load_train_config(CONFIGS / "celebahq256_relay.json")
    stage = cfg.stage
    assert (stage.kind, stage.resolution, stage.scale) == ("relay", resolution, scale)
    assert stage.input_resolution == base.stage.resolution == 256  # on top of the 64→256 stage
    with torch.device("meta"):  # the real constructor, without allocating the weights
        net = build_denoiser(stage).model
    assert net.img_resolution == resolution
    assert cfg.data.crop is None
    assert "Not given by the paper" in cfg.description and "docs/train.md" in cfg.description
