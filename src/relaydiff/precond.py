"""EDM preconditioning (Karras et al. 2022, Table 1) around any raw network.

``D(x; σ) = c_skip·x + c_out·F(c_in·x, c_noise, labels)`` with
``c_skip = σ_d²/(σ²+σ_d²)``, ``c_out = σ·σ_d/√(σ²+σ_d²)``, ``c_in = 1/√(σ²+σ_d²)``,
``c_noise = ln(σ)/4`` (docs/method.md §1.1; the relay stages use the same form).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class Coefficients(NamedTuple):
    c_skip: torch.Tensor
    c_out: torch.Tensor
    c_in: torch.Tensor
    c_noise: torch.Tensor


def edm_coefficients(sigma: torch.Tensor, sigma_data: float = 0.5) -> Coefficients:
    """The four preconditioning coefficients for noise levels ``sigma`` (any shape)."""
    s2 = sigma**2 + sigma_data**2
    return Coefficients(
        c_skip=sigma_data**2 / s2,
        c_out=sigma * sigma_data / s2.sqrt(),
        c_in=1 / s2.sqrt(),
        c_noise=sigma.log() / 4,
    )


def condition_level(cond_sigma: torch.Tensor) -> torch.Tensor:
    """What a super-resolution network sees of its conditioning noise level ``σ_aug``:
    ``c_aug = ln(σ_aug + 0.01)/4`` (like ``c_noise``, finite at ``σ_aug = 0``; docs/method.md §7)."""
    return (cond_sigma + 0.01).log() / 4


def loss_weight(sigma: torch.Tensor, sigma_data: float = 0.5) -> torch.Tensor:
    """EDM's loss weight ``λ(σ) = (σ²+σ_d²)/(σ·σ_d)²`` (equals ``1/c_out²``)."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


class EDMPrecond(nn.Module):
    """Wraps a raw network ``F(x, c_noise, labels)`` into a denoiser ``D(x, σ, labels)``.

    The raw network is stored as ``self.model`` so that state-dict keys match EDM's
    ``EDMPrecond`` (``model.…``). The network runs in float32 (under autocast to
    ``autocast_dtype``, bf16/fp16, on GPU when given); the output is cast back to the input's
    dtype, so a float64 sampler state works with a float32 network.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        sigma_data: float = 0.5,
        label_dim: int = 0,
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.sigma_data = sigma_data
        self.label_dim = label_dim
        self.autocast_dtype = autocast_dtype

    def forward(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        cond_image: torch.Tensor | None = None,
        cond_sigma: torch.Tensor | None = None,
        augment_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``D(x; σ, labels)``. A super-resolution stage also passes its conditioning image
        ``cond_image`` (``N×C×H×W``, concatenated to the network input as it is) and the noise
        level ``cond_sigma`` (``(N,)``) that was added to it. ``augment_labels`` (training with
        augmentation only) tell the network how its input was augmented."""
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1)
        if sigma.numel() == 1:
            sigma = sigma.expand(x.shape[0])
        if sigma.shape[0] != x.shape[0]:
            raise ValueError(f"sigma has {sigma.shape[0]} entries for a batch of {x.shape[0]}")
        if self.label_dim:
            if labels is None:
                labels = torch.zeros(x.shape[0], self.label_dim, device=x.device)
            elif labels.shape != (x.shape[0], self.label_dim):
                raise ValueError(
                    f"labels must have shape ({x.shape[0]}, {self.label_dim}) (one-hot), "
                    f"got {tuple(labels.shape)}"
                )
            labels = labels.to(torch.float32)
        else:
            labels = None
        c = edm_coefficients(sigma, self.sigma_data)
        view = (-1,) + (1,) * (x.dim() - 1)
        x32 = x.to(torch.float32)
        net_in = c.c_in.reshape(view) * x32
        extra = {}
        if augment_labels is not None:
            extra["augment_labels"] = augment_labels.to(torch.float32)
        if cond_image is not None:
            if cond_image.shape[0] != x.shape[0] or cond_image.shape[2:] != x.shape[2:]:
                raise ValueError(f"cond_image has shape {tuple(cond_image.shape)} for x of shape "
                                 f"{tuple(x.shape)}; give one conditioning image per sample")
            net_in = torch.cat([net_in, cond_image.to(torch.float32)], dim=1)
            level = torch.zeros(x.shape[0], device=x.device) if cond_sigma is None else \
                torch.as_tensor(cond_sigma, dtype=torch.float32, device=x.device).reshape(-1)
            extra["cond_level"] = condition_level(level.expand(x.shape[0]))
        if self.autocast_dtype is not None and x.device.type != "cpu":
            with torch.autocast(x.device.type, dtype=self.autocast_dtype):
                f = self.model(net_in, c.c_noise, labels, **extra)
        else:
            f = self.model(net_in, c.c_noise, labels, **extra)
        d = c.c_skip.reshape(view) * x32 + c.c_out.reshape(view) * f.to(torch.float32)
        return d.to(x.dtype)
