"""``relaydiff ema reconstruct|sweep``: post-hoc EMA of a training run (docs/quality.md)."""

from __future__ import annotations

from pathlib import Path

import click

from . import claim_out, overwrite_option


def parse_sigma_rels(text: str) -> list[float]:
    """``0.07`` → ``[0.07]``; ``0.02:0.2:10`` → 10 values from 0.02 to 0.2, evenly spaced."""
    parts = text.split(":")
    try:
        if len(parts) == 1:
            return [float(parts[0])]
        if len(parts) == 3:
            lo, hi, n = float(parts[0]), float(parts[1]), int(parts[2])
            if n >= 2 and lo < hi:
                return [lo + (hi - lo) * k / (n - 1) for k in range(n)]
    except ValueError:
        pass
    raise click.BadParameter(f"{text!r}: give one σ_rel (0.07) or LOW:HIGH:COUNT (0.02:0.2:10)",
                             param_hint="--sigma-rel")


@click.group()
def ema() -> None:
    """Post-hoc EMA: any EMA length after training, from the run's stored snapshots."""


@ema.command()
@click.argument("run", type=click.Path(path_type=Path, file_okay=False))
@click.option("--sigma-rel", required=True, help="Relative EMA width σ_rel, e.g. 0.07.")
@click.option("--at", "at_images", type=click.IntRange(min=1), default=None,
              help="Training position in images [default: the last snapshot].")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Stage folder to write (what `relaydiff cascade build --stage` takes).")
@overwrite_option
def reconstruct(run: Path, sigma_rel: str, at_images: int | None, out: Path, overwrite: bool) -> None:
    """Write the weights with EMA profile σ_rel as a stage folder."""
    values = parse_sigma_rels(sigma_rel)
    if len(values) != 1:
        raise click.BadParameter("reconstruct takes one σ_rel", param_hint="--sigma-rel")
    claim_out(out, overwrite)  # the stage is written beside --out and renamed into place
    from ..posthoc import reconstruct_stage

    record = reconstruct_stage(run, values[0], out, at_images)
    click.echo(f"wrote {out}: σ_rel {values[0]:g} at {record['at_images']:,} images from "
               f"{len(record['snapshots'])} snapshots (profile error "
               f"{100 * record['profile_error']:.2f} %)")


@ema.command()
@click.argument("run", type=click.Path(path_type=Path, file_okay=False))
@click.option("--sigma-rel", required=True, help="LOW:HIGH:COUNT, e.g. 0.02:0.2:10.")
@click.option("--fid-images", type=click.IntRange(min=2), default=256, show_default=True,
              help="Samples per σ_rel (a relay stage upscales this many training images).")
@click.option("--ref", required=True, type=click.Path(exists=True, path_type=Path),
              help="FID reference (.npz or a dataset folder).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Folder for sweep.json and sweep.png [default: RUN/posthoc-sweep].")
@overwrite_option
def sweep(run: Path, sigma_rel: str, fid_images: int, ref: Path, out: Path | None,
          overwrite: bool) -> None:
    """FID of the reconstructed weights for a range of σ_rel (table, JSON and plot)."""
    values = parse_sigma_rels(sigma_rel)
    out = out or run / "posthoc-sweep"
    claim_out(out, overwrite)
    from ..posthoc import sweep as run_sweep

    rows = run_sweep(run, values, fid_images, ref, out)
    for row in rows:
        click.echo(f"  σ_rel {row['sigma_rel']:.4f}  {row['fid_name']} {row['fid']:.2f}")
    click.echo(f"wrote {out / 'sweep.json'} and {out / 'sweep.png'}")
