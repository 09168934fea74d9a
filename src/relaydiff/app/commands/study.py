"""``relaydiff study CONFIG``: fair baselines and ablations of a relay stage (docs/study.md)."""

from __future__ import annotations

from pathlib import Path

import click

from . import check_out


@click.command()
@click.argument("config", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Study folder [default: runs/study-<config name>].")
@click.option("--variants", default=None, metavar="NAME,…",
              help="Train and evaluate only these variants (several processes can share a study).")
@click.option("--seeds", default=None, metavar="N,…",
              help="Train and evaluate only these training seeds of the (selected) variants, "
                   "e.g. --seeds 0 for one seed of everything first.")
@click.option("--train-only", is_flag=True,
              help="Only train the (selected) higher-stage variants; no stage 1, no evaluation.")
@click.option("--no-stage1", is_flag=True,
              help="No stage 1: evaluate the higher stages by SR-FID, curves and artifact "
                   "correction only (no cascade FID).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a study config value, e.g. --set budget.value=3.6e13 "
                   "--set eval.samples=512.")
@click.option("--no-progress", is_flag=True, help="No progress bars (the log lines stay).")
def study(config: Path, out: Path | None, variants: str | None, seeds: str | None,
          train_only: bool, no_stage1: bool, overrides: tuple[str, ...],
          no_progress: bool) -> None:
    """Train one stage 1 and every variant of the higher stage under the same budget, evaluate
    them alike and write OUT/results.json and OUT/figures/.

    Resumable: re-running continues where it stopped; finished variants are never redone.
    Ctrl-C or SIGTERM stops a training run with a checkpoint.
    """
    if not config.is_file():
        raise click.BadParameter(f"{config}: no such study config file", param_hint="CONFIG")
    out = out or Path("runs") / f"study-{config.stem}"
    check_out(out)
    from ..study import Study

    only = [v.strip() for v in variants.split(",") if v.strip()] if variants else None
    try:
        only_seeds = [int(v) for v in seeds.split(",") if v.strip()] if seeds else None
    except ValueError:
        raise click.BadParameter(f"{seeds!r}: give integers, e.g. 0 or 0,1",
                                 param_hint="--seeds") from None
    result = Study(config, out, only=only, seeds=only_seeds, progress=not no_progress,
                   train_only=train_only, stage1=not no_stage1, overrides=overrides).run()
    click.echo(f"wrote {result}")
