"""The study's aggregate: per-variant statistics over seeds, the Markdown table and the figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...analysis.plotting import new_figure, save_figure
from ...io.files import atomic_writer, finite_or_none, write_json
from .config import GRID_IMAGES


def _stat(runs: list[dict], section: str, key: str) -> dict:
    """Mean and spread (max − min over the seeds) of ``run[section][key]``."""
    vals = [r[section][key] for r in runs if r.get(section, {}).get(key) is not None]
    if not vals:
        return {"mean": None, "spread": None, "n": 0}
    return {"mean": float(np.mean(vals)), "spread": float(np.ptp(vals)), "n": len(vals)}


def summarize(results: list[dict], floors: dict) -> list[dict]:
    """One row per variant: mean and spread over seeds of its main numbers, then the floors."""
    rows = []
    for name in dict.fromkeys(r["name"] for r in results):
        runs = [r for r in results if r["name"] == name]

        def stat(path: tuple[str, str], runs=runs) -> dict:
            return _stat(runs, *path)

        rows.append({
            "variant": name, "kind": runs[0]["kind"], "main": runs[0]["main"],
            "seeds": [r["seed"] for r in runs],
            "budget_flops": [r["budget"]["flops"] for r in runs],
            "images": [r["budget"]["images"] for r in runs],
            "nfe": runs[0]["nfe"],
            "cascade_fid": stat(("cascade", "fid")), "cascade_kid": stat(("cascade", "kid")),
            "sr_heldout_fid": stat(("sr_heldout", "fid")), "sr_train_fid": stat(("sr_train", "fid")),
            "precision": stat(("cascade", "precision")), "recall": stat(("cascade", "recall")),
            "sr_heldout_precision": stat(("sr_heldout", "precision")),
            "sr_heldout_recall": stat(("sr_heldout", "recall")),
            "spectrum": stat(("sr_heldout", "spectrum")), "sfid": stat(("cascade", "sfid")),
        })
    rows.append({"variant": "floor: split-half (train vs held-out data)",
                 "sr_heldout_fid": {"mean": floors["split_half"]["fid"]}})
    rows.append({"variant": "floor: up(down(x)) of held-out data",
                 "sr_heldout_fid": {"mean": floors["up_down_heldout"]["fid"]}})
    return rows


def _cell(stat: dict | None, digits: int) -> str:
    """``mean ± half-spread`` (over seeds) of a summary statistic, ``—`` where there is none."""
    if not stat or stat.get("mean") is None:
        return "—"
    text = f"{stat['mean']:.{digits}f}"
    if stat.get("n", 1) > 1:
        text += f" ± {stat['spread'] / 2:.{digits}f}"
    return text


def markdown_table(summary: list[dict], results: list[dict], shared: dict | None = None) -> str:
    """The summary as a Markdown table (every value is ``results.json``'s ``summary``, rounded;
    ``±`` is half the spread over the seeds), with the evaluation / training time split, and
    the study's ``shared`` evaluation seconds (once for all runs) below it."""
    head = ("| variant | seeds | training GFLOPs | images | NFE | cascade FID | SR-FID held-out | "
            "SR-FID train | precision | recall | KID ×1e3 | spectrum | eval / train time |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for row in summary:
        runs = [r for r in results if r["name"] == row["variant"]]
        if not runs:  # a floor
            lines.append(f"| {row['variant']} | | | | | | {_cell(row['sr_heldout_fid'], 1)} "
                         "| | | | | | |")
            continue
        kid = row["cascade_kid"]
        kid = {**kid, "mean": kid["mean"] * 1e3, "spread": kid["spread"] * 1e3} \
            if kid.get("mean") is not None else kid
        ratio = sum(r["timing"]["eval_seconds"] for r in runs) / max(
            sum(r["timing"]["train_seconds"] for r in runs), 1e-9)
        lines.append(
            f"| {row['variant']}{' (main)' if row['main'] else ''} | "
            f"{', '.join(str(s) for s in row['seeds'])} | "
            f"{np.mean(row['budget_flops']) / 1e9:,.0f} | {int(np.mean(row['images'])):,} | "
            f"{row['nfe']} | {_cell(row['cascade_fid'], 1)} | {_cell(row['sr_heldout_fid'], 1)} | "
            f"{_cell(row['sr_train_fid'], 1)} | {_cell(row['precision'], 3)} | "
            f"{_cell(row['recall'], 3)} | {_cell(kid, 1)} | {_cell(row['spectrum'], 3)} | "
            f"{100 * ratio:.0f} % |")
    foot = ""
    if shared:
        spent = ", ".join(f"{k.replace('_', ' ')} {v:.0f} s" for k, v in shared.items())
        foot = f"\nShared evaluation, once for all {len(results)} runs: {spent}.\n"
    return head + "\n".join(lines) + "\n" + foot


def figures(results: dict, folder: Path, out: Path) -> None:
    """FID against training compute, FID against NFE and sample grids side by side, as PNGs in
    ``folder`` (each run's artifact-correction grid is its own ``eval/artifacts.png``)."""
    folder.mkdir(parents=True, exist_ok=True)
    runs = results["variants"]
    for key, xlabel, name in (("compute_curve", "training FLOPs", "fid_vs_compute.png"),
                              ("nfe_curve", "denoiser evaluations per sample (NFE)",
                               "fid_vs_nfe.png")):
        fig, ax = new_figure(figsize=(6.4, 4.0), dpi=120)
        for r in runs:
            pts = [(p["flops"] if key == "compute_curve" else p["nfe"], p["fid"]) for p in r[key]
                   if p.get("fid") is not None]
            if pts:
                x, y = zip(*sorted(pts), strict=True)
                ax.plot(x, y, marker="o", label=f"{r['name']} s{r['seed']}",
                        linestyle="-" if r["main"] else "--")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"FID@{results['study_config']['eval']['curve_samples']} (SR held-out; "
                      "edm64: samples)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        if key == "nfe_curve":
            ax.set_xscale("log")
        save_figure(fig, folder / name)
    from ...io.images import load_image
    from ...io.sample_folder import seed_path

    rows, labels = [], []
    first = {}
    for r in runs:
        first.setdefault(r["name"], r)
    for r in first.values():  # variants without cascade samples here (--no-stage1) are left out
        run = out / "runs" / f"{r['name']}-s{r['seed']}" / "eval" / "cascade"
        paths = [seed_path(run, s)
                 for s in range(min(GRID_IMAGES, results["study_config"]["eval"]["samples"]))]
        if not all(p.is_file() for p in paths):
            continue
        rows.append(np.concatenate([load_image(p) for p in paths], axis=1))
        labels.append(r["name"])
    if rows:
        fig, ax = new_figure(figsize=(8, 1.1 * len(rows) + 0.5), dpi=120)
        ax.imshow(np.concatenate(rows, axis=0), interpolation="nearest")
        h = rows[0].shape[0]
        ax.set_yticks([h * k + h // 2 for k in range(len(rows))], labels, fontsize=8)
        ax.set_xticks([])
        ax.set_title("the same 8 stage-1 samples through each variant (end to end: its own samples)",
                     fontsize=8)
        save_figure(fig, folder / "grids.png")


def write_report(results: dict, folder: Path) -> Path:
    """A study's ``results.json``, ``table.md`` (its summary as Markdown) and ``figures/`` in
    ``folder``, from the aggregate ``results``; returns the path of ``results.json``."""
    write_json(finite_or_none(results), folder / "results.json")
    with atomic_writer(folder / "table.md") as f:
        f.write(markdown_table(results["summary"], results["variants"],
                               results["shared_eval_seconds_by_part"]).encode())
    if results["variants"]:
        figures(results, folder / "figures", folder)
    return folder / "results.json"
