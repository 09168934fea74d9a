"""relaydiff.schedules against closed forms evaluated with scipy (docs/method.md §2.4, §1.3)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

from relaydiff.schedules import RelaySchedule, check_sigmas, edm_training_sigmas, karras_sigmas

SCHEDULES = [RelaySchedule(0.93, 3.0), RelaySchedule(0.89, 2.0), RelaySchedule(1.05, 2.0, -1.0, 1.4)]


@pytest.mark.parametrize("s", SCHEDULES, ids=["imagenet", "celebahq", "custom"])
def test_sigma_and_u_closed_forms_and_inverse(s):
    u = np.linspace(0.01, 0.95, 40)
    sigma = np.exp(s.p_mean + s.p_std * scipy.stats.norm.ppf(u * s.prob_length))
    np.testing.assert_allclose(s.sigma(torch.tensor(u)).numpy(), sigma, rtol=1e-12)
    expected_u = scipy.stats.norm.cdf((np.log(sigma) - s.p_mean) / s.p_std) / s.prob_length
    np.testing.assert_allclose(s.u(torch.tensor(sigma)).numpy(), expected_u, rtol=1e-12)
    np.testing.assert_allclose(s.u(s.sigma(torch.tensor(u))).numpy(), u, rtol=1e-10)
    grid = torch.tensor([0.002, 0.05, 0.9, 3.0])
    np.testing.assert_allclose(s.sigma(s.u(grid)).numpy(), grid.numpy(), rtol=1e-6)
    # a scalar works too
    assert math.isclose(float(s.sigma(0.5)), math.exp(s.p_mean + s.p_std *
                        scipy.stats.norm.ppf(0.5 * s.prob_length)), rel_tol=1e-12)


def test_known_values():
    s = RelaySchedule(0.93, 3.0)
    # σ(u) = 1 ⇔ Φ⁻¹(u·L) = 1.2/1.2 = 1 ⇔ u = Φ(1)/0.93
    assert math.isclose(float(s.u(1.0)), 0.8413447460685429 / 0.93, rel_tol=1e-12)
    assert math.isclose(float(s.blur_sigma(1.0)), 3.0, rel_tol=1e-15)
    assert math.isclose(float(s.blur_sigma(0.5)), 1.5, rel_tol=1e-12)
    assert float(s.blur_sigma(0.0)) == 0.0


@pytest.mark.parametrize("s", SCHEDULES, ids=["imagenet", "celebahq", "custom"])
def test_blur_sigma_and_attenuation(s):
    u = np.linspace(0.0, 1.0, 11)
    np.testing.assert_allclose(s.blur_sigma(torch.tensor(u)).numpy(),
                               s.blur_sigma_max * np.sin(np.pi * u / 2) ** 2, rtol=1e-12, atol=1e-15)
    for p in (2, 4):
        w = np.pi * np.arange(p) / p
        for sigma in (0.01, 0.3, 0.89):
            b = s.blur_sigma_max * math.sin(math.pi / 2 * scipy.stats.norm.cdf(
                (math.log(sigma) - s.p_mean) / s.p_std) / s.prob_length) ** 2
            table = s.attenuation(sigma, p)
            assert table.shape == (p, p)
            expected = (1 - s.min_scale) * np.exp(-(w[:, None] ** 2 + w[None] ** 2) * b**2 / 2) \
                + s.min_scale
            np.testing.assert_allclose(table.numpy(), expected, rtol=1e-10)
        stack = s.attenuation(torch.tensor([0.01, 0.5, 0.89]), p)
        assert stack.shape == (3, p, p)
        np.testing.assert_allclose(stack[1].numpy(), s.attenuation(0.5, p).numpy(), rtol=1e-12)
    # attenuation shape: DC is always 1, higher frequencies decay, more so at larger σ
    lo, hi = s.attenuation(0.05, 4), s.attenuation(0.85, 4)
    assert float(hi[0, 0]) == pytest.approx(1.0, abs=1e-15)
    assert torch.all(hi <= lo + 1e-15)
    assert torch.all(hi[1:, :] <= hi[:-1, :] + 1e-15) and torch.all(hi[:, 1:] <= hi[:, :-1] + 1e-15)
    assert torch.all(hi >= s.min_scale)


@pytest.mark.parametrize(("n", "smin", "smax", "rho"), [(200, 0.008, 80.0, 7.0), (40, 0.002, 80.0, 7.0),
                                                        (200, 0.008, 80.0, 100.0), (2, 0.1, 1.0, 3.0)])
def test_karras_grid_closed_form(n, smin, smax, rho):
    i = np.arange(n)
    expected = (smax ** (1 / rho) + i / (n - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    got = karras_sigmas(n, smin, smax, rho)
    assert got.dtype == torch.float64 and got.shape == (n + 1,)
    np.testing.assert_allclose(got[:-1].numpy(), expected, rtol=1e-12)
    assert got[-1] == 0
    assert got[0] == pytest.approx(smax) and got[-2] == pytest.approx(smin)


def test_karras_truncation():
    full = karras_sigmas(200, 0.008, 80.0, 7.0)
    cut = karras_sigmas(200, 0.008, 80.0, 7.0, truncate=0.9)
    kept = full[:-1][full[:-1] < 0.9]
    torch.testing.assert_close(cut[:-1], kept, rtol=0, atol=0)
    assert cut[-1] == 0 and float(cut[0]) < 0.9 <= float(full[len(full) - len(cut) - 1])
    for n in (64, 200):
        ramp = np.arange(n) / (n - 1)
        closed = (80 ** (1 / 7) + ramp * (0.008 ** (1 / 7) - 80 ** (1 / 7))) ** 7
        assert len(karras_sigmas(n, 0.008, 80.0, 7.0, truncate=0.9)) - 1 == int((closed < 0.9).sum())
    one = karras_sigmas(1, 0.5, 2.0, 7.0)
    torch.testing.assert_close(one, torch.tensor([2.0, 0.0], dtype=torch.float64))


def test_edm_training_sigmas_are_log_normal():
    n = 200_000
    sigma = edm_training_sigmas(n, -1.2, 1.2, generator=torch.Generator().manual_seed(0))
    assert sigma.shape == (n,) and torch.all(sigma > 0)
    log = sigma.double().log()
    se = 1.2 / math.sqrt(n)
    assert abs(float(log.mean()) + 1.2) < 4 * se
    assert abs(float(log.std()) - 1.2) < 4 * 1.2 / math.sqrt(2 * n)
    assert scipy.stats.kstest(log.numpy(), "norm", args=(-1.2, 1.2)).pvalue > 1e-3
    # the same with per-sample generators, one draw each
    gens = [torch.Generator().manual_seed(k) for k in range(3)]
    per = edm_training_sigmas(3, generator=gens)
    for k in range(3):
        z = torch.randn(1, generator=torch.Generator().manual_seed(k))
        assert float(per[k]) == pytest.approx(math.exp(-1.2 + 1.2 * float(z)), rel=1e-6)


def test_check_sigmas_accepts_a_grid():
    torch.testing.assert_close(check_sigmas(torch.tensor([2.0, 1.0, 0.0])),
                               torch.tensor([2.0, 1.0, 0.0], dtype=torch.float64))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: RelaySchedule(0.0, 3.0), "prob_length=0.0"),
        (lambda: RelaySchedule(math.nan, 3.0), "prob_length=nan"),
        (lambda: RelaySchedule(0.93, -1.0), "blur_sigma_max=-1.0"),
        (lambda: RelaySchedule(0.93, 3.0, p_std=0.0), "p_std=0.0"),
        (lambda: RelaySchedule(0.93, 3.0, min_scale=1.5), "min_scale=1.5"),
        (lambda: RelaySchedule(0.93, 3.0).u(0.0), r"sigma.*0\.0"),
        (lambda: RelaySchedule(0.93, 3.0).u(-1.0), r"-1\.0"),
        (lambda: RelaySchedule(0.93, 3.0).u(math.inf), "inf"),
        (lambda: RelaySchedule(0.93, 3.0).u(torch.tensor([0.5, math.nan])), "nan"),
        (lambda: RelaySchedule(0.93, 3.0).attenuation(0.0, 4), r"0\.0"),
        (lambda: RelaySchedule(0.93, 3.0).sigma(1.2), r"u=1\.2"),
        (lambda: RelaySchedule(0.93, 3.0).sigma(0.0), r"u=0\.0"),
        (lambda: karras_sigmas(0), "n=0"),
        (lambda: karras_sigmas(10, 0.0, 80.0), "sigma_min"),
        (lambda: karras_sigmas(10, 0.1, math.nan), "sigma_max"),
        (lambda: karras_sigmas(10, 1.0, 0.5), "sigma_min=1.0"),
        (lambda: karras_sigmas(10, 0.1, 80.0, 7.0, truncate=0.05), "truncate=0.05"),
        (lambda: check_sigmas(torch.tensor([])), r"\[\]"),
        (lambda: check_sigmas(torch.tensor([0.0])), "at least one"),
        (lambda: check_sigmas(torch.tensor([1.0, 0.5])), "end with 0"),
        (lambda: check_sigmas(torch.tensor([1.0, -0.5, 0.0])), r"-0\.5"),
        (lambda: check_sigmas(torch.tensor([1.0, math.nan, 0.0])), "nan"),
        (lambda: check_sigmas(torch.tensor([0.5, 1.0, 0.0])), "descending"),
    ],
)
def test_bad_input_raises_value_error_naming_the_value(call, match):
    with pytest.raises(ValueError, match=match):
        call()
