"""Training losses: EDM's denoising loss (stage 1) and the relay loss (stage k ≥ 2).

Both take a denoiser ``D(x, σ, labels)``, clean images in ``[-1, 1]`` and per-sample noise
levels, and return the per-sample loss ``λ(σ)·mean‖D(x_σ;σ) − x‖²`` (mean over C, H, W).
Noise levels are drawn separately (``sample_sigma``) so a training loop can log the loss
per σ band and tests can fix σ.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from .ops import (
    Generator,
    block_noise,
    canonical_variant,
    check_labels,
    downsample,
    heat_blur,
    noisy_condition,
    randn,
    relay_noise,
)
from .precond import loss_weight
from .schedules import RelaySchedule, edm_training_sigmas


def _per_sample(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(dim=1)


def _check_sigma(sigma: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    sigma = torch.as_tensor(sigma, dtype=images.dtype, device=images.device).reshape(-1)
    if sigma.shape[0] != images.shape[0]:
        raise ValueError(f"sigma has {sigma.shape[0]} entries for a batch of {images.shape[0]}")
    if not torch.isfinite(sigma).all() or (sigma <= 0).any():
        raise ValueError(f"training σ must be finite and > 0, got {sigma.tolist()}")
    return sigma


def _noised(images: torch.Tensor, sigma, labels, generator: Generator
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Checked ``σ`` and ``x_σ = x + σ·ε`` (``ε``: the first draw of every sample)."""
    sigma = _check_sigma(sigma, images)
    check_labels(labels, images.shape[0])
    noise = randn(images.shape, generator, device=images.device, dtype=images.dtype)
    return sigma, images + sigma.reshape((-1,) + (1,) * (images.dim() - 1)) * noise


@dataclass(frozen=True)
class EDMLoss:
    """Stage-1 loss: ``x_σ = x + σ·ε``, ``ln σ ~ N(P_mean, P_std²)``, weight ``λ(σ)``."""

    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_data: float = 0.5
    block_noise: tuple[float, int, float] | None = None  # (α, patch, σ_min): BlockNoiseConfig

    def sample_sigma(self, n: int, *, generator: Generator = None, device=None) -> torch.Tensor:
        return edm_training_sigmas(n, self.p_mean, self.p_std, generator=generator, device=device)

    def __call__(self, denoiser, images, sigma, labels=None, *, generator: Generator = None):
        if self.block_noise is None:
            sigma, x_noisy = _noised(images, sigma, labels, generator)
        else:
            sigma, x_noisy = self._block_noised(images, sigma, labels, generator)
        d = denoiser(x_noisy, sigma, labels)
        return loss_weight(sigma, self.sigma_data) * _per_sample((d - images) ** 2)

    def _block_noised(self, images, sigma, labels, generator: Generator
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x_σ = x + σ·n`` with ``n`` the relay noise ``(ε + α·Block_s)/√(1+α²)`` where
        ``σ ≥ σ_min``, else ``ε`` (every sample draws ``ε``, then its block values)."""
        sigma = _check_sigma(sigma, images)
        check_labels(labels, images.shape[0])
        alpha, patch, sigma_min = self.block_noise
        eps = randn(images.shape, generator, device=images.device, dtype=images.dtype)
        mixed = (eps + alpha * block_noise(images.shape, patch, generator=generator,
                                           device=images.device, dtype=images.dtype)
                 ) / math.sqrt(1 + alpha * alpha)
        view = (-1,) + (1,) * (images.dim() - 1)
        noise = torch.where((sigma >= sigma_min).reshape(view), mixed, eps)
        return sigma, images + sigma.reshape(view) * noise

    def to_dict(self) -> dict:
        return {"kind": "edm", **asdict(self)}


@dataclass(frozen=True)
class RelayLoss:
    """Relay loss (docs/method.md §2.5): ``x_u = Blur(x, b(u)) + σ(u)·n``.

    ``u ~ U(u_min, 1]`` with ``σ(u_min) = sigma_floor``; weight ``min(λ(σ), weight_max)``; the
    network predicts the sharp image. ``variant`` (:data:`relaydiff.ops.VARIANTS`): the default
    ``"trapezoidal"`` (old name ``"paper"``) is the paper's process; ``"official"`` reproduces the
    released training code: ``u_min = Φ(·)·L`` (multiply instead of divide), ``u`` clamped at
    ``u_min`` rather than drawn above it, and the official (unnormalised, box-filter) relay noise.
    """

    schedule: RelaySchedule
    patch_size: int
    block_alpha: float = 0.15
    sigma_floor: float = 7.5e-3
    weight_max: float = 1e5
    sigma_data: float = 0.5
    variant: str = "trapezoidal"

    def __post_init__(self) -> None:
        object.__setattr__(self, "variant", canonical_variant(self.variant))  # frozen dataclass
        if self.patch_size < 1:
            raise ValueError(f"patch_size={self.patch_size} must be ≥ 1")

    @property
    def u_min(self) -> float:
        s = self.schedule
        cdf = 0.5 * (1 + math.erf((math.log(self.sigma_floor) - s.p_mean) / s.p_std / math.sqrt(2)))
        return cdf * s.prob_length if self.variant == "official" else cdf / s.prob_length

    def sample_sigma(self, n: int, *, generator: Generator = None, device=None) -> torch.Tensor:
        """Training noise levels ``σ(u)``, ``u ~ U(u_min, 1]`` (official: ``max(U(0,1), u_min)``)."""
        if generator is None or isinstance(generator, torch.Generator):
            r = torch.rand(n, generator=generator, dtype=torch.float64)
        else:
            gens = list(generator)
            if len(gens) != n:
                raise ValueError(f"got {len(gens)} generators for a batch of {n} samples")
            r = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in gens])
        u_min = self.u_min
        u = r.clamp(min=u_min) if self.variant == "official" else u_min + (1 - u_min) * (1 - r)
        return self.schedule.sigma(u).to(device=device, dtype=torch.float32)

    def __call__(self, denoiser, images, sigma, labels=None, *, generator: Generator = None):
        sigma = _check_sigma(sigma, images)
        check_labels(labels, images.shape[0])
        view = (-1,) + (1,) * (images.dim() - 1)
        blurred = heat_blur(images, self.patch_size, self.schedule.blur_sigma_at(sigma),
                            self.schedule.min_scale)
        noise = relay_noise(images.shape, self.patch_size, self.block_alpha, generator=generator,
                            variant=self.variant, device=images.device, dtype=images.dtype)
        d = denoiser(blurred + sigma.reshape(view) * noise, sigma, labels)
        weight = loss_weight(sigma, self.sigma_data).clamp(max=self.weight_max)
        return weight * _per_sample((d - images) ** 2)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["schedule"] = self.schedule.to_dict()
        return {"kind": "relay", **out}


def _uniform(n: int, generator: Generator) -> torch.Tensor:
    """``U(0, 1)`` per sample (float64), from one generator or one per sample."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.rand(n, generator=generator, dtype=torch.float64)
    gens = list(generator)
    if len(gens) != n:
        raise ValueError(f"got {len(gens)} generators for a batch of {n} samples")
    return torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in gens])


@dataclass(frozen=True)
class SRLoss:
    """Loss of a conditional super-resolution stage (docs/method.md §7; SR3/CDM/Imagen style).

    EDM's denoising loss at the stage's resolution, ``λ(σ)·‖D(x_σ; σ, c, σ_aug) − x‖²`` with
    ``ln σ ~ N(P_mean, P_std²)``, conditioned on ``c = up(down(x) + σ_aug·ε', s)``: the
    low-resolution image made from ``x`` by box downsampling, corrupted by noise of a level
    ``σ_aug ~ U(0, aug_max)`` drawn per sample (noise-conditioning augmentation), which the
    network also receives. Per sample the draws are ``ε`` (the image noise), then ``σ_aug``,
    then ``ε'``.
    """

    scale: int = 4
    aug_max: float = 1.0
    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_data: float = 0.5

    def __post_init__(self) -> None:
        if self.scale < 1:
            raise ValueError(f"scale={self.scale} must be ≥ 1")
        if not (math.isfinite(self.aug_max) and self.aug_max >= 0):
            raise ValueError(f"aug_max={self.aug_max} must be finite and ≥ 0")

    def sample_sigma(self, n: int, *, generator: Generator = None, device=None) -> torch.Tensor:
        return edm_training_sigmas(n, self.p_mean, self.p_std, generator=generator, device=device)

    def __call__(self, denoiser, images, sigma, labels=None, *, generator: Generator = None):
        sigma, x_noisy = _noised(images, sigma, labels, generator)
        level = (self.aug_max * _uniform(images.shape[0], generator)).to(images.device, images.dtype)
        cond = noisy_condition(downsample(images, self.scale), self.scale, level, generator)
        d = denoiser(x_noisy, sigma, labels, cond_image=cond, cond_sigma=level)
        return loss_weight(sigma, self.sigma_data) * _per_sample((d - images) ** 2)

    def to_dict(self) -> dict:
        return {"kind": "sr", **asdict(self)}
