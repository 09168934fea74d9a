"""``relaydiff sample`` and ``relaydiff upscale``: run a cascade and write PNG files."""

from __future__ import annotations

import os
import re
from pathlib import Path

import click
import numpy as np
import torch
from tqdm import tqdm

from ..cascade import RelayCascade, pretrained_path
from ..data.images import list_images, load_image, save_png, to_uint8
from ..generate import write_samples, write_summary
from ..ops import randn
from . import with_options

INPUT_NOISE_STREAM = 1 << 41  # offset of the seeds that draw --input-noise


def parse_seeds(text: str) -> list[int]:
    """``"0-3,10"`` → ``[0, 1, 2, 3, 10]``."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)-(\d+)", part)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if hi < lo:
                raise click.BadParameter(f"range {part!r} is empty; write LOW-HIGH with LOW ≤ HIGH")
            seeds.extend(range(lo, hi + 1))
        elif part.isdigit():
            seeds.append(int(part))
        else:
            raise click.BadParameter(f"{part!r} is not a seed; use e.g. 0-63 or 1,5,9")
    return seeds


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise click.BadParameter(f"{out} exists and is a file; give a folder", param_hint="--out")


def _load_cascade(cascade: str | None, toy: bool, device: str) -> RelayCascade:
    if toy:
        return RelayCascade.toy().to(device)
    if cascade is None:
        cascade = pretrained_path()
        if not (cascade / "cascade.json").is_file():
            raise click.UsageError(f"the pretrained cascade is missing from this installation "
                                   f"({cascade}); give --cascade DIR or --toy")
    return RelayCascade.from_pretrained(cascade, device=device)


def _distributed() -> tuple[int, int]:
    """(rank, world size); joins the torchrun process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    rank = torch.distributed.get_rank() if world > 1 else 0
    return rank, world


def _default_device() -> str:
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cpu"


def _apply_overrides(cascade: RelayCascade, steps, relay_steps, guidance, eta) -> None:
    for cfg in cascade.configs:
        if cfg.kind == "edm" and steps is not None:
            cfg.edm_sampler.steps = steps
        if cfg.kind == "relay" and relay_steps is not None:
            cfg.relay_sampler.steps = relay_steps
        if cfg.kind == "relay" and eta is not None:
            cfg.relay_sampler.eta = eta
        if guidance is not None:
            cfg.guidance.scale = guidance


common = [
    click.option("--cascade", type=click.Path(file_okay=False),
                 help="Cascade folder (cascade.json) [default: the pretrained 16→64 emoji cascade]."),
    click.option("--toy", is_flag=True, help="Use an untrained toy 16→64 cascade (smoke test)."),
    click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder."),
    click.option("--batch", default=16, show_default=True, type=click.IntRange(min=1),
                 help="Images per forward pass."),
    click.option("--device", default=None, help="Torch device [default: cuda if available]."),
    click.option("--fast", is_flag=True,
                 help="CPU: keep oneDNN convolutions (about 2.5x faster); pixels then depend on "
                      "--batch and the thread count, so they are not bit-identical across runs."),
]


_with_common = with_options(common)


@click.command()
@_with_common
@click.option("--seeds", default="0-63", show_default=True, help="Seeds, e.g. 0-999 or 1,5,9.")
@click.option("--class", "class_idx", type=int, default=None, help="Class index for every image.")
@click.option("--balanced", is_flag=True, help="Class-balanced labels (class = seed mod C).")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Stage-1 sampler steps.")
@click.option("--relay-steps", type=click.IntRange(min=2), default=None,
              help="Relay stages' Karras grid size (before truncation).")
@click.option("--eta", type=click.FloatRange(0, 1), default=None, help="Relay stochasticity η.")
@click.option("--guidance", type=float, default=None, help="Classifier-free guidance scale.")
@click.option("--all-stages", is_flag=True, help="Also write every lower stage's images.")
def sample(cascade, toy, out, batch, device, fast, seeds, class_idx, balanced, steps, relay_steps, eta,
           guidance, all_stages) -> None:
    """Generate one PNG per seed (resumable: seeds already written are skipped).

    Under torchrun the seeds are sharded over ranks; results equal a single process.
    """
    if class_idx is not None and balanced:
        raise click.UsageError("use either --class or --balanced, not both")
    seed_list = parse_seeds(seeds)
    _check_out_dir(out)
    rank, world = _distributed()
    model = _load_cascade(cascade, toy, device or _default_device())
    _apply_overrides(model, steps, relay_steps, guidance, eta)
    new = write_samples(model, seed_list, out, batch=batch, class_idx=class_idx,
                        balanced=balanced, all_stages=all_stages, rank=rank, world=world,
                        batch_invariant=not fast)
    if world > 1:
        torch.distributed.barrier()
    if rank == 0:
        write_summary(model, seed_list, out, class_idx=class_idx, balanced=balanced)
    click.echo(f"{new} new image(s) in {out} ({len(seed_list) - new} already there)"
               if world == 1 else f"rank {rank}: {new} new image(s)")


@click.command()
@_with_common
@click.option("--input", "input_dir", required=True, type=click.Path(path_type=Path),
              help="Folder of low-resolution images (all the same size).")
@click.option("--seed", default=0, show_default=True, help="Seed of the first image (then +1 each).")
@click.option("--input-noise", default=0.0, show_default=True, type=click.FloatRange(min=0),
              help="Add Gaussian noise of this scale (in [-1, 1] units) to the inputs first.")
def upscale(cascade, toy, out, batch, device, fast, input_dir, seed, input_noise) -> None:
    """Relay your own images through the stages above their resolution."""
    _check_out_dir(out)
    files = list_images(input_dir)
    if not files:
        raise click.BadParameter(f"{input_dir} holds no PNG/JPEG/WebP images", param_hint="--input")
    model = _load_cascade(cascade, toy, device or _default_device())
    arrays = [load_image(f) for f in files]
    sizes = {a.shape[:2] for a in arrays}
    if len(sizes) > 1:
        raise click.BadParameter(f"{input_dir}: images have different sizes {sorted(sizes)}; "
                                 "resize them to one size first", param_hint="--input")
    low = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    low = low.to(torch.float32) / 127.5 - 1
    seeds = list(range(seed, seed + len(files)))
    if input_noise > 0:
        gens = [torch.Generator().manual_seed(s + INPUT_NOISE_STREAM) for s in seeds]
        low = low + input_noise * randn(low.shape, gens)
    model.stage_after(low)
    bar = tqdm(total=len(files), desc="upscaling", unit="img")
    images = model(seeds, low_res=low, batch_size=batch, progress=bar.update,
                   batch_invariant=not fast)[-1]
    bar.close()
    for f, arr in zip(files, to_uint8(images), strict=True):
        save_png(arr, out / f.relative_to(input_dir).with_suffix(".png"))
    click.echo(f"{len(files)} image(s) upscaled to {images.shape[-1]}px in {out}")
