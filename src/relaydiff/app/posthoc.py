"""Post-hoc EMA of a training run as stage folders and FID sweeps (``relaydiff ema``).

The reconstruction itself is :mod:`relaydiff.training.posthoc_ema`; here it becomes a stage
folder (``reconstruct_stage``), or a curve of FID against ``σ_rel`` (``sweep``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from ..analysis.plotting import new_figure, save_figure
from ..data.datasets import open_dataset
from ..io.files import atomic_folder, finite_or_none, write_json
from ..io.images import from_uint8, save_png, to_uint8
from ..io.sample_folder import seed_path
from ..stage import StageConfig, save_stage, stage_denoiser
from ..training.checkpoint import resolve_snapshot
from ..training.config import TrainConfig
from ..training.grids import stage_samples
from ..training.posthoc_ema import reconstruct


def _stage_and_data(run: Path) -> tuple[StageConfig, TrainConfig]:
    snapshot = resolve_snapshot(run)
    cfg = TrainConfig.from_dict(snapshot.state["config"], str(snapshot.path / "state.json"))
    return cfg.stage, cfg


def reconstruct_stage(run: str | Path, sigma_rel: float, out: str | Path,
                      at_images: int | None = None) -> dict:
    """Write the stage of ``run`` with post-hoc EMA ``σ_rel`` to the stage folder ``out``."""
    run = Path(run)
    stage, _ = _stage_and_data(run)
    weights, record = reconstruct(run, sigma_rel, at_images)
    den = stage_denoiser(stage, weights, f"{run} (post-hoc EMA)")
    with atomic_folder(out) as tmp:
        save_stage(tmp, stage, den)
        write_json({"source": str(run), "posthoc_ema": record}, tmp / "source.json", durable=False)
    return record


def sweep(run: str | Path, sigma_rels: Sequence[float], n: int, ref: str | Path,
          out: str | Path) -> list[dict]:
    """FID of ``n`` samples (a relay or SR stage: ``n`` training images upscaled from their
    low-resolution versions) for each ``σ_rel``; writes the folder ``out`` (``sweep.json`` and
    ``sweep.png``) atomically, replacing what it held."""
    from ..metrics.evaluate import evaluate
    from ..metrics.weights import load_inception

    run, out = Path(run), Path(out)
    stage, cfg = _stage_and_data(run)
    real = None
    if stage.kind != "edm":
        ds = open_dataset(cfg.data.path, resolution=stage.resolution)
        real = from_uint8(torch.stack([ds[i][0] for i in range(min(n, len(ds)))]))
    inception = load_inception()
    rows = []
    for sigma_rel in sigma_rels:
        weights, record = reconstruct(run, sigma_rel)
        images = stage_samples(stage, stage_denoiser(stage, weights, f"{run} (post-hoc EMA)"), real, n)
        with tempfile.TemporaryDirectory() as tmp:
            for k, arr in enumerate(to_uint8(images)):
                save_png(arr, seed_path(tmp, k))
            res = evaluate(tmp, ref, ["fid"], progress=False, inception=inception)
        rows.append({"sigma_rel": sigma_rel, "fid": res["fid"], "fid_name": f"FID@{res['n_images']}",
                     "profile_error": record["profile_error"], "at_images": record["at_images"]})
    with atomic_folder(out) as tmp:
        write_json(finite_or_none({"run": str(run), "reference": str(ref), "rows": rows}),
                   tmp / "sweep.json", durable=False)
        _plot(rows, tmp / "sweep.png")
    return rows


def _plot(rows: list[dict], path: Path) -> None:
    """FID against ``σ_rel`` of the sweep's rows, as the PNG ``path``."""
    fig, ax = new_figure(figsize=(5.6, 3.6), dpi=120)
    ax.plot([r["sigma_rel"] for r in rows], [r["fid"] for r in rows], marker="o")
    ax.set_xlabel("post-hoc EMA σ_rel")
    ax.set_ylabel(rows[0]["fid_name"] if rows else "FID")
    ax.grid(alpha=0.3)
    save_figure(fig, path)
