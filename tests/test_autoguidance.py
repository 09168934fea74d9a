"""Autoguidance (docs/method.md §3): the formula, its limits, its call pattern, and the cascade
format and commands that carry a guide network."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from relaydiff import RelayCascade
from relaydiff.samplers import autoguidance, edm_sample
from relaydiff.schedules import karras_sigmas
from relaydiff.stage import EDMSamplerConfig, StageConfig, build_denoiser

DT = torch.float64


class Linear:
    """``D(x) = a·x + b`` (a different pair per model) that counts its calls and batch sizes."""

    def __init__(self, a: float, b: float) -> None:
        self.a, self.b, self.calls = a, b, []

    def __call__(self, x, sigma, labels=None):
        self.calls.append(x.shape[0])
        return self.a * x + self.b


def test_formula_and_its_limits():
    x, s = torch.randn(4, 3, 8, 8, dtype=DT), torch.full((4,), 0.7, dtype=DT)
    good, bad = Linear(0.5, 0.1), Linear(0.2, -0.3)
    out = autoguidance(good, bad, 2.5)(x, s, None)
    expected = (0.2 * x - 0.3) + 2.5 * ((0.5 * x + 0.1) - (0.2 * x - 0.3))
    assert torch.allclose(out, expected, rtol=0, atol=1e-12)
    bad.calls.clear()
    assert torch.equal(autoguidance(good, bad, 1.0)(x, s, None), good(x, s))  # w = 1: the good model
    assert bad.calls == []
    same = Linear(0.5, 0.1)
    assert torch.allclose(autoguidance(good, same, 3.7)(x, s, None), good(x, s), atol=1e-12)


def test_call_pattern_in_a_sampler_and_the_interval():
    """The good model once per evaluation on the whole batch, the guide once on the guided
    samples: none outside the guidance interval."""
    good, bad = Linear(0.9, 0.0), Linear(0.8, 0.0)
    sigmas = karras_sigmas(6, 0.002, 80.0, 7.0)
    latents = torch.randn(5, 3, 4, 4, dtype=DT)
    edm_sample(autoguidance(good, bad, 2.0), latents, sigmas)
    nfe = 2 * 6 - 1
    assert good.calls == [5] * nfe and bad.calls == [5] * nfe
    good.calls.clear(), bad.calls.clear()
    edm_sample(autoguidance(good, bad, 2.0, interval=(0.5, 10.0)), latents, sigmas)
    s = sigmas.tolist()
    evaluated = [s[i] for i in range(6)] + [s[i + 1] for i in range(6) if s[i + 1] > 0]
    inside = sum(0.5 <= v <= 10.0 for v in evaluated)
    assert len(good.calls) == nfe and len(bad.calls) == inside and 0 < inside < nfe


def _toy_relay_cascade():
    return RelayCascade.toy((8, 32), steps=3)


def test_cascade_with_guides_samples_saves_and_loads(tmp_path):
    cascade = _toy_relay_cascade()
    plain = cascade([1, 2])[-1]
    for k, cfg in enumerate(cascade.configs):
        torch.manual_seed(10 + k)
        cascade.set_guide(k, cfg, build_denoiser(cfg).eval())
        cfg.guidance.kind, cfg.guidance.scale = "auto", 1.8
    guided = cascade([1, 2])[-1]
    assert guided.shape == plain.shape and not torch.equal(guided, plain)
    cascade.save_pretrained(tmp_path / "c")
    assert (tmp_path / "c" / "stage2_relay_32" / "guide" / "model.safetensors").is_file()
    loaded = RelayCascade.from_pretrained(tmp_path / "c")
    assert sorted(loaded.guide_configs) == [0, 1]
    assert torch.equal(loaded([1, 2])[-1], guided)
    # upscaling runs the relay stage's autoguided sampler
    up = loaded([3], low_res=torch.zeros(1, 3, 8, 8))[-1]
    assert up.shape == (1, 3, 32, 32)


def test_guide_of_another_stage_and_missing_guide_are_refused():
    cascade = _toy_relay_cascade()
    other = StageConfig("edm", 16, {"name": "toy"}, edm_sampler=EDMSamplerConfig(steps=2))
    with pytest.raises(ValueError, match="stage 1: the guide's resolution is 16 but the stage's is 8"):
        cascade.set_guide(0, other, build_denoiser(other))
    cascade.configs[0].guidance.kind, cascade.configs[0].guidance.scale = "auto", 2.0
    with pytest.raises(ValueError, match=r"guidance\.kind is 'auto' but the stage has no guide"):
        cascade([0])


def test_cascade_build_guide_and_sample_upscale_commands(tmp_path):
    from training_helpers import config_dict, image_folder

    data16, data4 = image_folder(tmp_path / "d16", 8, 16), image_folder(tmp_path / "d4", 8, 4)
    import json

    # The guide: the same stage, trained half as long (a "bad version" of stage 1).
    for name, data, kind, res, total in (("s1", data4, "edm", 4, 8), ("g1", data4, "edm", 4, 4),
                                         ("s2", data16, "relay", 16, 8)):
        (tmp_path / f"{name}.json").write_text(json.dumps(config_dict(data, kind=kind, res=res,
                                                                      total_images=total)))
        r = subprocess.run([sys.executable, "-m", "relaydiff", "train", str(tmp_path / f"{name}.json"),
                            "--out", str(tmp_path / name), "--no-progress"],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
    run = [sys.executable, "-m", "relaydiff"]
    r = subprocess.run([*run, "cascade", "build", "--stage", str(tmp_path / "s1"), "--stage",
                        str(tmp_path / "s2"), "--guide", str(tmp_path / "g1"), "--guidance", "1.8",
                        "--out", str(tmp_path / "c")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "stage 1 autoguided ×1.8" in r.stdout, r.stderr
    training = json.loads((tmp_path / "c" / "cascade.json").read_text())["training"]
    assert training[0]["guide"]["images_seen"] == 4 and training[0]["images_seen"] == 8
    assert "guide" not in training[1]
    r = subprocess.run([*run, "sample", "--cascade", str(tmp_path / "c"), "--seeds", "0-1", "--out",
                        str(tmp_path / "s")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    # A guidance interval above every σ of the sampler guides nothing: the unguided pixels.
    for name, extra in (("plain", ["--guidance", "1"]), ("above", ["--guidance-interval", "100:200"]),
                        ("mid", ["--guidance-interval", "0.5:2"])):
        r = subprocess.run([*run, "sample", "--cascade", str(tmp_path / "c"), "--seeds", "0-1",
                            "--out", str(tmp_path / name), *extra], capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr
    pixels = {name: np.asarray(Image.open(tmp_path / name / "000000" / "000000.png"))
              for name in ("s", "plain", "above", "mid")}
    assert np.array_equal(pixels["above"], pixels["plain"])
    assert not np.array_equal(pixels["s"], pixels["plain"])
    assert not np.array_equal(pixels["mid"], pixels["s"])
    r = subprocess.run([*run, "sample", "--cascade", str(tmp_path / "c"), "--out", str(tmp_path / "x"),
                        "--guidance-interval", "5:1"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "--guidance-interval" in r.stderr and not (tmp_path / "x").exists()
    (tmp_path / "in").mkdir()
    Image.fromarray(np.full((4, 4, 3), 100, np.uint8)).save(tmp_path / "in" / "a.png")
    r = subprocess.run([*run, "upscale", "--cascade", str(tmp_path / "c"), "--input", str(tmp_path / "in"),
                        "--out", str(tmp_path / "u")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([*run, "cascade", "build", "--stage", str(tmp_path / "s1"), "--guide",
                        str(tmp_path / "s2"), "--out", str(tmp_path / "bad")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "the guide's kind is 'relay' but the stage's is 'edm'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()
