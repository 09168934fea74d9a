"""Choose the packaged third stage's sampler settings (docs/pretrained.md): relay the two-stage
cascade's 64-px samples of seeds 0…N−1 (N = 128) to 256 px with one setting of the third stage's
relay sampler per run, and measure FID, KID, SWD and the spectrum distance against all 3,391
fluent-emoji-3d images at 256 px, next to the same 64-px samples bicubic-upscaled ×4. One line per
run is appended to ``OUT/results.jsonl`` (its settings, σ grid and network evaluations per image);
``--summary JSON`` collects them (strict JSON, as ``docs/images/pretrained_256_sweep.json``).

    python scripts/sweep_pretrained_256.py low                          # the 64-px samples
    python scripts/sweep_pretrained_256.py bicubic
    python scripts/sweep_pretrained_256.py steps6 '{"steps": 6}'      # relay_sampler fields
    python scripts/sweep_pretrained_256.py --summary docs/images/pretrained_256_sweep.json

Each run uses one thread; FID at 128 samples is biased upwards, so only rows of one sweep (the
same seeds, the same reference) compare.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from relaydiff.analysis.artifacts import bicubic
from relaydiff.app.study.runs import stage_nfe
from relaydiff.cascade import RelayCascade
from relaydiff.data.floors import write_images
from relaydiff.data.sources import default_dataset
from relaydiff.io.files import finite_or_none, write_json
from relaydiff.io.images import from_uint8, load_image
from relaydiff.io.sample_folder import seed_path
from relaydiff.metrics.evaluate import build_reference, evaluate
from relaydiff.pretrained import PRETRAINED, PRETRAINED_256
from relaydiff.sample_writer import write_samples, write_upscaled
from relaydiff.schedules import karras_sigmas

OUT = Path("runs/sweep256")
N = 128
KEYS = ("fid", "kid", "swd", "spectrum")
SETTINGS = ("steps", "sigma_trunc", "eta", "order")  # the relay_sampler fields a row records


def main() -> None:
    if sys.argv[1] == "--summary":
        rows = [json.loads(line) for line in (OUT / "results.jsonl").read_text().splitlines()]
        write_json(finite_or_none({"seeds": [0, N - 1], "reference": "fluent-emoji-3d, all "
                                   "3,391 images at 256 px", "script": "scripts/sweep_pretrained_256.py",
                                   "rows": rows}), Path(sys.argv[2]))
        return
    torch.set_num_threads(1)
    seeds = list(range(N))
    data = default_dataset((256, 64, 16))
    variant = sys.argv[1]
    low_dir, ref = OUT / f"samples64_{N}", OUT / "reference_256.npz"
    if variant == "low":
        write_samples(RelayCascade.from_pretrained(PRETRAINED), seeds, low_dir, batch=16,
                      batch_invariant=False)
        if not ref.exists():
            build_reference(data / "256").save(ref)
        return
    low = from_uint8(np.stack([load_image(seed_path(low_dir, s)) for s in seeds]))
    dest = OUT / f"{variant}_{N}"
    settings = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    if variant == "bicubic":
        write_images(bicubic(low.double(), 4).clamp(-1, 1), dest, first_seed=0)
        row = {"images": "the same 64-px samples, bicubic ×4"}
    else:
        three = RelayCascade.from_pretrained(PRETRAINED_256)
        cfg = three.configs[-1]
        cfg = three.configs[-1] = dataclasses.replace(
            cfg, relay_sampler=dataclasses.replace(cfg.relay_sampler, **settings))
        start = time.time()
        write_upscaled(three, low, seeds, [seed_path(dest, s) for s in seeds], batch=16,
                       batch_invariant=False, to=256, progress=False)
        print("time", time.time() - start)
        s = cfg.relay_sampler
        sigmas = karras_sigmas(s.steps, s.sigma_min, s.sigma_max, s.rho, truncate=s.sigma_trunc)
        row = {"images": "third stage", "relay_sampler": {k: getattr(s, k) for k in SETTINGS},
               "sigmas": [round(v, 4) for v in sigmas.tolist()], "evaluations": stage_nfe(cfg)}
    res = evaluate(dest, ref, ["fid", "kid", "swd", "spectrum"])
    row.update({"n": N, **{k: res[k] for k in KEYS}})
    print(json.dumps(row))
    with open(OUT / "results.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
