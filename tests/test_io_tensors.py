"""relaydiff's safetensors writer against the safetensors library's reader, and networks built
without initialisation against initialised ones."""

from __future__ import annotations

import errno
import json
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from relaydiff.io.tensors import save_tensors
from relaydiff.networks import build_network
from relaydiff.networks.unet import uninitialized
from relaydiff.stage import StageConfig, build_denoiser, load_stage, save_stage


def test_written_files_read_back_with_the_safetensors_library(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "f32": torch.randn(3, 4, generator=g), "transposed": torch.randn(4, 3, generator=g).t(),
        "scalar": torch.tensor(2.5), "f16": torch.randn(5, generator=g).half(),
        "bf16": torch.randn(7, generator=g).bfloat16(), "f64": torch.randn(2, 2, dtype=torch.float64),
        "i64": torch.arange(5), "i32": torch.arange(4, dtype=torch.int32),
        "u8": torch.arange(3, dtype=torch.uint8), "bool": torch.tensor([True, False]),
        "empty": torch.zeros(0, 3), "slice": torch.arange(20.0).reshape(4, 5)[:, 1:3],
    }
    path = tmp_path / "t.safetensors"
    save_tensors(tensors, path, metadata={"gamma": "6.94"})
    back = load_file(str(path))
    assert back.keys() == tensors.keys()
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and torch.equal(back[k], v), k
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"gamma": "6.94"}
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    assert n % 8 == 0 and len(raw) == 8 + n + sum(v.numel() * v.element_size()
                                                   for v in tensors.values())
    json.loads(raw[8:8 + n])  # strict JSON header
    assert not list(tmp_path.glob(".*"))  # no temporary file left


def test_a_failed_write_leaves_no_file_and_names_it(tmp_path, monkeypatch):
    path = tmp_path / "w.safetensors"
    save_tensors({"a": torch.ones(2)}, path)

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("relaydiff.io.tensors._write_file", full)
    with pytest.raises(OSError, match=r"w\.safetensors: could not write \(no space left"):
        save_tensors({"a": torch.zeros(2)}, path)
    assert torch.equal(load_file(str(path))["a"], torch.ones(2))  # the old file is intact
    with pytest.raises(ValueError, match="complex64"):
        save_tensors({"c": torch.zeros(2, dtype=torch.complex64)}, tmp_path / "c.safetensors")


def test_a_durable_write_flushes_behind_and_a_failed_flush_fails_it(tmp_path, monkeypatch):
    import relaydiff.io.tensors as tensors_module

    monkeypatch.setattr(tensors_module, "FLUSH_BEHIND", 1000)  # bytes: one flush per tensor
    calls = []
    real = tensors_module.os.fdatasync
    monkeypatch.setattr(tensors_module.os, "fdatasync", lambda fd: calls.append(fd) or real(fd))
    state = {f"t{i}": torch.full((300,), float(i)) for i in range(6)}  # 1200 bytes each
    path = tmp_path / "d.safetensors"
    save_tensors(state, path)
    assert calls == []  # a plain write never flushes
    save_tensors(state, path, durable=True)
    assert 1 <= len(calls) <= 6  # flushes overlap the writing, at most one in flight
    back = load_file(str(path))
    assert all(torch.equal(back[k], v) for k, v in state.items())

    def broken(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(tensors_module.os, "fdatasync", broken)
    with pytest.raises(OSError, match=r"d\.safetensors: could not write"):
        save_tensors({k: -v for k, v in state.items()}, path, durable=True)
    back = load_file(str(path))  # the old file is intact, no temporary left
    assert all(torch.equal(back[k], v) for k, v in state.items())
    assert not list(tmp_path.glob(".*"))


@pytest.mark.parametrize("config", [
    {"name": "unet", "img_resolution": 16, "model_channels": 16, "channel_mult": [1, 2],
     "num_blocks": 1, "attn_resolutions": [8], "label_dim": 3},
    {"name": "song_unet", "img_resolution": 16, "model_channels": 16, "channel_mult": [1, 2],
     "num_blocks": 1, "attn_resolutions": [8], "embedding_type": "fourier",
     "encoder_type": "residual", "decoder_type": "standard"},
])
def test_an_uninitialised_network_has_the_layout_and_draws_no_random_numbers(config):
    torch.manual_seed(0)
    ref = build_network(config)
    state = torch.get_rng_state()
    with uninitialized():
        bare = build_network(config)
    assert torch.equal(torch.get_rng_state(), state)  # nothing was drawn
    a, b = ref.state_dict(), bare.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k].shape, a[k].dtype, a[k].device) == (b[k].shape, b[k].dtype, b[k].device), k
    assert [type(m) for m in ref.modules()] == [type(m) for m in bare.modules()]
    torch.manual_seed(0)
    again = build_network(config)  # outside the block, initialisation is back
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in a.items())


def test_a_loaded_stage_equals_the_saved_one(tmp_path):
    cfg = StageConfig("edm", 16, {"name": "unet", "img_resolution": 16, "model_channels": 16,
                                  "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": []},
                      3, 0, 0.5)
    den = build_denoiser(cfg).eval()
    save_stage(tmp_path / "s", cfg, den)
    _, back = load_stage(tmp_path / "s")
    x, sigma = torch.randn(2, 3, 16, 16), torch.tensor([0.3, 4.0])
    with torch.no_grad():
        assert torch.equal(den(x, sigma), back(x, sigma))
