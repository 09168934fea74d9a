"""Evaluate the packaged 16→64 cascade for its model card (docs/pretrained.md).

Samples one image per data image (3,391 by default, seeds 0…N−1), then measures them and the
16→64 round trip of the data, ``up(down(x))`` (the floor a relay stage must beat), against the
whole fluent-emoji-3d data set at 64 px. Resumable: existing samples and statistics are reused.

    python scripts/eval_pretrained.py --out runs/eval_pretrained [--cascade DIR] [--exact]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from relaydiff.cascade import RelayCascade
from relaydiff.data.datasets import open_dataset
from relaydiff.data.floors import write_round_trip
from relaydiff.data.sources import default_dataset
from relaydiff.io.files import finite_or_none, write_json
from relaydiff.metrics.evaluate import build_reference, evaluate
from relaydiff.pretrained import pretrained_path
from relaydiff.sample_writer import write_samples, write_summary

METRICS = ["fid", "kid", "pr", "swd", "spectrum"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/eval_pretrained"))
    parser.add_argument("--cascade", type=Path, default=None, help="default: the packaged one")
    parser.add_argument("--samples", type=int, default=None, help="default: the data set size")
    parser.add_argument("--exact", action="store_true",
                        help="batch-invariant CPU sampling (as `relaydiff sample`; ~2.5x slower)")
    args = parser.parse_args()

    data = default_dataset((64, 16))
    n_data = len(open_dataset(data / "64", resolution=64))
    n = args.samples or n_data
    cascade = RelayCascade.from_pretrained(args.cascade or pretrained_path())
    seeds = list(range(n))
    write_samples(cascade, seeds, args.out / "samples", batch=16, batch_invariant=args.exact)
    write_summary(cascade, seeds, args.out / "samples")
    write_round_trip(data / "64", args.out / "floor", n_data, cascade.configs[-1].relay.scale)
    ref = args.out / "reference_64.npz"
    if not ref.exists():
        build_reference(data / "64").save(ref)

    rows = []
    for name, folder in (("samples", args.out / "samples"), ("floor up(down(x))", args.out / "floor")):
        res = evaluate(folder, ref, METRICS)
        rows.append({"images": name, "n": res["n_images"], "reference": n_data,
                     **{k: res[k] for k in ("fid", "kid", "precision", "recall", "swd", "spectrum")}})
    write_json(finite_or_none({"cascade": str(args.cascade or pretrained_path()),
                               "exact": args.exact, "rows": rows}), args.out / "results.json")
    print("| images | n | FID | KID ×1e3 | precision | recall | SWD ×1e3 | spectrum (dB) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['images']} | {r['n']:,} | {r['fid']:.1f} | {1e3 * r['kid']:.2f} | "
              f"{r['precision']:.3f} | {r['recall']:.3f} | {r['swd']:.1f} | "
              f"{r['spectrum']:.2f} |")
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
