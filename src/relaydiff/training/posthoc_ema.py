"""Post-hoc EMA (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion
Models", §3 and Appendix C): choose the EMA length after training.

During training, power-function EMAs of the weights are tracked for a few relative standard
deviations ``σ_rel`` (e.g. 0.05 and 0.10): after the step that brings the run to ``t`` training
images, ``θ̂ ← β·θ̂ + (1−β)·θ`` with ``β = (1 − Δt/t)^(γ+1)``, so that ``θ̂(t)`` averages the weights
of the past with the density ``p_{γ,t}(τ) = (γ+1)/t · (τ/t)^γ`` on ``[0, t]``. The exponent and
``σ_rel`` are tied by ``σ_rel² = (γ+1) / ((γ+2)²(γ+3))``. Snapshots of these averages, stored at
regular intervals, span a space of profiles: any other profile ``p_{γ_r,t_r}`` is approximated by
the combination ``Σ x_i p_i`` that is closest in ``L²``, which solves ``A x = b`` with the closed-form
inner products ``A_ij = ⟨p_i, p_j⟩``, ``b_i = ⟨p_i, p_r⟩``:
``⟨p_{a,t_a}, p_{b,t_b}⟩ = (a+1)(b+1)·min(t_a,t_b)^(a+b+1) / ((a+b+1)·t_a^(a+1)·t_b^(b+1))``; the
weights ``Σ x_i θ̂_i`` then have the requested EMA profile (docs/quality.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..io.tensors import load_tensors, save_tensors

SNAPSHOT_PREFIX = "phema-"
MAX_RESIDUAL = 0.05  # relative L² error of the fitted profile beyond which a σ_rel is refused


def gamma_from_sigma_rel(sigma_rel: float) -> float:
    """The exponent ``γ`` of ``σ_rel``: the largest real root of
    ``γ³ + 7γ² + (16 − σ_rel⁻²)γ + (12 − σ_rel⁻²) = 0``."""
    if not (math.isfinite(sigma_rel) and 0 < sigma_rel < 0.2887):
        raise ValueError(f"sigma_rel {sigma_rel}: must lie in (0, 0.288), the range of power-function "
                         "EMAs (0.288 is γ = 0, a plain average)")
    t = sigma_rel**-2
    return float(np.roots([1.0, 7.0, 16.0 - t, 12.0 - t]).real.max())


def sigma_rel_from_gamma(gamma: float) -> float:
    """``σ_rel = √((γ+1) / ((γ+2)²(γ+3)))``."""
    return math.sqrt((gamma + 1) / (gamma + 2) ** 2 / (gamma + 3))


def beta(gamma: float, t_next: float, t_delta: float) -> float:
    """Decay of one update that brings the run to ``t_next`` images: ``(1 − Δt/t)^(γ+1)``."""
    return (1 - t_delta / t_next) ** (gamma + 1)


def profile_inner(t_a: float, g_a: float, t_b: float, g_b: float) -> float:
    """``⟨p_{g_a,t_a}, p_{g_b,t_b}⟩ = ∫ p_a p_b dτ`` in closed form, evaluated as
    ``(a+1)(b+1)/(a+b+1) · (t_lo/t_hi)^γ_hi / t_hi`` (``γ_hi``: the exponent of the later profile),
    which equals the module docstring's form but never raises an image count to the power ``γ``
    (at 10⁵ images and ``σ_rel`` 0.03 that power overflows a double)."""
    (t_lo, _), (t_hi, g_hi) = sorted([(t_a, g_a), (t_b, g_b)], key=lambda p: p[0])
    return (g_a + 1) * (g_b + 1) / (g_a + g_b + 1) * (t_lo / t_hi) ** g_hi / t_hi


def solve_coefficients(stored: Sequence[tuple[float, float]], target: tuple[float, float]
                       ) -> tuple[np.ndarray, float]:
    """Weights ``x`` of the stored profiles ``(t_i, γ_i)`` whose combination is closest to
    ``target = (t, γ)``, and the relative ``L²`` error of that combination."""
    t_r, g_r = target
    a = np.array([[profile_inner(ti, gi, tj, gj) for tj, gj in stored] for ti, gi in stored])
    b = np.array([profile_inner(ti, gi, t_r, g_r) for ti, gi in stored])
    x = np.linalg.lstsq(a, b, rcond=None)[0]
    x = x / x.sum()  # a weighted average: constants (buffers, a converged weight) stay as they are
    norm = profile_inner(t_r, g_r, t_r, g_r)
    residual = max(norm - 2 * x @ b + x @ a @ x, 0.0)
    return x, math.sqrt(residual / norm)


class PowerEMA:
    """Power-function EMAs of a module's parameters for several ``σ_rel`` (buffers: copied)."""

    def __init__(self, module: torch.nn.Module, sigma_rels: Sequence[float]) -> None:
        self.sigma_rels = [float(s) for s in sigma_rels]
        self.gammas = [gamma_from_sigma_rel(s) for s in self.sigma_rels]
        self.averages = [{k: v.detach().clone() for k, v in module.state_dict().items()}
                         for _ in self.sigma_rels]

    @torch.no_grad()
    def update(self, module: torch.nn.Module, images_seen: int, batch: int) -> None:
        """After the step that brought the run to ``images_seen`` images."""
        params = dict(module.named_parameters())
        state = module.state_dict()
        for gamma, avg in zip(self.gammas, self.averages, strict=True):
            b = beta(gamma, images_seen, batch)
            for name, value in avg.items():
                if name in params:
                    value.lerp_(params[name].detach(), 1 - b)
                else:
                    value.copy_(state[name])

    def tensors(self) -> dict[str, torch.Tensor]:
        """The running averages as one flat dict (checkpoints)."""
        return {f"{k}/{name}": v for k, avg in enumerate(self.averages) for name, v in avg.items()}

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        for key, value in tensors.items():
            k, name = key.split("/", 1)
            self.averages[int(k)][name].copy_(value)

    def save_snapshots(self, folder: Path, images_seen: int, step: int,
                       dtype: torch.dtype | None = None) -> list[Path]:
        """One safetensors file per profile: ``phema-<images>-<σ_rel>.safetensors`` with the
        exact ``γ``, ``σ_rel``, images seen and step in its metadata; floating-point tensors
        stored as ``dtype`` (None: as they are; training stores float16, as EDM2 does)."""
        paths = []
        for sigma_rel, gamma, avg in zip(self.sigma_rels, self.gammas, self.averages, strict=True):
            path = folder / f"{SNAPSHOT_PREFIX}{images_seen:012d}-{sigma_rel:.3f}.safetensors"
            if dtype is not None:
                avg = {k: v.to(dtype) if v.is_floating_point() else v for k, v in avg.items()}
            save_tensors(avg, path, metadata={"gamma": repr(gamma), "sigma_rel": repr(sigma_rel),
                                              "images_seen": str(images_seen), "step": str(step)})
            paths.append(path)
        return paths


@dataclass(frozen=True)
class Snapshot:
    path: Path
    gamma: float
    sigma_rel: float
    images_seen: int


def list_posthoc(run_dir: str | Path) -> list[Snapshot]:
    """The post-hoc EMA snapshots of a run, oldest first."""
    from safetensors import safe_open

    folder = Path(run_dir) / "posthoc"
    found = []
    for path in sorted(folder.glob(f"{SNAPSHOT_PREFIX}*.safetensors")) if folder.is_dir() else []:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        found.append(Snapshot(path, float(meta["gamma"]), float(meta["sigma_rel"]),
                              int(meta["images_seen"])))
    return found


def reconstruct(run_dir: str | Path, sigma_rel: float, at_images: int | None = None
                ) -> tuple[dict[str, torch.Tensor], dict]:
    """Weights with the EMA profile ``σ_rel`` at ``at_images`` (default: the last snapshot) from
    the run's snapshots up to then; returns them and a record (coefficients, error)."""
    snaps = list_posthoc(run_dir)
    if not snaps:
        raise ValueError(f"{run_dir}: no post-hoc EMA snapshots (posthoc/{SNAPSHOT_PREFIX}*); train with "
                         "ema.posthoc_sigma_rels and ema.posthoc_every_images set")
    t = at_images if at_images is not None else max(s.images_seen for s in snaps)
    usable = [s for s in snaps if s.images_seen <= t]
    if not usable:
        raise ValueError(f"at={t}: the first snapshot is at {snaps[0].images_seen:,} images")
    gamma = gamma_from_sigma_rel(sigma_rel)
    x, error = solve_coefficients([(s.images_seen, s.gamma) for s in usable], (t, gamma))
    stored = sorted({s.sigma_rel for s in usable})
    if error > MAX_RESIDUAL:
        raise ValueError(f"sigma_rel {sigma_rel} at {t:,} images: the stored profiles (σ_rel "
                         f"{', '.join(f'{s:g}' for s in stored)}, {len(usable)} snapshots) reach it "
                         f"only with a {100 * error:.0f} % profile error (limit "
                         f"{100 * MAX_RESIDUAL:.0f} %); choose a σ_rel nearer to them")
    out: dict[str, torch.Tensor] = {}
    for coef, snap in zip(x, usable, strict=True):
        for name, value in load_tensors(snap.path).items():
            value = value.to(torch.float64) * float(coef)
            out[name] = value if name not in out else out[name] + value
    reference = load_tensors(usable[-1].path)
    half = (torch.float16, torch.bfloat16)  # snapshots stored in half precision give float32
    weights = {k: v.to(torch.float32 if reference[k].dtype in half else reference[k].dtype)
               for k, v in out.items()}
    return weights, {"sigma_rel": sigma_rel, "gamma": gamma, "at_images": t,
                     "profile_error": error, "snapshots": [str(s.path.name) for s in usable],
                     "coefficients": [float(c) for c in x]}
