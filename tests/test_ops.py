"""relaydiff.ops against independent references: scipy's DCT, explicit matrices, closed forms,
and the statistics the block noise must have (docs/method.md §2.3, the paper's Eq. 8)."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.fft
import torch

import relaydiff
from relaydiff import ops
from relaydiff.stage import StageConfig

DEVICES = ["cpu", "meta"] + (["cuda"] if torch.cuda.is_available() else [])


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def brute_force_patch_dct(x: np.ndarray, p: int, inverse: bool = False) -> np.ndarray:
    """One scipy ``dctn(norm="ortho")`` call per ``p×p`` patch of every channel."""
    out = np.empty_like(x)
    transform = scipy.fft.idctn if inverse else scipy.fft.dctn
    for idx in np.ndindex(*x.shape[:-2]):
        for a in range(0, x.shape[-2], p):
            for b in range(0, x.shape[-1], p):
                window = (*idx, slice(a, a + p), slice(b, b + p))
                out[window] = transform(x[window], type=2, norm="ortho")
    return out


# ---------------------------------------------------------------------------------- patch DCT

@pytest.mark.parametrize("p", [1, 2, 3, 4, 8, 16])
def test_dct_matrix_is_scipys_orthonormal_dct(p, ref):
    m = ops.dct_matrix(p, dtype=torch.float64)
    np.testing.assert_allclose(m.numpy(), ref.dct_matrix(p), atol=1e-14)
    np.testing.assert_allclose((m @ m.T).numpy(), np.eye(p), atol=1e-14)
    # the closed form of docs/method.md §2.2, written out
    i, j = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    c = np.where(i == 0, math.sqrt(1 / p), math.sqrt(2 / p))
    np.testing.assert_allclose(m.numpy(), c * np.cos(np.pi * (2 * j + 1) * i / (2 * p)), atol=1e-14)


@pytest.mark.parametrize(
    ("shape", "p"),
    [((2, 3, 8, 12), 4), ((1, 2, 6, 10), 2), ((2, 1, 16, 8), 8), ((3, 9, 6), 3),
     ((1, 1, 16, 32), 16), ((8, 4), 4), ((2, 2, 5, 7), 1)],
)
def test_patch_dct_matches_brute_force_scipy(shape, p):
    x = torch.randn(shape, generator=gen(0), dtype=torch.float64)
    got = ops.patch_dct(x, p)
    np.testing.assert_allclose(got.numpy(), brute_force_patch_dct(x.numpy(), p), atol=1e-12)
    back = ops.patch_idct(got, p)
    np.testing.assert_allclose(back.numpy(), x.numpy(), atol=1e-12)
    np.testing.assert_allclose(ops.patch_idct(x, p).numpy(),
                               brute_force_patch_dct(x.numpy(), p, inverse=True), atol=1e-12)


@pytest.mark.parametrize("p", [2, 4, 8])
def test_patch_dct_round_trip_float32(p):
    x = torch.rand(4, 3, 32, 48, generator=gen(p)) * 2 - 1
    X = ops.patch_dct(x, p)
    assert X.dtype == torch.float32
    assert torch.max(torch.abs(ops.patch_idct(X, p) - x)) < 1e-6
    # orthonormal: the energy of every patch is preserved
    energy = lambda t: t.reshape(4, 3, 32 // p, p, 48 // p, p).square().sum(dim=(3, 5))  # noqa: E731
    torch.testing.assert_close(energy(X), energy(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ops_preserve_dtype_and_device(device, dtype):
    x = torch.ones(2, 3, 8, 12, dtype=dtype, device=device)
    blur = torch.tensor([0.0, 1.5], device=None if device == "meta" else device)
    for out in (ops.patch_dct(x, 4), ops.patch_idct(x, 4), ops.heat_blur(x, 4, 1.0),
                ops.heat_blur(x, 4, blur), ops.downsample(x, 4), ops.upsample(x, 2)):
        assert out.dtype == dtype and out.device.type == device
    assert ops.upsample(x, 2).shape == (2, 3, 16, 24)
    assert ops.downsample(x, 4).shape == (2, 3, 2, 3)
    for variant in ops.VARIANTS:
        n = ops.relay_noise((2, 3, 8, 12), 4, 0.15, variant=variant, dtype=dtype, device=device)
        assert n.dtype == dtype and n.device.type == device and n.shape == (2, 3, 8, 12)


# ------------------------------------------------------------------------------- heat blur

def reference_blur(x: np.ndarray, p: int, b: np.ndarray, m: float, ref) -> np.ndarray:
    """``IDCT(a_b ⊙ DCT(x))`` patch by patch with scipy; ``b`` has one entry per sample."""
    coeffs = brute_force_patch_dct(x, p)
    reps = (x.shape[-2] // p, x.shape[-1] // p)
    for k in range(x.shape[0]):
        coeffs[k] *= np.tile(ref.attenuation(p, float(b[k]), m), reps)
    return brute_force_patch_dct(coeffs, p, inverse=True)


def test_heat_attenuation_closed_form(ref):
    for p in (2, 4, 8):
        for b in (0.0, 0.3, 1.0, 3.0):
            got = ops.heat_attenuation(p, b, 1e-3)
            assert got.shape == (p, p)
            np.testing.assert_allclose(got.numpy(), ref.attenuation(p, b, 1e-3), rtol=1e-13)
    stack = ops.heat_attenuation(4, torch.tensor([0.0, 0.5, 2.0]), 0.01)
    assert stack.shape == (3, 4, 4)
    for k, b in enumerate((0.0, 0.5, 2.0)):
        np.testing.assert_allclose(stack[k].numpy(), ref.attenuation(4, b, 0.01), rtol=1e-13)


@pytest.mark.parametrize(("shape", "p"), [((3, 2, 8, 12), 4), ((2, 3, 6, 4), 2), ((2, 1, 8, 16), 8)])
@pytest.mark.parametrize("m", [1e-3, 0.0, 0.2])
def test_heat_blur_is_idct_of_attenuated_dct(shape, p, m, ref):
    x = torch.randn(shape, generator=gen(1), dtype=torch.float64)
    b = np.array([0.0, 0.7, 2.5][: shape[0]])
    got = ops.heat_blur(x, p, torch.tensor(b), min_scale=m)
    np.testing.assert_allclose(got.numpy(), reference_blur(x.numpy(), p, b, m, ref), atol=1e-12)
    # the same operator as an explicit Kronecker-product matrix, sample by sample
    c, h, w = shape[1:]
    for k in range(shape[0]):
        mat = ref.blur_operator(c, h, w, p, float(b[k]), m)
        np.testing.assert_allclose(got[k].reshape(-1).numpy(), mat @ x[k].reshape(-1).numpy(),
                                   atol=1e-12)


def test_heat_blur_per_sample_equals_separate_calls():
    x = torch.randn(4, 3, 16, 16, generator=gen(2))
    b = torch.tensor([0.0, 0.4, 1.3, 5.0])
    together = ops.heat_blur(x, 4, b)
    for k in range(4):
        alone = ops.heat_blur(x[k : k + 1], 4, float(b[k]))
        torch.testing.assert_close(together[k : k + 1], alone, rtol=1e-6, atol=1e-6)


def test_heat_blur_zero_is_identity():
    x = torch.randn(2, 3, 8, 8, generator=gen(3), dtype=torch.float64)
    torch.testing.assert_close(ops.heat_blur(x, 4, 0.0), x, rtol=0, atol=1e-14)
    x32 = x.float()
    torch.testing.assert_close(ops.heat_blur(x32, 2, torch.zeros(2)), x32, rtol=0, atol=1e-6)


@pytest.mark.parametrize("p", [2, 4])
def test_heat_blur_infinite_is_upsampled_downsampled(p):
    """``a_∞ = (1−m)·δ_00 + m``, so ``Blur(x, ∞) = (1−m)·up(down(x)) + m·x``: within ``m`` of up(down)."""
    x = torch.rand(2, 3, 8, 12, generator=gen(4), dtype=torch.float64) * 2 - 1
    m = 1e-3
    blurred = ops.heat_blur(x, p, 1e3, min_scale=m)
    mean = x.reshape(2, 3, 8 // p, p, 12 // p, p).mean(dim=(3, 5))
    up_down = mean.repeat_interleave(p, dim=-2).repeat_interleave(p, dim=-1)
    assert torch.max(torch.abs(blurred - up_down)) <= m * torch.max(torch.abs(x - up_down)) + 1e-12
    torch.testing.assert_close(blurred, (1 - m) * up_down + m * x, rtol=0, atol=1e-12)
    torch.testing.assert_close(ops.upsample(ops.downsample(x, p), p), up_down, rtol=0, atol=1e-14)


def test_heat_blur_semigroup_without_floor():
    x = torch.randn(3, 2, 8, 8, generator=gen(5), dtype=torch.float64)
    b1 = torch.tensor([0.3, 1.0, 2.0], dtype=torch.float64)
    b2 = torch.tensor([0.8, 0.5, 1.5], dtype=torch.float64)
    twice = ops.heat_blur(ops.heat_blur(x, 4, b1, min_scale=0.0), 4, b2, min_scale=0.0)
    once = ops.heat_blur(x, 4, torch.sqrt(b1**2 + b2**2), min_scale=0.0)
    torch.testing.assert_close(twice, once, rtol=0, atol=1e-12)
    # the floor m breaks it (so the check above can tell)
    twice_m = ops.heat_blur(ops.heat_blur(x, 4, b1), 4, b2)
    assert torch.max(torch.abs(twice_m - ops.heat_blur(x, 4, torch.sqrt(b1**2 + b2**2)))) > 1e-4


def test_downsample_and_upsample_against_loops():
    x = torch.randn(2, 3, 6, 9, generator=gen(6), dtype=torch.float64)
    low = ops.downsample(x, 3)
    up = ops.upsample(low, 3)
    for a in range(2):
        for b in range(3):
            block = x[:, :, 3 * a : 3 * a + 3, 3 * b : 3 * b + 3]
            torch.testing.assert_close(low[:, :, a, b], block.mean(dim=(-2, -1)))
            torch.testing.assert_close(up[:, :, 3 * a + 2, 3 * b + 1], low[:, :, a, b])


# ----------------------------------------------------------------------------- block noise

def box_filter(g: torch.Tensor, s: int) -> torch.Tensor:
    """``(1/s)·Σ_{dx,dy<s} roll(g, (dx, dy))`` written with ``torch.roll``."""
    out = torch.zeros_like(g)
    for dx in range(s):
        for dy in range(s):
            out += torch.roll(g, shifts=(dx, dy), dims=(-2, -1))
    return out / s


def test_block_noise_replays_its_definition(ref):
    """Same generator state ⇒ the noise is the documented function of the generator's draws
    (drawn in float64, rounded to the requested dtype)."""
    shape, s, a = (3, 2, 8, 12), 4, 0.15

    def draw(r, *size):
        return torch.randn(*size, generator=r, dtype=torch.float64).float()

    g = gen(7)
    r = ref.clone(g)
    low = draw(r, 3, 2, 2, 3)
    expected = low.repeat_interleave(s, -2).repeat_interleave(s, -1)
    torch.testing.assert_close(ops.block_noise(shape, s, generator=g), expected, rtol=0, atol=0)

    g, r = gen(8), ref.clone(gen(8))
    white = draw(r, shape)
    torch.testing.assert_close(ops.block_noise(shape, s, generator=g, variant="official"),
                               box_filter(white, s), rtol=1e-6, atol=1e-6)

    g, r = gen(9), ref.clone(gen(9))
    eps, low = draw(r, shape), draw(r, 3, 2, 2, 3)
    paper = (eps + a * low.repeat_interleave(s, -2).repeat_interleave(s, -1)) / math.sqrt(1 + a * a)
    torch.testing.assert_close(ops.relay_noise(shape, s, a, generator=g), paper, rtol=1e-6, atol=1e-6)

    g, r = gen(10), ref.clone(gen(10))
    eps, white = draw(r, shape), draw(r, shape)
    torch.testing.assert_close(ops.relay_noise(shape, s, a, generator=g, variant="official"),
                               eps + a * box_filter(white, s), rtol=1e-6, atol=1e-6)


def sample_corr(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = x.reshape(x.shape[0], -1).double()
    cov = torch.cov(flat.T)
    sd = cov.diagonal().sqrt()
    return cov.diagonal(), cov / sd[:, None] / sd[None, :]


N_STAT = 50_000


def test_paper_block_noise_statistics(ref):
    noise = ops.block_noise((N_STAT, 1, 8, 8), 4, generator=gen(11))
    var, corr = sample_corr(noise)
    assert torch.all((var - 1).abs() < 0.03)
    same = torch.tensor(ref.same_block(1, 8, 8, 4), dtype=torch.bool)
    assert torch.all((corr[same] - 1).abs() < 1e-6)  # one value per block
    assert torch.all(corr[~same].abs() < 0.02)


def box_correlation(h: int, w: int, s: int) -> np.ndarray:
    """``(s−|dx|)(s−|dy|)/s²`` with circular pixel distances (needs H, W ≥ 2s)."""
    r, c = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    r, c = r.ravel(), c.ravel()
    dr = np.abs(r[:, None] - r[None, :])
    dc = np.abs(c[:, None] - c[None, :])
    dr, dc = np.minimum(dr, h - dr), np.minimum(dc, w - dc)
    return np.clip(s - dr, 0, None) * np.clip(s - dc, 0, None) / s**2


@pytest.mark.parametrize(("h", "w", "s"), [(8, 8, 4), (6, 8, 2)])
def test_official_block_noise_has_box_filter_correlation(h, w, s, ref):
    noise = ops.block_noise((N_STAT, 1, h, w), s, generator=gen(12), variant="official")
    var, corr = sample_corr(noise)
    assert torch.all((var - 1).abs() < 0.03)
    expected = box_correlation(h, w, s)
    np.testing.assert_allclose(corr.numpy(), expected, atol=0.02)
    k = ref.box_matrix(1, h, w, s)
    np.testing.assert_allclose(k @ k.T, expected, atol=1e-12)  # the ground-truth tests' C_n


@pytest.mark.parametrize("variant", ["trapezoidal", "official"])
def test_relay_noise_variance_and_covariance(variant, ref):
    a = 0.15
    noise = ops.relay_noise((N_STAT, 2, 4, 8), 4, a, generator=gen(13), variant=variant)
    flat = noise.reshape(N_STAT, -1).double()
    target = 1.0 if variant == "trapezoidal" else 1 + a * a
    assert abs(float(flat.var()) - target) < 0.005
    assert torch.all((flat.var(0) / target - 1).abs() < 0.03)
    np.testing.assert_allclose(torch.cov(flat.T).numpy(), ref.noise_cov(2, 4, 8, 4, a, variant),
                               atol=0.025)


@pytest.mark.parametrize("variant", ["trapezoidal", "official"])
def test_noise_depends_on_own_generator_only(variant):
    """Per-sample generators: a sample's noise is the same alone, in any batch, at any position."""
    shape = (1, 3, 8, 8)
    seeds = [3, 14, 15, 92]
    for fn in (lambda s, g: ops.relay_noise(s, 4, 0.15, generator=g, variant=variant),
               lambda s, g: ops.block_noise(s, 4, generator=g, variant=variant),
               lambda s, g: ops.randn(s, g)):
        alone = {k: fn(shape, [gen(k)]) for k in seeds}
        batch = fn((4, *shape[1:]), [gen(k) for k in seeds])
        rev = fn((4, *shape[1:]), [gen(k) for k in reversed(seeds)])
        for i, k in enumerate(seeds):
            torch.testing.assert_close(batch[i : i + 1], alone[k], rtol=0, atol=0)
            torch.testing.assert_close(rev[3 - i : 4 - i], alone[k], rtol=0, atol=0)
        assert not torch.equal(alone[3], alone[14])


# ------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: ops.patch_dct(torch.zeros(1, 3, 6, 8), 4), "6×8.*patch size 4"),
        (lambda: ops.patch_idct(torch.zeros(1, 3, 8, 10), 4), "8×10.*patch size 4"),
        (lambda: ops.heat_blur(torch.zeros(1, 3, 9, 8), 2, 1.0), "9×8.*patch size 2"),
        (lambda: ops.patch_dct(torch.zeros(1, 8, 8), 0), "p=0"),
        (lambda: ops.heat_blur(torch.zeros(2, 1, 8, 8), 4, -1.0), r"-1\.0"),
        (lambda: ops.heat_blur(torch.zeros(2, 1, 8, 8), 4, float("nan")), "nan"),
        (lambda: ops.heat_blur(torch.zeros(2, 1, 8, 8), 4, torch.tensor([0.1, math.inf])), "inf"),
        (lambda: ops.heat_blur(torch.zeros(2, 1, 8, 8), 4, torch.ones(3)), "3 entries"),
        (lambda: ops.heat_blur(torch.zeros(2, 1, 8, 8), 4, 1.0, min_scale=2.0), "min_scale=2.0"),
        (lambda: ops.block_noise((1, 1, 8, 6), 4), "8×6"),
        (lambda: ops.block_noise((1, 1, 8, 8), 4, variant="released"), "'released'"),
        (lambda: ops.relay_noise((1, 1, 8, 8), 4, 0.1, variant="Paper"), "'Paper'"),
        (lambda: ops.relay_noise((1, 1, 8, 8), 4, -0.1), "alpha=-0.1"),
        (lambda: ops.relay_noise((1, 1, 8, 8), 4, float("nan")), "alpha=nan"),
        (lambda: ops.randn((3, 4), [gen(0), gen(1)]), "2 generators.*3"),
        (lambda: ops.upsample(torch.zeros(1, 2, 2), 0), "s=0"),
    ],
)
def test_bad_input_raises_value_error_naming_the_value(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ------------------------------------------------------------------------------- variant names

def test_one_name_per_relay_variant_and_the_old_name_paper():
    assert ops.VARIANTS == ("trapezoidal", "official")
    assert [ops.canonical_variant(v) for v in ops.VARIANTS] == list(ops.VARIANTS)
    with pytest.warns(DeprecationWarning, match="'paper' is the old name of variant='trapezoidal'"):
        old = ops.relay_noise((2, 1, 8, 8), 4, 0.15, generator=gen(3), variant="paper")
    assert torch.equal(old, ops.relay_noise((2, 1, 8, 8), 4, 0.15, generator=gen(3)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ops.canonical_variant("paper", warn=False) == "trapezoidal"
    with pytest.raises(ValueError, match=r"^variant='x' is unknown; use one of trapezoidal, official "
                                         r"\(old name: paper = trapezoidal\)$"):
        ops.canonical_variant("x")


def test_stage_files_saying_paper_load_as_trapezoidal_without_warning():
    """Stage files written by relaydiff 0.1 (the packaged relay stages among them) say
    ``"variant": "paper"``; they load, silently, as ``"trapezoidal"``."""
    files = [f for f in (Path(relaydiff.__file__).parent / "pretrained").rglob("config.json")
             if json.loads(f.read_text()).get("kind") == "relay"]
    assert files
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for f in files:
            data = json.loads(f.read_text())
            data["relay"]["variant"] = "paper"
            config = StageConfig.from_dict(data, str(f))
            assert config.relay.variant == "trapezoidal"
            assert config.to_dict()["relay"]["variant"] == "trapezoidal"


@pytest.mark.parametrize("per_sample", [False, True])
def test_noise_is_the_same_in_every_precision(per_sample):
    """A seed draws the same numbers whatever the dtype asked for (float64, rounded), so a float32
    sample is the float64 sample up to rounding."""
    def generators():
        return [gen(s) for s in (3, 4)] if per_sample else gen(3)

    wide = ops.randn((2, 3, 5, 5), generators(), dtype=torch.float64)
    for dtype in (torch.float32, torch.bfloat16):
        assert torch.equal(ops.randn((2, 3, 5, 5), generators(), dtype=dtype), wide.to(dtype))
