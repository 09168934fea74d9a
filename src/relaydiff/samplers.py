"""Samplers: EDM's stochastic Heun sampler for stage 1 and the relay sampler for stage k ≥ 2.

Small functions in the style of k-diffusion. A denoiser is any callable
``denoiser(x, sigma, labels) -> x0_hat`` with ``sigma`` of shape ``(N,)``. The sampler state
keeps the dtype of the input (float64 or float32) on its device; noise comes from one
generator or one generator per sample (``relaydiff.ops.randn``). Equations: docs/method.md
§1.3 (stage-1 sampler), §2.6 (relay sampler) and §3 (guidance).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch

from .ops import Generator, check_labels, heat_blur, randn, relay_noise
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


def edm_sample(
    denoiser: Denoiser,
    latents: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    labels: torch.Tensor | None = None,
    churn: float = 0.0,
    s_min: float = 0.0,
    s_max: float = math.inf,
    s_noise: float = 1.0,
    order: int = 2,
    sde_scale: float = 0.0,
    generator: Generator = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """EDM's sampler (Karras et al. 2022, Algorithm 2) from unit-normal ``latents``.

    ``x_0 = σ_0·latents``. With churn, ``σ̂_i = σ_i(1+γ_i)``, ``γ_i = min(S_churn/N, √2−1)`` for
    ``σ_i ∈ [S_min, S_max]`` and ``x̂_i = x_i + √(σ̂_i²−σ_i²)·S_noise·ε``. Euler
    ``x_{i+1} = x̂_i + (σ_{i+1} − σ̂_i)·d_i`` with ``d_i = (x̂_i − D(x̂_i; σ̂_i))/σ̂_i``; Heun
    (``order=2``) averages ``d_i`` with the slope at ``x_{i+1}`` unless ``σ_{i+1} = 0``.

    ``sde_scale > 0`` is the SDE variant of the released CelebA-HQ script:
    ``g = sde_scale·σ_{i+1}``, ``a = √((σ_{i+1}² − g²)/σ̂_i²)``,
    ``x_{i+1} = x̂_i + (a − 1)·σ̂_i·d + g·ε`` (the corrector reuses the predictor's ``ε``).
    """
    _check_order(order)
    sigmas = check_sigmas(sigmas)
    if churn < 0 or not 0 <= sde_scale < 1:
        raise ValueError(f"need churn ≥ 0 and 0 ≤ sde_scale < 1, got churn={churn}, sde_scale={sde_scale}")
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
        if sde_scale > 0 and s_next > 0:
            g = sde_scale * s_next
            a = math.sqrt((s_next**2 - g**2) / s_hat**2)
            fresh = g * randn(x.shape, generator, device=x.device, dtype=x.dtype)
            step = (a - 1) * s_hat
        else:
            fresh, step = 0.0, s_next - s_hat
        x_next = x + step * d + fresh
        if order == 2 and s_next > 0:
            d_next = (x_next - _denoise(denoiser, x_next, s_next, labels)) / s_next
            x_next = x + step * (d + d_next) / 2 + fresh
        x = x_next
    return x


RELAY_VARIANTS = ("trapezoidal", "official")


def relay_variant(variant: str) -> str:
    """``variant`` of :func:`relay_sample` checked; the old name ``"paper"`` (relaydiff 0.1)
    means ``"trapezoidal"`` and is deprecated."""
    if variant == "paper":
        warnings.warn('relay_sample(variant="paper") is now variant="trapezoidal" (the paper\'s '
                      "slope-average Heun step is first order; see docs/official-differences.md)",
                      DeprecationWarning, stacklevel=3)
        return "trapezoidal"
    if variant not in RELAY_VARIANTS:
        raise ValueError(f"variant={variant!r} is unknown; use one of {', '.join(RELAY_VARIANTS)}")
    return variant


def _relay_transfer(target: torch.Tensor, gamma: float, b_cur: float, b_next: float,
                    patch_size: int, min_scale: float) -> torch.Tensor:
    """``L(t) = IDCT((a_{i+1} − γ·a_i) ⊙ DCT(t)) = Blur_{i+1}(t) − γ·Blur_i(t)``."""
    out = heat_blur(target, patch_size, b_next, min_scale)
    return out.sub_(heat_blur(target, patch_size, b_cur, min_scale), alpha=gamma)


def relay_sample(
    denoiser: Denoiser,
    x_start: torch.Tensor,
    sigmas: torch.Tensor,
    schedule: RelaySchedule,
    patch_size: int,
    *,
    labels: torch.Tensor | None = None,
    eta: float = 0.0,
    block_alpha: float = 0.15,
    order: int = 2,
    variant: str = "trapezoidal",
    generator: Generator = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """The relay (blurring-diffusion) sampler, docs/method.md §2.6.

    ``x_start`` is the noised state at ``sigmas[0]`` (e.g. ``up(x_low) + σ_0·n``). With
    ``U = DCT(x_i)``, ``Û = DCT(D(x_i;σ_i))``, ``a_i = a_{b(u(σ_i))}`` and
    ``γ = √(1−η²)·σ_{i+1}/σ_i`` the Euler step is ``U' = a_{i+1}·Û + γ·(U − a_i·Û)
    = γ·U + L·Û`` with ``L = a_{i+1} − γ·a_i``, and ``x_{i+1} = IDCT(U') + η·σ_{i+1}·n``.
    The last step (``σ_{i+1} = 0``) returns ``D(x_i;σ_i)``.

    Heun (``order=2``) evaluates ``Û' = DCT(D(x_{i+1};σ_{i+1}))`` at the Euler point.
    ``variant="trapezoidal"`` (the default) uses the trapezoidal rule on the denoised images,
    ``U'' = γ·U + L·(Û + Û')/2``, which is second order, with the paper's block noise; the
    corrector reuses the predictor's noise ``n``. The slope average of the paper's Algorithm
    (``d = (U − Û)/σ_i``, ``d' = (U' − Û')/σ_{i+1}``,
    ``U'' = (a_{i+1} + γ − γ·a_i)·U + σ_i·(γ·a_i − a_{i+1})·(d + d')/2``) is only first order
    once the blur changes with σ: on Gaussian data with a detailed mean its samples are
    measurably biased (docs/official-differences.md). ``variant="official"`` keeps that
    released formula, draws fresh noise in the corrector and uses the official relay noise.
    ``"paper"`` is the deprecated old name of ``"trapezoidal"``.
    ``schedule`` is the sampling schedule (its ``prob_length`` is the sampling ``L``).
    """
    _check_order(order)
    variant = relay_variant(variant)
    noise_variant = "official" if variant == "official" else "paper"
    sigmas = check_sigmas(sigmas)
    if not 0 <= eta <= 1:
        raise ValueError(f"eta={eta} (stochasticity) must lie in [0, 1]")
    check_labels(labels, x_start.shape[0])
    s_list = sigmas.tolist()
    blur = [*schedule.blur_sigma_at(sigmas[:-1]).tolist(), 0.0]
    m = schedule.min_scale

    def noise() -> torch.Tensor:
        return relay_noise(x.shape, patch_size, block_alpha, generator=generator,
                           variant=noise_variant, device=x.device, dtype=x.dtype)

    x = x_start
    for i in range(len(s_list) - 1):
        s, s_next = s_list[i], s_list[i + 1]
        denoised = _denoise(denoiser, x, s, labels)
        if callback is not None:
            callback(i, s, x, denoised)
        if s_next == 0:
            return denoised
        gamma = math.sqrt(1 - eta**2) * s_next / s
        base = x * gamma
        update = _relay_transfer(denoised, gamma, blur[i], blur[i + 1], patch_size, m)
        n = noise().mul_(eta * s_next) if eta > 0 else None
        x_next = base + update if n is None else (base + update).add_(n)
        if order == 2:
            denoised_next = _denoise(denoiser, x_next, s_next, labels)
            if variant == "official":
                slopes = (x - denoised) / s + (x_next - denoised_next) / s_next
                target = x - slopes * (s / 2)
                x_next = base + _relay_transfer(target, gamma, blur[i], blur[i + 1], patch_size, m)
                if n is not None:
                    x_next.add_(noise(), alpha=eta * s_next)
            else:
                update.add_(_relay_transfer(denoised_next, gamma, blur[i], blur[i + 1],
                                            patch_size, m)).mul_(0.5)
                x_next = update.add_(base) if n is None else update.add_(base).add_(n)
        x = x_next
    return x


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
