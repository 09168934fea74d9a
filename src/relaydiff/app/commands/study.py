"""``relaydiff study CONFIG`` (or ``--preset NAME``): fair baselines and ablations of a relay
stage at equal total training compute (docs/study.md)."""

from __future__ import annotations

from pathlib import Path

import click

from . import check_out

PRESETS = ("quick", "default")


def preset_path(name: str) -> Path:
    """The study config of a preset shipped with relaydiff (``relaydiff/configs/study/``)."""
    from importlib.resources import files

    return Path(str(files("relaydiff") / "configs" / "study" / f"{name}.json"))


@click.command()
@click.argument("config", type=click.Path(path_type=Path, dir_okay=False), required=False)
@click.option("--preset", type=click.Choice(PRESETS), default=None,
              help="A study shipped with relaydiff instead of CONFIG: quick (about 30 min on an "
                   "idle 2-core CPU) or default (the full study: many CPU hours).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Study folder [default: runs/study-<config or preset name>].")
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
              help="Override a study config value, e.g. --set budget.total=1e14 "
                   "--set eval.samples=512.")
@click.option("--plan", "plan_only", is_flag=True,
              help="Only write OUT/plan.json: every run with its images and FLOPs at each budget "
                   "point, stage 1's cost and every evaluation; nothing is trained.")
@click.option("--no-progress", is_flag=True, help="No progress bars (the log lines stay).")
def study(config: Path | None, preset: str | None, out: Path | None, variants: str | None,
          seeds: str | None, train_only: bool, no_stage1: bool, overrides: tuple[str, ...],
          plan_only: bool, no_progress: bool) -> None:
    """Train one stage 1 and every variant at the same total training FLOPs (stage 1 included)
    at each budget point, evaluate them alike (bootstrap 95 % intervals) and write
    OUT/results.json, OUT/table.md and OUT/figures/.

    Resumable: re-running continues where it stopped; finished runs and evaluations are never
    redone.
    Ctrl-C or SIGTERM stops a training run with a checkpoint.
    """
    if (config is None) == (preset is None):
        raise click.UsageError("give a study CONFIG file or --preset NAME (one of them)")
    if preset is not None:
        config = preset_path(preset)
    if not config.is_file():
        raise click.BadParameter(f"{config}: no such study config file", param_hint="CONFIG")
    out = out or Path("runs") / f"study-{preset or config.stem}"
    check_out(out)
    from ..study import Study

    only = [v.strip() for v in variants.split(",") if v.strip()] if variants else None
    try:
        only_seeds = [int(v) for v in seeds.split(",") if v.strip()] if seeds else None
    except ValueError:
        raise click.BadParameter(f"{seeds!r}: give integers, e.g. 0 or 0,1",
                                 param_hint="--seeds") from None
    runner = Study(config, out, only=only, seeds=only_seeds, progress=not no_progress,
                   train_only=train_only, stage1=not no_stage1, overrides=overrides)
    result = runner.write_plan() if plan_only else runner.run()
    click.echo(f"wrote {result}")
