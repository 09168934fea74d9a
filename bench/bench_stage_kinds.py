"""Training throughput of the three stage kinds at the same network size, in one run.

The study's 64 px stages (``relaydiff/configs/study/emoji64_{relay,sr,edm}.json``: the same UNet; the
super-resolution stage's takes 6 input channels and the conditioning level): images/s of
``Trainer.train_step`` on the same synthetic batches, alternating rounds (median). Target: the
super-resolution stage within 10 % of the relay stage.

    python bench/bench_stage_kinds.py [--rounds 5] [--steps 4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from training_helpers import image_folder

from relaydiff.training.config import config_path, load_train_config
from relaydiff.training.loop import Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = image_folder(Path(tmp) / "data", 32, 64)
        trainers = {}
        for kind in ("relay", "sr", "edm"):
            cfg = load_train_config(config_path(f"study/emoji64_{kind}"),  # unlabelled data
                                    [f"data.path={data}", "log.tensorboard=false", "cond=false",
                                     "stage.guidance.scale=1"])
            trainers[kind] = trainer = Trainer(cfg, Path(tmp) / kind)
            trainer.batches = [next(iter(trainer._loader())) for _ in range(1)]
        times: dict[str, list[float]] = {k: [] for k in trainers}
        for trainer in trainers.values():  # warm-up
            trainer.train_step(trainer.batches)
        for _ in range(args.rounds):
            for kind, trainer in trainers.items():
                start = time.perf_counter()
                for _ in range(args.steps):
                    trainer.train_step(trainer.batches)
                times[kind].append(time.perf_counter() - start)
    batch = trainers["relay"].config.batch
    rate = {k: batch * args.steps / statistics.median(v) for k, v in times.items()}
    print(f"{torch.get_num_threads()} threads, batch {batch}, {args.rounds} rounds × "
          f"{args.steps} steps (median)")
    for kind, r in rate.items():
        fpi = trainers[kind].cost.flops_per_image
        print(f"  {kind:<6} {r:7.2f} img/s   {fpi / 1e9:.3f} GFLOP/img (fwd+bwd)")
    print(f"ratio sr / relay: {rate['sr'] / rate['relay']:.3f}  (target ≥ 0.90)")


if __name__ == "__main__":
    main()
