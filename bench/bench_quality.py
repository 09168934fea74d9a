"""The costs of autoguidance and of post-hoc EMA bookkeeping, against baselines in the same run.

* Autoguided sampling: a guide network of half the channels (about ¼ of the parameters) on
  every stage, guidance 2.0, against the same cascade unguided, in exact mode; for the packaged
  cascade (networks so small that per-layer overheads, which do not shrink with the channels,
  take much of the time) and for a 64 px stage 1 of 10.7 M parameters (convolutions take the
  time). Target: ≤ 1.35× the unguided time.
* Post-hoc EMA: ``Trainer.train_step`` (which updates the EMAs) with two power-function
  profiles (σ_rel 0.05, 0.10) against the same step without them, on the study's 64 px relay
  stage (the snapshot writes, once per ``posthoc_every_images``, are not in it); and the disk
  of the post-hoc snapshots against that of the checkpoints for the paper's CelebA-HQ relay
  config (47 Mimg, a checkpoint every 2 Mimg, 5 kept; a checkpoint holds model, EMA, Adam's two
  moments and the two running averages) with float16 snapshots at every checkpoint (computed
  from the tensor sizes). Target: ≤ 5 % step time, ≤ 2× disk.

Timings are medians over rounds that run each candidate once in turn. Run on an idle machine:
``python bench/bench_quality.py [--images 8] [--rounds 3]``; ``--disk-only --json PATH`` computes
only the disk comparison (seconds) and writes it with the targets (docs/images/bench_quality_disk.json).
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

from relaydiff import RelayCascade
from relaydiff.io.files import write_json
from relaydiff.stage import StageConfig, build_denoiser
from relaydiff.training.config import config_path, load_train_config
from relaydiff.training.loop import Trainer

ROOT = Path(__file__).resolve().parents[1]
# The targets: autoguided / unguided sampling time, post-hoc EMA step-time overhead (%), disk of
# the post-hoc snapshots / disk of the kept checkpoints.
TARGETS = {"autoguided_over_unguided": 1.35, "posthoc_step_overhead_percent": 5.0,
           "snapshots_over_checkpoints": 2.0}


def _medians(candidates: dict, rounds: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _guided_copy(cascade: RelayCascade) -> tuple[RelayCascade, list[float]]:
    """``cascade`` with a guide of half the channels (about ¼ of the parameters) on every stage
    and autoguidance 2.0; returns it and the guide/stage parameter ratios."""
    guided = RelayCascade([StageConfig.from_dict(c.to_dict()) for c in cascade.configs],
                          cascade.denoisers)
    ratios = []
    for k, cfg in enumerate(guided.configs):
        small = StageConfig.from_dict(cfg.to_dict())
        small.network = {**cfg.network,
                         "model_channels": guided.denoisers[k].model.model_channels // 2}
        guide = build_denoiser(small).eval()
        guided.set_guide(k, small, guide)
        cfg.guidance.kind, cfg.guidance.scale = "auto", 2.0
        ratios.append(_params(guide) / _params(guided.denoisers[k]))
    return guided, ratios


def _compute_bound_stage() -> RelayCascade:
    """A 64 px stage 1 whose time goes to convolutions (10.7 M parameters), sampled in 8 steps."""
    cfg = StageConfig.from_dict({"kind": "edm", "resolution": 64, "network": {
        "name": "unet", "img_resolution": 64, "model_channels": 64, "channel_mult": [1, 2, 2, 2],
        "num_blocks": 2, "attn_resolutions": [8], "dropout": 0.0}})
    cfg.edm_sampler.steps = 8
    return RelayCascade([cfg], [build_denoiser(cfg).eval()])


def autoguidance(images: int, rounds: int) -> None:
    seeds = list(range(images))
    cases = {"the packaged cascade (16 px: 32 channels, 64 px: 16 channels)":
             RelayCascade.from_pretrained("fluent-emoji-3d-16to64"),
             "a compute-bound 64 px stage 1 (64 channels, 8 steps)": _compute_bound_stage()}
    for title, plain in cases.items():
        guided, ratios = _guided_copy(plain)
        med = _medians({"unguided": lambda p=plain: p(seeds),
                        "autoguided": lambda g=guided: g(seeds)}, rounds)
        print(f"autoguidance, {title}: {images} images, exact mode, {torch.get_num_threads()} "
              f"threads, guide/stage parameters {', '.join(f'{r:.2f}' for r in ratios)}, "
              f"{sum(_params(d) for d in plain.denoisers) / 1e6:.2f} M parameters")
        for name, t in med.items():
            print(f"  {name:<11} {t:7.2f} s  ({t / images:.3f} s/image)")
        print(f"  ratio autoguided / unguided: {med['autoguided'] / med['unguided']:.3f}  "
              f"(target ≤ {TARGETS['autoguided_over_unguided']})")


def posthoc(rounds: int, steps: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = image_folder(Path(tmp) / "data", 16, 64)
        trainers = {}
        for name, extra in (("without", []), ("with", ["ema.posthoc_sigma_rels=[0.05, 0.10]",
                                                        "ema.posthoc_every_images=100000000"])):
            cfg = load_train_config(config_path("study/emoji64_relay"),
                                    [f"data.path={data}", "log.tensorboard=false", *extra])
            trainers[name] = trainer = Trainer(cfg, Path(tmp) / name)
            trainer.batches = [next(iter(trainer._loader()))]
            trainer.train_step(trainer.batches)  # warm-up

        def run(trainer: Trainer) -> None:
            for _ in range(steps):
                trainer.train_step(trainer.batches)

        med = _medians({k: (lambda t=t: run(t)) for k, t in trainers.items()}, rounds)
    n = _params(trainer.denoiser.model)
    print(f"post-hoc EMA: study relay stage ({n / 1e6:.2f} M parameters), batch {cfg.batch}, "
          f"{rounds} rounds × {steps} steps")
    for name, t in med.items():
        print(f"  {name:<8} {1000 * t / steps:8.1f} ms/step")
    print(f"  overhead: {100 * (med['with'] / med['without'] - 1):+.1f} %  "
          f"(target ≤ {TARGETS['posthoc_step_overhead_percent']:g} %)")


def disk() -> dict:
    """Post-hoc snapshots' disk against the checkpoints' for the paper's CelebA-HQ relay config,
    computed from the tensor sizes (nothing is written)."""
    paper = load_train_config(ROOT / "configs" / "celebahq256_relay.json", ["data.path=unused"])
    params = _params(build_denoiser(paper.stage, initialize=False).model)
    fp32 = 4 * params
    # A checkpoint: model + EMA + Adam's two moments (fp32) + the post-hoc running averages.
    per_checkpoint = 4 * fp32 + 2 * fp32
    checkpoints = paper.checkpoint.keep * per_checkpoint
    times = paper.total_images // paper.checkpoint.every_images
    snapshots = times * 2 * fp32 // 2  # two profiles, float16
    print(f"post-hoc EMA disk, CelebA-HQ relay config ({params / 1e6:.0f} M parameters): "
          f"{paper.checkpoint.keep} checkpoints {checkpoints / 1e9:.1f} GB, {times} × 2 float16 "
          f"snapshots {snapshots / 1e9:.1f} GB: {snapshots / checkpoints:.2f}×  "
          f"(target ≤ {TARGETS['snapshots_over_checkpoints']:g}×)")
    return {"config": "configs/celebahq256_relay.json", "parameters": params,
            "checkpoints_kept": paper.checkpoint.keep, "checkpoint_bytes": per_checkpoint,
            "checkpoints_bytes": checkpoints, "snapshot_pairs": times,
            "snapshots_bytes": snapshots, "ratio": snapshots / checkpoints}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--disk-only", action="store_true",
                        help="only the disk comparison (no timing; seconds)")
    parser.add_argument("--json", type=Path, default=None,
                        help="also write the disk comparison to this JSON file")
    args = parser.parse_args()
    if not args.disk_only:
        autoguidance(args.images, args.rounds)
        posthoc(args.rounds, args.steps)
    result = disk()
    if args.json is not None:
        write_json({"what": "bench/bench_quality.py --disk-only: post-hoc EMA snapshots' disk "
                            "against the kept checkpoints' (bytes, from the tensor sizes)",
                    "targets": TARGETS, "disk": result}, args.json)


if __name__ == "__main__":
    main()
