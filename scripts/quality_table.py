"""Collect the measured rows of docs/quality.md into one JSON file, a table and a figure.

Each row is ``NAME=RESULT.json``: the output of ``relaydiff eval samples`` for one setting (the
JSON of ``scripts/quality_stage1.sh`` carries its sampling flags and time too). Rows named
``ema-<σ_rel>`` are post-hoc EMA reconstructions and are drawn as a curve of FID against
``σ_rel``, with the ``--baseline`` row (the half-life EMA, same sampler settings) as a line;
the other rows are drawn as bars. Every row must use the same reference and sample count.

    python scripts/quality_table.py --out docs/images/quality_results.json \
        --figure docs/images/quality_stage1.png --baseline cfg2 none=q/none.json cfg2=q/cfg2.json …
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from relaydiff.analysis.plotting import new_figure, save_figure
from relaydiff.io.files import write_json
from relaydiff.version import __version__

EMA_PREFIX = "ema-"


def read_row(spec: str) -> dict:
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        sys.exit(f"row {spec!r}: write NAME=RESULT.json")
    try:
        result = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        sys.exit(f"{path}: not a readable result JSON ({e})")
    missing = [k for k in ("fid", "kid", "precision", "recall", "n_images", "reference")
               if k not in result]
    if missing:
        sys.exit(f"{path}: no {', '.join(missing)}; evaluate with --metrics fid,pr,kid")
    return {"name": name, "result": path, "fid": result["fid"], "kid": result["kid"],
            "kid_std": result.get("details", {}).get("kid_std"), "precision": result["precision"],
            "recall": result["recall"], "n_images": result["n_images"],
            "reference": result["reference"]["path"],
            "reference_fingerprint": result["reference"].get("fingerprint"),
            "sampling_seconds": result.get("sampling_seconds"),
            "sample_flags": result.get("sample_flags")}


def plot(rows: list[dict], baseline: dict | None, path: Path) -> None:
    bars = [r for r in rows if not r["name"].startswith(EMA_PREFIX)]
    curve = sorted((float(r["name"][len(EMA_PREFIX):]), r["fid"]) for r in rows
                   if r["name"].startswith(EMA_PREFIX))
    fig, axes = new_figure(ncols=2 if curve else 1, figsize=(11 if curve else 6, 3.8), dpi=120,
                           squeeze=False)
    ax = axes[0, 0]
    ax.barh([r["name"] for r in bars][::-1], [r["fid"] for r in bars][::-1], color="#4c72b0")
    ax.set_xlim(min(r["fid"] for r in bars) - 5, max(r["fid"] for r in bars) + 2)
    ax.set_xlabel(f"FID ({bars[0]['n_images']} samples)")
    ax.grid(axis="x", alpha=0.3)
    if curve:
        ax = axes[0, 1]
        ax.plot(*zip(*curve, strict=True), marker="o", label="post-hoc EMA")
        if baseline is not None:
            ax.axhline(baseline["fid"], color="gray", ls="--", label=f"half-life EMA ({baseline['name']})")
        ax.set_xlabel("σ_rel")
        ax.set_ylabel("FID")
        ax.legend()
        ax.grid(alpha=0.3)
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", nargs="+", metavar="NAME=RESULT.json")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--figure", type=Path, default=None)
    parser.add_argument("--baseline", default=None, help="the row the post-hoc curve is read against")
    args = parser.parse_args()

    rows = [read_row(spec) for spec in args.rows]
    for key in ("reference_fingerprint", "n_images"):
        if len({r[key] for r in rows}) > 1:
            sys.exit(f"rows differ in {key}: {sorted({str(r[key]) for r in rows})}; compare like with like")
    by_name = {r["name"]: r for r in rows}
    if args.baseline is not None and args.baseline not in by_name:
        sys.exit(f"--baseline {args.baseline}: not a row name ({', '.join(by_name)})")
    baseline = by_name.get(args.baseline)
    write_json({"relaydiff_version": __version__, "rows": rows}, args.out)
    if args.figure is not None:
        plot(rows, baseline, args.figure)
    print("| setting | FID | KID ×10³ | precision | recall | sampling s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        kid = f"{1e3 * r['kid']:.1f}" + (f" ± {1e3 * r['kid_std']:.1f}" if r["kid_std"] else "")
        print(f"| {r['name']} | {r['fid']:.2f} | {kid} | {r['precision']:.3f} | {r['recall']:.3f} | "
              f"{r['sampling_seconds'] if r['sampling_seconds'] is not None else '—'} |")


if __name__ == "__main__":
    main()
