"""``relaydiff demo``: the whole relay pipeline on real data, with an HTML report."""

from __future__ import annotations

from pathlib import Path

import click

from . import check_out


@click.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("relaydiff-demo"),
              show_default=True, help="Output folder (report.html, cascade, samples, runs).")
@click.option("--minutes", type=float, default=20.0, show_default=True,
              help="Time budget: about 40 % for stage 1, 45 % for the relay stage, the rest for "
                   "sampling, metrics and figures.")
@click.option("--samples", type=click.IntRange(min=2), default=256, show_default=True,
              help="Images to sample and evaluate.")
@click.option("--smoke", is_flag=True, help="Tiny networks, 48 images, a few steps (< 2 min).")
@click.option("--cache", type=click.Path(path_type=Path), default=None,
              help="Cache folder for the downloaded data [default: ~/.cache/relaydiff].")
def demo(out: Path, minutes: float, samples: int, smoke: bool, cache: Path | None) -> None:
    """Fetch fluent-emoji-3d, train a 16→64 relay cascade, sample, evaluate, write report.html.

    Re-running continues where the last run stopped (training resumes from its newest
    checkpoint and only spends what is left of each stage's budget; existing samples are kept).
    """
    if not minutes > 0:
        raise click.BadParameter(f"{minutes:g}: give a positive number of minutes",
                                 param_hint="--minutes")
    check_out(out)
    if cache is not None:
        check_out(cache, "--cache")
    from ..demo import DemoSettings, run_demo

    report = run_demo(DemoSettings(out=out, minutes=minutes, smoke=smoke, cache_dir=cache,
                                   samples=samples))
    click.echo(f"open {report}")
