"""High resolution on one machine: memory and time of tiled sampling, throughput of crop training.

* ``memory``: peak resident memory (``/usr/bin/time``) of ``relaydiff upscale --to N --tile 256``
  for one image at N = 512, 1024, 2048 (one application of the cascade's last stage, from N/4),
  next to the same without ``--tile`` (``--fast``, one image per call; the exact mode pads every
  call to 8 images). Target: the tiled 2048 figure at most 1.5× the 512 figure.
* ``time``: seconds per output megapixel at 1024, tiled (``tile=256``) against untiled, in one
  process, alternating rounds (median), the same mode (``batch_invariant=False``, all threads).
  Target: tiled at most 1.5× untiled.
* ``crop``: training images/s (data loading included) of the 64→256 relay stage on 64-px crops
  of the 256-px images against the same network as a 16→64 relay stage on the 64-px images
  (same pixels per step), alternating rounds (median). Target: within 10 %.

Figures go to ``--json`` (strict JSON) and the console; run on an idle machine.

    python bench/bench_highres.py [memory time crop] [--cascade fluent-emoji-3d-16to256]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from relaydiff.cascade import RelayCascade
from relaydiff.data.sources import default_dataset
from relaydiff.io.files import read_json, write_json
from relaydiff.io.images import from_uint8, load_image, save_png, to_uint8
from relaydiff.ops import downsample, upsample
from relaydiff.training.config import config_path, load_train_config
from relaydiff.training.loop import Trainer

ROOT = Path(__file__).resolve().parents[1]
SIZES = (512, 1024, 2048)


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def input_image(size: int) -> np.ndarray:
    """A data image at ``size`` px (box-downsampled or nearest-upsampled from 256 px)."""
    x = from_uint8(torch.from_numpy(load_image(sorted((default_dataset((256, 64, 16)) / "256")
                                                      .rglob("*.png"))[0])).permute(2, 0, 1)[None])
    x = downsample(x, 256 // size) if size <= 256 else upsample(x, size // 256)
    return to_uint8(x)[0]


def peak_memory(args: list[str]) -> tuple[float, float]:
    """(peak resident MB, wall seconds) of ``relaydiff ARGS`` in a fresh process."""
    with tempfile.NamedTemporaryFile("r", suffix=".txt") as f:
        start = time.perf_counter()
        r = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", f.name, sys.executable, "-m",
                            "relaydiff", *args], capture_output=True, text=True)
        wall = time.perf_counter() - start
        if r.returncode:
            return float("nan"), wall
        return int(f.read().split()[-1]) / 1024, wall


def bench_memory(cascade: str, tmp: Path) -> list[dict]:
    rows = []
    for n in SIZES:
        folder = tmp / f"in{n}"
        folder.mkdir()
        save_png(input_image(n // 4), folder / "x.png")
        for tile, extra in ((256, []), (0, ["--fast", "--batch", "1"])):
            out = tmp / f"out{n}-{tile}"
            mb, wall = peak_memory(["upscale", "--cascade", cascade, "--input", str(folder), "--to",
                                    str(n), "--tile", str(tile), "--out", str(out), *extra])
            rows.append({"size": n, "tile": tile, "mode": "fast" if extra else "exact",
                         "peak_mb": None if mb != mb else round(mb, 1), "wall_s": round(wall, 2)})
            print(f"  upscale --to {n} --tile {tile} {' '.join(extra)}: peak {mb:.0f} MB, "
                  f"{wall:.1f} s")
    return rows


def bench_time(cascade: str, rounds: int) -> dict:
    model = RelayCascade.from_pretrained(cascade)
    low = from_uint8(torch.from_numpy(input_image(256)).permute(2, 0, 1)[None])
    times: dict[int, list[float]] = {0: [], 256: []}
    for r in range(rounds + 1):  # the first round warms up
        for tile in times:
            start = time.perf_counter()
            model([0], low_res=low, to=1024, tile=tile, batch_invariant=False, dtype=torch.float32)
            if r:
                times[tile].append(time.perf_counter() - start)
    per_mp = {t: statistics.median(v) / (1024 * 1024 / 1e6) for t, v in times.items()}
    print(f"  1024 px: untiled {per_mp[0]:.2f} s/MP, tiled 256 {per_mp[256]:.2f} s/MP, ratio "
          f"{per_mp[256] / per_mp[0]:.3f} (target ≤ 1.5)")
    return {"rounds": rounds, "seconds_per_megapixel": {"untiled": per_mp[0], "tile256": per_mp[256]},
            "ratio": per_mp[256] / per_mp[0]}


def bench_crop(rounds: int, steps: int, tmp: Path) -> dict:
    data = default_dataset((256, 64, 16))
    common = ["log.tensorboard=false", "checkpoint.every_images=100000000"]
    cfgs = {
        "64to256_crop64": load_train_config(config_path("relay_64to256"),
                                            [f"data.path={data / '256'}", *common]),
        "16to64_full": load_train_config(config_path("relay_64to256"), [
            f"data.path={data / '64'}", "stage.resolution=64", "stage.network.img_resolution=64",
            "data.crop=null", *common]),
    }
    trainers = {k: Trainer(c, tmp / k) for k, c in cfgs.items()}
    loaders = {k: iter(t._loader()) for k, t in trainers.items()}
    times: dict[str, list[float]] = {k: [] for k in trainers}
    for r in range(rounds + 1):
        for k, t in trainers.items():
            start = time.perf_counter()
            for _ in range(steps):
                t.train_step([next(loaders[k])])
                t.step += 1
            if r:
                times[k].append(time.perf_counter() - start)
    batch = cfgs["16to64_full"].batch
    rate = {k: batch * steps / statistics.median(v) for k, v in times.items()}
    ratio = rate["64to256_crop64"] / rate["16to64_full"]
    print(f"  crop training: 64→256 on 64-px crops {rate['64to256_crop64']:.1f} img/s, 16→64 "
          f"{rate['16to64_full']:.1f} img/s, ratio {ratio:.3f} (target ≥ 0.90)")
    return {"rounds": rounds, "steps": steps, "batch": batch, "images_per_s": rate, "ratio": ratio}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="*", default=["memory", "time", "crop"])
    parser.add_argument("--cascade", default="fluent-emoji-3d-16to256")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "images" / "bench_highres.json")
    args = parser.parse_args()
    result = read_json(args.json) if args.json.exists() else {}
    result.update({"cpu": cpu_name(), "threads": torch.get_num_threads(),
                   "omp_num_threads": os.environ.get("OMP_NUM_THREADS")})
    with tempfile.TemporaryDirectory() as tmp:
        if "memory" in args.parts:
            result["memory"] = bench_memory(args.cascade, Path(tmp))
        if "time" in args.parts:
            result["time"] = bench_time(args.cascade, args.rounds)
        if "crop" in args.parts:
            result["crop"] = bench_crop(args.rounds, 8, Path(tmp))
    write_json(result, args.json)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
