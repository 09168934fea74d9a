"""``relaydiff train`` (one stage, one process or torchrun) and ``relaydiff cascade build``."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import click

from . import check_out, claim_out, overwrite_option


@click.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config value, e.g. --set optim.lr=2e-4 --set data.path=DIR.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Run folder (log, checkpoints, samples) [default: runs/<config name>].",
)
@click.option(
    "--resume",
    default=None,
    metavar="auto|PATH",
    help="Continue from the newest complete checkpoint of --out (auto) or from PATH.",
)
@click.option(
    "--max-minutes",
    type=click.FloatRange(min=0),
    default=None,
    help="Stop (with a checkpoint) after this many minutes; --resume auto continues.",
)
@click.option("--skip-bad", is_flag=True, help="Skip (and count) unreadable images in the data set.")
@click.option("--cond", is_flag=True, help="Class-conditional training (needs labelled data).")
@click.option("--no-progress", is_flag=True, help="No progress bar (logs still written).")
def train(config, overrides, out, resume, max_minutes, skip_bad, cond, no_progress) -> None:
    """Train one stage (EDM stage 1, relay or super-resolution) from a JSON CONFIG (a file, or the name of
    a built-in config: stage1_16, relay_16to64).

    Runs alone or under torchrun (DDP: NCCL on GPUs, gloo on CPUs); the global batch is
    per-device batch × devices × accumulation steps. Ctrl-C or SIGTERM writes a checkpoint
    before exiting; --resume auto continues exactly where it stopped.
    """
    from ...config import ConfigError
    from ...training.checkpoint import list_snapshots
    from ...training.config import config_path, load_train_config
    from ...training.loop import train as run_training

    extra = [*(["data.skip_bad=true"] if skip_bad else []), *(["cond=true"] if cond else [])]
    if not config.exists() and config_path(str(config)).is_file():
        config = config_path(str(config))  # a built-in config by name, e.g. stage1_16
    cfg = load_train_config(config, [*overrides, *extra])
    out = out or Path("runs") / config.stem
    check_out(out)
    if not resume and list_snapshots(out / "checkpoints"):
        raise click.UsageError(f"--out {out} already holds checkpoints; continue with --resume auto "
                               "or choose another --out")
    try:
        result = run_training(cfg, out, resume=resume, max_minutes=max_minutes,
                              progress=not no_progress)
    except ConfigError as e:
        if e.key == "cond" and cond:  # set by the flag: say so in the flag's terms
            raise click.UsageError(f"{e.problem} (--cond); add a dataset.json with labels or one "
                                   "sub-folder per class, or train without --cond") from None
        raise
    c = result.cost
    if result.finished:
        state = "finished"
    elif result.stopped_by == "time":
        state = f"stopped after --max-minutes {max_minutes:g} (resume with --resume auto)"
    else:
        state = f"interrupted by {result.stopped_by} (resume with --resume auto)"
    click.echo(
        f"{state} at step {result.step}: {result.images_seen} images seen, "
        f"{c.device_hours:.3f} device-hours, {c.flops_per_image / 1e9:.3f} GFLOP/image; "
        f"checkpoint {result.snapshot}"
    )
    if result.stopped_by not in (None, "time"):
        sys.exit(128 + getattr(signal, result.stopped_by, signal.SIGTERM))


@click.group()
def cascade() -> None:
    """Assemble cascades from training checkpoints."""


@cascade.command()
@click.option(
    "--stage",
    "stages",
    multiple=True,
    required=True,
    metavar="CKPT",
    help="A stage folder, checkpoint folder or run folder (newest checkpoint), lowest stage first.",
)
@click.option("--guide", "guides", multiple=True, metavar="CKPT|-",
              help="Autoguidance: the guide network (a smaller or less trained model of the same "
                   "stage) of the stage in the same position; '-' for none.")
@click.option("--guidance", "scales", multiple=True, metavar="W|-",
              help="Guidance scale of the stage in the same position (autoguidance where it has a "
                   "guide, classifier-free otherwise); '-' keeps the stage's own.")
@click.option("--half", is_flag=True,
              help="Store the weights as float16 (half the size; computed in float32).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Cascade folder.")
@overwrite_option
def build(stages, guides, scales, half, out, overwrite) -> None:
    """Write a cascade folder (EMA weights of every stage) that `relaydiff sample` loads.

    The k-th --guide and --guidance belong to the k-th --stage.
    """
    for flag, values in (("--guide", guides), ("--guidance", scales)):
        if len(values) > len(stages):
            raise click.UsageError(f"{len(values)} {flag} for {len(stages)} --stage; give at most one "
                                   "per stage ('-' for none)")
    parsed = []
    for w in scales:
        try:
            parsed.append(None if w == "-" else float(w))
        except ValueError:
            raise click.BadParameter(f"{w!r} is not a number (or '-')", param_hint="--guidance") from None
    claim_out(out, overwrite)  # the cascade is written beside --out and renamed into place
    from ...training.export import cascade_from_snapshots, load_stage_source

    model = cascade_from_snapshots(stages)
    for k, spec in enumerate(guides):
        if spec != "-":
            cfg, den, record = load_stage_source(spec)
            model.set_guide(k, cfg, den)
            model.configs[k].guidance.kind = "auto"
            if model.training is not None:  # the guide's training is part of the stage's cost
                model.training[k]["guide"] = record
    for k, w in enumerate(parsed):
        if w is not None:
            model.configs[k].guidance.scale = w
    import torch

    model.save_pretrained(out, dtype=torch.float16 if half else None)
    configs = model.configs
    chain = " → ".join(str(c.resolution) for c in configs)
    guided = [f"stage {k + 1} autoguided ×{configs[k].guidance.scale:g}" for k in model.guide_configs]
    click.echo(f"wrote {out}: {len(configs)} stage(s), {chain} px" +
               (f" ({', '.join(guided)})" if guided else ""))
