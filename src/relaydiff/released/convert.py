"""Converting released EDM/RDM checkpoints into relaydiff stage folders (docs/released-models.md).

``convert(FILE, OUT)`` reads an EDM network snapshot (``.pkl``: ``ema``, ``loss_fn``,
``augment_pipe``, ``dataset_kwargs``), a training state (``.pt``: ``ema`` or ``net``,
``optimizer_state``, …) or a plain state dict of EDM's ``EDMPrecond(DhariwalUNet)`` with the
restricted unpickler (relaydiff.released.unpickle), builds the same network in relaydiff
(``DhariwalUNet`` → ``unet``, ``SongUNet`` → ``song_unet``, EDM preconditioning) and writes
``OUT/config.json`` + ``OUT/model.safetensors`` + ``OUT/source.json`` (where it came from)
atomically. A relay stage takes its settings from the snapshot's RDM ``BlurLoss`` record, or from
the caller where the file has none.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io.files import atomic_folder, sha256_file, write_json
from ..networks.song_unet import SongUNet
from ..networks.unet import UNet
from ..stage import RelayConfig, StageConfig, build_denoiser, save_stage
from ..version import __version__
from .presets import apply_preset
from .unpickle import Record, read_checkpoint

NETWORKS = {"DhariwalUNet": ("unet", UNet), "SongUNet": ("song_unet", SongUNet)}
UNSUPPORTED_PRECOND = {"VPPrecond": "VP", "VEPrecond": "VE", "iDDPMPrecond": "iDDPM"}
# relay flag → (RelayConfig field, RDM BlurLoss field)
RELAY_FIELDS = {"scale": ("scale", "up_scale"), "prob_length": ("prob_length", "prob_length"),
                "blur_sigma_max": ("blur_sigma_max", "blur_sigma_max"),
                "block_alpha": ("block_alpha", "block_scale")}


def _plain(value: Any) -> Any:
    """A constructor argument as JSON data: NumPy scalars (a protocol-2 ``.pt`` holds them) as
    Python numbers, tuples as lists."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _network_config(model: Record, where: str) -> dict:
    """relaydiff's network config from an EDM network record's constructor arguments."""
    name, cls = NETWORKS[model.class_name]
    kwargs = model.init_kwargs
    if not kwargs:
        raise ValueError(f"{where}: the {model.class_name} record holds no constructor arguments; "
                         "relaydiff needs them to rebuild the network")
    accepted = set(inspect.signature(cls).parameters)
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(f"{where}: {model.class_name} argument(s) {', '.join(unknown)} are not "
                         "supported by relaydiff's network")
    return {"name": name, **{k: _plain(v) for k, v in kwargs.items()}}


def _from_record(net: Record, where: str) -> tuple[dict, dict, dict[str, torch.Tensor]]:
    """``(network config, precond settings, state dict)`` of an EDM preconditioned network."""
    if net.class_name in UNSUPPORTED_PRECOND:
        raise ValueError(f"{where}: a {UNSUPPORTED_PRECOND[net.class_name]}-preconditioned baseline "
                         f"({net.class_name}); relaydiff converts EDM-preconditioned networks "
                         "(EDMPrecond: EDM's edm-*.pkl and RDM's models)")
    if net.class_name != "EDMPrecond":
        raise ValueError(f"{where}: the network is a {net.class_name}, not an EDMPrecond")
    model = net.modules().get("model")
    if not isinstance(model, Record) or model.class_name not in NETWORKS:
        found = getattr(model, "class_name", type(model).__name__)
        raise ValueError(f"{where}: the preconditioned network is a {found}; relaydiff converts "
                         f"{' and '.join(NETWORKS)}")
    kw = {**net.init_kwargs}
    precond = {"label_dim": int(kw.get("label_dim", net.state.get("label_dim", 0)) or 0),
               "sigma_data": float(kw.get("sigma_data", net.state.get("sigma_data", 0.5))),
               "channels": int(kw.get("img_channels", net.state.get("img_channels", 3))),
               "resolution": int(kw.get("img_resolution", net.state.get("img_resolution")))}
    return _network_config(model, where), precond, net.tensors()


# ---------------------------------------------------------------------------- plain state dicts
def _infer_dhariwal(state: dict[str, torch.Tensor], where: str) -> tuple[dict, dict]:
    """The DhariwalUNet configuration a state dict of ``EDMPrecond(DhariwalUNet)`` implies."""
    keys = set(state)
    enc = sorted({(int(m.group(1)), m.group(2)) for k in keys
                  if (m := re.match(r"model\.enc\.(\d+)x\d+_(\w+?)\.", k))}, key=lambda t: -t[0])
    if not enc or "model.map_layer0.weight" not in keys or "model.out_conv.weight" not in keys:
        raise ValueError(f"{where}: a state dict, but not of EDM's EDMPrecond(DhariwalUNet) (no "
                         "model.enc.*/model.map_layer0/model.out_conv); give the .pkl snapshot")
    resolutions = sorted({r for r, _ in enc}, reverse=True)
    model_channels = state["model.map_layer0.weight"].shape[1]
    emb = state["model.map_layer1.weight"].shape[0]
    top = resolutions[0]
    blocks = {int(m.group(1)) for k in keys
              if (m := re.match(rf"model\.enc\.{top}x{top}_block(\d+)\.", k))}
    mult = [state[f"model.enc.{r}x{r}_block0.conv1.weight"].shape[0] // model_channels
            for r in resolutions]
    attn = [r for r in resolutions if f"model.enc.{r}x{r}_block0.qkv.weight" in keys]
    conv = state[f"model.enc.{top}x{top}_conv.weight"]
    net = {"name": "unet", "img_resolution": top, "in_channels": conv.shape[1],
           "out_channels": state["model.out_conv.weight"].shape[0],
           "label_dim": state["model.map_label.weight"].shape[1] if "model.map_label.weight" in keys else 0,
           "augment_dim": (state["model.map_augment.weight"].shape[1]
                           if "model.map_augment.weight" in keys else 0),
           "model_channels": model_channels, "channel_mult": mult,
           "channel_mult_emb": emb // model_channels, "num_blocks": len(blocks),
           "attn_resolutions": attn, "dropout": 0.0}
    precond = {"label_dim": net["label_dim"], "sigma_data": 0.5, "channels": net["out_channels"],
               "resolution": top}
    return net, precond


# ---------------------------------------------------------------------------- the file
@dataclasses.dataclass
class Source:
    """What a file holds: the network, its loss record (if any) and what kind of file it is."""

    network: dict
    precond: dict
    state: dict[str, torch.Tensor]
    loss: Record | None
    kind_of_file: str
    classes: list[str]


def read_source(path: str | Path) -> Source:
    """Read a released file into a :class:`Source` (``ValueError`` naming the file otherwise)."""
    path = Path(path)
    obj = read_checkpoint(path)
    where = str(path)
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state = {k if k.startswith("model.") else f"model.{k}": v for k, v in obj.items()}
        net, precond = _infer_dhariwal(state, where)
        return Source(net, precond, state, None, "state dict", [])
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: holds a {type(obj).__name__}, not an EDM network snapshot "
                         "(dict with 'ema'), training state (dict with 'ema' or 'net') or state dict")
    for key in ("ema", "net"):
        if isinstance(obj.get(key), Record):
            net, precond, state = _from_record(obj[key], f"{where} ['{key}']")
            loss = obj.get("loss_fn") if isinstance(obj.get("loss_fn"), Record) else None
            kind = "training state" if "optimizer_state" in obj else "network snapshot"
            model = obj[key].modules()["model"].class_name
            classes = [obj[key].class_name, model, *([loss.class_name] if loss else [])]
            return Source(net, precond, state, loss, kind, classes)
    raise ValueError(f"{where}: a dict with keys {sorted(map(str, obj))[:6]}, but no network under "
                     "'ema' or 'net'")


def relay_settings(source: Source, overrides: dict[str, Any], where: str) -> RelayConfig:
    """The relay process: the file's BlurLoss fields, replaced by ``overrides``; the released
    numerics (``variant="official"``) since that is how RDM's models were trained."""
    values: dict[str, Any] = {}
    loss = source.loss
    if loss is not None and loss.class_name == "BlurLoss":
        for field_name, rdm in RELAY_FIELDS.values():
            if rdm in loss.state:
                values[field_name] = loss.state[rdm]
        for field_name, rdm in (("min_scale", "min_scale"), ("p_mean", "P_mean"), ("p_std", "P_std")):
            if rdm in loss.state:
                values[field_name] = float(loss.state[rdm])
    values.update({RELAY_FIELDS[k][0]: v for k, v in overrides.items() if v is not None})
    missing = [f"--{k.replace('_', '-')}" for k, (f, _) in RELAY_FIELDS.items() if f not in values]
    if missing:
        raise ValueError(f"{where}: a relay stage needs {', '.join(missing)}: the {source.kind_of_file} "
                         "holds no RDM BlurLoss record to read them from")
    values["scale"] = int(values["scale"])
    for key in ("prob_length", "blur_sigma_max", "block_alpha"):
        values[key] = float(values[key])
    return RelayConfig(variant="official", **values)


def convert(path: str | Path, out: str | Path, *, kind: str | None = None,
            relay: dict[str, Any] | None = None, preset: str | None = None) -> StageConfig:
    """Convert ``path`` into the stage folder ``out``; returns the stage's config."""
    path, out = Path(path), Path(out)
    with ThreadPoolExecutor(1) as pool:  # hashing (GIL released) overlaps reading and writing
        digest = pool.submit(sha256_file, path)
        cfg, den, source = _read_stage(path, kind, relay, preset)
        with atomic_folder(out) as tmp:
            save_stage(tmp, cfg, den)
            record = {"file": path.name, "sha256": digest.result(),
                      "kind_of_file": source.kind_of_file, "classes": source.classes,
                      "preset": preset, "converted_by": f"relaydiff {__version__}"}
            write_json(record, tmp / "source.json", durable=False)
    return cfg


def _read_stage(path: Path, kind: str | None, relay: dict[str, Any] | None,
                preset: str | None) -> tuple[StageConfig, torch.nn.Module, Source]:
    """The stage config and the denoiser holding the weights of ``path``."""
    source = read_source(path)
    loss = source.loss
    if kind is None:
        kind = "relay" if loss is not None and loss.class_name == "BlurLoss" else "edm"
    if kind not in ("edm", "relay"):
        raise ValueError(f"kind {kind!r}: use edm or relay")
    p = source.precond
    cfg = StageConfig(kind, p["resolution"], source.network, p["channels"], p["label_dim"],
                      p["sigma_data"],
                      relay=relay_settings(source, relay or {}, str(path)) if kind == "relay" else None)
    if preset is not None:
        apply_preset(cfg, preset)
    den = build_denoiser(cfg, initialize=False)
    ours = den.state_dict()
    # The file's tensors become the network's (no copy) where their dtypes already match.
    assign = all(k in ours and ours[k].dtype == v.dtype for k, v in source.state.items())
    try:
        den.load_state_dict(source.state, strict=True, assign=assign)
    except RuntimeError as e:
        raise ValueError(f"{path}: its weights do not fit the network its record describes "
                         f"({str(e).splitlines()[0]})") from None
    return cfg, den, source
