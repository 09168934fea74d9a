"""Files in the formats of EDM's and RDM's releases, made from relaydiff's own networks.

EDM pickles every network as a persistence record (``torch_utils.persistence``): a call of
``_reconstruct_persistent_obj(meta)`` with ``meta = {type, version, module_src, class_name,
state}``, where ``state`` is the object's ``__dict__`` (parameters, buffers, sub-module records,
``_init_kwargs``). These helpers write exactly that layout with EDM's class names, and a stub
string in place of the module source (relaydiff never reads it), so no EDM code is involved.
"""

from __future__ import annotations

import collections
import contextlib
import pickle
import sys
import types
from pathlib import Path

import torch
from torch import nn

from relaydiff.networks.song_unet import FourierEmbedding, PositionalEmbedding, SongUNet
from relaydiff.networks.unet import Conv2d, UNet, UNetBlock
from relaydiff.precond import EDMPrecond

STUB_SOURCE = "# module source stub: relaydiff never reads or runs this\n"
CLASS_NAMES = {EDMPrecond: "EDMPrecond", UNet: "DhariwalUNet", SongUNet: "SongUNet",
               UNetBlock: "UNetBlock", Conv2d: "Conv2d", nn.Linear: "Linear",
               nn.GroupNorm: "GroupNorm", PositionalEmbedding: "PositionalEmbedding",
               FourierEmbedding: "FourierEmbedding"}


def _reconstruct_persistent_obj(meta):  # what the pickle stream names; never called here
    raise AssertionError("only relaydiff's restricted unpickler reads these files")


_reconstruct_persistent_obj.__module__ = "torch_utils.persistence"


class EasyDict(dict):
    pass


EasyDict.__module__ = "dnnlib.util"


class PersistentRecord:
    """Pickles as EDM's persistence record of ``class_name`` with ``state``."""

    def __init__(self, class_name: str, state: dict, module_src: str = STUB_SOURCE) -> None:
        self.meta = {"type": "class", "version": 6, "module_src": module_src,
                     "class_name": class_name, "state": state}

    def __reduce__(self):
        return _reconstruct_persistent_obj, (self.meta,)


@contextlib.contextmanager
def edm_modules():
    """``torch_utils.persistence`` and ``dnnlib.util`` names resolvable while pickling."""
    persistence = types.ModuleType("torch_utils.persistence")
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    util = types.ModuleType("dnnlib.util")
    util.EasyDict = EasyDict
    added = {"torch_utils": types.ModuleType("torch_utils"), "torch_utils.persistence": persistence,
             "dnnlib": types.ModuleType("dnnlib"), "dnnlib.util": util}
    saved = {k: sys.modules.get(k) for k in added}
    sys.modules.update(added)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def record_of(module: nn.Module, init_kwargs: dict | None = None):
    """The persistence-record tree of one of relaydiff's modules (EDM's class names)."""
    if isinstance(module, nn.ModuleDict):  # EDM keeps torch's ModuleDict: pickled as itself
        out = nn.ModuleDict()
        out.__dict__["_modules"] = collections.OrderedDict(
            (k, record_of(v)) for k, v in module.items())
        return out
    state = {
        "training": False,
        "_parameters": collections.OrderedDict(module._parameters),
        "_buffers": collections.OrderedDict(module._buffers),
        "_non_persistent_buffers_set": set(),
        "_modules": collections.OrderedDict((k, record_of(v)) for k, v in module._modules.items()
                                            if v is not None),
        "_init_kwargs": init_kwargs,
        "_init_args": (),
    }
    return PersistentRecord(CLASS_NAMES[type(module)], state)


def edm_network_record(den: EDMPrecond, net_kwargs: dict, resolution: int) -> PersistentRecord:
    """EDMPrecond(model_type=…) record with the model's constructor arguments as EDM records
    them (``in_channels``/``out_channels`` included)."""
    model_type = CLASS_NAMES[type(den.model)]
    model = record_of(den.model, {"img_resolution": resolution, "in_channels": 3,
                                  "out_channels": 3, "label_dim": den.label_dim, **net_kwargs})
    precond_kwargs = {"img_resolution": resolution, "img_channels": 3, "label_dim": den.label_dim,
                      "use_fp16": False, "sigma_data": den.sigma_data, "model_type": model_type,
                      **net_kwargs}
    state = {"training": False, "_parameters": collections.OrderedDict(),
             "_buffers": collections.OrderedDict(), "_non_persistent_buffers_set": set(),
             "_modules": collections.OrderedDict(model=model), "_init_kwargs": precond_kwargs,
             "_init_args": (), "sigma_data": den.sigma_data, "label_dim": den.label_dim}
    return PersistentRecord("EDMPrecond", state)


def loss_record(class_name: str = "EDMLoss", **fields) -> PersistentRecord:
    return PersistentRecord(class_name, {**fields, "_init_kwargs": dict(fields), "_init_args": ()})


def write_snapshot(path: Path, network: PersistentRecord, loss: PersistentRecord | None = None) -> Path:
    """An EDM ``network-snapshot-*.pkl`` (plain pickle of a dict)."""
    with edm_modules():
        data = {"ema": network, "loss_fn": loss or loss_record(P_mean=-1.2, P_std=1.2, sigma_data=0.5),
                "augment_pipe": None, "dataset_kwargs": EasyDict(resolution=16, use_labels=False)}
        path.write_bytes(pickle.dumps(data))
    return path


def write_training_state(path: Path, network: PersistentRecord, optimizer_state: dict | None = None) -> Path:
    """An RDM/EDM ``training-state-*.pt`` (torch zip file), saved as their training loops save it:
    ``torch.save`` with its default pickle protocol (2)."""
    with edm_modules():
        torch.save({"net": network, "ema": network,
                    "optimizer_state": optimizer_state or {"state": {}, "param_groups": []}, "step": 7}, path)
    return path
