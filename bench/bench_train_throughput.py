"""Training throughput (images/s) and peak memory of relaydiff's training step vs a plain loop.

Both runs happen in this process, on the same network configuration and batch:

* relaydiff: ``Trainer.train_step`` (SDPA attention, ``channels_last``, bf16 autocast on GPUs,
  per-sample or per-device RNG, EMA update) on synthetic batches;
* baseline: a plain fp32 eager loop of the same network (attention as explicit
  ``softmax(qkᵀ/√d)·v`` instead of SDPA, no autocast, no ``channels_last``, no EMA).

CPU (default): the ``small`` UNet preset at 64×64, an EDM stage. GPU (``--gpu``, needs CUDA):
the paper's 64→256 relay stage (``configs/imagenet256_relay.json``); model FLOP utilisation is
measured FLOPs per image (``torch.utils.flop_counter``) × images/s ÷ the card's dense bf16
peak. Peak memory over the warm-up steps (first steps allocate the optimiser state too):
``torch.cuda.max_memory_allocated`` on GPUs, the peak resident set size above the level
before (sampled every millisecond) on CPUs. Throughput: median over alternating rounds.

    python bench/bench_train_throughput.py [--batch 8] [--rounds 5]
    python bench/bench_train_throughput.py --gpu [--batch 32] [--compile]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import math
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from relaydiff.stage import StageConfig, build_denoiser
from relaydiff.training.config import TrainConfig, load_train_config
from relaydiff.training.loop import Trainer, make_loss

ROOT = Path(__file__).resolve().parents[1]
# Dense bf16 peak (FLOP/s) of known cards, without sparsity.
BF16_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


def explicit_attention(q, k, v, *args, **kwargs):
    """``softmax(q·kᵀ/√d)·v`` written out (what the baseline uses instead of SDPA)."""
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    return weights @ v


@contextlib.contextmanager
def no_sdpa():
    original = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = explicit_attention
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


class PeakMemory:
    """Peak bytes above the level at entry: CUDA allocator statistics, or sampled CPU RSS."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak = device, 0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand memory freed by earlier runs back
            self.start, self.running = self._rss(), True
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self._rss() - self.start)
            time.sleep(0.001)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.start
        else:
            self.running = False
            self.thread.join()


def fake_dataset(root: Path, resolution: int, classes: int, count: int = 8) -> Path:
    """Random images; with ``classes`` > 0 a ``dataset.json`` labels them (EDM's format)."""
    rng = np.random.default_rng(0)
    for k in range(count):
        Image.fromarray(rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8)).save(
            root / f"{k}.png"
        )
    if classes:
        labels = [[f"{k}.png", k % classes] for k in range(count)]
        (root / "dataset.json").write_text(
            json.dumps({"labels": labels, "class_names": [str(c) for c in range(classes)]})
        )
    return root


def synthetic_batch(cfg: TrainConfig, n: int, first: int, device) -> tuple:
    gen = torch.Generator().manual_seed(first)
    images = (
        torch.rand(n, cfg.stage.channels, cfg.stage.resolution, cfg.stage.resolution, generator=gen) * 2 - 1
    )
    labels = torch.randint(max(cfg.stage.label_dim, 1), (n,), generator=gen)
    return images.to(device), labels, torch.arange(first, first + n)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def relaydiff_step(cfg: TrainConfig, out: str, device):
    """``Trainer.train_step`` on a fixed synthetic batch; returns (step, FLOPs per image)."""
    trainer = Trainer(cfg, out)
    micro = [synthetic_batch(cfg, cfg.batch, 0, device)]
    return lambda: trainer.train_step(micro), trainer.cost.flops_per_image


def baseline_step(cfg: TrainConfig, device):
    """A plain fp32 eager step of the same network (run it under :func:`no_sdpa`)."""
    torch.manual_seed(0)
    net = {**cfg.stage.network, "channels_last": False, "checkpointing": False}
    stage = StageConfig.from_dict({**cfg.stage.to_dict(), "network": net})
    den = build_denoiser(stage).to(device).train()
    opt = torch.optim.Adam(den.parameters(), lr=cfg.optim.lr)
    loss_fn = make_loss(cfg)
    images, labels, _ = synthetic_batch(cfg, cfg.batch, 0, device)
    onehot = F.one_hot(labels, stage.label_dim).float().to(device) if stage.label_dim else None
    gen = torch.Generator(device).manual_seed(0)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        sigma = loss_fn.sample_sigma(images.shape[0], generator=gen, device=device)
        loss_fn(den, images, sigma, onehot, generator=gen).mean().backward()
        opt.step()

    return step


def measure(variants: dict, args, device) -> dict[str, tuple[float, int]]:
    """Peak memory over each variant's warm-up steps, then ``rounds`` alternating rounds of
    ``steps`` timed steps each (alternation evens out the load of a shared machine).

    Returns ``{name: (median images/s, peak bytes)}``.
    """
    peaks, rates = {}, {name: [] for name in variants}
    for name, (step, context) in variants.items():
        with context(), PeakMemory(device) as mem:
            for _ in range(args.warmup):
                step()
        peaks[name] = mem.peak
    for _ in range(args.rounds):
        for name, (step, context) in variants.items():
            with context():
                sync(device)
                start = time.perf_counter()
                for _ in range(args.steps):
                    step()
                sync(device)
            rates[name].append(args.batch * args.steps / (time.perf_counter() - start))
    return {name: (float(np.median(rates[name])), peaks[name]) for name in variants}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="GPU part: the 64→256 relay stage.")
    parser.add_argument("--batch", type=int, default=None, help="Images per step [CPU 8, GPU 32].")
    parser.add_argument("--steps", type=int, default=None, help="Timed steps per round [CPU 1, GPU 10].")
    parser.add_argument("--rounds", type=int, default=None, help="Alternating rounds [CPU 5, GPU 3].")
    parser.add_argument("--warmup", type=int, default=None, help="Untimed steps [CPU 1, GPU 5].")
    parser.add_argument("--compile", action="store_true", help="torch.compile the relaydiff model.")
    parser.add_argument("--peak-tflops", type=float, default=None, help="Dense bf16 peak (GPU).")
    args = parser.parse_args()
    gpu = args.gpu
    if gpu and not torch.cuda.is_available():
        raise SystemExit("--gpu needs CUDA")
    device = torch.device("cuda" if gpu else "cpu")
    args.batch = args.batch or (32 if gpu else 8)
    args.steps = args.steps or (10 if gpu else 1)
    args.rounds = args.rounds or (3 if gpu else 5)
    args.warmup = args.warmup if args.warmup is not None else (5 if gpu else 1)

    with tempfile.TemporaryDirectory() as tmp:
        if gpu:
            base = load_train_config(ROOT / "configs" / "imagenet256_relay.json")
            overrides = {
                "precision": "bf16",
                "noise_rng": "per_device",
                "compile": args.compile,
                "stage": {**base.stage.to_dict(), "network": {**base.stage.network, "channels_last": True}},
            }
        else:
            base = TrainConfig.from_dict(
                {"stage": {"kind": "edm", "resolution": 64, "network": {"name": "unet", "preset": "small"}}}
            )
            overrides = {
                "stage": {**base.stage.to_dict(), "network": {**base.stage.network, "channels_last": True}}
            }
        res = base.stage.resolution
        data = fake_dataset(Path(tmp), res, base.stage.label_dim)
        cfg = TrainConfig.from_dict(
            {
                **base.to_dict(),
                **overrides,
                "batch": args.batch,
                "batch_per_device": None,
                "device": str(device),
                "data": {"path": str(data)},
                "log": {"tensorboard": False},
            }
        )
        what = f"{'relay' if gpu else 'edm'} stage {res}×{res}, batch {args.batch}"
        print(
            f"device: {torch.cuda.get_device_name() if gpu else 'CPU'} "
            f"({torch.get_num_threads()} threads); {what}"
        )
        with tempfile.TemporaryDirectory() as out:
            step, flops = relaydiff_step(cfg, out, device)
            results = measure(
                {
                    "baseline": (baseline_step(cfg, device), no_sdpa),
                    "relaydiff": (step, contextlib.nullcontext),
                },
                args,
                device,
            )
    (ips_base, mem_base), (ips, mem) = results["baseline"], results["relaydiff"]
    print(
        f"baseline fp32 eager (no SDPA/autocast/channels_last): {ips_base:8.2f} img/s, "
        f"peak memory {mem_base / 2**20:8.1f} MiB"
    )
    print(
        f"relaydiff training step:                              {ips:8.2f} img/s, "
        f"peak memory {mem / 2**20:8.1f} MiB"
    )
    print(
        f"throughput ratio relaydiff/baseline: {ips / ips_base:.2f}×; "
        f"memory ratio: {mem / max(mem_base, 1):.2f}×; {flops / 1e9:.2f} GFLOP/image (fwd+bwd)"
    )
    if gpu:
        name = torch.cuda.get_device_name()
        peak = (
            args.peak_tflops * 1e12
            if args.peak_tflops
            else next((v for k, v in BF16_PEAK.items() if k in name), None)
        )
        if peak is None:
            print(f"MFU: unknown bf16 peak for {name}; pass --peak-tflops")
        else:
            print(
                f"MFU: {flops * ips / peak:.1%} of {peak / 1e12:.0f} TFLOP/s "
                f"(baseline {flops * ips_base / peak:.1%})"
            )


if __name__ == "__main__":
    main()
