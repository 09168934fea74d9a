"""RelayCascade: seed determinism, super-resolution, persistence and its errors."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from relaydiff import RelayCascade
from relaydiff.io.files import loads_strict
from relaydiff.stage import RelaySamplerConfig, StageConfig


@pytest.fixture(scope="module")
def cascade() -> RelayCascade:
    return RelayCascade.toy((8, 16, 32), label_dim=4, steps=4)


def test_same_seed_same_pixels_for_any_batch_size_and_position(cascade):
    seeds = [11, 3, 7, 42, 5, 19, 23, 0]
    ref = cascade(seeds, batch_size=8)
    for bs in (1, 3):
        out = cascade(seeds, batch_size=bs)
        for a, b in zip(ref, out, strict=True):
            assert torch.equal(a, b)
    # Another order and another company in the batch: still the same pixels per seed.
    perm = [5, 0, 7, 2]
    out = cascade([seeds[i] for i in perm] + [99, 100], batch_size=3)
    for a, b in zip(ref, out, strict=True):
        assert torch.equal(a[perm], b[:4])


def test_different_seeds_differ_and_stages_have_their_resolutions(cascade):
    out = cascade([1, 2], batch_size=2)
    assert [o.shape[-1] for o in out] == [8, 16, 32]
    assert not torch.equal(out[-1][0], out[-1][1])
    assert all(o.abs().max() <= 1 for o in out)


def test_labels_given_drawn_and_balanced(cascade):
    seeds = list(range(8))
    drawn = cascade.labels_for(seeds)
    assert drawn.shape == (8,) and ((drawn >= 0) & (drawn < 4)).all()
    assert cascade.labels_for(seeds, balanced=True).tolist() == [s % 4 for s in seeds]
    # An image depends on (seed, class) only: giving the drawn class reproduces it.
    a = cascade(seeds[:3], batch_size=3)[-1]
    b = cascade(seeds[:3], class_idx=drawn[:3].tolist(), batch_size=1)[-1]
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="class index 4 is out of range"):
        cascade.labels_for(seeds, class_idx=4)


def test_super_resolution_from_given_low_res_images(cascade):
    low = cascade([4, 5], batch_size=2)[1]  # 16 px images
    out = cascade([4, 5], low_res=low, batch_size=1)
    assert [o.shape[-1] for o in out] == [16, 32]
    assert torch.equal(out[0], low)
    with pytest.raises(ValueError, match="no stage starts from 12px"):
        cascade([4, 5], low_res=torch.zeros(2, 3, 12, 12))


def test_relay_start_is_upsampled_low_res_plus_noise():
    """A relay stage whose network predicts its input: the output keeps the low-res content."""
    c = RelayCascade.toy((8, 32), steps=4)
    for p in c.denoisers[1].parameters():
        p.data.zero_()
    low = torch.rand(2, 3, 8, 8) * 2 - 1
    out = c([0, 1], low_res=low)[-1]
    # With F ≡ 0 the denoiser is c_skip·x: it shrinks towards 0 but keeps the block structure.
    pooled = torch.nn.functional.avg_pool2d(out, 4)
    corr = torch.corrcoef(torch.stack([pooled.flatten(), low.flatten()]))[0, 1]
    assert corr > 0.9


def test_save_and_load_roundtrip(tmp_path, cascade):
    cascade.save_pretrained(tmp_path / "c")
    loaded = RelayCascade.from_pretrained(tmp_path / "c")
    assert loaded.resolutions == cascade.resolutions
    for a, b in zip(cascade([1, 2]), loaded([1, 2]), strict=True):
        assert torch.equal(a, b)
    meta = json.loads((tmp_path / "c" / "cascade.json").read_text())
    assert meta["format"] == "relaydiff.cascade" and len(meta["stages"]) == 3
    # Saving again over the same folder replaces it whole.
    cascade.save_pretrained(tmp_path / "c")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_packaged_cascade_loads_by_name(monkeypatch, tmp_path):
    """``from_pretrained(NAME)`` finds a cascade shipped in the package; a folder of that name
    in the working directory takes precedence, and names never resolve outside the package."""
    from relaydiff.pretrained import PRETRAINED, pretrained_path

    by_name = RelayCascade.from_pretrained(PRETRAINED)
    by_path = RelayCascade.from_pretrained(pretrained_path())
    for a, b in zip(by_name.state_dict().values(), by_path.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    monkeypatch.chdir(tmp_path)
    RelayCascade.toy().save_pretrained(tmp_path / PRETRAINED)
    assert RelayCascade.from_pretrained(PRETRAINED).resolutions == [16, 64]
    assert len(RelayCascade.from_pretrained(PRETRAINED).state_dict()) != len(by_path.state_dict())
    with pytest.raises(ValueError, match=r"cascade\.json: file not found"):
        RelayCascade.from_pretrained("../pretrained/" + PRETRAINED)


def test_load_errors_name_the_file(tmp_path, cascade):
    cascade.save_pretrained(tmp_path / "c")
    stage = json.loads((tmp_path / "c" / "cascade.json").read_text())["stages"][1]
    weights = tmp_path / "c" / stage / "model.safetensors"
    weights.write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match=re.escape(f"{stage}/model.safetensors: unreadable")):
        RelayCascade.from_pretrained(tmp_path / "c")
    weights.unlink()
    with pytest.raises(ValueError, match=r"model\.safetensors: file not found"):
        RelayCascade.from_pretrained(tmp_path / "c")
    with pytest.raises(ValueError, match=r"cascade\.json: file not found"):
        RelayCascade.from_pretrained(tmp_path / "nothing")


def test_stage_config_rejects_unknown_keys_with_closest_name():
    data = {"kind": "relay", "resolution": 64, "network": {"name": "toy"},
            "relay_sampler": {"stpes": 10}}
    with pytest.raises(ValueError, match="unknown key 'stpes'; did you mean 'steps'"):
        StageConfig.from_dict(data)
    with pytest.raises(ValueError, match="relay scale 3 does not divide"):
        StageConfig.from_dict({"kind": "relay", "resolution": 64, "network": {"name": "toy"},
                               "relay": {"scale": 3}})


def test_cascade_checks_stage_resolutions_chain():
    a = StageConfig("edm", 16, {"name": "toy"})
    b = StageConfig("relay", 64, {"name": "toy"}, relay_sampler=RelaySamplerConfig(steps=8))
    bad = StageConfig("relay", 96, {"name": "toy"})
    from relaydiff.stage import build_denoiser
    RelayCascade([a, b], [build_denoiser(a), build_denoiser(b)])
    with pytest.raises(ValueError, match="stage 2 starts from 24px"):
        RelayCascade([a, bad], [build_denoiser(a), build_denoiser(bad)])


# ---------------------------------------------------------------------------- determinism
def _with_threads(n: int, fn):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


def test_exact_mode_same_pixels_for_any_thread_count(cascade):
    seeds = [4, 8, 15, 16, 23, 42, 7, 1, 2, 3]  # two groups of 8, the second padded
    one = _with_threads(1, lambda: cascade(seeds))
    two = _with_threads(2, lambda: cascade(seeds, batch_size=3))
    for a, b in zip(one, two, strict=True):
        assert torch.equal(a, b)


def test_packaged_networks_exact_mode_invariance():
    """The promise with the real UNets (oneDNN and MKL kernels): the same seed gives the same
    pixels alone, in another company and order, in a second group of 8, on 1 or 2 threads."""
    c = RelayCascade.from_pretrained("fluent-emoji-3d-16to64")
    c.configs[0].edm_sampler.steps = 3
    c.configs[1].relay_sampler.steps = 12
    ref = _with_threads(2, lambda: c([11, 12, 13]))
    alone = _with_threads(1, lambda: c([12]))
    mixed = _with_threads(2, lambda: c([0, 1, 2, 3, 4, 5, 6, 7, 13, 99, 11, 12], batch_size=5))
    for k in range(2):
        assert torch.equal(alone[k][0], ref[k][1])
        assert torch.equal(mixed[k][10:12], ref[k][[0, 1]]) and torch.equal(mixed[k][8], ref[k][2])
    fast = c([11, 12, 13], batch_invariant=False)[-1]
    assert (fast - ref[-1]).abs().max() < 0.05  # other kernels: the same images to rounding


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 instruction sets")
def test_other_instruction_sets_agree_to_float_rounding(tmp_path):
    """What another host computes: ATen's scalar kernels, oneDNN limited to SSE4.1 and MKL in
    compatible mode give the packaged cascade's images within the stated tolerance (README:
    mean below half a grey level, no pixel off by more than 4)."""
    args = ["sample", "--seeds", "0-7", "--steps", "8", "--relay-steps", "20"]
    low_isa = {**os.environ, "ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41",
               "MKL_CBWR": "COMPATIBLE"}
    for name, env in (("default", None), ("low", low_isa)):
        r = subprocess.run([sys.executable, "-m", "relaydiff", *args, "--out", str(tmp_path / name)],
                           capture_output=True, text=True, timeout=600, env=env)
        assert r.returncode == 0, r.stderr[-2000:]
    for seed in range(8):
        a, b = (np.asarray(Image.open(tmp_path / n / "000000" / f"{seed:06d}.png"), dtype=int)
                for n in ("default", "low"))
        assert np.abs(a - b).mean() < 0.5 and np.abs(a - b).max() <= 4, seed


def test_old_cascade_files_with_infinity_still_load_and_are_saved_strict(tmp_path, cascade):
    cascade.save_pretrained(tmp_path / "c")
    stage = tmp_path / "c" / json.loads((tmp_path / "c" / "cascade.json").read_text())["stages"][0]
    text = (stage / "config.json").read_text().replace('"s_max": null', '"s_max": Infinity')
    (stage / "config.json").write_text(text)  # what relaydiff 0.1 wrote
    loaded = RelayCascade.from_pretrained(tmp_path / "c")
    assert loaded.configs[0].edm_sampler.s_max is None
    assert loaded.configs[0].edm_sampler.churn_max == float("inf")
    loaded.save_pretrained(tmp_path / "d")
    for f in (tmp_path / "d").rglob("*.json"):
        loads_strict(f.read_text())
    # The old-format file was written on purpose; the suite-wide strict-JSON check must not see it.
    shutil.rmtree(tmp_path / "c")


def test_an_edm_stage_with_block_noise_starts_from_relay_noise():
    """``stage.block_noise`` (docs/method.md §1.2): the sampler's first state is ``σ_max·n``
    with ``n`` the relay noise of the sample's generator; without it, white noise."""
    from relaydiff.ops import relay_noise
    from relaydiff.stage import BlockNoiseConfig, EDMSamplerConfig, build_denoiser

    def first_state(block):
        cfg = StageConfig("edm", 8, {"name": "toy", "channels": 8}, block_noise=block,
                          edm_sampler=EDMSamplerConfig(steps=3))
        seen = []
        RelayCascade([cfg], [build_denoiser(cfg)]).run_stage(
            0, None, [torch.Generator().manual_seed(5)],
            callback=lambda i, s, x, d: seen.append(x.clone()))
        return seen[0][0]

    n = relay_noise((1, 3, 8, 8), 4, 0.5, generator=[torch.Generator().manual_seed(5)],
                    dtype=torch.float64)[0]
    torch.testing.assert_close(first_state(BlockNoiseConfig(0.5, 4, 1.0)), 80.0 * n,
                               rtol=1e-14, atol=0)
    white = torch.randn((3, 8, 8), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    torch.testing.assert_close(first_state(None), 80.0 * white, rtol=1e-14, atol=0)
    with pytest.raises(ValueError, match="an edm stage's setting"):
        StageConfig("edm", 8, {"name": "toy"}, block_noise=BlockNoiseConfig(patch=3))
