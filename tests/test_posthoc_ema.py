"""Post-hoc EMA (EDM2): σ_rel ↔ γ, the profile algebra, reconstruction from a known synthetic
weight trajectory, training-loop integration with bitwise resume, and the command line."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy import integrate
from training_helpers import image_folder, make_config, posthoc_config

from relaydiff.stage import load_stage
from relaydiff.training.checkpoint import load_snapshot
from relaydiff.training.loop import train
from relaydiff.training.posthoc_ema import (
    PowerEMA,
    gamma_from_sigma_rel,
    list_posthoc,
    profile_inner,
    reconstruct,
    sigma_rel_from_gamma,
    solve_coefficients,
)


def test_sigma_rel_and_gamma_are_inverse_and_match_the_profile_width():
    for s in (0.01, 0.05, 0.1, 0.2):
        g = gamma_from_sigma_rel(s)
        assert math.isclose(sigma_rel_from_gamma(g), s, rel_tol=1e-10)
        # σ_rel is the standard deviation of the profile p(τ) = (γ+1)τ^γ on [0, 1] over its mean
        mean = integrate.quad(lambda x, g=g: x * (g + 1) * x**g, 0, 1)[0]
        var = integrate.quad(lambda x, g=g, m=mean: (x - m) ** 2 * (g + 1) * x**g, 0, 1)[0]
        assert math.isclose(math.sqrt(var), s, rel_tol=1e-8)
    with pytest.raises(ValueError, match="must lie in"):
        gamma_from_sigma_rel(0.3)


def test_profile_inner_product_is_the_integral():
    # the last two: training-sized image counts with σ_rel 0.03 (γ ≈ 33) and 0.02 (γ ≈ 50)
    for (ta, ga), (tb, gb) in [((100, 6.9), (250, 16.9)), ((300, 2.0), (120, 4.5)),
                               ((112_000, gamma_from_sigma_rel(0.03)), (96_000, 6.9)),
                               ((40_000, 16.9), (112_000, gamma_from_sigma_rel(0.02)))]:
        def product(x, ta=ta, ga=ga, tb=tb, gb=gb):
            return ((ga + 1) / ta * (x / ta) ** ga * (x <= ta)
                    * (gb + 1) / tb * (x / tb) ** gb * (x <= tb))

        direct = integrate.quad(product, 0, max(ta, tb), points=[min(ta, tb)], limit=200)[0]
        assert math.isclose(profile_inner(ta, ga, tb, gb), direct, rel_tol=1e-6)


def test_coefficients_at_training_scale_are_finite_and_fit_an_intermediate_profile():
    """Snapshots every 4,000 images up to 112,000 (the measured runs of docs/quality.md): a short
    profile (σ_rel 0.03) is fitted without overflow, and the fit's reported error is its real
    L² error, computed here by numerical integration of the combination."""
    stored = [(t, g) for t in range(4000, 112_001, 4000)
              for g in (gamma_from_sigma_rel(0.05), gamma_from_sigma_rel(0.10))]
    target = (112_000, gamma_from_sigma_rel(0.03))
    x, error = solve_coefficients(stored, target)
    assert np.isfinite(x).all() and math.isclose(x.sum(), 1.0, rel_tol=1e-12)

    def density(tau, t, g):
        return (g + 1) / t * (tau / t) ** g * (tau <= t)

    def squared_gap(tau):
        fit = sum(c * density(tau, t, g) for c, (t, g) in zip(x, stored, strict=True))
        return (fit - density(tau, *target)) ** 2

    knots = sorted({t for t, _ in stored})
    gap = integrate.quad(squared_gap, 0, 112_000, points=knots, limit=500)[0]
    norm = integrate.quad(lambda tau: density(tau, *target) ** 2, 0, 112_000, limit=200)[0]
    assert error < 0.05
    assert math.isclose(error, math.sqrt(gap / norm), rel_tol=1e-3, abs_tol=1e-4)


class _Vector(torch.nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(d, dtype=torch.float64))


def _trajectory(step: int, d: int) -> torch.Tensor:
    """A known, smooth weight trajectory (what SGD would do, deterministically)."""
    k = torch.arange(d, dtype=torch.float64)
    t = step / 400
    return torch.sin(3 * t * (1 + k / d)) + t**2 * torch.cos(k) + 0.3 * t


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    """400 steps of batch 4 over the trajectory: post-hoc snapshots (σ_rel 0.05, 0.10) every
    40 steps, and for comparison directly tracked EMAs of other widths."""
    run = tmp_path_factory.mktemp("run")
    (run / "posthoc").mkdir()
    d, batch = 64, 4
    module = _Vector(d)
    stored = PowerEMA(module, [0.05, 0.10])
    direct = PowerEMA(module, [0.07, 0.05])
    for step in range(1, 401):
        with torch.no_grad():
            module.w.copy_(_trajectory(step, d))
        stored.update(module, step * batch, batch)
        direct.update(module, step * batch, batch)
        if step % 40 == 0:
            stored.save_snapshots(run / "posthoc", step * batch, step)
    return run, direct


def test_reconstruction_of_a_stored_profile_is_that_snapshot(synthetic_run):
    run, direct = synthetic_run
    weights, record = reconstruct(run, 0.05)
    assert torch.allclose(weights["w"], direct.averages[1]["w"], rtol=0, atol=1e-12)
    assert record["profile_error"] < 1e-6


def test_an_intermediate_profile_matches_the_directly_computed_ema(synthetic_run):
    run, direct = synthetic_run
    weights, record = reconstruct(run, 0.07)
    assert record["profile_error"] < 0.05
    target = direct.averages[0]["w"]
    rel = ((weights["w"] - target).norm() / target.norm()).item()
    assert rel <= 0.01, rel
    again, _ = reconstruct(run, 0.07)
    assert torch.equal(weights["w"], again["w"])  # deterministic


def test_out_of_reach_sigma_rel_is_refused(synthetic_run):
    run, _ = synthetic_run
    with pytest.raises(ValueError, match=r"sigma_rel 0\.28 .* profile error"):
        reconstruct(run, 0.28)
    with pytest.raises(ValueError, match="must lie in"):
        reconstruct(run, 0.5)
    with pytest.raises(ValueError, match="no post-hoc EMA snapshots"):
        reconstruct(run / "posthoc", 0.07)


def test_training_stores_snapshots_and_resumes_bitwise(tmp_path):
    data = image_folder(tmp_path / "d", 8, 16)
    full = train(posthoc_config(data, 48), tmp_path / "full", progress=False)
    train(posthoc_config(data, 24), tmp_path / "split", progress=False)
    rest = train(posthoc_config(data, 48), tmp_path / "split", resume="auto", progress=False)
    a, b = list_posthoc(tmp_path / "full"), list_posthoc(tmp_path / "split")
    assert [s.images_seen for s in a] == [8, 8, 16, 16, 24, 24, 32, 32, 40, 40, 48, 48]
    assert [s.path.name for s in a] == [s.path.name for s in b]
    assert a[0].gamma == pytest.approx(gamma_from_sigma_rel(0.05))
    from relaydiff.io.tensors import load_tensors

    for sa, sb in zip(a, b, strict=True):
        ta, tb = load_tensors(sa.path), load_tensors(sb.path)
        assert all(torch.equal(ta[k], tb[k]) for k in ta)
    ea, eb = load_snapshot(full.snapshot).extra["posthoc"], load_snapshot(rest.snapshot).extra["posthoc"]
    assert all(torch.equal(ea[k], eb[k]) for k in ea)


def test_training_snapshots_are_float16_and_reconstruct_to_float32(tmp_path):
    data = image_folder(tmp_path / "d", 8, 16)
    result = train(posthoc_config(data, 32), tmp_path / "run", progress=False)
    from relaydiff.io.tensors import load_tensors

    snaps = list_posthoc(tmp_path / "run")
    stored = load_tensors(snaps[-2].path)  # σ_rel 0.05 at the end
    assert snaps[-2].sigma_rel == 0.05 and snaps[-2].images_seen == 32
    assert {v.dtype for v in stored.values() if v.is_floating_point()} == {torch.float16}
    weights, _ = reconstruct(tmp_path / "run", 0.05)
    running = {k.split("/", 1)[1]: v for k, v in
               load_snapshot(result.snapshot).extra["posthoc"].items() if k.startswith("0/")}
    for name, value in weights.items():
        assert value.dtype == torch.float32
        # the float16 snapshot, up to the rounding of the least-squares weights (≈ 1)
        assert torch.allclose(value, stored[name].float(), rtol=1e-5, atol=1e-6), name
        # and the float32 running average to float16 rounding
        assert torch.allclose(value, running[name], rtol=2e-3, atol=1e-4), name


def test_command_line_reconstruct_and_bad_input(tmp_path):
    data = image_folder(tmp_path / "d", 8, 16)
    train(posthoc_config(data, 48), tmp_path / "run", progress=False)
    run = [sys.executable, "-m", "relaydiff", "ema"]
    r = subprocess.run([*run, "reconstruct", str(tmp_path / "run"), "--sigma-rel", "0.07", "--out",
                        str(tmp_path / "stage")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    cfg, den = load_stage(tmp_path / "stage")
    assert cfg.kind == "edm" and sum(p.numel() for p in den.parameters()) > 0
    source = json.loads((tmp_path / "stage" / "source.json").read_text())
    assert source["posthoc_ema"]["at_images"] == 48
    assert np.isclose(sum(source["posthoc_ema"]["coefficients"]), 1.0)
    bad = [(["--sigma-rel", "0.9"], "must lie in"), (["--sigma-rel", "a:b"], "LOW:HIGH:COUNT")]
    for args, needle in bad:
        r = subprocess.run([*run, "reconstruct", str(tmp_path / "run"), *args, "--out",
                            str(tmp_path / "o")], capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1
    plain = train(make_config(data, total_images=16), tmp_path / "plain", progress=False)
    assert plain.finished
    r = subprocess.run([*run, "reconstruct", str(tmp_path / "plain"), "--sigma-rel", "0.07", "--out",
                        str(tmp_path / "o")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "no post-hoc EMA snapshots" in r.stderr
    assert not (tmp_path / "o").exists()
