"""Samplers against ground truth: data whose exact posterior-mean denoiser is known in closed form.

Gaussian data ``x ~ N(μ, Σ)`` under the relay forward process ``x_u = B_u x + σ·n``,
``n ~ N(0, C_n)`` has the linear denoiser ``D(x_u) = μ + Σ B_uᵀ (B_u Σ B_uᵀ + σ² C_n)⁻¹ (x_u − B_u μ)``
(stage 1: ``B = I``, ``C_n = I``). ``B_u`` and ``C_n`` are built here from the DCT matrix, the
attenuation formula and the noise definitions (tests/conftest.py), not from ``relaydiff.ops``.
A sampler fed with the exact denoiser and started from the exact marginal must return
``N(μ, Σ)``: the mean passes a χ²(d) test and the covariance error is within 1.5× that of as
many exact draws. A finite data set (a mixture of point masses, softmax denoiser) must be
reproduced point by point with the right frequencies.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest
import scipy.stats
import torch

from relaydiff.samplers import (
    edm_sample,
    relay_sample,
    sample_euler,
    sample_heun,
    sample_relay_euler,
    sample_relay_heun,
    sample_relay_official_heun,
    sample_sde,
)
from relaydiff.schedules import RelaySchedule, karras_sigmas

N = 10_000
ALPHA = 0.15
MIN_SCALE = 1e-3
P_MEAN, P_STD = -1.2, 1.2
DT = torch.float64


def blur_level(sigma: float, prob_length: float, b_max: float) -> float:
    """``b(u(σ))`` with ``u(σ) = Φ((ln σ − P_mean)/P_std)/L`` and ``b(u) = b_max·sin²(πu/2)``."""
    u = scipy.stats.norm.cdf((math.log(sigma) - P_MEAN) / P_STD) / prob_length
    return b_max * math.sin(math.pi * u / 2) ** 2


class Problem:
    """One forward process ``x_σ = B_σ x + σ·n``, ``n ~ N(0, C_n)``, on ``C×H×W`` images.

    ``relay=None`` is stage 1 (``B = I``, ``C_n = I``); otherwise ``relay = (p, L, b_max, variant)``.
    """

    def __init__(self, ref, shape, relay=None):
        self.shape = shape
        c, h, w = shape
        self.d = c * h * w
        self.relay = relay
        if relay is None:
            self.cn = torch.eye(self.d, dtype=DT)
        else:
            p, _, _, variant = relay
            self.cn = torch.tensor(ref.noise_cov(c, h, w, p, ALPHA, variant))
        self.cn_chol = torch.linalg.cholesky(self.cn)
        self._ref = ref
        self._blur: dict[float, torch.Tensor] = {}

    def blur(self, sigma: float) -> torch.Tensor:
        if self.relay is None:
            return torch.eye(self.d, dtype=DT)
        if sigma not in self._blur:
            p, prob_length, b_max, _ = self.relay
            b = blur_level(sigma, prob_length, b_max)
            self._blur[sigma] = torch.tensor(self._ref.blur_operator(*self.shape, p, b, MIN_SCALE))
        return self._blur[sigma]

    def noise(self, n: int, gen: torch.Generator) -> torch.Tensor:
        return torch.randn(n, self.d, generator=gen, dtype=DT) @ self.cn_chol.T


def sigma_of(sigma: torch.Tensor) -> float:
    s = float(sigma[0])
    assert torch.all(sigma == s), "samplers pass one σ for the whole batch here"
    return s


class GaussianDenoiser:
    """Exact ``E[x | x_σ]`` for ``x ~ N(μ, Σ)``; the per-σ gain is computed once per σ."""

    def __init__(self, problem: Problem, mu: torch.Tensor, cov: torch.Tensor):
        self.problem, self.mu, self.cov = problem, mu, cov
        self._gain: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, x, sigma, labels=None):
        s = sigma_of(sigma)
        if s not in self._gain:
            b = self.problem.blur(s)
            m = b @ self.cov @ b.T + s**2 * self.problem.cn
            gain = torch.linalg.solve(m, b @ self.cov).T  # Σ Bᵀ M⁻¹ (M symmetric)
            self._gain[s] = (gain.T.contiguous(), self.mu - gain @ (b @ self.mu))
        gain_t, offset = self._gain[s]
        return (x.reshape(x.shape[0], -1) @ gain_t + offset).reshape(x.shape)

    def start(self, sigma: float, n: int, gen: torch.Generator) -> torch.Tensor:
        """Exact marginal at ``σ``: ``B x + σ n`` with ``x ~ N(μ, Σ)``, drawn as one Gaussian."""
        b = self.problem.blur(sigma)
        cov = b @ self.cov @ b.T + sigma**2 * self.problem.cn
        z = torch.randn(n, self.problem.d, generator=gen, dtype=DT)
        return (b @ self.mu + z @ torch.linalg.cholesky(cov).T).reshape(n, *self.problem.shape)


class PointsDenoiser:
    """Exact ``E[x | x_σ]`` for a mixture of point masses ``x_k`` with weights ``π_k``.

    The likelihood of ``x_σ`` under point ``k`` is ``N(B x_k, σ² C_n)``, so ``D`` is the
    softmax-weighted average of the points.
    """

    def __init__(self, problem: Problem, points: torch.Tensor, weights: torch.Tensor):
        self.problem, self.points, self.log_w = problem, points, weights.log()
        self._cache: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, x, sigma, labels=None):
        s = sigma_of(sigma)
        if s not in self._cache:
            whiten = torch.linalg.inv(self.problem.cn_chol) / s  # z = whiten · x_σ has cov I
            centres = self.points @ self.problem.blur(s).T @ whiten.T
            self._cache[s] = (whiten.T.contiguous(), centres)
        whiten_t, centres = self._cache[s]
        z = x.reshape(x.shape[0], -1) @ whiten_t
        logits = z @ centres.T - 0.5 * (centres**2).sum(1) + self.log_w
        return (torch.softmax(logits, dim=1) @ self.points).reshape(x.shape)

    def start(self, sigma: float, n: int, gen: torch.Generator) -> torch.Tensor:
        k = torch.multinomial(self.log_w.exp(), n, replacement=True, generator=gen)
        x = self.points[k] @ self.problem.blur(sigma).T + sigma * self.problem.noise(n, gen)
        return x.reshape(n, *self.problem.shape)


def squared_exponential(shape, length: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A spatially correlated ``Σ`` (channel mixing ⊗ squared-exponential kernel + nugget) and a
    mean with high-frequency content inside patches (so a wrong blur is visible in the mean)."""
    c, h, w = shape
    r, col = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    pos = np.stack([r.ravel(), col.ravel()], 1).astype(float)
    dist2 = ((pos[:, None] - pos[None]) ** 2).sum(-1)
    spatial = np.exp(-dist2 / (2 * length**2))
    chan = np.full((c, c), 0.5) + 0.5 * np.eye(c)
    cov = 0.25 * np.kron(chan, spatial) + 0.01 * np.eye(c * h * w)
    rng = np.random.default_rng(seed)
    checker = np.tile((-1.0) ** (r + col).ravel(), c)
    mu = 0.3 * np.tanh(rng.standard_normal(c * h * w)) + 0.2 * checker
    return torch.tensor(mu), torch.tensor(cov)


def gaussian_stats(samples: torch.Tensor, mu: torch.Tensor, cov: torch.Tensor) -> tuple[float, float]:
    """``N·(m−μ)ᵀΣ⁻¹(m−μ)`` and the relative Frobenius error of the sample covariance."""
    flat = samples.reshape(samples.shape[0], -1)
    diff = flat.mean(0) - mu
    stat = flat.shape[0] * float(diff @ torch.linalg.solve(cov, diff))
    err = float(torch.linalg.norm(torch.cov(flat.T) - cov) / torch.linalg.norm(cov))
    return stat, err


class GaussianCase:
    def __init__(self, ref, shape, relay, seed):
        self.problem = Problem(ref, shape, relay)
        self.mu, self.cov = squared_exponential(shape, 1.5, seed)
        self.denoiser = GaussianDenoiser(self.problem, self.mu, self.cov)
        d = self.problem.d
        exact = self.mu + torch.randn(N, d, generator=gen(seed + 1), dtype=DT) @ \
            torch.linalg.cholesky(self.cov).T
        self.exact_err = gaussian_stats(exact, self.mu, self.cov)[1]
        self.chi2_max = scipy.stats.chi2.ppf(0.999, d)

    def check(self, samples: torch.Tensor, label: str) -> tuple[float, float]:
        stat, err = gaussian_stats(samples, self.mu, self.cov)
        print(f"{label}: chi2 {stat:.1f} (0.999 quantile {self.chi2_max:.1f}), "
              f"cov err {err:.4f} (exact draws {self.exact_err:.4f})")
        return stat, err

    def passes(self, samples: torch.Tensor, label: str) -> bool:
        stat, err = self.check(samples, label)
        return stat < self.chi2_max and err < 1.5 * self.exact_err


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# Released-style settings: ImageNet stage 2 (200-step grid truncated at σ 0.9, L 0.93, b_max 3.0,
# 71 steps) for the paper variant; CelebA-HQ sampling (150-step grid truncated at σ 0.95, L 1.05,
# b_max 2.0, 54 steps) for the official variant. Euler gets twice the grid points.
PAPER = dict(shape=(1, 8, 8), relay=(4, 0.93, 3.0, "paper"), grid=200, trunc=0.9)
OFFICIAL = dict(shape=(2, 4, 8), relay=(4, 1.05, 2.0, "official"), grid=150, trunc=0.95)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The work here is many small matrix products: one thread is faster and immune to a busy box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def paper_case(ref):
    return GaussianCase(ref, PAPER["shape"], PAPER["relay"], seed=10)


@pytest.fixture(scope="module")
def official_case(ref):
    return GaussianCase(ref, OFFICIAL["shape"], OFFICIAL["relay"], seed=20)


@pytest.fixture(scope="module")
def stage1_case(ref):
    return GaussianCase(ref, (3, 4, 4), None, seed=30)


SAMPLER = {"paper": "trapezoidal", "official": "official"}  # relay process → sampler variant


def relay_grid(setting, order: int = 2) -> torch.Tensor:
    sigmas = karras_sigmas(setting["grid"] * (3 - order), 0.008, 80.0, 7.0, truncate=setting["trunc"])
    assert len(sigmas) - 1 >= 50, "ground truth needs ~50+ steps below the start σ"
    return sigmas


def run_relay(case, setting, *, eta=0.0, order=2, schedule=None, seed=0, start=None):
    p, prob_length, b_max, variant = setting["relay"]
    sigmas = relay_grid(setting, order)
    schedule = schedule or RelaySchedule(prob_length, b_max)
    if start is None:
        start = case.denoiser.start(float(sigmas[0]), N, gen(seed))
    return relay_sample(case.denoiser, start, sigmas, schedule, p, eta=eta, order=order,
                        block_alpha=ALPHA, variant=SAMPLER[variant], generator=gen(seed + 1))


@pytest.fixture(scope="module")
def paper_starts(ref, paper_case):
    """The deterministic (Euler) sampler from the exact start ``B_0 x + σ_0 n`` and from
    ``up(down(x)) + σ_0 n`` with the same ``x ~ N(μ, Σ)`` and ``n`` (common random numbers)."""
    problem = paper_case.problem
    s0 = float(relay_grid(PAPER, order=1)[0])
    g = gen(5)
    x = paper_case.mu + torch.randn(N, problem.d, generator=g, dtype=DT) @ \
        torch.linalg.cholesky(paper_case.cov).T
    noise = s0 * problem.noise(N, g)
    ops = {"exact": problem.blur(s0),
           "up(down(x))": torch.tensor(ref.updown_operator(*PAPER["shape"], PAPER["relay"][0]))}
    starts = {k: x @ op.T + noise for k, op in ops.items()}
    outs = {k: run_relay(paper_case, PAPER, order=1, start=v.reshape(N, *PAPER["shape"]))
            .reshape(N, -1) for k, v in starts.items()}
    return dict(s0=s0, x=x, ops=ops, starts=starts, outs=outs)


@pytest.mark.parametrize(
    ("variant", "eta", "order"),
    [("paper", 0.0, 2), ("paper", 0.2, 2), ("paper", 0.0, 1), ("official", 0.0, 1),
     ("official", 0.2, 1)],
    ids=["paper-heun", "paper-heun-eta0.2", "paper-euler", "official-euler",
         "official-euler-eta0.2"],
)
def test_relay_sampler_reproduces_gaussian(variant, eta, order, paper_case, official_case,
                                           paper_starts):
    """The official variant's Heun reproduces the released formula, which is biased
    (``test_official_released_heun_is_biased``), so the official variant is checked with Euler."""
    case, setting = (paper_case, PAPER) if variant == "paper" else (official_case, OFFICIAL)
    if (variant, eta, order) == ("paper", 0.0, 1):
        out = paper_starts["outs"]["exact"]  # the exact-start run of the start-mismatch test
    else:
        out = run_relay(case, setting, eta=eta, order=order)
        assert out.dtype == DT and out.shape == (N, *setting["shape"])
    stat, err = case.check(out, f"relay {variant} eta={eta} order={order}")
    assert stat < case.chi2_max
    assert err < 1.5 * case.exact_err


def test_official_released_heun_is_biased(official_case):
    """The released Heun corrector (docs/method.md §2.6: ``U'' = (a_{i+1} + γ − γa_i)U + σ_i(γa_i − a_{i+1})
    (d + d')/2`` with ``d = (U − Û)/σ``) is only first order where the blur changes with σ: its
    error is ``O(h)`` in the corrected target times the ``O(h)`` weight ``a_{i+1} − γa_i`` per step.
    ``variant="official"`` must reproduce it (see the one-step test below), and on the released
    CelebA-HQ grid (54 steps) the ground-truth check sees the bias in the high frequencies of the
    mean, while Euler on the same process passes."""
    out = run_relay(official_case, OFFICIAL, order=2)
    assert not official_case.passes(out, "relay official, released Heun")


@pytest.mark.parametrize(
    "wrong", [RelaySchedule(0.93, 2.0), RelaySchedule(1.05, 3.0)], ids=["b_max", "L"]
)
def test_relay_sampler_with_wrong_schedule_fails(wrong, paper_case):
    """The denoiser is exact for (L 0.93, b_max 3.0); a sampler told another b_max or L must miss.

    Euler on the same grid passes with the right schedule (test above), so the miss is the
    schedule's."""
    out = run_relay(paper_case, PAPER, schedule=wrong, order=1)
    assert not paper_case.passes(out, f"relay with wrong schedule {wrong}")


def test_relay_start_from_upsampled_low_res(paper_case, paper_starts):
    """Start from ``up(down(x)) + σ_0·n`` instead of the exact marginal ``B_0 x + σ_0·n``.

    Bound: for Gaussian data the deterministic sampler (Euler here, so that this measures the
    start and nothing else) is an affine map ``x ↦ A x + c`` that
    carries the exact start law ``N(B_0 μ, S_0)`` to ``N(μ, Σ)``, so ``A S_0 Aᵀ = Σ`` up to the
    discretisation error, i.e. ``Σ^{-1/2} A = R S_0^{-1/2}`` with ``R`` orthogonal. A start with
    mean ``U μ`` and covariance ``S' = U Σ Uᵀ + σ_0² C_n`` (``U = up∘down``) therefore gives,
    in Σ-whitened units, a mean shift of ``‖S_0^{-1/2}(U − B_0)μ‖`` and a covariance error
    ``‖S_0^{-1/2} S' S_0^{-1/2} − I‖_F``. The test asserts the measured errors stay within these
    predictions plus the Monte-Carlo allowance of the exact-start test, and that the shifts
    seen with common random numbers match the same formula applied to the drawn starts (±25 %).
    """
    case, problem, runs = paper_case, paper_case.problem, paper_starts
    b0, up_down = runs["ops"]["exact"], runs["ops"]["up(down(x))"]
    eye = torch.eye(problem.d, dtype=DT)

    def inv_sqrt(m):
        evals, evecs = torch.linalg.eigh(m)
        return evecs @ torch.diag(evals.rsqrt()) @ evecs.T

    s0_cov = b0 @ case.cov @ b0.T + runs["s0"] ** 2 * problem.cn
    s0_is, cov_is = inv_sqrt(s0_cov), inv_sqrt(case.cov)
    pred_mean = float(torch.linalg.norm(s0_is @ (up_down - b0) @ case.mu))
    s_prime = up_down @ case.cov @ up_down.T + runs["s0"] ** 2 * problem.cn
    pred_cov = float(torch.linalg.norm(s0_is @ s_prime @ s0_is - eye))

    def whitened(samples):
        mean_err = float(torch.linalg.norm(cov_is @ (samples.mean(0) - case.mu)))
        cov_err = float(torch.linalg.norm(cov_is @ torch.cov(samples.T) @ cov_is - eye))
        return mean_err, cov_err

    exact, approx = runs["outs"]["exact"], runs["outs"]["up(down(x))"]
    exact_mean, exact_cov = whitened(exact)
    approx_mean, approx_cov = whitened(approx)
    # Common random numbers: the output shifts against the same shifts of the drawn starts.
    shift_mean = float(torch.linalg.norm(cov_is @ (approx - exact).mean(0)))
    pred_shift_mean = float(torch.linalg.norm(s0_is @ (up_down - b0) @ runs["x"].mean(0)))
    start_e, start_a = runs["starts"]["exact"], runs["starts"]["up(down(x))"]
    shift_cov = float(torch.linalg.norm(cov_is @ (torch.cov(approx.T) - torch.cov(exact.T)) @ cov_is))
    pred_shift_cov = float(torch.linalg.norm(
        s0_is @ (torch.cov(start_a.T) - torch.cov(start_e.T)) @ s0_is))
    print(f"start σ0={runs['s0']:.3f}: whitened mean error exact start {exact_mean:.4f}, "
          f"up(down) start {approx_mean:.4f}, predicted extra {pred_mean:.4f} "
          f"(same-noise shift {shift_mean:.4f} vs {pred_shift_mean:.4f}); whitened cov error "
          f"exact start {exact_cov:.4f}, up(down) start {approx_cov:.4f}, predicted extra "
          f"{pred_cov:.4f} (same-noise shift {shift_cov:.4f} vs {pred_shift_cov:.4f})")
    mc_mean = math.sqrt(case.chi2_max / N)  # the exact-start χ² allowance, in the same units
    assert approx_mean <= pred_mean + mc_mean
    assert approx_cov <= pred_cov + 1.5 * exact_cov
    assert 0.75 * pred_shift_mean <= shift_mean <= 1.25 * pred_shift_mean
    assert 0.75 * pred_shift_cov <= shift_cov <= 1.25 * pred_shift_cov


EDM_SETTINGS = {
    "heun": dict(steps=40),
    "euler": dict(steps=400, order=1),
    "churn": dict(steps=256, churn=40.0, s_min=0.05, s_max=50.0, s_noise=1.003),
    "sde": dict(steps=120, sde_scale=0.05),
}


@pytest.mark.parametrize("name", list(EDM_SETTINGS))
def test_edm_sampler_reproduces_gaussian(name, stage1_case):
    kw = dict(EDM_SETTINGS[name])
    sigmas = karras_sigmas(kw.pop("steps"), 0.002, 80.0, 7.0)
    s0 = float(sigmas[0])
    latents = stage1_case.denoiser.start(s0, N, gen(40)) / s0  # exact marginal at σ_0, unit scale
    out = edm_sample(stage1_case.denoiser, latents, sigmas, generator=gen(41), **kw)
    stat, err = stage1_case.check(out, f"edm {name}")
    assert stat < stage1_case.chi2_max
    assert err < 1.5 * stage1_case.exact_err


def test_edm_sampler_with_wrong_sigma_fails(stage1_case):
    """Latents drawn at the wrong scale (σ_0 too small by 2×) must be detected."""
    sigmas = karras_sigmas(40, 0.002, 80.0, 7.0)
    s0 = float(sigmas[0])
    latents = stage1_case.denoiser.start(s0, N, gen(40)) / s0
    out = edm_sample(stage1_case.denoiser, 0.5 * latents, sigmas)
    assert not stage1_case.passes(out, "edm from half-scale latents")


# ------------------------------------------------------------------ finite data (point masses)

K_POINTS = 5
FREQS = torch.tensor([0.1, 0.15, 0.2, 0.25, 0.3], dtype=DT)


def check_points(out: torch.Tensor, points: torch.Tensor, label: str) -> None:
    flat = out.reshape(out.shape[0], -1)
    rms = torch.cdist(flat, points) / math.sqrt(flat.shape[1])
    dist, nearest = rms.min(1)
    close = float((dist < 0.02).double().mean())
    counts = torch.bincount(nearest, minlength=K_POINTS).numpy()
    pvalue = scipy.stats.chisquare(counts, (FREQS * flat.shape[0]).numpy()).pvalue
    print(f"{label}: {close:.3%} within RMS 0.02 of a point; counts {counts.tolist()}, "
          f"chi-square p {pvalue:.3f}")
    assert close >= 0.95
    assert pvalue > 1e-3


def random_points(d: int, seed: int) -> torch.Tensor:
    return torch.rand(K_POINTS, d, generator=gen(seed), dtype=DT) * 2 - 1


@pytest.mark.parametrize("setting", [PAPER, OFFICIAL], ids=["paper", "official"])
def test_relay_sampler_reproduces_point_masses(ref, setting):
    problem = Problem(ref, setting["shape"], setting["relay"])
    points = random_points(problem.d, 50)
    denoiser = PointsDenoiser(problem, points, FREQS)
    p, prob_length, b_max, variant = setting["relay"]
    sigmas = relay_grid(setting)
    start = denoiser.start(float(sigmas[0]), N, gen(51))
    out = relay_sample(denoiser, start, sigmas, RelaySchedule(prob_length, b_max), p, eta=0.2,
                       block_alpha=ALPHA, variant=SAMPLER[variant], generator=gen(52))
    check_points(out, points, f"relay points {variant}")


def test_edm_sampler_reproduces_point_masses(ref):
    problem = Problem(ref, (3, 4, 4), None)
    points = random_points(problem.d, 60)
    denoiser = PointsDenoiser(problem, points, FREQS)
    sigmas = karras_sigmas(40, 0.002, 80.0, 7.0)
    latents = denoiser.start(float(sigmas[0]), N, gen(61)) / float(sigmas[0])
    out = edm_sample(denoiser, latents, sigmas, churn=10.0, generator=gen(62))
    check_points(out, points, "edm points")



# ------------------------------------------------------------------ one step, dtype, bad input

class Recorder:
    """A denoiser that records its inputs and returns a fixed affine map of them."""

    def __init__(self):
        self.inputs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, x, sigma, labels=None):
        self.inputs.append((x.clone(), sigma.clone()))
        return 0.5 * x + 0.1


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_relay_euler_step_is_the_design_equation(variant, ref):
    """``x_1 = IDCT(a_1·Û + γ(U − a_0·Û)) + η·σ_1·n`` with ``γ = √(1−η²)·σ_1/σ_0``."""
    shape, p, eta, alpha = (2, 1, 8, 8), 4, 0.2, 0.15
    sched = RelaySchedule(0.93, 3.0)
    grid = torch.tensor([0.8, 0.3, 0.0], dtype=DT)
    x0 = torch.randn(shape, generator=gen(80), dtype=DT)
    g = gen(81)
    r = ref.clone(g)
    noise = torch.randn(shape, generator=r, dtype=DT)  # ε, then the block part
    if variant == "paper":
        low = torch.randn(2, 1, 2, 2, generator=r, dtype=DT)
        noise = (noise + alpha * low.repeat_interleave(p, -2).repeat_interleave(p, -1)) \
            / math.sqrt(1 + alpha**2)
    else:
        white = torch.tensor(ref.box_matrix(1, 8, 8, p)) @ \
            torch.randn(shape, generator=r, dtype=DT).reshape(2, -1).T
        noise = noise + alpha * white.T.reshape(shape)
    den = Recorder()
    out = relay_sample(den, x0, grid, sched, p, eta=eta, order=1, block_alpha=alpha,
                       variant=SAMPLER[variant], generator=g)
    blur = [torch.tensor(ref.blur_operator(1, 8, 8, p, blur_level(s, 0.93, 3.0), MIN_SCALE))
            for s in (0.8, 0.3)]
    d0 = (0.5 * x0 + 0.1).reshape(2, -1)
    gamma = math.sqrt(1 - eta**2) * 0.3 / 0.8
    x1 = d0 @ blur[1].T + gamma * (x0.reshape(2, -1) - d0 @ blur[0].T)
    x1 = x1.reshape(shape) + eta * 0.3 * noise
    assert len(den.inputs) == 2
    torch.testing.assert_close(den.inputs[1][0], x1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(den.inputs[1][1], torch.full((2,), 0.3, dtype=DT))
    torch.testing.assert_close(out, 0.5 * x1 + 0.1)  # the last step returns D(x_1; σ_1)


def test_relay_official_heun_step_is_the_released_equation(ref):
    """``variant="official"`` reproduces the released Heun step: with ``d = (U − Û)/σ_0`` and
    ``d' = (U' − Û')/σ_1`` at the Euler point ``U'``,
    ``x_1 = IDCT((a_1 + γ − γa_0)·U + σ_0(γa_0 − a_1)·(d + d')/2) + η·σ_1·n₂`` with fresh noise ``n₂``."""
    shape, p, eta, alpha = (2, 1, 8, 8), 4, 0.2, 0.15
    grid = torch.tensor([0.8, 0.3, 0.0], dtype=DT)
    x0 = torch.randn(shape, generator=gen(82), dtype=DT)
    g = gen(83)
    r = ref.clone(g)
    box = torch.tensor(ref.box_matrix(1, 8, 8, p))

    def official_noise():
        eps = torch.randn(shape, generator=r, dtype=DT)
        white = torch.randn(shape, generator=r, dtype=DT).reshape(2, -1)
        return eps + alpha * (white @ box.T).reshape(shape)

    n1, n2 = official_noise(), official_noise()
    den = Recorder()
    out = relay_sample(den, x0, grid, RelaySchedule(1.05, 2.0), p, eta=eta, order=2,
                       block_alpha=alpha, variant="official", generator=g)
    b0, b1 = (torch.tensor(ref.blur_operator(1, 8, 8, p, blur_level(s, 1.05, 2.0), MIN_SCALE))
              for s in (0.8, 0.3))
    gamma = math.sqrt(1 - eta**2) * 0.3 / 0.8

    def released(x, slope):  # IDCT((a_1 + γ − γa_0)U + σ_0(γa_0 − a_1)·slope) in pixel space
        x, slope = x.reshape(2, -1), slope.reshape(2, -1)
        out = x @ b1.T + gamma * x - gamma * x @ b0.T + 0.8 * (gamma * slope @ b0.T - slope @ b1.T)
        return out.reshape(shape)

    d = (x0 - (0.5 * x0 + 0.1)) / 0.8
    x_euler = released(x0, d) + eta * 0.3 * n1
    d_next = (x_euler - (0.5 * x_euler + 0.1)) / 0.3
    x1 = released(x0, (d + d_next) / 2) + eta * 0.3 * n2
    assert len(den.inputs) == 3
    torch.testing.assert_close(den.inputs[1][0], x_euler, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(den.inputs[2][0], x1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out, 0.5 * x1 + 0.1)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_samplers_keep_dtype_and_device(device, dtype):
    x = torch.randn(2, 3, 8, 8, generator=gen(90)).to(device=device, dtype=dtype)
    grid = torch.tensor([0.8, 0.4, 0.1, 0.0])
    for variant in ("trapezoidal", "official"):
        out = relay_sample(Recorder(), x, grid, RelaySchedule(0.93, 3.0), 4, eta=0.2,
                           variant=variant, generator=[gen(1), gen(2)])
        assert out.dtype == dtype and out.device.type == device and torch.isfinite(out).all()
    for kw in ({}, {"churn": 10.0}, {"sde_scale": 0.05}, {"order": 1}):
        out = edm_sample(Recorder(), x, grid, generator=gen(3), **kw)
        assert out.dtype == dtype and out.device.type == device and torch.isfinite(out).all()


X8 = torch.zeros(2, 3, 8, 8)
GRID = torch.tensor([0.8, 0.4, 0.0])
S = RelaySchedule(0.93, 3.0)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: relay_sample(Recorder(), X8, torch.tensor([]), S, 4), r"\[\]"),
        (lambda: edm_sample(Recorder(), X8, torch.tensor([]), ), r"\[\]"),
        (lambda: edm_sample(Recorder(), X8, torch.tensor([0.0])), "at least one"),
        (lambda: relay_sample(Recorder(), X8, torch.tensor([0.8, -0.4, 0.0]), S, 4), r"-0\.4"),
        (lambda: edm_sample(Recorder(), X8, torch.tensor([math.inf, 0.4, 0.0])), "inf"),
        (lambda: relay_sample(Recorder(), X8, torch.tensor([0.8, math.nan, 0.0]), S, 4), "nan"),
        (lambda: relay_sample(Recorder(), X8, torch.tensor([0.8, 0.4]), S, 4), "end with 0"),
        (lambda: relay_sample(Recorder(), X8, GRID, S, 3), "patch size 3"),
        (lambda: relay_sample(Recorder(), X8, GRID, S, 4, variant="celeba"), "'celeba'"),
        (lambda: relay_sample(Recorder(), X8, GRID, S, 4, order=3), "order=3"),
        (lambda: edm_sample(Recorder(), X8, GRID, order=0), "order=0"),
        (lambda: relay_sample(Recorder(), X8, GRID, S, 4, eta=1.5), "eta=1.5"),
        (lambda: edm_sample(Recorder(), X8, GRID, churn=-1.0), "churn=-1.0"),
        (lambda: edm_sample(Recorder(), X8, GRID, sde_scale=1.0), "sde_scale=1.0"),
    ],
)
def test_sampler_bad_input_raises_value_error_naming_the_value(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_old_variant_name_paper_is_the_trapezoidal_corrector_and_deprecated():
    x = torch.randn(2, 3, 8, 8, generator=gen(91), dtype=DT)
    grid = torch.tensor([0.8, 0.4, 0.1, 0.0], dtype=DT)
    new = relay_sample(Recorder(), x, grid, S, 4, eta=0.2, variant="trapezoidal", generator=gen(4))
    with pytest.warns(DeprecationWarning, match="trapezoidal"):
        old = relay_sample(Recorder(), x, grid, S, 4, eta=0.2, variant="paper", generator=gen(4))
    assert torch.equal(new, old)
    with pytest.raises(ValueError, match="'Paper' is unknown; use one of trapezoidal, official"):
        relay_sample(Recorder(), x, grid, S, 4, variant="Paper")


def test_dispatchers_run_one_function_per_algorithm():
    """``edm_sample`` and ``relay_sample`` give bitwise the results of the sampler their settings
    name (k-diffusion style functions, callable on their own)."""
    x = torch.randn(2, 3, 8, 8, generator=gen(92), dtype=DT)
    grid = torch.tensor([0.8, 0.4, 0.1, 0.0], dtype=DT)
    churn = dict(churn=5.0, s_min=0.05, s_max=0.5)
    stage1 = [({"order": 1}, sample_euler), ({}, sample_heun),
              ({"order": 1, "sde_scale": 0.1}, partial(sample_sde, order=1, sde_scale=0.1)),
              ({"sde_scale": 0.1}, partial(sample_sde, sde_scale=0.1))]
    for kw, sampler in stage1:
        out = edm_sample(Recorder(), x, grid, generator=gen(5), **kw, **churn)
        assert torch.equal(out, sampler(Recorder(), x, grid, generator=gen(5), **churn)), kw
    relay = [({"order": 1}, sample_relay_euler),
             ({"order": 1, "variant": "official"}, partial(sample_relay_euler, variant="official")),
             ({}, sample_relay_heun), ({"variant": "official"}, sample_relay_official_heun)]
    for kw, sampler in relay:
        out = relay_sample(Recorder(), x, grid, S, 4, eta=0.2, generator=gen(6), **kw)
        assert torch.equal(out, sampler(Recorder(), x, grid, S, 4, eta=0.2, generator=gen(6))), kw
