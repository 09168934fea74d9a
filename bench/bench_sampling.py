"""CPU sampling speed of the packaged cascade, against baselines measured in the same run.

Prints, for ``--images`` seeds on all of torch's threads:
  * exact mode (the default: 8 samples per network call, one thread per call, groups in
    parallel; bitwise the same for any batch, rank or thread count) vs the exact mode of
    relaydiff 0.1 (batches of 16 with oneDNN convolutions switched off, all threads), written
    here as it was: target ≥ 2× faster;
  * ``--fast`` (batches of 16 with oneDNN on all threads);
  * the network work in GFLOP/s (FLOPs of every denoiser call, counted with
    ``torch.utils.flop_counter``) next to the machine's measured fp32 matmul peak (a
    2048×2048 GEMM, all threads and one thread).
Timings are medians over rounds that run each candidate once in turn. Run on an idle machine:
``python bench/bench_sampling.py [--images 16] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from relaydiff import RelayCascade


@contextlib.contextmanager
def onednn_off():
    """relaydiff 0.1's exact mode: convolutions without oneDNN (thnn), batched."""
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


def matmul_gflops(threads: int, n: int = 2048, repeats: int = 5) -> float:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9
    finally:
        torch.set_num_threads(before)


def network_flops(cascade: RelayCascade, seeds: list[int]) -> float:
    """FLOPs of all denoiser calls of sampling ``seeds`` (counted once, batched)."""
    with FlopCounterMode(display=False) as counter:
        cascade(seeds, batch_invariant=False)
    return float(counter.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cascade = RelayCascade.from_pretrained("fluent-emoji-3d-16to64")
    seeds = list(range(args.images))
    candidates = {
        "exact (now)": lambda: cascade(seeds),
        "exact of relaydiff 0.1 (oneDNN off, batch 16)": lambda: _old_exact(cascade, seeds),
        "fast (oneDNN, batch 16)": lambda: cascade(seeds, batch_size=16, batch_invariant=False),
    }
    times: dict[str, list[float]] = {k: [] for k in candidates}
    for _ in range(args.rounds):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    flops = network_flops(cascade, seeds)
    peak_all, peak_one = matmul_gflops(torch.get_num_threads()), matmul_gflops(1)
    print(f"packaged cascade, {args.images} images, {torch.get_num_threads()} threads, "
          f"{args.rounds} rounds (median)")
    for name, sec in med.items():
        print(f"  {name:<48} {sec / args.images:7.3f} s/image  {flops / sec / 1e9:6.1f} GFLOP/s "
              "of network work")
    print(f"  network work per image: {flops / args.images / 1e9:.2f} GFLOP")
    print(f"  fp32 matmul peak (2048², measured): {peak_all:.1f} GFLOP/s on "
          f"{torch.get_num_threads()} threads, {peak_one:.1f} on 1")
    base = med["exact of relaydiff 0.1 (oneDNN off, batch 16)"]
    print("ratios (target):")
    print(f"  exact now vs exact of 0.1: {base / med['exact (now)']:.2f}× faster  (≥ 2)")
    print(f"  fast vs exact now:         {med['exact (now)'] / med['fast (oneDNN, batch 16)']:.2f}×")


def _old_exact(cascade: RelayCascade, seeds: list[int]):
    with onednn_off():
        return cascade(seeds, batch_size=16, batch_invariant=False)


if __name__ == "__main__":
    main()
