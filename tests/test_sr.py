"""The conditional super-resolution stage (``kind: "sr"``, docs/method.md §7): its loss against an
independent computation, its network's conditioning, training, sampling, upscaling, persistence
and its errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from training_helpers import config_dict, image_folder, make_config, tiny_unet

from relaydiff import RelayCascade
from relaydiff.losses import SRLoss
from relaydiff.ops import noisy_condition
from relaydiff.precond import EDMPrecond, condition_level
from relaydiff.stage import EDMSamplerConfig, SRConfig, StageConfig, build_denoiser
from relaydiff.training.loop import Trainer, train


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def sr_stage(res: int = 16, scale: int = 4, network: dict | None = None, **kw) -> StageConfig:
    return StageConfig("sr", res, network or {"name": "toy", "channels": 16}, sr=SRConfig(scale=scale, **kw),
                       edm_sampler=EDMSamplerConfig(steps=4))


class Recorder:
    """A denoiser that records its inputs and returns a fixed function of them."""

    def __init__(self) -> None:
        self.calls = []

    def __call__(self, x, sigma, labels=None, *, cond_image=None, cond_sigma=None):
        self.calls.append((x.clone(), sigma.clone(), cond_image.clone(), cond_sigma.clone()))
        return 0.5 * x + 0.25 * cond_image


def test_noisy_condition_is_up_of_noisy_low_res():
    low = torch.randn(2, 3, 4, 4, generator=gen(1), dtype=torch.float64)
    gens = [gen(5), gen(6)]
    out = noisy_condition(low, 4, torch.tensor([0.0, 0.3], dtype=torch.float64), gens)
    eps = np.stack([torch.randn(3, 4, 4, generator=gen(s), dtype=torch.float64).numpy()
                    for s in (5, 6)])
    expected = (low.numpy() + np.array([0.0, 0.3])[:, None, None, None] * eps)
    expected = expected.repeat(4, axis=-2).repeat(4, axis=-1)
    np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=1e-15)


def test_sr_loss_is_the_conditioned_edm_loss():
    """Per sample: ``ε``, then ``σ_aug = aug_max·U``, then ``ε'`` from that sample's generator;
    ``c = up(down(x) + σ_aug ε')``; loss ``λ(σ)·mean((D(x + σε; σ, c, σ_aug) − x)²)``."""
    x = torch.rand(2, 3, 8, 8, generator=gen(2), dtype=torch.float64) * 2 - 1
    sigma = torch.tensor([0.3, 2.0], dtype=torch.float64)
    loss_fn, rec = SRLoss(scale=4, aug_max=0.8), Recorder()
    got = loss_fn(rec, x, sigma, generator=[gen(10), gen(11)])
    expected = []
    for i, seed in enumerate((10, 11)):
        g = gen(seed)
        eps = torch.randn(3, 8, 8, generator=g, dtype=torch.float64).numpy()
        level = 0.8 * torch.rand((), generator=g, dtype=torch.float64).item()
        eps_low = torch.randn(3, 2, 2, generator=g, dtype=torch.float64).numpy()
        low = x[i].numpy().reshape(3, 2, 4, 2, 4).mean(axis=(2, 4))
        cond = (low + level * eps_low).repeat(4, axis=-2).repeat(4, axis=-1)
        noisy = x[i].numpy() + sigma[i].item() * eps
        d = 0.5 * noisy + 0.25 * cond
        weight = (sigma[i].item() ** 2 + 0.25) / (sigma[i].item() * 0.5) ** 2
        expected.append(weight * ((d - x[i].numpy()) ** 2).mean())
        np.testing.assert_allclose(rec.calls[0][2][i].numpy(), cond, atol=1e-12)
        assert math.isclose(rec.calls[0][3][i].item(), level, rel_tol=1e-12)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)


def test_network_output_depends_on_low_res_and_level():
    cfg = sr_stage(network=tiny_unet(16))
    den = build_denoiser(cfg).eval()
    assert den.model.in_channels == 6 and den.model.out_channels == 3
    torch.manual_seed(0)
    for p in den.parameters():  # zero-initialised output/level layers would hide the inputs
        p.data.normal_(0, 0.2)
    x, s = torch.randn(2, 3, 16, 16, generator=gen(3)), torch.full((2,), 0.7)
    c1, c2 = torch.randn(2, 3, 16, 16, generator=gen(4)), torch.randn(2, 3, 16, 16, generator=gen(5))
    lv = torch.tensor([0.0, 0.0])
    with torch.no_grad():
        base = den(x, s, None, cond_image=c1, cond_sigma=lv)
        assert not torch.allclose(base, den(x, s, None, cond_image=c2, cond_sigma=lv))
        assert not torch.allclose(base, den(x, s, None, cond_image=c1, cond_sigma=lv + 0.3))
        assert torch.equal(base, den(x, s, None, cond_image=c1, cond_sigma=lv))
    assert torch.allclose(condition_level(torch.tensor([0.0])), torch.tensor([math.log(0.01) / 4]))


def test_sr_stage_trains_loss_falls_on_four_images(tmp_path):
    data = image_folder(tmp_path / "data", 4, 16)
    cfg = make_config(data, kind="sr", total_images=4 * 250, optim={"lr": 3e-3, "rampup_images": 1},
                      checkpoint={"every_images": 10**9}, log={"every_steps": 100, "tensorboard": False})
    trainer = Trainer(cfg, tmp_path / "run")
    images = torch.stack([trainer.dataset[i][0] for i in range(4)]).float() / 127.5 - 1

    def loss() -> float:
        with torch.no_grad():
            return float(np.mean([trainer.loss_fn(trainer.denoiser, images, torch.full((4,), 0.5),
                                                  generator=[gen(10 * r + i) for i in range(4)]
                                                  ).mean().item() for r in range(4)]))

    before = loss()
    trainer.run(progress=False)
    assert loss() <= 0.5 * before


def _toy_sr_cascade(tmp_path) -> RelayCascade:
    data16 = image_folder(tmp_path / "d16", 8, 16)
    data4 = image_folder(tmp_path / "d4", 8, 4)
    s1 = train(make_config(data4, kind="edm", res=4, total_images=16), tmp_path / "s1", progress=False)
    s2 = train(make_config(data16, kind="sr", total_images=16), tmp_path / "s2", progress=False)
    from relaydiff.training.export import cascade_from_snapshots

    return cascade_from_snapshots([s1.snapshot, s2.snapshot])


def test_sr_stage_samples_upscales_saves_and_loads(tmp_path):
    cascade = _toy_sr_cascade(tmp_path)
    assert [c.kind for c in cascade.configs] == ["edm", "sr"]
    a = cascade([3, 1, 2], batch_size=3)
    assert [t.shape[-1] for t in a] == [4, 16]
    assert torch.equal(a[-1][1], cascade([1])[-1][0])  # depends on its seed only
    cascade.save_pretrained(tmp_path / "c")
    loaded = RelayCascade.from_pretrained(tmp_path / "c")
    for x, y in zip(a, loaded([3, 1, 2]), strict=True):
        assert torch.equal(x, y)
    sr = cascade([3, 1, 2], low_res=a[0])
    assert torch.equal(sr[0], a[0]) and sr[-1].shape == a[-1].shape
    assert torch.equal(sr[-1][2], cascade([2], low_res=a[0][2:])[-1][0])
    meta = json.loads((tmp_path / "c" / "cascade.json").read_text())
    assert meta["stages"][1] == "stage2_sr_16" and meta["training"][1]["images_seen"] == 16
    # The command line: sample and upscale with the saved cascade.
    run = [sys.executable, "-m", "relaydiff"]
    r = subprocess.run([*run, "sample", "--cascade", str(tmp_path / "c"), "--seeds", "0-2",
                        "--out", str(tmp_path / "s")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    (tmp_path / "in").mkdir()
    Image.fromarray(np.full((4, 4, 3), 90, np.uint8)).save(tmp_path / "in" / "a.png")
    r = subprocess.run([*run, "upscale", "--cascade", str(tmp_path / "c"), "--input",
                        str(tmp_path / "in"), "--out", str(tmp_path / "up")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "up" / "a.png").size == (16, 16)


def test_sr_without_low_res_and_bad_kind_fail_with_one_line(tmp_path):
    only_sr = RelayCascade([sr_stage()], [build_denoiser(sr_stage())])
    with pytest.raises(ValueError, match="no stage 1; give low-resolution images"):
        only_sr([0])
    with pytest.raises(ValueError, match=r"stage 1 \(sr\) upscales 4px images"):
        only_sr.run_stage(0, None, [gen(0)])
    with pytest.raises(ValueError, match="stage kind 'srr' is unknown; use one of 'edm', 'relay', 'sr'"):
        StageConfig.from_dict({"kind": "srr", "resolution": 16, "network": {"name": "toy"}})
    with pytest.raises(ValueError, match=r"sample_level 2\.0 must lie in"):
        sr_stage(sample_level=2.0)
    with pytest.raises(ValueError, match=r"network\.in_channels is 3"):
        build_denoiser(sr_stage(network={"name": "toy", "in_channels": 3}))
    cfg = tmp_path / "c.json"
    data = image_folder(tmp_path / "d", 4, 16)
    cfg.write_text(json.dumps(config_dict(data, kind="sr")))
    r = subprocess.run([sys.executable, "-m", "relaydiff", "train", str(cfg), "--set",
                        "stage.kind=superres", "--out", str(tmp_path / "run")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "stage kind 'superres' is unknown" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_guidance_with_an_sr_stage_repeats_its_conditioning():
    from relaydiff.cascade import conditioned

    rec = Recorder()
    cond, level = torch.randn(2, 3, 8, 8), torch.tensor([0.1, 0.1])
    bound = conditioned(rec, cond, level)
    bound(torch.zeros(4, 3, 8, 8), torch.ones(4), None)
    assert torch.equal(rec.calls[0][2], torch.cat([cond, cond]))
    with pytest.raises(ValueError, match="a batch of 3 for 2 conditioning images"):
        bound(torch.zeros(3, 3, 8, 8), torch.ones(3), None)


def test_edm_precond_checks_the_conditioning_shape():
    den = EDMPrecond(build_denoiser(sr_stage()).model)
    with pytest.raises(ValueError, match="one conditioning image per sample"):
        den(torch.zeros(2, 3, 16, 16), torch.ones(2), cond_image=torch.zeros(1, 3, 16, 16))


def test_truncated_start_begins_at_up_of_low_res_plus_sigma0_noise():
    """``edm_sampler.sigma_trunc`` (SDEdit-style start, the study's ``sr-trunc``): the first
    call sees ``up(x_low) + σ₀·n`` at ``σ₀``, the first grid σ below the truncation, with ``n``
    the sample's draws after the conditioning noise ε'; the grid is the relay stage's."""
    from relaydiff.schedules import karras_sigmas

    cfg = sr_stage()
    cfg.edm_sampler = EDMSamplerConfig(steps=8, sigma_min=0.008, sigma_trunc=0.9)
    seen = []
    low = torch.rand(1, 3, 4, 4, generator=gen(2), dtype=torch.float64) * 2 - 1
    RelayCascade([cfg], [build_denoiser(cfg)]).run_stage(
        0, low, [gen(9)], callback=lambda i, sigma, x, denoised: seen.append((sigma, x.clone())))
    sigmas = karras_sigmas(8, 0.008, 80.0, 7.0, truncate=0.9)
    g = gen(9)
    torch.randn(3, 4, 4, generator=g, dtype=torch.float64)  # ε' of the conditioning
    n = torch.randn(3, 16, 16, generator=g, dtype=torch.float64)
    sigma, x = seen[0]
    expected = low[0].repeat_interleave(4, -2).repeat_interleave(4, -1) + sigmas[0] * n
    assert sigma == pytest.approx(sigmas[0].item(), rel=1e-12)
    torch.testing.assert_close(x[0], expected, rtol=0, atol=1e-12)
    assert [s for s, _ in seen] == pytest.approx(sigmas[:-1].tolist(), rel=1e-12)
    with pytest.raises(ValueError, match="a super-resolution stage's setting, not an edm"):
        StageConfig("edm", 16, {"name": "toy"}, edm_sampler=EDMSamplerConfig(sigma_trunc=0.9))
