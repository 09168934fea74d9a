"""Samplers: EDM's sampler for stage 1 and the relay sampler for stage k ≥ 2.

One small function per algorithm, in the style of k-diffusion: :func:`sample_euler`,
:func:`sample_heun` and :func:`sample_sde` for stage 1 (docs/method.md §1.3),
:func:`sample_relay_euler`, :func:`sample_relay_heun` and :func:`sample_relay_official_heun` for
relay stages (§2.6); :func:`edm_sample` and :func:`relay_sample` pick one from a stage's settings.
A denoiser is any callable ``denoiser(x, sigma, labels) -> x0_hat`` with ``sigma`` of shape
``(N,)``. The sampler state keeps the dtype of the input (float64 or float32) on its device; noise
comes from one generator or one generator per sample (``relaydiff.ops.randn``). Guidance: §3.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

from .ops import Generator, canonical_variant, check_labels, heat_blur, randn, relay_noise
from .schedules import RelaySchedule, check_sigmas

Denoiser = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
Callback = Callable[[int, float, torch.Tensor, torch.Tensor], None]
"""``callback(i, sigma_i, x_i, denoised_i)``, called once per step before it is taken."""


def _check_order(order: int) -> None:
    if order not in (1, 2):
        raise ValueError(f"order={order!r}: use 1 (Euler) or 2 (Heun)")


def _denoise(denoiser: Denoiser, x: torch.Tensor, sigma: float, labels) -> torch.Tensor:
    s = torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device)
    return denoiser(x, s, labels).to(x.dtype)


# --------------------------------------------------------------------------- stage 1 (EDM)

Increment = Callable[[float, float, torch.Tensor], "tuple[float, torch.Tensor | float]"]
"""``increment(σ̂_i, σ_{i+1}, x̂_i) -> (h, fresh)`` of a step ``x_{i+1} = x̂_i + h·d_i + fresh``."""


def _ode_increment(s_hat: float, s_next: float, x: torch.Tensor) -> tuple[float, float]:
    return s_next - s_hat, 0.0


def _edm_loop(denoiser: Denoiser, latents: torch.Tensor, sigmas: torch.Tensor, order: int,
              increment: Increment, *, labels: torch.Tensor | None, churn: float, s_min: float,
              s_max: float, s_noise: float, generator: Generator, callback: Callback | None
              ) -> torch.Tensor:
    """EDM's Algorithm 2 around a step rule (docs/method.md §1.3). ``x_0 = σ_0·latents``; per
    step the churn ``σ̂_i = σ_i(1+γ_i)``, ``γ_i = min(S_churn/N, √2−1)`` for
    ``σ_i ∈ [S_min, S_max]`` (else 0), ``x̂_i = x_i + √(σ̂_i²−σ_i²)·S_noise·ε``, the slope
    ``d_i = (x̂_i − D(x̂_i; σ̂_i))/σ̂_i`` and ``x_{i+1} = x̂_i + h·d_i + fresh`` with
    ``(h, fresh) = increment(σ̂_i, σ_{i+1}, x̂_i)``; ``order=2`` corrects it (unless
    ``σ_{i+1} = 0``) to ``x̂_i + h·(d_i + d')/2 + fresh``, ``d'`` the slope at ``x_{i+1}``."""
    sigmas = check_sigmas(sigmas)
    if churn < 0:
        raise ValueError(f"churn={churn} must be ≥ 0")
    check_labels(labels, latents.shape[0])
    n_steps = len(sigmas) - 1
    s_list = sigmas.tolist()
    x = latents * s_list[0]
    for i in range(n_steps):
        s, s_next = s_list[i], s_list[i + 1]
        gamma = min(churn / n_steps, math.sqrt(2) - 1) if s_min <= s <= s_max else 0.0
        s_hat = s * (1 + gamma)
        if gamma > 0:
            eps = randn(x.shape, generator, device=x.device, dtype=x.dtype)
            x = x + math.sqrt(s_hat**2 - s**2) * s_noise * eps
        denoised = _denoise(denoiser, x, s_hat, labels)
        if callback is not None:
            callback(i, s_hat, x, denoised)
        d = (x - denoised) / s_hat
        h, fresh = increment(s_hat, s_next, x)
        x_next = x + h * d + fresh
        if order == 2 and s_next > 0:
            d_next = (x_next - _denoise(denoiser, x_next, s_next, labels)) / s_next
            x_next = x + h * (d + d_next) / 2 + fresh
        x = x_next
    return x


def sample_euler(denoiser: Denoiser, latents: torch.Tensor, sigmas: torch.Tensor, *,
                 labels: torch.Tensor | None = None, churn: float = 0.0, s_min: float = 0.0,
                 s_max: float = math.inf, s_noise: float = 1.0, generator: Generator = None,
                 callback: Callback | None = None) -> torch.Tensor:
    """EDM's Algorithm 2 with Euler steps ``x_{i+1} = x̂_i + (σ_{i+1} − σ̂_i)·d_i`` (docs/method.md
    §1.3) from unit-normal ``latents``; ``churn=0`` is the deterministic Euler sampler."""
    return _edm_loop(denoiser, latents, sigmas, 1, _ode_increment, labels=labels, churn=churn,
                     s_min=s_min, s_max=s_max, s_noise=s_noise, generator=generator,
                     callback=callback)


def sample_heun(denoiser: Denoiser, latents: torch.Tensor, sigmas: torch.Tensor, *,
                labels: torch.Tensor | None = None, churn: float = 0.0, s_min: float = 0.0,
                s_max: float = math.inf, s_noise: float = 1.0, generator: Generator = None,
                callback: Callback | None = None) -> torch.Tensor:
    """EDM's Algorithm 2 (Karras et al. 2022; docs/method.md §1.3): the Euler step of
    :func:`sample_euler` corrected with the slope at its end,
    ``x_{i+1} = x̂_i + (σ_{i+1} − σ̂_i)·(d_i + d')/2``, except on the last step (``σ_{i+1} = 0``)."""
    return _edm_loop(denoiser, latents, sigmas, 2, _ode_increment, labels=labels, churn=churn,
                     s_min=s_min, s_max=s_max, s_noise=s_noise, generator=generator,
                     callback=callback)


def sample_sde(denoiser: Denoiser, latents: torch.Tensor, sigmas: torch.Tensor, *, sde_scale: float,
               order: int = 2, labels: torch.Tensor | None = None, churn: float = 0.0, s_min: float = 0.0,
               s_max: float = math.inf, s_noise: float = 1.0, generator: Generator = None,
               callback: Callback | None = None) -> torch.Tensor:
    """The SDE sampler of the released CelebA-HQ script (docs/method.md §1.3): after the churn of
    :func:`sample_euler`, ``g = sde_scale·σ_{i+1}``, ``a = √((σ_{i+1}² − g²)/σ̂_i²)`` and
    ``x_{i+1} = x̂_i + (a − 1)·σ̂_i·d_i + g·ε``; ``order=2`` corrects with the slope at that point
    and reuses ``ε``. The last step (``σ_{i+1} = 0``) is an Euler step."""
    _check_order(order)
    if not 0 < sde_scale < 1:
        raise ValueError(f"sde_scale={sde_scale} must lie in (0, 1) (0: the ODE samplers, "
                         "sample_heun or sample_euler)")

    def increment(s_hat: float, s_next: float, x: torch.Tensor) -> tuple[float, torch.Tensor | float]:
        if s_next == 0:
            return _ode_increment(s_hat, s_next, x)
        g = sde_scale * s_next
        a = math.sqrt((s_next**2 - g**2) / s_hat**2)
        return (a - 1) * s_hat, g * randn(x.shape, generator, device=x.device, dtype=x.dtype)

    return _edm_loop(denoiser, latents, sigmas, order, increment, labels=labels, churn=churn,
                     s_min=s_min, s_max=s_max, s_noise=s_noise, generator=generator,
                     callback=callback)


def edm_sample(denoiser: Denoiser, latents: torch.Tensor, sigmas: torch.Tensor, *,
               labels: torch.Tensor | None = None, churn: float = 0.0, s_min: float = 0.0,
               s_max: float = math.inf, s_noise: float = 1.0, order: int = 2, sde_scale: float = 0.0,
               generator: Generator = None, callback: Callback | None = None) -> torch.Tensor:
    """The stage-1 sampler of a stage's settings (docs/method.md §1.3): :func:`sample_sde` for
    ``sde_scale`` ≠ 0, else :func:`sample_heun` (``order=2``) or :func:`sample_euler`
    (``order=1``), all with the churn ``churn, s_min, s_max, s_noise``."""
    _check_order(order)
    common = dict(labels=labels, churn=churn, s_min=s_min, s_max=s_max, s_noise=s_noise,
                  generator=generator, callback=callback)
    if sde_scale != 0:
        return sample_sde(denoiser, latents, sigmas, sde_scale=sde_scale, order=order, **common)
    return (sample_heun if order == 2 else sample_euler)(denoiser, latents, sigmas, **common)


# --------------------------------------------------------------------------- relay stages

def _relay_transfer(target: torch.Tensor, gamma: float, b_cur: float, b_next: float,
                    patch_size: int, min_scale: float) -> torch.Tensor:
    """``L(t) = IDCT((a_{i+1} − γ·a_i) ⊙ DCT(t)) = Blur_{i+1}(t) − γ·Blur_i(t)``."""
    out = heat_blur(target, patch_size, b_next, min_scale)
    return out.sub_(heat_blur(target, patch_size, b_cur, min_scale), alpha=gamma)


@dataclass
class _RelayStep:
    """The Euler step of a relay sampler from ``x`` (at ``s`` = σ_i) to σ_{i+1} (``s_next``),
    ``x_{i+1} = base + update`` (``base`` holds the noise), in the parts a corrector reuses. The
    loop keeps no other reference to them, so a corrector frees what it no longer needs by
    clearing its field (at 2048 px one float64 image is 100 MB)."""

    x: torch.Tensor | None
    denoised: torch.Tensor | None  # D(x_i; σ_i)
    s: float
    s_next: float
    gamma: float
    base: torch.Tensor  # γ·x_i + η·σ_{i+1}·n (the predictor's noise)
    update: torch.Tensor  # L(D(x_i; σ_i))
    noise_scale: float  # η·σ_{i+1}
    transfer: Callable[[torch.Tensor], torch.Tensor]  # L of this step
    draw: Callable[[], torch.Tensor]  # a fresh relay noise n

    def euler(self) -> torch.Tensor:
        """The Euler step's ``x_{i+1}`` (a new tensor)."""
        return self.base + self.update


Corrector = Callable[[_RelayStep, Callable[[torch.Tensor], torch.Tensor]], torch.Tensor]
"""``corrector(step, denoise)`` → the corrected ``x_{i+1}`` of a Heun-type sampler, where
``denoise(x')`` is ``D(x'; σ_{i+1})``."""


def _relay_loop(denoiser: Denoiser, x_start: torch.Tensor, sigmas: torch.Tensor,
                schedule: RelaySchedule, patch_size: int, corrector: Corrector | None, *,
                labels: torch.Tensor | None, eta: float, block_alpha: float, variant: str,
                generator: Generator, callback: Callback | None) -> torch.Tensor:
    """The relay sampler's loop (docs/method.md §2.6): per step the Euler step
    ``x_{i+1} = γ·x_i + L(D(x_i;σ_i)) + η·σ_{i+1}·n`` (``n``: relay noise of ``variant``), then
    ``corrector`` (``None``: Euler); the last step (``σ_{i+1} = 0``) returns ``D(x_i;σ_i)``."""
    sigmas = check_sigmas(sigmas)
    if not 0 <= eta <= 1:
        raise ValueError(f"eta={eta} (stochasticity) must lie in [0, 1]")
    check_labels(labels, x_start.shape[0])
    s_list = sigmas.tolist()
    blur = [*schedule.blur_sigma_at(sigmas[:-1]).tolist(), 0.0]
    shape, device, dtype = x_start.shape, x_start.device, x_start.dtype

    def draw() -> torch.Tensor:
        return relay_noise(shape, patch_size, block_alpha, generator=generator, variant=variant,
                           device=device, dtype=dtype)

    x = x_start
    for i in range(len(s_list) - 1):
        s, s_next = s_list[i], s_list[i + 1]
        denoised = _denoise(denoiser, x, s, labels)
        if callback is not None:
            callback(i, s, x, denoised)
        if s_next == 0:
            return denoised
        gamma = math.sqrt(1 - eta**2) * s_next / s
        transfer = partial(_relay_transfer, gamma=gamma, b_cur=blur[i], b_next=blur[i + 1],
                           patch_size=patch_size, min_scale=schedule.min_scale)
        base = x * gamma
        if eta > 0:
            base.add_(draw().mul_(eta * s_next))
        step = _RelayStep(x, denoised, s, s_next, gamma, base, transfer(denoised), eta * s_next,
                          transfer, draw)
        x = denoised = base = None  # the step holds them now
        x = step.euler() if corrector is None else corrector(
            step, partial(_denoise, denoiser, sigma=s_next, labels=labels))
        step = None
    return x


def _trapezoidal(step: _RelayStep, denoise: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``x_{i+1} = γ·x_i + L((D(x_i) + D(x'))/2)`` plus the predictor's noise."""
    step.x = step.denoised = None
    return step.update.add_(step.transfer(denoise(step.euler()))).mul_(0.5).add_(step.base)


def _released_heun(step: _RelayStep, denoise: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``x_{i+1} = γ·x_i + L(x_i − σ_i·(d + d')/2)`` with ``d = (x_i − D(x_i))/σ_i``,
    ``d' = (x' − D(x'))/σ_{i+1}``, plus fresh noise."""
    x_next = step.euler()
    slopes = (step.x - step.denoised) / step.s + (x_next - denoise(x_next)) / step.s_next
    x_next = step.x * step.gamma + step.transfer(step.x - slopes * (step.s / 2))
    if step.noise_scale > 0:
        x_next.add_(step.draw(), alpha=step.noise_scale)
    return x_next


def sample_relay_euler(denoiser: Denoiser, x_start: torch.Tensor, sigmas: torch.Tensor,
                       schedule: RelaySchedule, patch_size: int, *, labels: torch.Tensor | None = None,
                       eta: float = 0.0, block_alpha: float = 0.15, variant: str = "trapezoidal",
                       generator: Generator = None, callback: Callback | None = None) -> torch.Tensor:
    """Euler steps of the relay sampler (docs/method.md §2.6). ``x_start`` is the noised state at
    ``sigmas[0]`` (e.g. ``up(x_low) + σ_0·n``). With ``U = DCT(x_i)``, ``Û = DCT(D(x_i;σ_i))``,
    ``a_i = a_{b(u(σ_i))}`` and ``γ = √(1−η²)·σ_{i+1}/σ_i``:
    ``U' = a_{i+1}·Û + γ·(U − a_i·Û) = γ·U + L·Û`` with ``L = a_{i+1} − γ·a_i``, and
    ``x_{i+1} = IDCT(U') + η·σ_{i+1}·n``, ``n`` the relay noise of ``variant``
    (:data:`relaydiff.ops.VARIANTS`). The last step (``σ_{i+1} = 0``) returns ``D(x_i;σ_i)``.
    ``schedule`` is the sampling schedule (its ``prob_length`` is the sampling ``L``)."""
    return _relay_loop(denoiser, x_start, sigmas, schedule, patch_size, None, labels=labels,
                       eta=eta, block_alpha=block_alpha, variant=canonical_variant(variant),
                       generator=generator, callback=callback)


def sample_relay_heun(denoiser: Denoiser, x_start: torch.Tensor, sigmas: torch.Tensor,
                      schedule: RelaySchedule, patch_size: int, *, labels: torch.Tensor | None = None,
                      eta: float = 0.0, block_alpha: float = 0.15, generator: Generator = None,
                      callback: Callback | None = None) -> torch.Tensor:
    """This project's relay sampler (variant ``"trapezoidal"``, docs/method.md §2.6): the Euler
    step of :func:`sample_relay_euler`, then ``Û' = DCT(D(x_{i+1};σ_{i+1}))`` at its end and the
    trapezoidal rule on the denoised images, ``U'' = γ·U + L·(Û + Û')/2``, with the predictor's
    noise and the paper's relay noise. Second order."""
    return _relay_loop(denoiser, x_start, sigmas, schedule, patch_size, _trapezoidal,
                       labels=labels, eta=eta, block_alpha=block_alpha, variant="trapezoidal",
                       generator=generator, callback=callback)


def sample_relay_official_heun(denoiser: Denoiser, x_start: torch.Tensor, sigmas: torch.Tensor,
                               schedule: RelaySchedule, patch_size: int, *,
                               labels: torch.Tensor | None = None, eta: float = 0.0,
                               block_alpha: float = 0.15, generator: Generator = None,
                               callback: Callback | None = None) -> torch.Tensor:
    """The paper's Algorithm as the released code runs it (variant ``"official"``, docs/method.md
    §2.6): the slope average ``d = (U − Û)/σ_i``, ``d' = (U' − Û')/σ_{i+1}``,
    ``U'' = (a_{i+1} + γ − γ·a_i)·U + σ_i·(γ·a_i − a_{i+1})·(d + d')/2``, fresh noise in the
    corrector and the official relay noise. Only first order once the blur changes with σ: on
    Gaussian data with a detailed mean its samples are measurably biased
    (docs/official-differences.md)."""
    return _relay_loop(denoiser, x_start, sigmas, schedule, patch_size, _released_heun,
                       labels=labels, eta=eta, block_alpha=block_alpha, variant="official",
                       generator=generator, callback=callback)


RELAY_HEUN = {"trapezoidal": sample_relay_heun, "official": sample_relay_official_heun}
"""The Heun-type relay sampler of each of :data:`relaydiff.ops.VARIANTS`."""


def relay_sample(denoiser: Denoiser, x_start: torch.Tensor, sigmas: torch.Tensor, schedule: RelaySchedule,
                 patch_size: int, *, labels: torch.Tensor | None = None, eta: float = 0.0,
                 block_alpha: float = 0.15, order: int = 2, variant: str = "trapezoidal",
                 generator: Generator = None, callback: Callback | None = None) -> torch.Tensor:
    """The relay sampler of a stage's settings (docs/method.md §2.6): :func:`sample_relay_euler`
    for ``order=1``, else :data:`RELAY_HEUN` of ``variant`` (:data:`relaydiff.ops.VARIANTS`):
    :func:`sample_relay_heun` for ``"trapezoidal"`` (the default; old name ``"paper"``, which
    warns) or :func:`sample_relay_official_heun` for ``"official"``."""
    _check_order(order)
    variant = canonical_variant(variant)
    common = dict(labels=labels, eta=eta, block_alpha=block_alpha, generator=generator,
                  callback=callback)
    if order == 1:
        return sample_relay_euler(denoiser, x_start, sigmas, schedule, patch_size, variant=variant,
                                  **common)
    return RELAY_HEUN[variant](denoiser, x_start, sigmas, schedule, patch_size, **common)


# --------------------------------------------------------------------------- guidance

GUIDANCE_SCHEDULES = ("constant", "linear", "cosine")


def guidance_weight(
    scale: float,
    sigma: torch.Tensor,
    *,
    schedule: str = "constant",
    power: float = 1.0,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    interval: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Per-sample guidance weight ``w(σ)``.

    ``constant``: ``w``. ``linear``: ``1 + (w−1)·τ``; ``cosine`` (MDT's power-cosine
    "dynamic CFG"): ``1 + (w−1)·(1 − cos(π·τ^power))/2``, where ``τ ∈ [0, 1]`` is the
    position of ``ln σ`` between ``ln σ_max`` (τ=0, pure noise) and ``ln σ_min`` (τ=1).
    With ``interval=(σ_lo, σ_hi)`` the weight is 1 (no guidance) outside ``[σ_lo, σ_hi]``.
    """
    if schedule not in GUIDANCE_SCHEDULES:
        raise ValueError(f"guidance schedule {schedule!r} is unknown; use one of {GUIDANCE_SCHEDULES}")
    if not math.isfinite(scale):
        raise ValueError(f"guidance scale {scale} must be finite")
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    if schedule == "constant":
        w = torch.full_like(sigma, scale)
    else:
        span = math.log(sigma_max) - math.log(sigma_min)
        tau = ((math.log(sigma_max) - torch.log(sigma)) / span).clamp(0, 1)
        ramp = tau if schedule == "linear" else (1 - torch.cos(math.pi * tau**power)) / 2
        w = 1 + (scale - 1) * ramp
    if interval is not None:
        lo, hi = interval
        if not 0 <= lo <= hi:
            raise ValueError(f"guidance interval {interval} must satisfy 0 ≤ σ_lo ≤ σ_hi")
        w = torch.where((sigma >= lo) & (sigma <= hi), w, torch.ones_like(w))
    return w


def _mix(out: torch.Tensor, other: torch.Tensor, w: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``out[idx] = w·out[idx] + (1−w)·other`` for the guided samples ``idx``."""
    wa = w[idx].to(out.dtype).reshape(-1, *([1] * (out.dim() - 1)))
    out[idx] = wa * out[idx] + (1 - wa) * other
    return out


def classifier_free_guidance(
    denoiser: Denoiser,
    scale: float,
    *,
    schedule: str = "constant",
    power: float = 1.0,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    interval: tuple[float, float] | None = None,
) -> Denoiser:
    """Wrap ``denoiser`` as ``D_w = w·D(x;σ,c) + (1−w)·D(x;σ,∅)`` (unconditional label: zeros).

    Conditional and unconditional halves run in one batched call; samples whose weight is 1
    (outside the guidance interval) skip the unconditional half.
    """
    guidance_weight(scale, torch.ones(1), schedule=schedule, interval=interval)  # validate early

    def guided(x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if labels is None:
            raise ValueError("classifier-free guidance needs class labels; pass labels or scale 1")
        check_labels(labels, x.shape[0])
        w = guidance_weight(scale, sigma, schedule=schedule, power=power, sigma_min=sigma_min,
                            sigma_max=sigma_max, interval=interval).to(x.device)
        active = w != 1
        if not active.any():
            return denoiser(x, sigma, labels)
        idx = active.nonzero().squeeze(1)
        both = denoiser(
            torch.cat([x, x[idx]]),
            torch.cat([sigma, sigma[idx]]),
            torch.cat([labels, torch.zeros_like(labels[idx])]),
        )
        return _mix(both[: x.shape[0]].clone(), both[x.shape[0]:], w, idx)

    return guided


def autoguidance(
    denoiser: Denoiser,
    guide: Denoiser,
    scale: float,
    *,
    schedule: str = "constant",
    power: float = 1.0,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    interval: tuple[float, float] | None = None,
) -> Denoiser:
    """Autoguidance (Karras et al. 2024, "Guiding a diffusion model with a bad version of
    itself"): ``D_w = D_bad + w·(D_good − D_bad) = w·D_good(x;σ,c) + (1−w)·D_bad(x;σ,c)`` with
    ``guide`` the bad model (smaller or less trained, same stage and labels).

    The call pattern of classifier-free guidance: the good model once on the whole batch, the
    guide once on the samples whose weight is not 1 (none outside the guidance interval); works
    for unconditional stages too (``labels`` may be ``None``).
    """
    guidance_weight(scale, torch.ones(1), schedule=schedule, interval=interval)  # validate early

    def guided(x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        check_labels(labels, x.shape[0])
        out = denoiser(x, sigma, labels)
        w = guidance_weight(scale, sigma, schedule=schedule, power=power, sigma_min=sigma_min,
                            sigma_max=sigma_max, interval=interval).to(x.device)
        active = w != 1
        if not active.any():
            return out
        idx = active.nonzero().squeeze(1)
        bad = guide(x[idx], sigma[idx], None if labels is None else labels[idx])
        return _mix(out.clone(), bad.to(out.dtype), w, idx)

    return guided
