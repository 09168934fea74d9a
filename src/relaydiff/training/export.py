"""From training runs to a cascade: the EMA weights of each stage, lowest stage first."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import nn

from ..cascade import RelayCascade
from ..stage import StageConfig, is_stage_folder, load_stage, stage_denoiser
from .checkpoint import resolve_snapshot


def load_stage_source(spec: str | Path) -> tuple[StageConfig, nn.Module, dict]:
    """A stage from a stage folder (``config.json`` + ``model.safetensors``), a snapshot folder
    or a run folder (its newest valid snapshot); snapshots give their EMA weights. The third
    item records where it came from and, for snapshots, the training cost."""
    if is_stage_folder(spec):
        cfg, den = load_stage(spec)
        return cfg, den, {"source": str(spec)}
    snapshot = resolve_snapshot(spec)
    where = snapshot.path / "state.json"
    cfg = StageConfig.from_dict(snapshot.state["config"]["stage"], f"{where}: stage")
    den = stage_denoiser(cfg, snapshot.ema, snapshot.path / "ema.safetensors", "state.json")
    cost = snapshot.state.get("cost", {})
    record = {"source": str(snapshot.path), "images_seen": snapshot.state.get("images_seen"),
              "device_hours": cost.get("device_hours"), "flops_per_image": cost.get("flops_per_image"),
              "device": snapshot.state.get("device", "unknown")}
    return cfg, den, record


def cascade_from_snapshots(specs: Sequence[str | Path]) -> RelayCascade:
    """A :class:`RelayCascade` of the given stages (stage folders, snapshot folders, or run
    folders meaning their newest valid snapshot), in order; the resolutions must chain."""
    configs, denoisers, records = zip(*(load_stage_source(spec) for spec in specs), strict=True)
    return RelayCascade(list(configs), list(denoisers), list(records))
