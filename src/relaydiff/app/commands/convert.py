"""``relaydiff convert FILE --out STAGE_DIR``: released EDM/RDM checkpoints, read safely."""

from __future__ import annotations

from pathlib import Path

import click

from . import claim_out, overwrite_option


@click.command()
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Stage folder to write (config.json, model.safetensors, source.json).")
@overwrite_option
@click.option("--kind", type=click.Choice(["edm", "relay"]), default=None,
              help="Stage kind [default: relay if the snapshot's loss is RDM's BlurLoss, else edm].")
@click.option("--scale", type=click.IntRange(min=2), default=None,
              help="Relay: scale factor [default: the snapshot's BlurLoss up_scale].")
@click.option("--prob-length", type=click.FloatRange(0, min_open=True), default=None,
              help="Relay: training L [default: BlurLoss prob_length].")
@click.option("--blur-sigma-max", type=click.FloatRange(min=0), default=None,
              help="Relay: b_max [default: BlurLoss blur_sigma_max].")
@click.option("--block-alpha", type=click.FloatRange(min=0), default=None,
              help="Relay: block noise scale α [default: BlurLoss block_scale].")
@click.option("--preset", default=None, metavar="NAME",
              help="Released sampler settings: edm-cifar10, edm-ffhq64, edm-afhqv2-64, "
                   "edm-imagenet64, rdm-imagenet256, rdm-celebahq256 (docs/released-models.md).")
def convert(file: Path, out: Path, overwrite: bool, kind, scale, prob_length, blur_sigma_max,
            block_alpha, preset) -> None:
    """Convert an EDM/RDM network snapshot (.pkl), training state (.pt) or state dict into a
    relaydiff stage folder that `relaydiff cascade build --stage` accepts.

    The file is read as data: nothing in it is executed (the Python source that EDM stores with
    each network is never run); any other object is refused.
    """
    if not file.is_file():
        raise click.BadParameter(f"{file}: no such file", param_hint="FILE")
    claim_out(out, overwrite)  # the stage is written beside --out and renamed into place
    from ...released.convert import convert as run

    relay = {"scale": scale, "prob_length": prob_length, "blur_sigma_max": blur_sigma_max,
             "block_alpha": block_alpha}
    cfg = run(file, out, kind=kind, relay=relay, preset=preset)
    extra = (f", relay ×{cfg.relay.scale} L {cfg.relay.prob_length:g} b_max "
             f"{cfg.relay.blur_sigma_max:g} α {cfg.relay.block_alpha:g}") if cfg.relay else ""
    click.echo(f"wrote {out}: {cfg.kind} stage at {cfg.resolution}px, {cfg.network['name']}, "
               f"{cfg.label_dim} classes{extra}")
