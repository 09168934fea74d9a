"""Frequency-SNR analysis (paper Fig. 2) against independent scipy/numpy computations."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.fft import dctn

from relaydiff.analysis.spectrum import band_power, block_noise_power, frequency_snr, signal_power


def test_signal_power_matches_scipy_dct():
    x = torch.rand(3, 2, 16, 16, dtype=torch.float64)
    ref = (dctn(x.numpy(), axes=(-2, -1), norm="ortho") ** 2).mean(axis=(0, 1))
    assert np.allclose(signal_power(x).numpy(), ref, atol=1e-12)


def test_block_noise_power_matches_closed_form():
    """Var of DCT coefficient (i,j) of block noise = σ²·Σ_blocks (Σ_y M[i,y])²·(Σ_x M[j,x])²."""
    r, s, sigma = 16, 4, 0.3
    n = np.arange(r)
    m = np.cos(np.pi * (2 * n[None, :] + 1) * n[:, None] / (2 * r)) * np.sqrt(2 / r)
    m[0] /= np.sqrt(2)
    block_sums = m.reshape(r, r // s, s).sum(-1)  # (freq, block)
    var_1d = (block_sums**2).sum(-1)
    expected = sigma**2 * np.outer(var_1d, var_1d)
    measured = block_noise_power(r, s, sigma, draws=4000).numpy()
    big = expected > 1e-3
    assert np.allclose(measured[big], expected[big], rtol=0.1)
    assert measured[~big].max() < 2e-3


def test_band_power_means_over_radial_bands():
    power = torch.arange(16.0, dtype=torch.float64).reshape(4, 4)
    edges = [0, 1, 2, 10]
    out = band_power(power, edges)
    assert out[0] == 0.0  # radius 0 only: (0,0)
    assert out[1] == pytest.approx((1 + 4 + 5) / 3)  # radius 1, 1, √2
    assert out[2] == pytest.approx((power.sum().item() - 10) / 12)  # the other 12


def test_snr_reproduces_the_papers_finding_on_smooth_images():
    """Smooth random fields: the high resolution has ~16× (12 dB) more low-frequency SNR under
    white noise of the same σ, and block noise removes most of that gap."""
    g = torch.Generator().manual_seed(0)
    low_freq = torch.randn(6, 3, 8, 8, generator=g, dtype=torch.float64)
    high = torch.nn.functional.interpolate(low_freq, size=64, mode="bicubic", align_corners=False)
    high = high / high.abs().max()
    low = torch.nn.functional.avg_pool2d(high, 4)
    res = frequency_snr(high, low, sigma=0.3)
    gap_gauss, gap_block = res.low_band_gaps_db()
    assert 10 < gap_gauss < 14
    assert abs(gap_block) < 3
    with pytest.raises(ValueError, match="integer multiple"):
        frequency_snr(high, torch.zeros(6, 3, 48, 48))


def run(*args):
    return subprocess.run([sys.executable, "-m", "relaydiff", *args], capture_output=True,
                          text=True, timeout=300)


def test_cli_writes_plot_csv_and_json(tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    rng = np.random.default_rng(0)
    for k in range(2):
        smooth = Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).resize(
            (300, 280), Image.BICUBIC)
        smooth.save(src / f"{k}.png")
    r = run("analyze", "spectrum", "--input", str(src), "--out", str(tmp_path / "o"),
            "--low", "16", "--high", "64")
    assert r.returncode == 0, r.stderr
    assert "finding holds" in r.stdout
    for name in ("spectrum.png", "spectrum.csv", "spectrum.json"):
        assert (tmp_path / "o" / name).stat().st_size > 0
    header = (tmp_path / "o" / "spectrum.csv").read_text().splitlines()[0]
    assert header == "band_lo,band_hi,snr_16_gaussian,snr_64_gaussian,snr_64_block"


def test_cli_bad_input(tmp_path):
    (tmp_path / "empty").mkdir()
    r = run("analyze", "spectrum", "--input", str(tmp_path / "empty"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "holds no PNG/JPEG/WebP images" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    f = tmp_path / "file"
    f.write_text("x")
    r = run("analyze", "spectrum", "--out", str(f))
    assert r.returncode == 2 and "exists and is a file" in r.stderr and f.read_text() == "x"
    r = run("analyze", "spectrum", "--input", str(tmp_path / "missing"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "not a folder" in r.stderr
