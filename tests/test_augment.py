"""EDM's geometric augmentation (``relaydiff.training.augment``, docs/train.md "Augmentation").

The transforms are checked against independent computations: flips and integer translations
against numpy's flip and reflect padding, the bilinear warp against ``scipy.ndimage``'s affine
transform with mirror boundaries, rotation directions against a single bright pixel, and the
labels against the transform they describe (re-applied from the labels alone).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage
import torch
from training_helpers import image_folder, make_config, tiny_unet

from relaydiff.training.augment import AugmentConfig, augment, reflect_translate, rotate_inv, warp
from relaydiff.training.loop import Trainer, train


def _gens(n: int, seed: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed * 1000 + k) for k in range(n)]


def _only(name: str, **kw) -> AugmentConfig:
    """Augmentation with probability 1 and only transform ``name`` enabled."""
    off = dict.fromkeys(("xflip", "yflip", "translate_int", "scale", "rotate_frac", "aniso",
                         "translate_frac"), 0.0)
    off[name] = 1.0
    return AugmentConfig(p=1.0, **{**off, **kw})


def _images(n: int = 6, res: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, res, res, generator=torch.Generator().manual_seed(seed),
                      dtype=torch.float64) * 2 - 1


def test_label_count_is_edms_augment_dim():
    assert AugmentConfig(p=0.12).label_dim == 9  # EDM's --augment settings, augment_dim 9
    assert _only("translate_int").label_dim == 2 and _only("xflip").label_dim == 1
    _, labels = augment(_images(), AugmentConfig(p=0.5), _gens(6))
    assert labels.shape == (6, 9) and labels.dtype == torch.float32
    with pytest.raises(ValueError, match=r"augment.p 1.5"):
        AugmentConfig(p=1.5)
    with pytest.raises(ValueError, match=r"augment.scale -1"):
        AugmentConfig(scale=-1)


def test_probability_zero_changes_nothing():
    x = _images()
    y, labels = augment(x, AugmentConfig(p=0.0), _gens(6))
    assert torch.equal(x, y) and not labels.any()


@pytest.mark.parametrize(("name", "axis"), [("xflip", 3), ("yflip", 2)])
def test_flips_are_numpy_flips_where_the_label_says(name, axis):
    x = _images(16)
    y, labels = augment(x, _only(name), _gens(16))
    flipped = labels[:, 0].bool()
    assert 0 < flipped.sum() < 16  # each flip has probability ½
    ref = x.numpy().copy()
    ref[flipped.numpy()] = np.flip(ref[flipped.numpy()], axis=axis)
    np.testing.assert_array_equal(y.numpy(), ref)


def _numpy_shift(image: np.ndarray, tx: int, ty: int) -> np.ndarray:
    """Shift by (tx, ty) pixels, mirrored at the edges (numpy's "symmetric": edge pixel repeated)."""
    pad = max(abs(tx), abs(ty))
    p = np.pad(image, ((0, 0), (pad, pad), (pad, pad)), mode="symmetric")
    h, w = image.shape[1:]
    return p[:, pad - ty:pad - ty + h, pad - tx:pad - tx + w]


def test_integer_translation_matches_numpy_reflect_padding():
    x = _images(5, res=10)
    tx, ty = torch.tensor([0, 3, -4, 10, -10]), torch.tensor([2, -1, 0, -10, 5])
    y = reflect_translate(x, tx, ty)
    for k in range(5):
        np.testing.assert_array_equal(y[k].numpy(), _numpy_shift(x[k].numpy(), int(tx[k]), int(ty[k])))


def test_integer_translation_labels_and_relay_step():
    res, step = 16, 4
    cfg = _only("translate_int", translate_int_max=0.25)
    x = _images(32, res)
    y, labels = augment(x, cfg, _gens(32), translate_step=step)
    shift = labels.double() * res * cfg.translate_int_max  # pixels
    assert torch.equal(shift, shift.round()) and shift.abs().max() <= res * 0.25
    assert (shift.remainder(step) == 0).all() and shift.abs().sum() > 0
    for k in range(32):
        ref = _numpy_shift(x[k].numpy(), int(shift[k, 0]), int(shift[k, 1]))
        np.testing.assert_array_equal(y[k].numpy(), ref)
    # Translating by multiples of the scale factor commutes with area downsampling.
    low = torch.nn.functional.avg_pool2d(x, step)
    moved_low = reflect_translate(low, (shift[:, 0] / step).long(), (shift[:, 1] / step).long())
    assert torch.allclose(torch.nn.functional.avg_pool2d(y, step), moved_low, atol=1e-12)


def _scipy_warp(image: np.ndarray, g_inv: np.ndarray) -> np.ndarray:
    """Output pixel q = (x, y) takes the input at g_inv·(q − c) + c, in scipy's (row, col) order."""
    h, w = image.shape[1:]
    c = np.array([(h - 1) / 2, (w - 1) / 2])
    m = np.array([[g_inv[1, 1], g_inv[1, 0]], [g_inv[0, 1], g_inv[0, 0]]])
    offset = c - m @ c + np.array([g_inv[1, 2], g_inv[0, 2]])
    return np.stack([scipy.ndimage.affine_transform(ch, m, offset=offset, order=1, mode="mirror")
                     for ch in image])


def test_bilinear_warp_matches_scipy_affine_transform():
    x = _images(4, res=14)
    rng = np.random.default_rng(3)
    mats = []
    for _ in range(4):
        a = np.eye(3)
        a[:2, :2] += rng.normal(0, 0.3, (2, 2))
        a[:2, 2] = rng.normal(0, 2.0, 2)
        mats.append(a)
    g_inv = torch.tensor(np.stack(mats))
    y = warp(x, g_inv)
    for k in range(4):
        np.testing.assert_allclose(y[k].numpy(), _scipy_warp(x[k].numpy(), mats[k]), atol=1e-9)


def test_rotation_direction_moves_a_pixel_by_the_rotation():
    # A bright pixel at (x, y) = (+3, 0) from the centre, rotated by +90°, lands at (0, +3): with
    # y pointing down, rotation by θ maps (x, y) → (x cos θ − y sin θ, x sin θ + y cos θ).
    res = 9
    image = torch.zeros(1, 1, res, res, dtype=torch.float64)
    image[0, 0, 4, 7] = 1.0
    out = warp(image, rotate_inv(torch.tensor([math.pi / 2], dtype=torch.float64)))
    assert out[0, 0, 7, 4] == pytest.approx(1.0, abs=1e-9) and out.sum() == pytest.approx(1.0)


def _rebuilt(name: str, labels: torch.Tensor, cfg: AugmentConfig, res: int) -> torch.Tensor:
    """The inverse matrix of transform ``name``, from its labels alone."""
    lab = labels.double()
    eye = torch.eye(3, dtype=torch.float64).expand(len(lab), 3, 3).clone()
    if name == "scale":
        s = torch.exp2(lab[:, 0] * cfg.scale_std)
        eye[:, 0, 0], eye[:, 1, 1] = 1 / s, 1 / s
    elif name == "rotate_frac":
        theta = torch.atan2(lab[:, 1], lab[:, 0] + 1)
        return rotate_inv(theta)
    elif name == "translate_frac":
        eye[:, 0, 2], eye[:, 1, 2] = -lab[:, 0] * res * cfg.translate_frac_std, \
            -lab[:, 1] * res * cfg.translate_frac_std
    elif name == "aniso":  # labels (v cos r, v sin r) with r = 0: (v, 0)
        s = torch.exp2(lab[:, 0] * cfg.aniso_std)
        eye[:, 0, 0], eye[:, 1, 1] = 1 / s, s
    return eye


@pytest.mark.parametrize("name", ["scale", "rotate_frac", "translate_frac", "aniso"])
def test_labels_describe_the_transform(name):
    res, n = 12, 8
    cfg = _only(name, aniso_rotate_prob=0.0)
    x = _images(n, res)
    y, labels = augment(x, cfg, _gens(n))
    assert labels.shape == (n, cfg.label_dim) and labels.abs().sum() > 0
    ref = warp(x, _rebuilt(name, labels, cfg, res))
    # Labels are float32, so the rebuilt transform differs in the last bits of float32.
    assert torch.allclose(y, ref, atol=1e-5)


def test_rotated_anisotropic_scaling_follows_its_labels():
    # EDM's labels (v cos r, v sin r) are the same for (v, r) and (−v, r + π), which are different
    # transforms (the stretch axes swap); each sample must be one of the two.
    res, n = 12, 8
    cfg = _only("aniso", aniso_rotate_prob=1.0)
    x = _images(n, res)
    y, labels = augment(x, cfg, _gens(n))
    lab = labels.double()
    v, r = torch.hypot(lab[:, 0], lab[:, 1]), torch.atan2(lab[:, 1], lab[:, 0])
    assert (r != 0).all()

    def rebuilt(v, r):
        s = torch.exp2(v * cfg.aniso_std)
        diag = torch.zeros(n, 3, 3, dtype=torch.float64)
        diag[:, 0, 0], diag[:, 1, 1], diag[:, 2, 2] = 1 / s, s, 1
        return warp(x, rotate_inv(-r) @ diag @ rotate_inv(r))

    a, b = rebuilt(v, r), rebuilt(-v, r + math.pi)
    for k in range(n):
        assert torch.allclose(y[k], a[k], atol=1e-5) or torch.allclose(y[k], b[k], atol=1e-5)


def test_each_transform_is_chosen_with_probability_p():
    n, p = 4000, 0.3
    cfg = AugmentConfig(p=p, xflip=0.0)
    _, labels = augment(torch.zeros(n, 1, 4, 4), cfg, _gens(n))
    chosen = {"yflip": labels[:, 0] != 0, "scale": labels[:, 1] != 0,
              "rotate": labels[:, 2:4].abs().sum(1) > 0, "translate": labels[:, 6:8].abs().sum(1) > 0}
    # yflip changes the image half of the times it is chosen.
    expect = {"yflip": p / 2, "scale": p, "rotate": p, "translate": p}
    for key, mask in chosen.items():
        # 5 standard deviations of a binomial proportion.
        sd = math.sqrt(expect[key] * (1 - expect[key]) / n)
        assert abs(mask.double().mean().item() - expect[key]) < 5 * sd, key


def test_each_sample_depends_only_on_its_own_generator():
    x = _images(5)
    cfg = AugmentConfig(p=0.8, translate_int=1.0)
    together, lab = augment(x, cfg, _gens(5))
    for k in range(5):
        alone, lk = augment(x[k:k + 1], cfg, [torch.Generator().manual_seed(k)])
        assert torch.allclose(alone[0], together[k], atol=1e-12) and torch.equal(lk[0], lab[k])


# ------------------------------------------------------------------ training
# (bitwise resume with augmentation: tests/test_training.py::test_resume_is_bitwise_identical)
def _augmented_config(data, total: int, kind: str = "edm", res: int = 16):
    net = {**tiny_unet(res, dropout=0.1), "augment_dim": 9}
    return make_config(data, kind=kind, res=res, network=net, total_images=total,
                       augment={"p": 0.5})


@pytest.mark.parametrize("kind", ["relay", "sr"])
def test_relay_and_sr_stages_train_with_augmentation(tmp_path, kind):
    data = image_folder(tmp_path / "d", 8, 16)
    result = train(_augmented_config(data, 8, kind=kind), tmp_path / kind, progress=False)
    assert result.finished


def test_network_without_augmentation_labels_is_refused(tmp_path):
    data = image_folder(tmp_path / "d", 4, 16)
    cfg = make_config(data, network=tiny_unet(16), augment={"p": 0.2})
    with pytest.raises(ValueError, match=r"stage.network.augment_dim=9"):
        Trainer(cfg, tmp_path / "run")
