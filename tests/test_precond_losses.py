"""EDM preconditioning and the two training losses against independent computations.

The losses' noise is replayed from a cloned generator and the relay forward process is
rebuilt from the reference blur matrix (tests/conftest.py) and the schedule's closed forms.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

from relaydiff.losses import EDMLoss, RelayLoss
from relaydiff.precond import EDMPrecond, edm_coefficients, loss_weight
from relaydiff.schedules import RelaySchedule, edm_training_sigmas

SD = 0.5


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------- preconditioning

def test_edm_coefficients_closed_form():
    sigma = np.array([0.002, 0.05, 0.5, 1.0, 7.0, 80.0])
    c = edm_coefficients(torch.tensor(sigma, dtype=torch.float64), SD)
    np.testing.assert_allclose(c.c_skip.numpy(), SD**2 / (sigma**2 + SD**2), rtol=1e-14)
    np.testing.assert_allclose(c.c_out.numpy(), sigma * SD / np.sqrt(sigma**2 + SD**2), rtol=1e-14)
    np.testing.assert_allclose(c.c_in.numpy(), 1 / np.sqrt(sigma**2 + SD**2), rtol=1e-14)
    np.testing.assert_allclose(c.c_noise.numpy(), np.log(sigma) / 4, rtol=1e-14)
    lam = loss_weight(torch.tensor(sigma, dtype=torch.float64), SD).numpy()
    np.testing.assert_allclose(lam, (sigma**2 + SD**2) / (sigma * SD) ** 2, rtol=1e-14)
    np.testing.assert_allclose(lam, 1 / c.c_out.numpy() ** 2, rtol=1e-12)


class RecordingNet(nn.Module):
    """A known raw network ``F(x, c_noise, labels) = w·x + c_noise + labels·v`` that records its inputs."""

    def __init__(self, label_dim: int = 0):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.7))
        self.v = nn.Parameter(torch.arange(1.0, label_dim + 1)) if label_dim else None
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []

    def forward(self, x, c_noise, labels):
        self.calls.append((x, c_noise, labels))
        out = self.w * x + c_noise.reshape(-1, 1, 1, 1)
        if labels is not None:
            out = out + (labels @ self.v).reshape(-1, 1, 1, 1)
        return out


def test_edm_precond_wraps_a_known_raw_network():
    net = RecordingNet(label_dim=3)
    den = EDMPrecond(net, label_dim=3)
    x = torch.randn(4, 2, 4, 4, generator=gen(0))
    sigma = torch.tensor([0.01, 0.3, 2.0, 40.0])
    labels = torch.eye(3)[[0, 2, 1, 0]]
    out = den(x, sigma, labels)
    xs, s, lab = x.double().numpy(), sigma.double().numpy(), labels.double().numpy()
    c_in = 1 / np.sqrt(s**2 + SD**2)
    shift = np.log(s) / 4 + lab @ np.array([1.0, 2, 3])
    f = 0.7 * c_in[:, None, None, None] * xs + shift[:, None, None, None]
    expected = (SD**2 / (s**2 + SD**2))[:, None, None, None] * xs + \
        (s * SD / np.sqrt(s**2 + SD**2))[:, None, None, None] * f
    np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-5, atol=1e-6)
    net_x, net_c, net_l = net.calls[-1]
    np.testing.assert_allclose(net_x.detach().numpy(), c_in[:, None, None, None] * xs, rtol=1e-6)
    np.testing.assert_allclose(net_c.numpy(), np.log(s) / 4, rtol=1e-6)
    torch.testing.assert_close(net_l, labels)
    # without labels the unconditional (zero) label is used; a scalar σ is broadcast
    den(x, torch.tensor(0.5), None)
    assert torch.equal(net.calls[-1][2], torch.zeros(4, 3))
    torch.testing.assert_close(net.calls[-1][1], torch.full((4,), math.log(0.5) / 4))
    # unconditional networks get labels=None
    net0 = RecordingNet()
    EDMPrecond(net0)(x, sigma, labels)
    assert net0.calls[-1][2] is None
    assert set(EDMPrecond(RecordingNet()).state_dict()) == {"model.w"}


def test_edm_precond_takes_float64_sampler_state():
    """A float64 sampler state (docs/method.md §4) reaches a float32 network as float32 and comes back
    in float64."""
    net = RecordingNet()
    x = torch.randn(2, 1, 4, 4, generator=gen(1), dtype=torch.float64)
    sigma = torch.tensor([0.3, 1.0], dtype=torch.float64)
    out = EDMPrecond(net)(x, sigma)
    assert net.calls[-1][0].dtype == torch.float32
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, EDMPrecond(net)(x.float(), sigma.float()).double())


# ----------------------------------------------------------------------------------- losses

class AffineDenoiser:
    """``D(x, σ, labels) = 0.6·x + 0.1·σ (+ label term)``; records what it was given."""

    def __init__(self):
        self.seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []

    def __call__(self, x, sigma, labels=None):
        self.seen.append((x, sigma, labels))
        out = 0.6 * x + 0.1 * sigma.reshape(-1, 1, 1, 1)
        if labels is not None:
            out = out + labels.sum(1).reshape(-1, 1, 1, 1)
        return out


def expected_loss(denoised: np.ndarray, images: np.ndarray, sigma: np.ndarray, cap: float) -> np.ndarray:
    lam = np.minimum((sigma**2 + SD**2) / (sigma * SD) ** 2, cap)
    return lam * ((denoised - images) ** 2).reshape(len(sigma), -1).mean(1)


def affine_np(x: np.ndarray, sigma: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    out = 0.6 * x + 0.1 * sigma[:, None, None, None]
    return out if labels is None else out + labels.sum(1)[:, None, None, None]


def test_edm_loss_per_sample(ref):
    images = torch.rand(3, 2, 4, 4, generator=gen(2), dtype=torch.float64) * 2 - 1
    sigma = torch.tensor([0.01, 0.5, 20.0], dtype=torch.float64)
    labels = torch.eye(3, dtype=torch.float64)
    g = gen(3)
    noise = torch.randn(images.shape, generator=ref.clone(g), dtype=torch.float64).numpy()
    den = AffineDenoiser()
    loss = EDMLoss()(den, images, sigma, labels, generator=g)
    assert loss.shape == (3,)
    x_noisy = images.numpy() + sigma.numpy()[:, None, None, None] * noise
    exp = expected_loss(affine_np(x_noisy, sigma.numpy(), labels.numpy()), images.numpy(),
                        sigma.numpy(), math.inf)
    np.testing.assert_allclose(loss.numpy(), exp, rtol=1e-12)
    torch.testing.assert_close(den.seen[-1][2], labels)
    s = EDMLoss().sample_sigma(5, generator=gen(4))
    torch.testing.assert_close(s, edm_training_sigmas(5, -1.2, 1.2, generator=gen(4)))


def test_edm_loss_with_block_noise_mixes_it_in_at_high_sigma_only(ref):
    """``block_noise=(α, patch, σ_min)``: samples at ``σ ≥ σ_min`` get ``(ε + α·Block)/√(1+α²)``
    (the block values drawn after ``ε``, one per patch), the others ``ε`` (docs/method.md §1.2)."""
    images = torch.rand(3, 2, 4, 4, generator=gen(2), dtype=torch.float64) * 2 - 1
    sigma = torch.tensor([0.5, 2.0, 20.0], dtype=torch.float64)
    g = gen(3)
    replay = ref.clone(g)
    eps = torch.randn(images.shape, generator=replay, dtype=torch.float64).numpy()
    low = torch.randn((3, 2, 2, 2), generator=replay, dtype=torch.float64).numpy()
    block = low.repeat(2, axis=-2).repeat(2, axis=-1)
    alpha = 0.3
    mixed = (eps + alpha * block) / math.sqrt(1 + alpha**2)
    noise = np.where((sigma.numpy() >= 1.0)[:, None, None, None], mixed, eps)
    den = AffineDenoiser()
    loss = EDMLoss(block_noise=(alpha, 2, 1.0))(den, images, sigma, None, generator=g)
    x_noisy = images.numpy() + sigma.numpy()[:, None, None, None] * noise
    exp = expected_loss(affine_np(x_noisy, sigma.numpy(), None), images.numpy(), sigma.numpy(),
                        math.inf)
    np.testing.assert_allclose(loss.numpy(), exp, rtol=1e-12)


def blur_level(sigma: float, s: RelaySchedule) -> float:
    u = scipy.stats.norm.cdf((math.log(sigma) - s.p_mean) / s.p_std) / s.prob_length
    return s.blur_sigma_max * math.sin(math.pi * u / 2) ** 2


def box(g: np.ndarray, s: int) -> np.ndarray:
    return sum(np.roll(g, (dx, dy), axis=(-2, -1)) for dx in range(s) for dy in range(s)) / s


@pytest.mark.parametrize("variant", ["trapezoidal", "official"])
def test_relay_loss_per_sample(variant, ref):
    sched = RelaySchedule(0.89, 2.0)
    p, a = 4, 0.15
    images = torch.rand(3, 2, 8, 8, generator=gen(5), dtype=torch.float64) * 2 - 1
    # σ = 1e-3 has λ ≈ 4·10⁶, clamped at 1e5
    sigma = torch.tensor([1e-3, 0.3, 0.9], dtype=torch.float64)
    labels = torch.eye(3, dtype=torch.float64)
    g = gen(6)
    r = ref.clone(g)
    eps = torch.randn(images.shape, generator=r, dtype=torch.float64).numpy()
    if variant == "trapezoidal":
        low = torch.randn(3, 2, 2, 2, generator=r, dtype=torch.float64).numpy()
        noise = (eps + a * low.repeat(p, -2).repeat(p, -1)) / math.sqrt(1 + a * a)
    else:
        noise = eps + a * box(torch.randn(images.shape, generator=r, dtype=torch.float64).numpy(), p)
    loss_fn = RelayLoss(sched, p, block_alpha=a, variant=variant)
    den = AffineDenoiser()
    loss = loss_fn(den, images, sigma, labels, generator=g)
    x = images.numpy()
    blurred = np.stack([
        (ref.blur_operator(2, 8, 8, p, blur_level(float(s), sched), 1e-3) @ x[k].reshape(-1))
        .reshape(2, 8, 8) for k, s in enumerate(sigma)])
    x_noisy = blurred + sigma.numpy()[:, None, None, None] * noise
    np.testing.assert_allclose(den.seen[-1][0].numpy(), x_noisy, rtol=1e-10, atol=1e-12)
    exp = expected_loss(affine_np(x_noisy, sigma.numpy(), labels.numpy()), x, sigma.numpy(), 1e5)
    np.testing.assert_allclose(loss.numpy(), exp, rtol=1e-10)
    lam0 = (1e-6 + SD**2) / (1e-3 * SD) ** 2
    assert lam0 > 1e6
    mse0 = float(((affine_np(x_noisy, sigma.numpy(), labels.numpy())[0] - x[0]) ** 2).mean())
    assert float(loss[0]) == pytest.approx(1e5 * mse0, rel=1e-10)  # clamped weight


@pytest.mark.parametrize("prob_length", [0.89, 0.93])
def test_relay_loss_u_min_paper_divides_official_multiplies(prob_length):
    sched = RelaySchedule(prob_length, 2.0)
    cdf = scipy.stats.norm.cdf((math.log(7.5e-3) + 1.2) / 1.2)
    paper, official = RelayLoss(sched, 4), RelayLoss(sched, 4, variant="official")
    assert paper.u_min == pytest.approx(cdf / prob_length, rel=1e-10)
    assert official.u_min == pytest.approx(cdf * prob_length, rel=1e-10)
    # the paper's bound is exactly σ(u_min) = 7.5e-3
    assert float(sched.sigma(paper.u_min)) == pytest.approx(7.5e-3, rel=1e-9)


def test_relay_loss_sigma_sampling_paper_is_uniform_above_u_min():
    sched = RelaySchedule(0.89, 2.0)
    loss_fn = RelayLoss(sched, 4)
    sigma = loss_fn.sample_sigma(100_000, generator=gen(7))
    assert sigma.dtype == torch.float32 and sigma.shape == (100_000,)
    u = sched.u(sigma.double()).numpy()
    u_min = loss_fn.u_min
    assert u.min() >= u_min - 1e-6 and u.max() <= 1 + 1e-6
    assert float(sigma.min()) >= 7.5e-3 * (1 - 1e-5)
    assert scipy.stats.kstest(u, "uniform", args=(u_min, 1 - u_min)).pvalue > 1e-3


def test_relay_loss_sigma_sampling_official_clamps_at_u_min():
    sched = RelaySchedule(0.89, 2.0)
    loss_fn = RelayLoss(sched, 4, variant="official")
    n = 400_000
    sigma = loss_fn.sample_sigma(n, generator=gen(8)).double()
    cdf = scipy.stats.norm.cdf((math.log(7.5e-3) + 1.2) / 1.2)
    u_min = cdf * 0.89
    sigma_floor = math.exp(-1.2 + 1.2 * scipy.stats.norm.ppf(u_min * 0.89))  # σ(u_min), below 7.5e-3
    assert sigma_floor < 7.5e-3
    at_floor = np.isclose(sigma.numpy(), sigma_floor, rtol=1e-6)
    assert float(sigma.min()) == pytest.approx(sigma_floor, rel=1e-6)
    # P(U(0,1) < u_min) = u_min of the draws sit on the clamp
    expected = n * u_min
    assert abs(at_floor.sum() - expected) < 5 * math.sqrt(expected)
    u_rest = sched.u(sigma[~torch.from_numpy(at_floor)]).numpy()
    assert scipy.stats.kstest(u_rest, "uniform", args=(u_min, 1 - u_min)).pvalue > 1e-3


@pytest.mark.parametrize("variant", ["trapezoidal", "official"])
def test_relay_loss_sigma_per_sample_generators(variant):
    loss_fn = RelayLoss(RelaySchedule(0.93, 3.0), 4, variant=variant)
    batch = loss_fn.sample_sigma(3, generator=[gen(k) for k in (1, 2, 3)])
    for i, k in enumerate((1, 2, 3)):
        assert float(batch[i]) == float(loss_fn.sample_sigma(1, generator=[gen(k)])[0])


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
@pytest.mark.parametrize("variant", ["trapezoidal", "official"])
def test_relay_loss_runs_on_the_images_device(device, variant):
    loss_fn = RelayLoss(RelaySchedule(0.93, 3.0), 4, variant=variant)
    images = torch.zeros(3, 3, 8, 8, device=device)
    sigma = loss_fn.sample_sigma(3, generator=gen(9), device=device)
    loss = loss_fn(AffineDenoiser(), images, sigma)
    assert loss.shape == (3,) and loss.device.type == device and torch.isfinite(loss).all()


def test_relay_loss_old_variant_name_paper_is_trapezoidal():
    with pytest.warns(DeprecationWarning, match="variant='trapezoidal'"):
        old = RelayLoss(RelaySchedule(0.93, 3.0), 4, variant="paper")
    assert old == RelayLoss(RelaySchedule(0.93, 3.0), 4) and old.to_dict()["variant"] == "trapezoidal"


# -------------------------------------------------------------------------------- bad input

IMAGES = torch.zeros(2, 3, 8, 8)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: EDMLoss()(AffineDenoiser(), IMAGES, torch.tensor([0.5, 0.0])), r"0\.0"),
        (lambda: EDMLoss()(AffineDenoiser(), IMAGES, torch.tensor([0.5, -1.0])), r"-1\.0"),
        (lambda: EDMLoss()(AffineDenoiser(), IMAGES, torch.tensor([0.5, math.nan])), "nan"),
        (lambda: EDMLoss()(AffineDenoiser(), IMAGES, torch.tensor([0.5, 1.0, 2.0])), "3 entries"),
        (lambda: RelayLoss(RelaySchedule(0.93, 3.0), 4)(
            AffineDenoiser(), IMAGES, torch.tensor([math.inf, 1.0])), "inf"),
        (lambda: RelayLoss(RelaySchedule(0.93, 3.0), 3)(
            AffineDenoiser(), IMAGES, torch.tensor([0.5, 1.0])), "patch size 3"),
        (lambda: RelayLoss(RelaySchedule(0.93, 3.0), 4, variant="release"), "'release'"),
        (lambda: RelayLoss(RelaySchedule(0.93, 3.0), 0), "patch_size=0"),
        (lambda: EDMPrecond(RecordingNet(3), label_dim=3)(
            IMAGES, torch.ones(2), torch.zeros(2, 4)), r"\(2, 3\).*\(2, 4\)"),
        (lambda: EDMPrecond(RecordingNet())(IMAGES, torch.ones(3)), "3 entries"),
    ],
)
def test_bad_input_raises_value_error_naming_the_value(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("loss", ["edm", "relay"])
def test_losses_reject_labels_for_another_batch(loss):
    fn = EDMLoss() if loss == "edm" else RelayLoss(RelaySchedule(0.93, 3.0), 4)
    with pytest.raises(ValueError, match=r"labels.*\(3, 5\)"):
        fn(AffineDenoiser(), IMAGES, torch.tensor([0.5, 1.0]), torch.zeros(3, 5))
