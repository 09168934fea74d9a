"""``relaydiff demo``: the relay pipeline on real data, in pictures, in about a quarter of an hour.

Phases, each resumable (a re-run skips what is done and continues what is not):

1. data: fetch fluent-emoji-3d and build it at 64 and 16 pixels;
2. the packaged cascade (trained beforehand, docs/pretrained.md) samples ``--samples`` seeds
   with exact CPU sampling (the pixels ``relaydiff sample`` gives for those seeds), and the
   packaged three-stage cascade one 256-px sample with its 64-px and 16-px ancestors;
3. figures of the method from it: relay trajectories, block noise, the frequency SNR of the
   paper's Fig. 2, artifact correction;
4. metrics of its samples and of the round-trip floor ``up(down(x))`` against the data, with a
   sentence per metric and a summary, computed from the numbers, of where the samples beat the
   floor (relaydiff.analysis.floor_comparison);
5. your own short training run of both stages, counted in training images, each stage within
   its share of a wall-clock cap (docs/demo.md; a notice says when a share cut a stage short),
   its cost and loss curves;
6. that run's samples, labelled with the images each stage saw; then ``report.html``.

What the figures show therefore never depends on how busy the machine is; the training part
shows that the pipeline works here, and what a few minutes of CPU training give.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..analysis.artifacts import artifact_correction, describe
from ..analysis.figures import noise_figure, relay_trajectory
from ..analysis.floor_comparison import explain_metrics
from ..analysis.report import Figure, Section, write_report
from ..analysis.spectrum import frequency_snr, plot
from ..cascade import RelayCascade
from ..data.datasets import open_dataset
from ..data.floors import data_images, evenly_spaced, write_images, write_round_trip
from ..data.sources import default_dataset
from ..io.files import cache_root, finite_or_none, write_json
from ..io.images import image_grid, load_image, save_png, to_uint8
from ..io.sample_folder import seed_path, stage_folder
from ..ops import downsample, upsample
from ..pretrained import PRETRAINED, PRETRAINED_256, read_training_record
from ..sample_writer import write_samples, write_summary
from ..training.export import cascade_from_snapshots
from .demo_log import Clock, progress
from .demo_training import STAGES, cost_rows, save_loss_curves, train_stages, training_text

if TYPE_CHECKING:
    from ..metrics.inception import InceptionV3

REFERENCE_IMAGES = 1000
OWN_SAMPLES = 16
SMOKE = {"data_limit": 48, "samples": 4, "reference": 48}
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
    three_stage: str | Path = PRETRAINED_256


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


def _written(folder: Path, seeds: list[int]) -> str:
    """How many of ``seeds`` have their final image in ``folder`` (progress of sampling)."""
    return f"{sum(seed_path(folder, s).is_file() for s in seeds)}/{len(seeds)} images written"


def _metrics(settings: DemoSettings, samples: Path, data_root: Path, n: int,
             inception: InceptionV3, clock: Clock) -> list[dict]:
    """FID, KID, precision/recall, SWD and spectrum distance of the packaged cascade's samples
    and of the 16→64 round trip of the data, both against the same data images (whose
    statistics are computed first, and only when the cache does not hold them yet)."""
    from ..metrics.evaluate import evaluate, folder_reference

    floor = settings.out / f"floor_up_down_{n}"
    write_round_trip(data_root / "64", floor, n, 4)
    count = SMOKE["reference"] if settings.smoke else REFERENCE_IMAGES
    count = min(count, len(open_dataset(data_root / "64", resolution=64)))
    ref = _reference_folder(settings, data_root, count)
    cache = cache_root() / "references"  # where folder_reference keeps them
    before = set(cache.glob("*.npz"))
    # A cached read takes well under PROGRESS_SECONDS: progress lines mean they are computed.
    with progress(clock, f"Inception features of the reference ({count:,} data images)"):
        folder_reference(ref, inception, progress=False)
    if set(cache.glob("*.npz")) - before:
        clock.log(f"metrics: Inception features of the reference ({count:,} data images) "
                  f"computed and cached in {cache} for re-runs")
    metrics = METRICS if n >= 4 else ["fid", "swd", "spectrum"]
    rows = []
    for label, folder in (("packaged cascade, 16→64 samples", samples),
                          ("data up(down(x)), the 16→64 round trip", floor)):
        with progress(clock, f"metrics of the {label} ({n} images)"):
            res = evaluate(folder, ref, metrics, inception=inception, progress=False)
        rows.append({"images": label, "n": res["n_images"], "reference images": count,
                     "FID": res["fid"], "KID ×1e3": 1e3 * res.get("kid", math.nan),
                     "precision": res.get("precision", math.nan),
                     "recall": res.get("recall", math.nan), "SWD ×1e3": res["swd"],
                     "spectrum distance (dB)": res["spectrum"]})
    clock.log(f"metrics: FID {rows[0]['FID']:.1f} (samples) vs {rows[1]['FID']:.1f} (floor)")
    return rows


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
               "upsampling to 64 px (relay: a new sample, seeds 0–7, whose content can differ "
               "from the input's)")
    return Figure("figures/artifact_correction.png", caption), rows


def _three_stages(settings: DemoSettings, figures: Path, clock: Clock) -> Section:
    """One sample of the three-stage cascade: its 16-px and 64-px ancestors (nearest-upsampled)
    beside the 256-px image (the pixels of ``relaydiff sample --cascade … --seeds S``)."""
    cascade = RelayCascade.from_pretrained(settings.three_stage)
    folder, seed = settings.out / "samples_256", settings.seed
    with progress(clock, "sampling one 256-px image", lambda: _written(folder, [seed])):
        write_samples(cascade, [seed], folder, all_stages=True, progress=False)
    sizes = cascade.resolutions
    images = [load_image(seed_path(stage_folder(folder, k, r), seed))
              for k, r in enumerate(sizes[:-1])] + [load_image(seed_path(folder, seed))]
    big = [upsample(torch.from_numpy(a).permute(2, 0, 1)[None], sizes[-1] // a.shape[0])[0]
           .permute(1, 2, 0).numpy() for a in images]
    save_png(image_grid(big, columns=len(big)), figures / "three_stages.png")
    chain = " → ".join(f"{r} px" for r in sizes)
    return Section("three-stages", "Three stages: 16 → 64 → 256",
                   f"Seed {seed} of {settings.three_stage} ({chain}; docs/pretrained.md): the "
                   "stage-1 sample and the first relay stage's output, nearest-upsampled, and the "
                   "third stage's 256-px image, a relay stage trained on 64-px crops of the "
                   "256-px renders.", [Figure("figures/three_stages.png", chain)])


def _trained(stage: dict) -> str:
    """One stage's line of the packaged cascade's training record, with its guide's cost."""
    def cost(r: dict) -> str:
        return f"{r['images_seen']:,} images, {r['device_hours']:.2f} {r.get('device', 'device')}-hours"

    guide = stage.get("guide")
    return f"{stage['stage']}: {cost(stage)}" + (f" (its autoguidance guide: {cost(guide)})"
                                                 if guide else "")


def _own_samples(settings: DemoSettings, runs: dict, figures: Path, clock: Clock) -> Figure:
    """``OWN_SAMPLES`` samples of your training run, stage 1 and relay side by side, captioned
    with the images each stage saw."""
    cascade = cascade_from_snapshots([settings.out / "train" / name for name, _ in STAGES])
    folder = settings.out / "train" / "samples"
    seeds = list(range(min(OWN_SAMPLES, settings.samples)))
    with progress(clock, "sampling your run", lambda: _written(folder, seeds)):
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
    clock = Clock()
    from ..metrics.weights import load_inception

    inception = load_inception(settings.inception)  # the FID weights first, before any compute
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
    with progress(clock, "sampling", lambda: _written(samples, seeds)):
        write_samples(packaged, seeds, samples, all_stages=True, progress=False)
    write_summary(packaged, seeds, samples)
    three = _three_stages(settings, figures, clock)

    clock.log("3/6 figures: relay trajectories, block noise, frequency SNR, artifact correction")
    save_png(relay_trajectory(packaged, list(range(4)), stage=1), figures / "relay_trajectory.png")
    data64 = _data_tensor(data_root / "64", 64 if not settings.smoke else 16, 64)
    save_png(noise_figure(data64[:3], 4), figures / "block_noise.png")
    snr = frequency_snr(data64, downsample(data64, 4), sigma=0.3)
    plot(snr, figures / "frequency_snr.png")
    artifact_fig, artifact_rows = _artifact_correction(packaged, data_root, figures)

    clock.log("4/6 metrics against the data")
    metric_rows = _metrics(settings, samples, data_root, n, inception, clock)
    metric_text = explain_metrics(metric_rows)

    clock.log(f"5/6 your own training run (at most {settings.minutes:g} minutes, split between "
              "the two stages)")
    runs = train_stages(out, data_root, settings.minutes, settings.seed, settings.smoke, clock)
    save_loss_curves(out, figures / "loss_curves.png")
    clock.log("6/6 your run's samples and the report")
    own_fig = _own_samples(settings, runs, figures, clock)

    record = read_training_record(settings.cascade)
    write_json(finite_or_none({"metrics": metric_rows, "your_training": runs,
                               "artifact_correction": artifact_rows,
                               "packaged_cascade": {"name": str(settings.cascade),
                                                    "training": record},
                               "minutes": clock.minutes}), out / "results.json")
    gap_gauss, gap_block = snr.low_band_gaps_db()
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
        three,
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
                "to 64 px by the packaged cascade (the same seeds for the clean and the noisy "
                f"input) against naive upsampling. {describe(artifact_rows)}", [artifact_fig],
                table=artifact_rows),
        Section("training", "Your training run", training_text(runs, settings.minutes),
                [Figure("figures/loss_curves.png", "loss curves: " + " and ".join(
                    name for name, _ in STAGES)), own_fig], table=cost_rows(runs)),
    ]
    sizes = "smoke run, tiny sizes" if settings.smoke else "default sizes"
    intro = (f"relaydiff demo on fluent-emoji-3d ({sizes}; this run took {clock.minutes:.1f} "
             "min). The figures come from the packaged cascade; the last section is the short "
             "training run of this demo.")
    report = write_report(out / "report.html", "relaydiff demo", intro, sections)
    clock.log(f"wrote {report}")
    return report
