"""Classifier-free guidance (docs/method.md §3): weights, schedules, interval, one batched call,
and the samplers' handling of labels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from relaydiff.samplers import classifier_free_guidance, edm_sample, guidance_weight, relay_sample
from relaydiff.schedules import RelaySchedule, karras_sigmas


class CountingDenoiser:
    """A label-dependent denoiser ``D(x, σ, c) = x/(1+σ) + c·v`` that counts calls and batch sizes."""

    def __init__(self, label_dim: int = 3):
        self.v = torch.arange(1.0, label_dim + 1, dtype=torch.float64)
        self.batches: list[int] = []

    def __call__(self, x, sigma, labels):
        self.batches.append(x.shape[0])
        assert sigma.shape == (x.shape[0],) and labels.shape[0] == x.shape[0]
        return x / (1 + sigma.reshape(-1, 1, 1, 1)) + (labels.to(x.dtype) @ self.v).reshape(-1, 1, 1, 1)


def setup(n: int = 4):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 2, 4, 4, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.05, 0.5, 2.0, 10.0][:n], dtype=torch.float64)
    labels = torch.eye(3, dtype=torch.float64)[torch.arange(n) % 3]
    return x, sigma, labels


def test_guidance_scale_one_is_the_conditional_denoiser():
    x, sigma, labels = setup()
    den = CountingDenoiser()
    out = classifier_free_guidance(den, 1.0)(x, sigma, labels)
    torch.testing.assert_close(out, CountingDenoiser()(x, sigma, labels), rtol=0, atol=0)
    assert den.batches == [4]  # no unconditional half needed


def test_guidance_scale_zero_is_the_unconditional_denoiser():
    x, sigma, labels = setup()
    out = classifier_free_guidance(CountingDenoiser(), 0.0)(x, sigma, labels)
    torch.testing.assert_close(out, CountingDenoiser()(x, sigma, torch.zeros_like(labels)))


@pytest.mark.parametrize("w", [3.5, 0.5, -1.0])
def test_guided_combination_in_one_batched_call(w):
    x, sigma, labels = setup()
    den = CountingDenoiser()
    out = classifier_free_guidance(den, w)(x, sigma, labels)
    assert den.batches == [8]  # cond and uncond together, once
    cond = CountingDenoiser()(x, sigma, labels)
    uncond = CountingDenoiser()(x, sigma, torch.zeros_like(labels))
    torch.testing.assert_close(out, w * cond + (1 - w) * uncond)


def test_interval_guides_only_inside():
    x, sigma, labels = setup()  # σ = 0.05, 0.5, 2, 10
    den = CountingDenoiser()
    out = classifier_free_guidance(den, 4.0, interval=(0.3, 2.0))(x, sigma, labels)
    cond = CountingDenoiser()(x, sigma, labels)
    uncond = CountingDenoiser()(x, sigma, torch.zeros_like(labels))
    inside = torch.tensor([False, True, True, False])
    torch.testing.assert_close(out[inside], 4 * cond[inside] - 3 * uncond[inside])
    torch.testing.assert_close(out[~inside], cond[~inside], rtol=0, atol=0)
    assert den.batches == [6]  # one call: 4 conditional + the 2 guided samples' unconditional half
    den = CountingDenoiser()
    classifier_free_guidance(den, 4.0, interval=(20.0, 30.0))(x, sigma, labels)
    assert den.batches == [4]
    w = guidance_weight(4.0, sigma, interval=(0.3, 2.0))
    np.testing.assert_array_equal(w.numpy(), [1.0, 4.0, 4.0, 1.0])


def tau(sigma: np.ndarray, smin: float, smax: float) -> np.ndarray:
    """Position of ln σ between ln σ_max (0) and ln σ_min (1), clipped."""
    return np.clip((math.log(smax) - np.log(sigma)) / (math.log(smax) - math.log(smin)), 0, 1)


def test_linear_and_cosine_schedules_closed_forms():
    sigma = np.array([100.0, 80.0, 10.0, 1.0, 0.1, 0.002, 0.001])
    t = tau(sigma, 0.002, 80.0)
    w = 3.5
    lin = guidance_weight(w, torch.tensor(sigma), schedule="linear").numpy()
    np.testing.assert_allclose(lin, 1 + (w - 1) * t, rtol=1e-12)
    for power in (1.0, 2.0, 0.5):
        cos = guidance_weight(w, torch.tensor(sigma), schedule="cosine", power=power).numpy()
        np.testing.assert_allclose(cos, 1 + (w - 1) * (1 - np.cos(np.pi * t**power)) / 2, rtol=1e-12)
    # ends: no guidance at σ_max, full guidance at σ_min
    assert lin[1] == pytest.approx(1.0) and lin[5] == pytest.approx(w)
    t2 = tau(sigma, 0.01, 5.0)
    lin2 = guidance_weight(w, torch.tensor(sigma), schedule="linear", sigma_min=0.01, sigma_max=5.0)
    np.testing.assert_allclose(lin2.numpy(), 1 + (w - 1) * t2, rtol=1e-12)
    const = guidance_weight(w, torch.tensor(sigma)).numpy()
    np.testing.assert_array_equal(const, np.full(7, w))


def test_scheduled_guidance_uses_per_sample_weights():
    x, sigma, labels = setup()
    out = classifier_free_guidance(CountingDenoiser(), 3.0, schedule="linear")(x, sigma, labels)
    w = torch.tensor(1 + 2 * tau(sigma.numpy(), 0.002, 80.0)).reshape(-1, 1, 1, 1)
    cond = CountingDenoiser()(x, sigma, labels)
    uncond = CountingDenoiser()(x, sigma, torch.zeros_like(labels))
    torch.testing.assert_close(out, w * cond + (1 - w) * uncond)


def test_samplers_call_the_guided_denoiser_once_per_evaluation():
    x, _, labels = setup()
    grid = torch.tensor([0.8, 0.4, 0.1, 0.0], dtype=torch.float64)
    den = CountingDenoiser()
    relay_sample(classifier_free_guidance(den, 2.0), x, grid, RelaySchedule(0.93, 3.0), 4,
                 labels=labels, eta=0.2)
    assert den.batches == [8] * 5  # Heun: 2 evaluations per step, then the final denoising
    den = CountingDenoiser()
    edm_sample(classifier_free_guidance(den, 2.0), x, karras_sigmas(3, 0.1, 1.0), labels=labels)
    assert den.batches == [8] * 5


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: guidance_weight(2.0, torch.ones(2), schedule="sigmoid"), "'sigmoid'"),
        (lambda: classifier_free_guidance(CountingDenoiser(), 2.0, schedule="exp"), "'exp'"),
        (lambda: guidance_weight(math.nan, torch.ones(2)), "nan"),
        (lambda: guidance_weight(2.0, torch.ones(2), interval=(2.0, 1.0)), r"\(2\.0, 1\.0\)"),
        (lambda: classifier_free_guidance(CountingDenoiser(), 2.0)(*setup()[:2], None), "labels"),
    ],
)
def test_bad_input_raises_value_error_naming_the_value(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_guidance_rejects_labels_for_another_batch():
    x, sigma, _ = setup()
    with pytest.raises(ValueError, match=r"labels.*\(5, 3\)"):
        classifier_free_guidance(CountingDenoiser(), 2.0)(x, sigma, torch.zeros(5, 3))


@pytest.mark.parametrize("sampler", ["edm", "relay"])
def test_samplers_reject_labels_for_another_batch(sampler):
    x, _, _ = setup()

    def den(x, sigma, labels):
        return x

    grid = torch.tensor([0.8, 0.4, 0.0], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"labels.*\(3, 3\)"):
        if sampler == "edm":
            edm_sample(den, x, grid, labels=torch.zeros(3, 3))
        else:
            relay_sample(den, x, grid, RelaySchedule(0.93, 3.0), 4, labels=torch.zeros(3, 3))
