"""The study's aggregate: per-variant statistics over seeds at each budget point, the Markdown
tables and the figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...analysis.plotting import new_figure, save_figure
from ...io.files import atomic_writer, finite_or_none, write_json
from .config import GRID_IMAGES

SETS = ("cascade", "sr_heldout", "sr_train")
KEYS = ("fid", "kid", "precision", "recall", "spectrum")


def seed_stat(values: list[float], intervals: list[list[float] | None]) -> dict:
    """Mean, minimum and maximum over the seeds of one figure, and the envelope of the seeds'
    bootstrap 95 % intervals (lowest lower and highest upper end; ``None`` without them)."""
    if not values:
        return {"mean": None, "min": None, "max": None, "n": 0, "ci95": None, "values": []}
    known = [ci for ci in intervals if ci]
    envelope = ([min(c[0] for c in known), max(c[1] for c in known)]
                if known and len(known) == len(values) else None)
    return {"mean": float(np.mean(values)), "min": float(np.min(values)),
            "max": float(np.max(values)), "n": len(values), "ci95": envelope,
            "values": [float(v) for v in values]}


def _figure(points: list[dict], section: str, key: str) -> dict:
    vals, cis = [], []
    for p in points:
        got = p.get(section) or {}
        if got.get(key) is not None:
            vals.append(got[key])
            cis.append(got.get(f"{key}_ci95"))
    return seed_stat(vals, cis)


def summarize(results: list[dict], floors: dict, stage1_seconds: float = 0.0) -> dict:
    """Per variant (in the config's order) and budget point: the seeds' statistics of every
    set's figures, mean cost (total FLOPs; training seconds of the run, and of the pipeline:
    ``stage1_seconds`` added for a cascade) and NFE; and the floors."""
    rows = []
    for name in dict.fromkeys(r["name"] for r in results):
        runs = [r for r in results if r["name"] == name]
        first = runs[0]
        for k, point in enumerate(first["points"]):
            at = [r["points"][k] for r in runs if len(r["points"]) > k]
            row = {"variant": name, "kind": first["kind"], "main": first["main"],
                   "control": first["control"], "of": first["of"], "multiple": point["multiple"],
                   "seeds": [r["seed"] for r in runs], "images": point["images"],
                   "total_flops": float(np.mean([p["total_flops"] for p in at])),
                   "train_seconds": float(np.mean([p["train_seconds"] or 0 for p in at])),
                   "total_train_seconds": float(np.mean([p["train_seconds"] or 0 for p in at]))
                   + (0.0 if first["kind"] == "edm" else stage1_seconds),
                   "nfe": point["nfe"], "total_nfe": point["total_nfe"]}
            for section in SETS:
                if any(section in p for p in at):
                    row[section] = {key: _figure(at, section, key) for key in KEYS}
            rows.append(row)
    return {"rows": rows, "floors": floors}


def _cell(stat: dict | None, digits: int, scale: float = 1.0) -> str:
    """``mean [lo, hi]`` over the seeds (the envelope of their 95 % intervals), ``—`` if none."""
    if not stat or stat.get("mean") is None:
        return "—"
    text = f"{stat['mean'] * scale:.{digits}f}"
    if stat.get("ci95"):
        lo, hi = stat["ci95"]
        text += f" [{lo * scale:.{digits}f}, {hi * scale:.{digits}f}]"
    return text


def _get(row: dict, section: str, key: str) -> dict | None:
    return (row.get(section) or {}).get(key)


def markdown_tables(summary: dict, shared: dict | None = None) -> str:
    """The main table (budget point 1), the budget curve table and the floors, every value from
    ``summary`` rounded; ``[lo, hi]`` is the envelope of the seeds' bootstrap 95 % intervals."""
    rows = summary["rows"]
    head = ("| variant | seeds | total TFLOPs | total NFE | cascade FID | cascade KID ×1e3 | "
            "SR-FID held-out | SR-FID train | precision | recall | spectrum (dB) | "
            "training min (total) |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    main = []
    for r in (r for r in rows if r["multiple"] == 1):
        label = r["variant"] + (" (main)" if r["main"] else "") + (
            f" (control of {r['of']})" if r["control"] else "")
        main.append(
            f"| {label} | {', '.join(map(str, r['seeds']))} | {r['total_flops'] / 1e12:,.2f} | "
            f"{r['total_nfe']} | {_cell(_get(r, 'cascade', 'fid'), 1)} | "
            f"{_cell(_get(r, 'cascade', 'kid'), 1, 1e3)} | {_cell(_get(r, 'sr_heldout', 'fid'), 1)} | "
            f"{_cell(_get(r, 'sr_train', 'fid'), 1)} | {_cell(_get(r, 'cascade', 'precision'), 3)} | "
            f"{_cell(_get(r, 'cascade', 'recall'), 3)} | {_cell(_get(r, 'sr_heldout', 'spectrum'), 2)} | "
            f"{r['train_seconds'] / 60:.1f} ({r['total_train_seconds'] / 60:.1f}) |")
    curve_head = ("\n| variant | budget point | total TFLOPs | cascade FID | SR-FID held-out |\n"
                  "|---|---|---|---|---|\n")
    curve = [f"| {r['variant']} | ×{r['multiple']:g} | {r['total_flops'] / 1e12:,.2f} | "
             f"{_cell(_get(r, 'cascade', 'fid'), 1)} | {_cell(_get(r, 'sr_heldout', 'fid'), 1)} |"
             for r in rows]
    floor_head = ("\n| floor (data against data) | protocol | FID mean | min–max over splits |\n"
                  "|---|---|---|---|\n")
    floors = [f"| {f['name']} | {f['protocol']} | {f['fid']['mean']:.1f} | "
              f"{f['fid']['min']:.1f}–{f['fid']['max']:.1f} |" for f in summary["floors"]["rows"]]
    foot = ""
    if shared:
        spent = ", ".join(f"{k.replace('_', ' ')} {v:.0f} s" for k, v in shared.items())
        foot = f"\nShared evaluation, once for the study: {spent}.\n"
    return (head + "\n".join(main) + "\n" + curve_head + "\n".join(curve) + "\n" + floor_head
            + "\n".join(floors) + "\n" + foot)


def figures(results: dict, folder: Path, out: Path) -> None:
    """FID against total training FLOPs (every budget point) and against total NFE (the NFE
    sweep at the main point), means over seeds with the envelope of their intervals, and the
    sample grids side by side, as PNGs in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = results["summary"]["rows"]
    fig, axes = new_figure(figsize=(10, 4.0), dpi=120, ncols=2)
    for ax, section in zip(axes, ("cascade", "sr_heldout"), strict=True):
        for name in dict.fromkeys(r["variant"] for r in rows):
            pts = [(r["total_flops"], r[section]["fid"]) for r in rows
                   if r["variant"] == name and section in r and r[section]["fid"]["mean"] is not None]
            if not pts:
                continue
            x = [p[0] for p in pts]
            y = [p[1]["mean"] for p in pts]
            err = [[p[1]["mean"] - (p[1]["ci95"] or [p[1]["mean"]] * 2)[0] for p in pts],
                   [(p[1]["ci95"] or [p[1]["mean"]] * 2)[1] - p[1]["mean"] for p in pts]]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=name)
        ax.set_xscale("log")
        ax.set_xlabel("total training FLOPs (stage 1 included)")
        ax.set_ylabel({"cascade": "cascade FID", "sr_heldout": "SR-FID held-out"}[section])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, folder / "fid_vs_compute.png")
    fig, ax = new_figure(figsize=(6.4, 4.0), dpi=120)
    for name in dict.fromkeys(r["name"] for r in results["variants"]):
        runs = [r for r in results["variants"] if r["name"] == name]
        curves = [next((p.get("nfe_curve") for p in r["points"] if p["multiple"] == 1), None)
                  for r in runs]
        curves = [c for c in curves if c]
        if not curves:
            continue
        x = [row["nfe"] for row in curves[0]]
        y = [float(np.mean([c[k]["fid"] for c in curves])) for k in range(len(x))]
        ax.plot(x, y, marker="o", label=f"{name} ({len(curves)} seeds)")
    ax.set_xscale("log")
    ax.set_xlabel("denoiser evaluations per sample of the evaluated stage (NFE)")
    ax.set_ylabel("FID (SR held-out; end to end: samples)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, folder / "fid_vs_nfe.png")
    _grids(results, folder, out)


def _grids(results: dict, folder: Path, out: Path) -> None:
    from ...io.images import load_image
    from ...io.sample_folder import seed_path

    rows, labels = [], []
    first = {}
    for r in results["variants"]:
        first.setdefault(r["name"], r)
    n = min(GRID_IMAGES, results["study_config"]["eval"]["samples"])
    for r in first.values():  # variants without cascade samples here (--no-stage1) are left out
        run = out / "runs" / f"{r['name']}-s{r['seed']}" / "eval" / "x1" / "cascade"
        paths = [seed_path(run, s) for s in range(n)]
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
        f.write(markdown_tables(results["summary"],
                                results["shared_eval_seconds_by_part"]).encode())
    if results["variants"]:
        figures(results, folder / "figures", folder)
    return folder / "results.json"
