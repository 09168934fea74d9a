"""Noise and blur schedules: the relay schedule, Karras σ grids and EDM's log-normal σ.

Equations: docs/method.md §2.4 (relay schedule), §1.3 (Karras grids), §1.2 (EDM's σ).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from .ops import Generator, heat_attenuation, randn

TensorLike = float | torch.Tensor


def _positive(name: str, value: TensorLike) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=torch.float64)
    if not torch.isfinite(t).all() or (t <= 0).any():
        raise ValueError(f"{name} must be finite and > 0, got {t.tolist()}")
    return t


@dataclass(frozen=True)
class RelaySchedule:
    """The relay stage's schedule over stage time ``u ∈ (0, 1]``.

    ``σ(u) = exp(P_mean + P_std·Φ⁻¹(u·L))``, ``b(u) = b_max·sin²(π·u/2)`` and the inverse
    ``u(σ) = Φ((ln σ − P_mean)/P_std)/L``, where ``L`` is ``prob_length``.
    """

    prob_length: float
    blur_sigma_max: float
    p_mean: float = -1.2
    p_std: float = 1.2
    min_scale: float = 1e-3

    def __post_init__(self) -> None:
        if not (math.isfinite(self.prob_length) and self.prob_length > 0):
            raise ValueError(f"prob_length={self.prob_length} must be finite and > 0 (e.g. 0.93)")
        if not (math.isfinite(self.blur_sigma_max) and self.blur_sigma_max >= 0):
            raise ValueError(f"blur_sigma_max={self.blur_sigma_max} must be finite and ≥ 0 (e.g. 3.0)")
        if not (math.isfinite(self.p_std) and self.p_std > 0 and math.isfinite(self.p_mean)):
            raise ValueError(f"p_mean={self.p_mean}, p_std={self.p_std}: need finite values, p_std > 0")
        if not 0.0 <= self.min_scale <= 1.0:
            raise ValueError(f"min_scale={self.min_scale} must lie in [0, 1]")

    def sigma(self, u: TensorLike) -> torch.Tensor:
        """``σ(u) = exp(P_mean + P_std·Φ⁻¹(u·L))``."""
        q = torch.as_tensor(u, dtype=torch.float64) * self.prob_length
        if ((q <= 0) | (q >= 1)).any():
            raise ValueError(f"u·prob_length must lie in (0, 1), got u={torch.as_tensor(u).tolist()}")
        return torch.exp(self.p_mean + self.p_std * torch.special.ndtri(q))

    def u(self, sigma: TensorLike) -> torch.Tensor:
        """``u(σ) = Φ((ln σ − P_mean)/P_std)/L``."""
        s = _positive("sigma", sigma)
        return torch.special.ndtr((torch.log(s) - self.p_mean) / self.p_std) / self.prob_length

    def blur_sigma(self, u: TensorLike) -> torch.Tensor:
        """``b(u) = b_max·sin²(π·u/2)``."""
        u = torch.as_tensor(u, dtype=torch.float64)
        return self.blur_sigma_max * torch.sin(math.pi * u / 2) ** 2

    def blur_sigma_at(self, sigma: TensorLike) -> torch.Tensor:
        """Blur level at noise level ``σ``: ``b(u(σ))``."""
        return self.blur_sigma(self.u(sigma))

    def attenuation(self, sigma: TensorLike, p: int) -> torch.Tensor:
        """The ``p×p`` table ``a_{b(u(σ))}`` (``(N, p, p)`` for ``σ`` of shape ``(N,)``)."""
        return heat_attenuation(p, self.blur_sigma_at(sigma), self.min_scale)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def karras_sigmas(
    n: int,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    *,
    truncate: float | None = None,
) -> torch.Tensor:
    """Karras et al. grid ``σ_i = (σ_max^{1/ρ} + i/(n−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ`` with 0 appended.

    With ``truncate`` only the ``σ_i < truncate`` are kept (the relay stage's start σ).
    Returns a descending float64 tensor ending with 0.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"number of steps n={n!r} must be an integer ≥ 1")
    _positive("sigma_min", sigma_min)
    _positive("sigma_max", sigma_max)
    _positive("rho", rho)
    if sigma_min > sigma_max:
        raise ValueError(f"sigma_min={sigma_min} must not exceed sigma_max={sigma_max}")
    i = torch.arange(n, dtype=torch.float64)
    frac = i / (n - 1) if n > 1 else i
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + frac * (lo - hi)) ** rho
    if truncate is not None:
        _positive("truncate", truncate)
        sigmas = sigmas[sigmas < truncate]
        if sigmas.numel() == 0:
            raise ValueError(
                f"no grid point lies below truncate={truncate} (sigma_min={sigma_min}); "
                "raise truncate or lower sigma_min"
            )
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def check_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """Validate a sampler grid: 1-D, at least one positive σ, strictly descending, ending with 0."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    if sigmas.dim() != 1 or sigmas.numel() < 2:
        raise ValueError(
            f"sigmas must be a 1-D grid of at least one σ > 0 followed by 0, got {sigmas.tolist()}"
        )
    if sigmas[-1] != 0:
        raise ValueError(f"sigmas must end with 0, got last value {sigmas[-1].item()}")
    head = sigmas[:-1]
    if not torch.isfinite(head).all() or (head <= 0).any():
        raise ValueError(f"every σ before the final 0 must be finite and > 0, got {head.tolist()}")
    if (head[1:] >= head[:-1]).any():
        raise ValueError("sigmas must be strictly descending")
    return sigmas


def edm_training_sigmas(
    n: int,
    p_mean: float = -1.2,
    p_std: float = 1.2,
    *,
    generator: Generator = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """EDM's training noise levels ``ln σ ~ N(P_mean, P_std²)``; shape ``(n,)``, float32."""
    return torch.exp(p_mean + p_std * randn((n,), generator, device=device))
