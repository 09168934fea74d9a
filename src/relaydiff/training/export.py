"""From training snapshots to a cascade: the EMA weights of each stage, lowest stage first."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..cascade import RelayCascade, StageConfig, build_denoiser
from .checkpoint import resolve_snapshot


def cascade_from_snapshots(specs: Sequence[str | Path]) -> RelayCascade:
    """A :class:`RelayCascade` of the EMA networks of the given snapshots (a snapshot folder, or
    a run folder meaning its newest valid snapshot), in order; the resolutions must chain."""
    configs, denoisers = [], []
    for spec in specs:
        snapshot = resolve_snapshot(spec)
        where = snapshot.path / "state.json"
        cfg = StageConfig.from_dict(snapshot.state["config"]["stage"], f"{where}: stage")
        den = build_denoiser(cfg)
        den.model.load_state_dict(snapshot.ema, strict=True)
        configs.append(cfg)
        denoisers.append(den.eval())
    return RelayCascade(configs, denoisers)
