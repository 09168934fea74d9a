"""Training snapshots: one folder per snapshot, written atomically, verified on load.

Layout of ``RUN/checkpoints/ckpt-<step>/``::

    model.safetensors       raw network weights (``denoiser.model.state_dict()``)
    ema.safetensors         EMA weights, same keys (what ``relaydiff cascade build`` packages)
    optimizer.safetensors   optimiser tensors (``state.<param>.<name>``)
    optimizer.json          optimiser hyper-parameters and non-tensor state
    state.json              config, step, images seen, RNG states, data order, training cost,
                            and the SHA-256 of every other file (written last)

A snapshot is written into a hidden temporary folder (every file fsynced), which is then
renamed into place, so a folder named ``ckpt-*`` is always complete; temporary folders left by
a killed run are ignored and removed by the next save. Loading checks every file against its
checksum, so a truncated or altered file is reported by name. No pickle anywhere.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import random
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io.files import atomic_folder, dumps_json, read_json, sha256_file, write_bytes_atomic
from ..io.tensors import load_tensors, save_tensors

CHECKPOINT_FORMAT = "relaydiff.checkpoint"
PREFIX = "ckpt-"
TMP_PREFIX = ".tmp-ckpt-"
TENSOR_FILES = ("model.safetensors", "ema.safetensors", "optimizer.safetensors")
PAUSE_ENV = "RELAYDIFF_CHECKPOINT_PAUSE"  # test hook: seconds to sleep in the middle of a write


@dataclass
class Snapshot:
    """A loaded snapshot: its folder, ``state.json`` and tensors."""

    path: Path
    state: dict
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor]
    optimizer: dict
    extra: dict[str, dict[str, torch.Tensor]] = dataclasses.field(default_factory=dict)


# ---------------------------------------------------------------------------- RNG states
def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


def rng_state() -> dict:
    """The global RNG states of torch (CPU and CUDA), numpy and Python as JSON-ready values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, mt, gauss = random.getstate()
    state = {
        "torch": _b64(torch.get_rng_state()),
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "python": [version, list(mt), gauss],
    }
    if torch.cuda.is_available():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(_unb64(state["torch"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])


# ---------------------------------------------------------------------------- optimiser state
def optimizer_to_files(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into tensors (safetensors) and the rest (JSON)."""
    tensors, scalars = {}, {}
    for idx, entry in sd["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"state.{idx}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """Inverse of :func:`optimizer_to_files`."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in [*tensors.items(), *meta["scalars"].items()]:
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


# ---------------------------------------------------------------------------- writing
class CheckpointWarning(UserWarning):
    """A snapshot was skipped because it could not be loaded."""


def save_snapshot(
    root: str | Path,
    step: int,
    *,
    model: dict[str, torch.Tensor],
    ema: dict[str, torch.Tensor],
    optimizer: dict,
    state: dict,
    keep: int,
    extra: dict[str, dict[str, torch.Tensor]] | None = None,
) -> Path:
    """Write snapshot ``ckpt-<step>`` under ``root`` atomically and keep the newest ``keep``.

    A failed write (e.g. a full disk) raises ``OSError`` and leaves the earlier snapshots as
    they were."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(f"{TMP_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    final = root / f"{PREFIX}{step:08d}"
    with atomic_folder(final, tmp_prefix=TMP_PREFIX) as tmp:
        opt_tensors, opt_meta = optimizer_to_files(optimizer)
        save_tensors(model, tmp / "model.safetensors", durable=True)
        save_tensors(ema, tmp / "ema.safetensors", durable=True)
        if os.environ.get(PAUSE_ENV):
            time.sleep(float(os.environ[PAUSE_ENV]))
        save_tensors(opt_tensors, tmp / "optimizer.safetensors", durable=True)
        write_bytes_atomic(tmp / "optimizer.json", dumps_json(opt_meta, indent=None).encode(),
                           durable=False)
        for name, tensors in (extra or {}).items():  # e.g. the post-hoc EMA averages
            save_tensors(tensors, tmp / f"{name}.safetensors", durable=True)
        names = [*TENSOR_FILES, "optimizer.json", *(f"{n}.safetensors" for n in extra or {})]
        full_state = {
            "format": CHECKPOINT_FORMAT,
            "version": 1,
            **state,
            "files": {name: sha256_file(tmp / name) for name in names},
        }
        write_bytes_atomic(tmp / "state.json", (dumps_json(full_state, indent=1) + "\n").encode(),
                           durable=False)
    for old in list_snapshots(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


# ---------------------------------------------------------------------------- reading
def list_snapshots(root: str | Path) -> list[Path]:
    """Snapshot folders under ``root``, oldest first (hidden temporary folders excluded)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.iterdir()
        if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX) :].isdigit()
    ]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def load_snapshot(path: str | Path) -> Snapshot:
    """Load and verify a snapshot folder; a missing or corrupt file raises ``ValueError`` naming it."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path}: no such checkpoint folder")
    state = read_json(path / "state.json")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path / 'state.json'}: not a relaydiff checkpoint state file")
    for name, digest in state["files"].items():
        file = path / name
        if not file.is_file():
            raise ValueError(f"{file}: file not found; the checkpoint is incomplete")
        if sha256_file(file) != digest:
            raise ValueError(f"{file}: checksum mismatch; the file is corrupt")
    opt = optimizer_from_files(
        load_tensors(path / "optimizer.safetensors"), read_json(path / "optimizer.json")
    )
    extra = {name.removesuffix(".safetensors"): load_tensors(path / name) for name in state["files"]
             if name.endswith(".safetensors") and name not in TENSOR_FILES}
    return Snapshot(
        path, state, load_tensors(path / "model.safetensors"), load_tensors(path / "ema.safetensors"),
        opt, extra,
    )


def resolve_snapshot(spec: str | Path, *, run_dir: str | Path | None = None) -> Snapshot | None:
    """The snapshot to resume from.

    ``"auto"``: the newest snapshot of ``run_dir/checkpoints`` that loads; each newer one that
    does not is skipped with a warning naming the bad file; ``None`` when there is none.
    A folder that holds snapshots (a run or its ``checkpoints``) means its newest valid one;
    otherwise ``spec`` is one snapshot folder, and any problem is an error.
    """
    if str(spec) == "auto":
        if run_dir is None:
            raise ValueError("resume='auto' needs run_dir, the run folder to resume")
        return _newest_valid(Path(run_dir) / "checkpoints", required=False)
    spec = Path(spec)
    for root in (spec / "checkpoints", spec):
        if list_snapshots(root):
            return _newest_valid(root, required=True)
    return load_snapshot(spec)


def _newest_valid(root: Path, *, required: bool) -> Snapshot | None:
    candidates = list_snapshots(root)
    problems = []
    for path in reversed(candidates):
        try:
            return load_snapshot(path)
        except ValueError as e:
            problems.append(str(e))
            warnings.warn(f"skipping checkpoint {path.name}: {e}", CheckpointWarning, stacklevel=2)
    if candidates:
        raise ValueError(f"{root}: no loadable checkpoint ({'; '.join(problems)})")
    if required:
        raise ValueError(f"{root}: no checkpoints found")
    return None


def newest_state(run_dir: str | Path) -> dict | None:
    """``state.json`` of the newest snapshot of a run whose state file reads (no tensors are
    loaded or verified); ``None`` when the run has none."""
    for path in reversed(list_snapshots(Path(run_dir) / "checkpoints")):
        try:
            return read_json(path / "state.json")
        except ValueError:
            continue
    return None
