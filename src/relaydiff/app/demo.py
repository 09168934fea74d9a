"""``relaydiff demo``: the relay pipeline on real data, in pictures, in about a quarter of an hour.

Phases, each resumable (a re-run skips what is done and continues what is not):

1. data: fetch fluent-emoji-3d and build it at 64 and 16 pixels;
2. the packaged cascade (trained beforehand, docs/pretrained.md) samples ``--samples`` seeds
   with exact CPU sampling (the pixels ``relaydiff sample`` gives for those seeds);
3. figures of the method from it: relay trajectories, block noise, the frequency SNR of the
   paper's Fig. 2, artifact correction;
4. metrics of its samples and of the round-trip floor ``up(down(x))`` against the data, with a
   sentence per metric on what it shows;
5. your own short training run of both stages, counted in training images with a wall-clock
   cap (a notice says when the cap cut it short), its cost and loss curves;
6. that run's samples, labelled with the images each stage saw; then ``report.html``.

What the figures show therefore never depends on how busy the machine is; the training part
shows that the pipeline works here, and what a few minutes of CPU training give.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..analysis.artifacts import artifact_correction
from ..analysis.figures import noise_figure, relay_trajectory
from ..analysis.report import Figure, Section, write_report
from ..analysis.spectrum import frequency_snr, plot
from ..cascade import RelayCascade
from ..data.datasets import open_dataset
from ..data.floors import data_images, evenly_spaced, write_images, write_round_trip
from ..data.sources import default_dataset
from ..io.files import atomic_writer, finite_or_none, write_json
from ..io.images import image_grid, load_image, save_png, to_uint8
from ..io.sample_folder import seed_path
from ..ops import downsample, upsample
from ..pretrained import PRETRAINED, read_training_record
from ..training.checkpoint import newest_state
from ..training.config import config_path, load_train_config
from ..training.export import cascade_from_snapshots
from ..training.loop import train
from .generate import write_samples, write_summary

STAGES = (("stage1_16", 16), ("relay_16to64", 64))
# Training images per stage for --minutes 1 (idle 2-core x86 machine; --minutes scales them).
IMAGES_PER_MINUTE = {"stage1_16": 2400, "relay_16to64": 1000}
REFERENCE_IMAGES = 1000
OWN_SAMPLES = 16
SMOKE = {
    "data_limit": 48,
    "samples": 4,
    "reference": 48,
    "images": 48,
    "overrides": ["network.model_channels=8", "network.channel_mult=[1,2]", "network.num_blocks=1",
                  "network.attn_resolutions=[]", "batch=8", "checkpoint.every_images=24",
                  "log.every_steps=1", "log.grid_every_images=0", "log.tensorboard=false",
                  "data.workers=0"],
}
METRICS = ["fid", "kid", "pr", "swd", "spectrum"]


@dataclass
class DemoSettings:
    out: Path
    minutes: float = 6.0
    smoke: bool = False
    cache_dir: Path | None = None
    samples: int = 256
    seed: int = 0
    inception: str | None = None
    cascade: str | Path = PRETRAINED


class _Clock:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def minutes(self) -> float:
        return (time.perf_counter() - self.start) / 60

    def log(self, msg: str) -> None:
        print(f"[demo {self.minutes:5.1f} min] {msg}", flush=True)


# ---------------------------------------------------------------------------- your training run
def _images_budget(settings: DemoSettings, name: str) -> int:
    if settings.smoke:
        return SMOKE["images"]
    return max(1, round(settings.minutes * IMAGES_PER_MINUTE[name]))


def _train_stages(settings: DemoSettings, data_root: Path, clock: _Clock) -> dict[str, dict]:
    """Train (or continue) both stages for their images budget, within a wall-clock cap of
    ``--minutes`` in all; returns per stage its cost and whether the cap cut it short."""
    runs = {}
    for name, res in STAGES:
        run_dir = settings.out / "train" / name
        images = _images_budget(settings, name)
        over = [f"data.path={data_root / str(res)}", f"seed={settings.seed}",
                f"total_images={images}"]
        if settings.smoke:
            over += [("stage." + o) if o.startswith("network.") else o for o in SMOKE["overrides"]]
        cfg = load_train_config(config_path(name), over)
        used = sum(_minutes_used(settings.out / "train" / n) for n, _ in STAGES)
        left = settings.minutes - used
        state = newest_state(run_dir)
        done = state is not None and state["images_seen"] >= cfg.total_steps * cfg.batch
        if done:
            clock.log(f"{name}: finished earlier ({state['images_seen']:,} images)")
            runs[name] = {"cost": state["cost"], "cut_short": False, "images_budget": images}
            continue
        left = max(left, 0.0)  # a spent cap still trains one step (and writes a checkpoint)
        clock.log(f"training {name} ({res} px) for {images:,} images, at most {left:.1f} more "
                  "minutes")
        result = train(cfg, run_dir, resume="auto", max_minutes=left)
        cut = not result.finished
        if cut:
            clock.log(f"NOTICE: the {settings.minutes:g}-minute cap stopped {name} after "
                      f"{result.images_seen:,} of {images:,} images (a busy machine?); its samples "
                      "show an undertrained model. Re-run with a larger --minutes to continue.")
        runs[name] = {"cost": result.cost.to_dict(), "cut_short": cut, "images_budget": images}
    return runs


def _minutes_used(run_dir: Path) -> float:
    state = newest_state(run_dir)
    return 0.0 if state is None else state["cost"]["wall_seconds"] / 60


def _loss_curves(settings: DemoSettings, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=120)
    for name, _ in STAGES:
        log = settings.out / "train" / name / "log.jsonl"
        points = []
        if log.exists():
            for line in log.read_text().splitlines():
                rec = json.loads(line)
                if rec.get("event") == "train" and rec.get("loss") is not None:
                    points.append((rec["images_seen"], rec["loss"]))
        if points:
            x, y = zip(*points, strict=True)
            ax.plot(x, y, label=name)
    ax.set_xlabel("training images seen")
    ax.set_ylabel("loss (λ-weighted, mean per pixel)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend()
    fig.tight_layout()
    with atomic_writer(path) as f:
        fig.savefig(f, format="png")
    plt.close(fig)


# ---------------------------------------------------------------------------- figures, metrics
def _data_tensor(folder: Path, n: int, resolution: int | None) -> torch.Tensor:
    total = len(open_dataset(folder, resolution=resolution))
    return data_images(folder, evenly_spaced(n, total), resolution)


def _reference_folder(settings: DemoSettings, data_root: Path, count: int) -> Path:
    """The first ``count`` evenly spaced data images at 64 px as a folder (its statistics are
    cached by content, so they are computed once)."""
    folder = settings.out / f"reference_64_{count}"
    write_images(_data_tensor(data_root / "64", count, 64), folder)
    return folder


def _metrics(settings: DemoSettings, samples: Path, data_root: Path, n: int,
             clock: _Clock) -> list[dict]:
    """FID, KID, precision/recall, SWD and spectrum distance of the packaged cascade's samples
    and of the 16→64 round trip of the data, both against the same data images."""
    from ..metrics.evaluate import evaluate

    floor = settings.out / f"floor_up_down_{n}"
    write_round_trip(data_root / "64", floor, n, 4)
    count = SMOKE["reference"] if settings.smoke else REFERENCE_IMAGES
    count = min(count, len(open_dataset(data_root / "64", resolution=64)))
    ref = _reference_folder(settings, data_root, count)
    metrics = METRICS if n >= 4 else ["fid", "swd", "spectrum"]
    rows = []
    for label, folder in (("packaged cascade, 16→64 samples", samples),
                          ("data up(down(x)), the 16→64 round trip", floor)):
        res = evaluate(folder, ref, metrics, weights=settings.inception, progress=False)
        rows.append({"images": label, "n": res["n_images"], "reference images": count,
                     "FID": res["fid"], "KID ×1e3": 1e3 * res.get("kid", math.nan),
                     "precision": res.get("precision", math.nan),
                     "recall": res.get("recall", math.nan), "SWD ×1e3": res["swd"],
                     "spectrum distance (dB)": res["spectrum"]})
    clock.log(f"metrics: FID {rows[0]['FID']:.1f} (samples) vs {rows[1]['FID']:.1f} (floor)")
    return rows


LOWER_IS_BETTER = {"FID": True, "KID ×1e3": True, "precision": False, "recall": False,
                   "SWD ×1e3": True, "spectrum distance (dB)": True}
MEANING = {
    "FID": "distance between Inception-feature statistics of the two sets (lower is better)",
    "KID ×1e3": "like FID, without FID's bias at small counts (lower is better)",
    "precision": "share of samples that land on the data's feature manifold (higher is better)",
    "recall": "share of the data's manifold the samples cover (higher is better)",
    "SWD ×1e3": "sliced Wasserstein distance of local 7×7 patches at several scales (lower is "
                "better)",
    "spectrum distance (dB)": "how far the radial power spectrum is from the data's, i.e. "
                              "whether fine detail has the right amount of energy (lower is better)",
}


def explain_metrics(rows: list[dict]) -> str:
    """A sentence per metric: what it measures and whether the samples beat the round-trip
    floor on it; and, when they lose somewhere, why a cascade can lose to that floor."""
    samples, floor = rows
    sentences, lost = [], False
    for key, lower in LOWER_IS_BETTER.items():
        a, b = samples.get(key), floor.get(key)
        if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
            continue
        beat = a < b if lower else a > b
        lost |= not beat
        sentences.append(f"<b>{key}</b> ({MEANING[key]}): the samples "
                         f"{'beat' if beat else 'do not beat'} the floor ({a:.3g} vs {b:.3g}).")
    if lost:
        sentences.append(
            "Why the floor can win: it is made of the real images, only blurred, so it keeps "
            "their exact shapes and colours, which Inception features (FID, KID, precision) "
            "reward; the cascade must invent those shapes in its 16 px stage 1 and then the "
            "detail in the relay stage. The spectrum and SWD are where the relay stage's own "
            "work, restoring the fine detail the round trip removes, shows.")
    return " ".join(sentences)


def _artifact_correction(cascade: RelayCascade, data_root: Path,
                         figures: Path) -> tuple[Figure, list[dict]]:
    """Appendix C.3 with 8 data images at 16 px: relay (the packaged cascade) against nearest and
    bicubic upsampling (relaydiff.analysis.artifacts)."""
    low = _data_tensor(data_root / "16", 8, 16)
    seeds = list(range(low.shape[0]))
    rows, columns = artifact_correction(
        {"relay": lambda x: cascade(seeds, low_res=x.float())[-1]}, low, 4)
    grid = image_grid(to_uint8(torch.stack([c[k] for k in seeds for c in columns])),
                      columns=len(columns))
    save_png(grid, figures / "artifact_correction.png")
    caption = ("Per row: the noisy 16 px input (σ = 0.1), then nearest, bicubic and relay "
               "upsampling to 64 px")
    return Figure("figures/artifact_correction.png", caption), rows


def _trained(stage: dict) -> str:
    """One stage's line of the packaged cascade's training record, with its guide's cost."""
    def cost(r: dict) -> str:
        return f"{r['images_seen']:,} images, {r['device_hours']:.2f} {r.get('device', 'device')}-hours"

    guide = stage.get("guide")
    return f"{stage['stage']}: {cost(stage)}" + (f" (its autoguidance guide: {cost(guide)})"
                                                 if guide else "")


def _own_samples(settings: DemoSettings, runs: dict, figures: Path) -> Figure:
    """``OWN_SAMPLES`` samples of your training run, stage 1 and relay side by side, captioned
    with the images each stage saw."""
    cascade = cascade_from_snapshots([settings.out / "train" / name for name, _ in STAGES])
    folder = settings.out / "train" / "samples"
    seeds = list(range(min(OWN_SAMPLES, settings.samples)))
    write_samples(cascade, seeds, folder, all_stages=True, progress=False)
    write_summary(cascade, seeds, folder)
    low = [upsample(torch.from_numpy(load_image(seed_path(folder / "stage1_16", s))).permute(
        2, 0, 1)[None].float(), 4)[0].permute(1, 2, 0).numpy().astype("uint8") for s in seeds]
    high = [load_image(seed_path(folder, s)) for s in seeds]
    save_png(image_grid([t for pair in zip(low, high, strict=True) for t in pair], columns=8),
             figures / "own_samples.png")
    seen = [runs[name]["cost"].get("images_seen", 0) for name, _ in STAGES]
    return Figure("figures/own_samples.png", f"your run: stage 1 (16 px, after {seen[0]:,} "
                  f"training images, nearest-upsampled) next to the relay stage's 64 px output "
                  f"(after {seen[1]:,} images)")


# ---------------------------------------------------------------------------- the demo
def run_demo(settings: DemoSettings) -> Path:
    """Run (or continue) the demo; returns the path of ``report.html``."""
    out = settings.out
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is a file; choose another --out folder")
    if not (settings.minutes > 0 and math.isfinite(settings.minutes)):
        raise ValueError(f"minutes={settings.minutes}: give a positive number of minutes")
    clock = _Clock()
    from ..metrics.weights import load_inception

    load_inception(settings.inception)  # the FID weights must be there before any compute
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)

    clock.log("1/6 data: fluent-emoji-3d at 64 and 16 px")
    data_root = default_dataset((64, 16), settings.cache_dir,
                                limit=SMOKE["data_limit"] if settings.smoke else None)

    n = SMOKE["samples"] if settings.smoke else settings.samples
    seeds = list(range(n))
    packaged = RelayCascade.from_pretrained(settings.cascade)
    clock.log(f"2/6 the packaged cascade {settings.cascade}: {n} samples (exact CPU sampling, the "
              "pixels `relaydiff sample` gives)")
    samples = out / "samples"
    write_samples(packaged, seeds, samples, all_stages=True)
    write_summary(packaged, seeds, samples)

    clock.log("3/6 figures: relay trajectories, block noise, frequency SNR, artifact correction")
    save_png(relay_trajectory(packaged, list(range(4)), stage=1), figures / "relay_trajectory.png")
    data64 = _data_tensor(data_root / "64", 64 if not settings.smoke else 16, 64)
    save_png(noise_figure(data64[:3], 4), figures / "block_noise.png")
    snr = frequency_snr(data64, downsample(data64, 4), sigma=0.3)
    plot(snr, figures / "frequency_snr.png")
    artifact_fig, artifact_rows = _artifact_correction(packaged, data_root, figures)

    clock.log("4/6 metrics against the data (the first time: Inception features of the reference)")
    metric_rows = _metrics(settings, samples, data_root, n, clock)
    metric_text = explain_metrics([dict(r) for r in metric_rows])

    clock.log(f"5/6 your own training run (at most {settings.minutes:g} minutes)")
    runs = _train_stages(settings, data_root, clock)
    _loss_curves(settings, figures / "loss_curves.png")
    clock.log("6/6 your run's samples and the report")
    own_fig = _own_samples(settings, runs, figures)

    cut = [name for name, r in runs.items() if r["cut_short"]]
    record = read_training_record(settings.cascade)
    write_json(finite_or_none({"metrics": metric_rows, "your_training": runs,
                               "artifact_correction": artifact_rows,
                               "packaged_cascade": {"name": str(settings.cascade),
                                                    "training": record},
                               "minutes": clock.minutes}), out / "results.json")
    gap_gauss, gap_block = snr.low_band_gaps_db()
    cost_rows = []
    for name, r in runs.items():
        c = r["cost"]
        cost_rows.append({"stage": name, "images seen": c.get("images_seen", 0),
                          "images budget": r["images_budget"],
                          "cut short by the cap": "yes" if r["cut_short"] else "no",
                          "device-hours (CPU)": c.get("device_hours", 0.0),
                          "GFLOP per image (fwd+bwd)": c.get("flops_per_image", 0) / 1e9})
    notice = ""
    if cut:
        notice = (f"<b>Notice: the {settings.minutes:g}-minute cap cut {', '.join(cut)} short</b> "
                  "(the machine was busier than an idle 2-core one); these samples show an "
                  "undertrained model. Re-run with a larger --minutes to continue training. ")
    provenance = ""
    if record:
        provenance = " Its training: " + "; ".join(_trained(s) for s in record) + "."
    sections = [
        Section("samples", "Samples of the packaged cascade",
                f"Stage 1 (EDM, 16 px) and the 16→64 relay stage of {settings.cascade} "
                f"(docs/pretrained.md), seeds 0–{n - 1}; the same pixels as `relaydiff sample "
                f"--seeds 0-{n - 1}`.{provenance}",
                [Figure("samples/stage1_16/grid.png", "stage 1, 16 px"),
                 Figure("samples/grid.png", "relay stage, 64 px")]),
        Section("trajectories", "Relay trajectories", "Left to right: the 16 px stage-1 sample "
                "(nearest-upsampled), the relay start up(x_low) + σ₀·n, intermediate states of "
                "the relay sampler, the 64 px output (packaged cascade).",
                [Figure("figures/relay_trajectory.png", "relay trajectories (4 seeds)")]),
        Section("metrics", "Metrics against the data at 64 px",
                f"{n} samples of the packaged cascade and {n} data images blurred by the 16→64 "
                f"round trip up(down(x)), each against the same data images. FID with few images "
                f"is biased upwards and only comparable at equal counts. {metric_text}",
                table=metric_rows),
        Section("snr", "Frequency SNR (paper Fig. 2)",
                f"The data at 64 and 16 px under noise σ = 0.3: over the bands the 16 px image "
                f"has, the 64 px SNR is {gap_gauss:+.1f} dB vs 16 px under Gaussian noise and "
                f"{gap_block:+.1f} dB under 4×4 block noise.",
                [Figure("figures/frequency_snr.png", "SNR per DCT band")]),
        Section("block-noise", "Block noise", "Per row: clean, + white noise, + block noise, + "
                "relay noise (σ = 0.3); each followed by what 16 px sees of it (up(down(·))).",
                [Figure("figures/block_noise.png", "block noise")]),
        Section("artifacts", "Artifact correction (appendix C.3)", "Noisy 16 px inputs relayed "
                "to 64 px by the packaged cascade against naive upsampling.", [artifact_fig],
                table=artifact_rows),
        Section("training", "Your training run", notice + "Both stages trained here, on this "
                "machine, for a budget of training images (--minutes scales it) within a "
                f"{settings.minutes:g}-minute cap: loss curves, cost (images seen, device-hours, "
                "FLOPs per image measured with torch.utils.flop_counter) and samples.",
                [Figure("figures/loss_curves.png", "loss curves"), own_fig], table=cost_rows),
    ]
    sizes = "smoke run, tiny sizes" if settings.smoke else "default sizes"
    intro = (f"relaydiff demo on fluent-emoji-3d ({sizes}; this run took {clock.minutes:.1f} "
             "min). The figures come from the packaged cascade; the last section is the short "
             "training run of this demo.")
    report = write_report(out / "report.html", "relaydiff demo", intro, sections)
    clock.log(f"wrote {report}")
    return report
