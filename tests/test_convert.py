"""``relaydiff convert``: released EDM/RDM files read as data, converted into stage folders with
the same outputs, hostile files refused without running anything."""

from __future__ import annotations

import codecs
import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from released_helpers import (
    PersistentRecord,
    edm_modules,
    edm_network_record,
    loss_record,
    write_snapshot,
    write_training_state,
)

from relaydiff import RelayCascade
from relaydiff.networks import build_network
from relaydiff.precond import EDMPrecond
from relaydiff.released.convert import convert
from relaydiff.released.unpickle import read_checkpoint
from relaydiff.stage import load_stage

DHARIWAL = dict(model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8],
                dropout=0.0, augment_dim=9)
DDPMPP = dict(model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8], dropout=0.0,
              embedding_type="positional", channel_mult_noise=1, encoder_type="standard",
              resample_filter=[1, 1])
NCSNPP = dict(DDPMPP, embedding_type="fourier", channel_mult_noise=2, encoder_type="residual",
              resample_filter=[1, 3, 3, 1])


def run(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "relaydiff", *args], capture_output=True,
                          text=True, timeout=timeout)


def network(name: str, kwargs: dict, label_dim: int, res: int = 16) -> EDMPrecond:
    torch.manual_seed(3)
    den = EDMPrecond(build_network({"name": name, "img_resolution": res, "label_dim": label_dim,
                                    **kwargs}), label_dim=label_dim).eval()
    with torch.no_grad():  # off the initialisation, so that every layer shows in the output
        for p in den.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return den


def outputs(den, label_dim: int, res: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 3, res, res, generator=g)
    labels = torch.nn.functional.one_hot(torch.tensor([0, 1, 2]), label_dim).float() if label_dim else None
    with torch.no_grad():
        return den(x, torch.tensor([0.05, 0.8, 30.0]), labels)


def assert_same_outputs(stage_dir: Path, den, label_dim: int) -> None:
    _, converted = load_stage(stage_dir)
    a, b = outputs(den, label_dim), outputs(converted, label_dim)
    assert ((a - b).abs().max() / a.abs().max()).item() <= 1e-5


@pytest.mark.parametrize("name, kwargs, label_dim", [
    ("unet", DHARIWAL, 0), ("unet", DHARIWAL, 5), ("song_unet", DDPMPP, 0),
    ("song_unet", DDPMPP, 10), ("song_unet", NCSNPP, 0)],
    ids=["dhariwal", "dhariwal-cond", "ddpmpp", "ddpmpp-cond", "ncsnpp"])
@pytest.mark.parametrize("fmt", ["pkl", "pt"])
def test_converted_stage_gives_the_networks_outputs(tmp_path, name, kwargs, label_dim, fmt):
    den = network(name, kwargs, label_dim)
    rec = edm_network_record(den, kwargs, 16)
    f = (write_snapshot if fmt == "pkl" else write_training_state)(tmp_path / f"net.{fmt}", rec)
    cfg = convert(f, tmp_path / "stage")
    assert cfg.kind == "edm" and cfg.label_dim == label_dim and cfg.network["name"] == name
    assert_same_outputs(tmp_path / "stage", den, label_dim)
    source = json.loads((tmp_path / "stage" / "source.json").read_text())
    assert source["classes"][:2] == ["EDMPrecond", {"unet": "DhariwalUNet", "song_unet": "SongUNet"}[name]]


def test_relay_stage_carries_the_blurloss_settings(tmp_path):
    den = network("unet", DHARIWAL, 0, res=16)
    loss = loss_record("BlurLoss", P_mean=-1.2, P_std=1.2, sigma_data=0.5, up_scale=4,
                       prob_length=0.89, blur_sigma_max=2.0, min_scale=0.001, block_scale=0.15)
    f = write_snapshot(tmp_path / "relay.pkl", edm_network_record(den, DHARIWAL, 16), loss)
    cfg = convert(f, tmp_path / "stage", preset="rdm-celebahq256")
    r = cfg.relay
    assert cfg.kind == "relay" and (r.scale, r.prob_length, r.blur_sigma_max, r.block_alpha) == \
        (4, 0.89, 2.0, 0.15) and r.variant == "official"
    s = cfg.relay_sampler
    assert (s.steps, s.sigma_trunc, s.prob_length, s.eta) == (150, 0.95, 1.05, 0.2)
    assert_same_outputs(tmp_path / "stage", den, 0)
    # A training state has no loss record: the relay settings must be given, and are named.
    pt = write_training_state(tmp_path / "relay.pt", edm_network_record(den, DHARIWAL, 16))
    r = run("convert", str(pt), "--out", str(tmp_path / "o"), "--kind", "relay", "--scale", "4")
    assert r.returncode == 2 and "needs --prob-length, --blur-sigma-max, --block-alpha" in r.stderr
    assert not (tmp_path / "o").exists()
    r = run("convert", str(pt), "--out", str(tmp_path / "o"), "--kind", "relay", "--scale", "4",
            "--prob-length", "0.93", "--blur-sigma-max", "3", "--block-alpha", "0.15")
    assert r.returncode == 0, r.stderr


def test_converted_two_stage_cascade_samples_and_upscales(tmp_path):
    s1 = network("unet", dict(DHARIWAL, attn_resolutions=[]), 0, res=4)
    s1.model.img_resolution = 4
    write_snapshot(tmp_path / "s1.pkl", edm_network_record(s1, dict(DHARIWAL, attn_resolutions=[]), 4))
    s2 = network("unet", DHARIWAL, 0, res=16)
    loss = loss_record("BlurLoss", up_scale=4, prob_length=0.93, blur_sigma_max=3.0, block_scale=0.15)
    write_snapshot(tmp_path / "s2.pkl", edm_network_record(s2, DHARIWAL, 16), loss)
    for name in ("s1", "s2"):
        assert run("convert", str(tmp_path / f"{name}.pkl"), "--out", str(tmp_path / name)).returncode == 0
    r = run("cascade", "build", "--stage", str(tmp_path / "s1"), "--stage", str(tmp_path / "s2"),
            "--out", str(tmp_path / "c"))
    assert r.returncode == 0, r.stderr
    c = RelayCascade.from_pretrained(tmp_path / "c")
    c.configs[0].edm_sampler.steps, c.configs[1].relay_sampler.steps = 3, 12
    c.save_pretrained(tmp_path / "c")
    r = run("sample", "--cascade", str(tmp_path / "c"), "--seeds", "0-1", "--out", str(tmp_path / "s"))
    assert r.returncode == 0, r.stderr
    (tmp_path / "in").mkdir()
    Image.fromarray(np.full((4, 4, 3), 120, np.uint8)).save(tmp_path / "in" / "a.png")
    r = run("upscale", "--cascade", str(tmp_path / "c"), "--input", str(tmp_path / "in"), "--out",
            str(tmp_path / "up"))
    assert r.returncode == 0 and Image.open(tmp_path / "up" / "a.png").size == (16, 16), r.stderr


def test_plain_state_dict_is_converted_when_unambiguous(tmp_path):
    den = network("unet", DHARIWAL, 5)
    torch.save(den.state_dict(), tmp_path / "sd.pt")
    with open(tmp_path / "sd.pkl", "wb") as f:
        pickle.dump(den.state_dict(), f)
    for name in ("sd.pt", "sd.pkl"):
        cfg = convert(tmp_path / name, tmp_path / name.replace(".", "_"))
        assert cfg.network["channel_mult"] == [1, 2] and cfg.network["num_blocks"] == 1
        assert_same_outputs(tmp_path / name.replace(".", "_"), den, 5)


def test_training_state_of_the_released_training_loop_converts(tmp_path):
    """RDM's training loop saves ``torch.save(dict(optimizer_state=…, step=…, ema=…, net=…))``
    (protocol 2, which writes the bytes of NumPy scalars as ``_codecs.encode(…, 'latin1')``); the
    NumPy values among the constructor arguments become plain numbers of the stage's config."""
    den = network("unet", DHARIWAL, 0)
    kwargs = dict(DHARIWAL, model_channels=np.int64(16), channel_mult=[np.int64(1), np.int64(2)],
                  dropout=np.float32(0.0))
    rec = edm_network_record(den, kwargs, np.int64(16))
    rec.meta["state"]["_init_kwargs"]["sigma_data"] = np.float64(den.sigma_data)
    params = [p.detach().clone().requires_grad_() for p in den.parameters()]
    opt = torch.optim.Adam(params, lr=1e-4)
    sum(p.sum() for p in params).backward()
    opt.step()
    f = write_training_state(tmp_path / "training-state-000100.pt", rec, opt.state_dict())
    with zipfile.ZipFile(f) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))
    assert data[:2] == b"\x80\x02" and b"c_codecs\nencode\n" in data and b"multiarray\nscalar\n" in data
    r = run("convert", str(f), "--out", str(tmp_path / "stage"))
    assert r.returncode == 0, r.stderr
    assert_same_outputs(tmp_path / "stage", den, 0)
    net = json.loads((tmp_path / "stage" / "config.json").read_text())["network"]
    assert (net["model_channels"], net["channel_mult"], net["dropout"]) == (16, [1, 2], 0.0)
    assert json.loads((tmp_path / "stage" / "source.json").read_text())["kind_of_file"] == "training state"


@pytest.mark.parametrize("module", ["numpy.core.multiarray", "numpy._core.multiarray"],
                         ids=["numpy-1-names", "numpy-2-names"])
def test_numpy_scalars_and_arrays_are_read_as_data(tmp_path, module):
    """Protocol-2 NumPy scalars and arrays of the allowed dtypes, under NumPy 1's and NumPy 2's
    module names, read as NumPy itself reads them."""
    values = {"f8": np.float64(0.1), "i8": np.int64(-3), "f4": np.float32(0.5), "f2": np.float16(1.5),
              "u1": np.uint8(7), "b1": np.bool_(True), "c8": np.complex64(1 + 2j),
              "array": np.arange(6.0).reshape(2, 3), "big-endian": np.arange(4, dtype=">i4"),
              "fortran": np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3))}
    stream = pickle.dumps(values, protocol=2)
    expected = pickle.loads(stream)
    stream = stream.replace(b"cnumpy._core.multiarray\n", f"c{module}\n".encode())
    assert f"c{module}\nscalar\n".encode() in stream and b"c_codecs\nencode\n" in stream
    (tmp_path / "numpy.pkl").write_bytes(stream)
    got = read_checkpoint(tmp_path / "numpy.pkl")
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert isinstance(got[key], type(value)) and got[key].dtype == value.dtype, key
        assert np.shape(got[key]) == np.shape(value) and np.array_equal(got[key], value), key


class _Reduce:
    """Pickles as the call it is given (``(callable, args[, state])``), for hostile files."""

    def __init__(self, *reduce) -> None:
        self.reduce = reduce

    def __reduce__(self):
        return self.reduce


NUMPY_SCALAR = np.float64(0).__reduce__()[0]  # numpy.(_)core.multiarray.scalar


def _hostile_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    marker = tmp_path / "PWNED"
    system = _Reduce(os.system, (f"touch {marker}",))
    files = {}
    (tmp_path / "system.pkl").write_bytes(pickle.dumps({"ema": system}))
    files["os.system in a pickle"] = (tmp_path / "system.pkl", "global posix.system")
    src = f"open({str(marker)!r}, 'w').write('ran')\n"
    with edm_modules():
        payload = PersistentRecord("Payload", {}, module_src=src)
        (tmp_path / "record.pkl").write_bytes(pickle.dumps({"ema": payload}))
        torch.save({"ema": system}, tmp_path / "foreign.pt")
    torch.save({"ema": _Reduce(codecs.encode, ("payload", "rot13"))}, tmp_path / "rot13.pt")
    files["_codecs.encode with rot13 in a .pt"] = (tmp_path / "rot13.pt", "encoding 'rot13'")
    (tmp_path / "utf8.pkl").write_bytes(pickle.dumps(_Reduce(codecs.encode, ("é", "utf-8")), protocol=2))
    files["_codecs.encode with utf-8"] = (tmp_path / "utf8.pkl", "encoding 'utf-8'")
    (tmp_path / "object.pkl").write_bytes(pickle.dumps(
        {"ema": _Reduce(NUMPY_SCALAR, (np.dtype("O"), system))}, protocol=2))
    files["a NumPy scalar of object dtype"] = (tmp_path / "object.pkl", "NumPy dtype 'O8'")
    (tmp_path / "void.pkl").write_bytes(pickle.dumps({"ema": np.zeros((), [("a", "<f8")])[()]}, protocol=2))
    files["a NumPy structured (void) scalar"] = (tmp_path / "void.pkl", "NumPy dtype 'V8'")
    # A float64 dtype whose state sets NumPy's has-object flags: its numbers would be read as
    # object pointers.
    pointer = _Reduce(np.dtype, ("f8", False, True), (3, "<", None, None, None, -1, -1, 63))
    (tmp_path / "flags.pkl").write_bytes(pickle.dumps(
        {"ema": _Reduce(NUMPY_SCALAR, (pointer, bytes(8)))}, protocol=2))
    files["a NumPy dtype with object flags"] = (tmp_path / "flags.pkl",
                                                "float64 dtype with a state other than its byte order")
    files["a record of an unknown class"] = (tmp_path / "record.pkl", "class 'Payload'")
    files["a .pt with a foreign global"] = (tmp_path / "foreign.pt", "global posix.system")
    good = write_snapshot(tmp_path / "good.pkl", edm_network_record(
        network("unet", DHARIWAL, 0), DHARIWAL, 16))
    (tmp_path / "truncated.pkl").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    files["a truncated file"] = (tmp_path / "truncated.pkl", "truncated or damaged")
    buf = tmp_path / "image.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(buf)
    files["a file of another format"] = (buf, "not a pickle or torch file")
    with edm_modules():
        vp = PersistentRecord("VPPrecond", {"_modules": {}})
        (tmp_path / "vp.pkl").write_bytes(pickle.dumps({"ema": vp}))
    files["a VP baseline"] = (tmp_path / "vp.pkl", "VP-preconditioned baseline")
    return files


def test_hostile_and_bad_files_are_refused_with_one_line_and_run_nothing(tmp_path):
    marker = tmp_path / "PWNED"
    for what, (path, needle) in _hostile_files(tmp_path).items():
        out = tmp_path / f"out-{path.stem}"
        r = run("convert", str(path), "--out", str(out))
        assert r.returncode == 2, (what, r.stderr)
        assert needle in r.stderr and str(path) in r.stderr, (what, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, what
        assert not out.exists() and not marker.exists(), what


def test_the_module_source_of_a_known_record_is_never_run(tmp_path):
    """A network record whose stored module source would write a file converts (it is data);
    the file is never written."""
    marker = tmp_path / "PWNED"
    den = network("unet", DHARIWAL, 0)
    rec = edm_network_record(den, DHARIWAL, 16)
    rec.meta["module_src"] = f"open({str(marker)!r}, 'w').write('ran')\n"
    f = write_snapshot(tmp_path / "src.pkl", rec)
    convert(f, tmp_path / "stage")
    assert not marker.exists()
    assert_same_outputs(tmp_path / "stage", den, 0)
