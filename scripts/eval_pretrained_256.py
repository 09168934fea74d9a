"""Evaluate the packaged three-stage cascade for its model card (docs/pretrained.md).

The 256-px images are the packaged 16→64 cascade's samples at seeds 0…N−1 (N = 3,391, one per
data image; ``relaydiff sample --cascade fluent-emoji-3d-16to64``), relayed to 256 px by the
third stage with the same seeds (``relaydiff upscale --cascade fluent-emoji-3d-16to256 --seed 0
--to 256``). They are measured against all fluent-emoji-3d images at 256 px next to (a) the
same 64-px samples bicubic-upscaled ×4 and (b) the data's own 64→256 round trip ``up(down(x))``;
the same 64-px samples are measured at 64 px against the data at 64 px, next to the data's
16→64 round trip, as the two-stage cascade's figures at the same count. Resumable: existing
samples and statistics are reused.

    python scripts/eval_pretrained_256.py --out runs/eval_pretrained_256
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import torch

from relaydiff.analysis.artifacts import bicubic
from relaydiff.cascade import RelayCascade
from relaydiff.data.datasets import open_dataset
from relaydiff.data.floors import write_images, write_round_trip
from relaydiff.data.sources import default_dataset
from relaydiff.io.files import finite_or_none, write_json
from relaydiff.io.images import from_uint8, load_image
from relaydiff.io.sample_folder import seed_path
from relaydiff.metrics.evaluate import build_reference, evaluate
from relaydiff.sample_writer import write_samples, write_upscaled

METRICS = ["fid", "kid", "pr", "swd", "spectrum"]
KEYS = ("fid", "kid", "precision", "recall", "swd", "spectrum")
CHUNK = 64  # images per upscaling call (files are written after each)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/eval_pretrained_256"))
    parser.add_argument("--samples", type=int, default=None, help="default: the data set size")
    parser.add_argument("--images-only", action="store_true",
                        help="stop after writing the images (the metrics come from a later run)")
    parser.add_argument("--intervals", type=int, default=100,
                        help="bootstrap resamples of the FID and KID intervals (docs/eval.md)")
    parser.add_argument("--part", default="0/1", metavar="K/M",
                        help="with --images-only: relay only the chunks k ≡ K mod M (run M of them)")
    args = parser.parse_args()
    part, parts = (int(v) for v in args.part.split("/"))

    data = default_dataset((256, 64, 16))
    n_data = len(open_dataset(data / "256", resolution=256))
    seeds = list(range(args.samples or n_data))
    two = RelayCascade.from_pretrained("fluent-emoji-3d-16to64")
    three = RelayCascade.from_pretrained("fluent-emoji-3d-16to256")
    low_dir, high_dir, bic_dir = (args.out / name for name in ("samples64", "samples256", "bicubic"))
    write_samples(two, seeds, low_dir, batch=16, batch_invariant=False)
    for start in range(part * CHUNK, len(seeds), parts * CHUNK):
        chunk = seeds[start:start + CHUNK]
        low = from_uint8(np.stack([load_image(seed_path(low_dir, s)) for s in chunk]))
        write_upscaled(three, low, chunk, [seed_path(high_dir, s) for s in chunk], batch=16,
                       batch_invariant=False, to=256, progress=False)
        if not seed_path(bic_dir, chunk[-1]).exists():
            write_images(bicubic(low.double(), 4).clamp(-1, 1), bic_dir, first_seed=chunk[0])
    if args.images_only:
        return
    write_round_trip(data / "256", args.out / "floor", len(seeds), 4)
    ref = args.out / "reference_256.npz"
    if not ref.exists():
        build_reference(data / "256").save(ref)

    write_round_trip(data / "64", args.out / "floor64", len(seeds), 4)
    ref64 = args.out / "reference_64.npz"
    if not ref64.exists():
        build_reference(data / "64").save(ref64)

    rows = []
    for res_px, name, folder, reference in (
            (256, "three-stage cascade (64→256 relay)", subset(high_dir, seeds, args.out), ref),
            (256, "same 64-px samples, bicubic ×4", subset(bic_dir, seeds, args.out), ref),
            (256, "data up(down(x)) 64→256, the floor", args.out / "floor", ref),
            (64, "two-stage cascade (its 64-px samples)", subset(low_dir, seeds, args.out), ref64),
            (64, "data up(down(x)) 16→64, the floor", args.out / "floor64", ref64)):
        res = evaluate(folder, reference, METRICS, intervals=args.intervals)
        rows.append({"resolution": res_px, "images": name, "n": res["n_images"],
                     "reference": n_data, **{k: res[k] for k in KEYS},
                     **{k: res[k] for k in ("fid_ci95", "kid_ci95", "intervals") if k in res}})
    write_json(finite_or_none({"seeds": [seeds[0], seeds[-1]], "threads": torch.get_num_threads(),
                               "relay_sampler": dataclasses.asdict(three.configs[-1].relay_sampler),
                               "rows": rows}),
               args.out / "results.json")
    print(json.dumps(rows, indent=1))


def subset(folder: Path, seeds: list[int], out: Path) -> Path:
    """The images of ``seeds`` in ``folder`` (hard links in ``out/subsets/``), so that every set
    is measured on the same seeds whatever else ``folder`` holds."""
    target = out / "subsets" / f"{folder.name}-{seeds[0]}-{seeds[-1]}"
    for s in seeds:
        link = seed_path(target, s)
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            os.link(seed_path(folder, s), link)
    return target


if __name__ == "__main__":
    main()
