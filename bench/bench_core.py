"""Benchmark of the relay core against baselines measured in the same run (issue 2, "Performance").

Prints, for an 8×3×256×256 float32 batch on the CPU with 2 threads:
  * heat_blur (per-sample blur level) vs a per-patch DCT-via-FFT blur written here in the style
    of the common torch DCT ports (patches rearranged, 1-D DCTs by FFT along each axis):
    target ≥ 20× faster;
  * heat_blur vs an elementwise multiply of the same tensor (the memory-bound floor): ≤ 15×;
  * relay_noise vs torch.randn of the same shape: ≤ 1.5×;
  * one relay Heun step with a trivially cheap denoiser vs one heat_blur call: ≤ 4×
    (η = 0 and η = 0.2; a 3-entry grid [σ0, σ1, 0] minus the 2-entry grid [σ1, 0]).
Timings are medians over rounds that run every candidate once in turn (robust to a changing
load on a shared machine). Run: ``python bench/bench_core.py [--repeats N]``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import torch

from relaydiff.ops import heat_attenuation, heat_blur, relay_noise
from relaydiff.samplers import relay_sample
from relaydiff.schedules import RelaySchedule

SHAPE = (8, 3, 256, 256)
P = 4


def median_times(candidates: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median seconds per candidate; every round runs each candidate once, in turn, so that a
    change of load on a shared machine affects all of them alike."""
    for fn in candidates.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


# ------------------------------------------- baseline: per-patch DCT via FFT (torch-dct style)
# The recipe of zh217/torch-dct as the released RDM code uses it: images rearranged into a batch
# of p×p patches, a 1-D DCT by FFT (Makhoul's even/odd reordering) along the last axis, transpose,
# again, and back to the image layout, where a tiled attenuation table is applied.

def to_patches(x: torch.Tensor, p: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(-1, c, p, p)


def from_patches(patches: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    n, c, h, w = shape
    p = patches.shape[-1]
    return patches.reshape(n, h // p, w // p, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(shape)


def dct_fft(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal DCT-II along the last axis via one FFT of the even/odd reordering."""
    shape, n = x.shape, x.shape[-1]
    rows = x.contiguous().view(-1, n)
    v = torch.cat([rows[:, ::2], rows[:, 1::2].flip([1])], dim=1)
    spec = torch.view_as_real(torch.fft.fft(v, dim=1))
    k = -torch.arange(n, dtype=x.dtype, device=x.device)[None, :] * (math.pi / (2 * n))
    out = spec[:, :, 0] * torch.cos(k) - spec[:, :, 1] * torch.sin(k)
    out[:, 0] /= math.sqrt(n) * 2
    out[:, 1:] /= math.sqrt(n / 2) * 2
    return 2 * out.view(shape)


def idct_fft(y: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`dct_fft` (orthonormal DCT-III) via one inverse real FFT."""
    shape, n = y.shape, y.shape[-1]
    coef = y.contiguous().view(-1, n) / 2
    coef[:, 0] *= math.sqrt(n) * 2
    coef[:, 1:] *= math.sqrt(n / 2) * 2
    k = torch.arange(n, dtype=y.dtype, device=y.device)[None, :] * (math.pi / (2 * n))
    imag = torch.cat([coef[:, :1] * 0, -coef.flip([1])[:, :-1]], dim=1)
    re = coef * torch.cos(k) - imag * torch.sin(k)
    im = coef * torch.sin(k) + imag * torch.cos(k)
    v = torch.fft.irfft(torch.view_as_complex(torch.stack([re, im], dim=2)), n=n, dim=1)
    out = v.new_zeros(v.shape)
    out[:, ::2] += v[:, : n - n // 2]
    out[:, 1::2] += v.flip([1])[:, : n // 2]
    return out.view(shape)


def fft_patch_blur(x: torch.Tensor, p: int, blur: torch.Tensor, min_scale: float = 1e-3) -> torch.Tensor:
    patches = to_patches(x, p)
    coeffs = dct_fft(dct_fft(patches).transpose(-1, -2)).transpose(-1, -2)
    coeffs = from_patches(coeffs, x.shape)
    n, _, h, w = x.shape
    table = heat_attenuation(p, blur, min_scale).to(x.dtype).repeat(1, h // p, w // p)
    coeffs = to_patches(coeffs * table.reshape(n, 1, h, w), p)
    out = idct_fft(idct_fft(coeffs).transpose(-1, -2)).transpose(-1, -2)
    return from_patches(out, x.shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    r = args.repeats
    x = torch.rand(SHAPE) * 2 - 1
    blur = torch.linspace(0.3, 3.0, SHAPE[0])

    base = fft_patch_blur(x, P, blur)
    ours = heat_blur(x, P, blur)
    err = float((base - ours).abs().max())
    if err > 1e-4:
        raise SystemExit(f"the FFT baseline disagrees with heat_blur by {err:.2e}")

    sched = RelaySchedule(0.93, 3.0)

    def cheap(z: torch.Tensor, s: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return z

    def sampler(grid: list[float], eta: float) -> Callable[[], object]:
        sigmas = torch.tensor(grid, dtype=torch.float64)
        return lambda: relay_sample(cheap, x, sigmas, sched, P, eta=eta)

    candidates: dict[str, Callable[[], object]] = {
        "heat_blur": lambda: heat_blur(x, P, blur),
        "heat_blur scalar": lambda: heat_blur(x, P, 1.7),
        "multiply": lambda: x * 1.0001,
        "randn": lambda: torch.randn(SHAPE),
        "relay_noise trapezoidal": lambda: relay_noise(SHAPE, P, 0.15),
        "relay_noise official": lambda: relay_noise(SHAPE, P, 0.15, variant="official"),
    }
    for eta in (0.0, 0.2):
        # one full Heun step = (grid [σ0, σ1, 0]) − (grid [σ1, 0]: only the final denoising)
        candidates[f"sampler 3 eta={eta}"] = sampler([0.8, 0.5, 0.0], eta)
        candidates[f"sampler 2 eta={eta}"] = sampler([0.5, 0.0], eta)
    candidates["fft"] = lambda: fft_patch_blur(x, P, blur)
    t = median_times(candidates, r)
    t_step = {eta: t[f"sampler 3 eta={eta}"] - t[f"sampler 2 eta={eta}"] for eta in (0.0, 0.2)}

    ms = 1e3
    print(f"shape {SHAPE} float32, patch {P}, threads {torch.get_num_threads()}, "
          f"median of {r} interleaved rounds; times:")
    for name, sec in t.items():
        print(f"  {name:<22} {sec * ms:9.3f} ms")
    for eta, sec in t_step.items():
        print(f"  {'Heun step eta=' + str(eta):<22} {sec * ms:9.3f} ms")
    print(f"FFT baseline max |diff| from heat_blur: {err:.1e}")
    print("ratios (target):")
    print(f"  FFT baseline / heat_blur            {t['fft'] / t['heat_blur']:7.2f}  (≥ 20)")
    print(f"  heat_blur / multiply                {t['heat_blur'] / t['multiply']:7.2f}  (≤ 15)")
    for v in ("trapezoidal", "official"):
        print(f"  relay_noise {v:<11} / randn      {t['relay_noise ' + v] / t['randn']:7.2f}  (≤ 1.5)")
    for eta, sec in t_step.items():
        print(f"  Heun step eta={eta} / heat_blur     {sec / t['heat_blur scalar']:7.2f}  (≤ 4)")


if __name__ == "__main__":
    main()
