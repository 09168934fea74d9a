"""``relaydiff sample`` and ``relaydiff upscale``: run a cascade and write PNG files."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click

from ...seeds import INPUT_NOISE_STREAM, MAX_SEEDS, check_seeds
from . import claim_out, overwrite_option, with_options


def _check_seeds(seeds: list[int], flag: str) -> None:
    """:func:`relaydiff.seeds.check_seeds` as a usage error of ``flag`` (the library's message)."""
    try:
        check_seeds(seeds)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint=flag) from None


def parse_seeds(text: str) -> list[int]:
    """``"0-3,10"`` → ``[0, 1, 2, 3, 10]``; at most ``MAX_SEEDS`` seeds, each in
    ``0..MAX_SEED`` (:mod:`relaydiff.seeds`)."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)-(\d+)", part)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if hi < lo:
                raise click.BadParameter(f"range {part!r} is empty; write LOW-HIGH with LOW ≤ HIGH")
        elif part.isdigit():
            lo = hi = int(part)
        else:
            raise click.BadParameter(f"{part!r} is not a seed; use e.g. 0-63 or 1,5,9")
        _check_seeds([lo, hi], "--seeds")
        if len(seeds) + hi - lo + 1 > MAX_SEEDS:
            raise click.BadParameter(f"{text!r} asks for {len(seeds) + hi - lo + 1:,} seeds; one run "
                                     f"writes at most {MAX_SEEDS:,} (split the range over several runs)")
        seeds.extend(range(lo, hi + 1))
    return seeds


def unique_seeds(seeds: list[int]) -> list[int]:
    """``seeds`` without repeats (first occurrences, in order); one ``warning:`` line when some
    were repeated (each seed gives one file, so a repeat would be counted but not written)."""
    unique = list(dict.fromkeys(seeds))
    if len(unique) < len(seeds):
        repeats = len(seeds) - len(unique)
        click.echo(f"warning: --seeds: {repeats} repeated seed{'s' if repeats > 1 else ''} ignored",
                   err=True)
    return unique


def _cascade_source(cascade: str | None, toy: bool) -> str | Path | None:
    """The cascade to load: ``None`` for --toy, else --cascade or the pretrained one."""
    from ...pretrained import CASCADE_FILE, pretrained_path

    if toy:
        return None
    if cascade is None:
        cascade = pretrained_path()
        if not (cascade / CASCADE_FILE).is_file():
            raise click.UsageError(f"the pretrained cascade is missing from this installation "
                                   f"({cascade}); give --cascade DIR or --toy")
    return cascade


def _cascade_identity(source: str | Path | None) -> str:
    """What an output folder records of the cascade: ``toy``, or its files' fingerprint."""
    from ...pretrained import cascade_fingerprint

    return "toy" if source is None else cascade_fingerprint(source)


def _load_cascade(source: str | Path | None, device):
    from ...cascade import RelayCascade

    if source is None:
        return RelayCascade.toy().to(device)
    return RelayCascade.from_pretrained(source, device=device)


def _parse_interval(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        lo, hi = (float(v) for v in text.split(":"))
    except ValueError:
        raise click.BadParameter(f"{text!r}: give LO:HI, e.g. 0.3:5",
                                 param_hint="--guidance-interval") from None
    if not 0 <= lo < hi:
        raise click.BadParameter(f"{text!r}: need 0 ≤ LO < HI", param_hint="--guidance-interval")
    return lo, hi


def _apply_overrides(cascade, steps, relay_steps, guidance, eta, interval=None) -> None:
    for cfg in cascade.configs:
        if interval is not None:
            cfg.guidance.interval = interval
        if cfg.kind in ("edm", "sr") and steps is not None:
            cfg.edm_sampler.steps = steps
        if cfg.kind == "relay" and relay_steps is not None:
            cfg.relay_sampler.steps = relay_steps
        if cfg.kind == "relay" and eta is not None:
            cfg.relay_sampler.eta = eta
        if guidance is not None:
            cfg.guidance.scale = guidance


common = [
    click.option("--cascade", type=click.Path(file_okay=False),
                 help="Cascade folder (cascade.json) or packaged name [default: the pretrained "
                      "16→64 emoji cascade]."),
    click.option("--toy", is_flag=True, help="Use an untrained toy 16→64 cascade (smoke test)."),
    click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder."),
    click.option("--batch", default=16, show_default=True, type=click.IntRange(min=1),
                 help="Images per forward pass on GPUs and with --fast (exact CPU sampling "
                      "always evaluates 8 images per call on each thread)."),
    click.option("--device", default=None, help="Torch device [default: cuda if available]."),
    click.option("--fast", is_flag=True,
                 help="CPU: batches of --batch on all threads instead of the exact mode; pixels "
                      "then depend on --batch and the thread count (float rounding)."),
    click.option("--to", "to", type=click.IntRange(min=1), default=None, metavar="SIZE",
                 help="Output size in pixels: past the cascade's resolution its last stage is "
                      "reused (×its scale each time) [default: the cascade's stages once]."),
    click.option("--tile", default=0, show_default=True, type=click.IntRange(min=0), metavar="SIZE",
                 help="Evaluate relay and super-resolution stages in SIZE×SIZE tiles (bounded "
                      "memory, seamless); 0: untiled."),
    overwrite_option,
]


_with_common = with_options(common)


@click.command()
@_with_common
@click.option("--seeds", default="0-63", show_default=True, help="Seeds, e.g. 0-999 or 1,5,9.")
@click.option("--class", "class_idx", type=int, default=None, help="Class index for every image.")
@click.option("--balanced", is_flag=True, help="Class-balanced labels (class = seed mod C).")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="EDM sampler steps (stage 1 and super-resolution stages).")
@click.option("--relay-steps", type=click.IntRange(min=2), default=None,
              help="Relay stages' Karras grid size (before truncation).")
@click.option("--eta", type=click.FloatRange(0, 1), default=None, help="Relay stochasticity η.")
@click.option("--guidance", type=float, default=None,
              help="Guidance scale of every stage (classifier-free, or autoguidance where the "
                   "stage has a guide network).")
@click.option("--guidance-interval", metavar="LO:HI", default=None,
              help="Guide only for σ in [LO, HI] (Kynkäänniemi et al. 2024), every stage.")
@click.option("--all-stages", is_flag=True, help="Also write every lower stage's images.")
def sample(cascade, toy, out, batch, device, fast, to, tile, overwrite, seeds, class_idx, balanced,
           steps, relay_steps, eta, guidance, guidance_interval, all_stages) -> None:
    """Generate one PNG per seed (resumable: a re-run with the same cascade and settings skips
    the seeds already written and writes damaged files again).

    Under torchrun the seeds are sharded over ranks; results equal a single process.
    """
    if class_idx is not None and balanced:
        raise click.UsageError("use either --class or --balanced, not both")
    seed_list = unique_seeds(parse_seeds(seeds))
    interval = _parse_interval(guidance_interval)
    source = _cascade_source(cascade, toy)
    settings = {"command": "sample", "--cascade": _cascade_identity(source), "--class": class_idx,
                "--balanced": balanced, "--steps": steps, "--relay-steps": relay_steps, "--eta": eta,
                "--guidance": guidance, "--guidance-interval": interval, **_size_settings(to, tile)}
    replace = claim_out(out, overwrite, settings)
    from ...io.distributed import init_world
    from ...io.out_folder import filling_folder
    from ...sample_writer import write_samples, write_summary

    world = init_world(device)
    if replace and world.size > 1:
        raise click.UsageError(f"--overwrite {out}: not under torchrun (each process would "
                               "replace it); run once without torchrun, or choose another --out")
    model = _load_cascade(source, world.device)
    if model.num_classes == 0 and (class_idx is not None or balanced):
        raise click.UsageError("--class/--balanced: this cascade is unconditional")
    _apply_overrides(model, steps, relay_steps, guidance, eta, interval)
    _check_plan(model, None, to)
    world.barrier()  # every rank has claimed --out before rank 0 records the settings in it
    with filling_folder(out, replace=replace, settings=settings if world.is_main else None) as folder:
        world.barrier()
        new = write_samples(model, seed_list, folder, batch=batch, class_idx=class_idx,
                            balanced=balanced, all_stages=all_stages, rank=world.rank,
                            world=world.size, batch_invariant=not fast, to=to, tile=tile)
        world.barrier()
        if world.is_main:
            write_summary(model, seed_list, folder, class_idx=class_idx, balanced=balanced, to=to)
    click.echo(f"{new} new image(s) in {out} ({len(seed_list) - new} already there)"
               if world.size == 1 else f"rank {world.rank}: {new} new image(s)")


def _size_settings(to: int | None, tile: int) -> dict[str, int]:
    """``--to`` and ``--tile`` as recorded settings, only when given (so folders written before
    these options existed continue with the same settings)."""
    return {k: v for k, v in (("--to", to), ("--tile", tile)) if v}


def _check_plan(model, start: int | None, to: int | None) -> int:
    """The final size of ``model.plan(start, to)``; a size it cannot make is a usage error of
    ``--to`` (or of ``--input`` without ``--to``)."""
    try:
        return model.plan(start, to)[-1][1]
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--to" if to else "--input") from None


def _output_paths(files: list[Path], input_dir: Path, out: Path) -> list[Path]:
    """Where each input's result goes; refuses outputs that would overwrite an input or each
    other, and an --out inside --input (a re-run would read the results as inputs)."""
    src, dst = input_dir.resolve(), out.resolve()
    if dst == src or src in dst.parents:
        raise click.BadParameter(f"{out} is {'the' if dst == src else 'inside the'} input folder "
                                 f"{input_dir}; the results would overwrite or mix with your "
                                 "images: choose another --out", param_hint="--out")
    targets: dict[Path, Path] = {}
    inputs = {f.resolve() for f in files}
    for f in files:
        target = out / f.relative_to(input_dir).with_suffix(".png")
        if target.resolve() in inputs:
            raise click.BadParameter(f"{target} would overwrite the input {f}; choose another --out",
                                     param_hint="--out")
        if target in targets:
            raise click.BadParameter(f"{targets[target]} and {f} would both be written to {target}; "
                                     "rename one of them", param_hint="--input")
        targets[target] = f
    return list(targets)


def _upscale_settings(source: str | Path | None, files: list[Path], input_dir: Path, seed: int,
                      input_noise: float, to: int | None, tile: int) -> dict[str, Any]:
    """What determines the outputs of ``upscale``: recorded in --out, so that a re-run with the
    same settings completes the folder and one with other settings is refused."""
    from ...io.files import fingerprint

    inputs = fingerprint((f.relative_to(input_dir).as_posix(), f.read_bytes()) for f in files)
    return {"command": "upscale", "--cascade": _cascade_identity(source), "--input": inputs,
            "--seed": seed, "--input-noise": input_noise, **_size_settings(to, tile)}


@click.command()
@_with_common
@click.option("--input", "input_dir", required=True, type=click.Path(path_type=Path),
              help="Folder of low-resolution images (all the same size), or a `relaydiff sample` "
                   "folder (its samples: not its grid or lower stages).")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed of the first image (then +1 each).")
@click.option("--input-noise", default=0.0, show_default=True, type=click.FloatRange(min=0),
              help="Add Gaussian noise of this scale (in [-1, 1] units) to the inputs first.")
def upscale(cascade, toy, out, batch, device, fast, to, tile, overwrite, input_dir, seed,
            input_noise) -> None:
    """Relay your own images through the stages above their resolution (a re-run with the same
    settings writes only the missing outputs)."""
    from ...io.images import list_images
    from ...io.sample_folder import sample_files

    _check_seeds([seed], "--seed")
    try:  # a `relaydiff sample` folder: its samples, not its grids or lower stages
        files = sample_files(input_dir) if input_dir.is_dir() else None
        files = list_images(input_dir) if files is None else files
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--input") from None
    if not files:
        raise click.BadParameter(f"{input_dir} holds no PNG/JPEG/WebP images", param_hint="--input")
    targets = _output_paths(files, input_dir, out)
    _check_seeds([seed + len(files) - 1], "--seed")  # the last image's seed
    source = _cascade_source(cascade, toy)
    settings = _upscale_settings(source, files, input_dir, seed, input_noise, to, tile)
    replace = claim_out(out, overwrite, settings)
    import numpy as np
    import torch

    from ...io.distributed import check_device
    from ...io.images import from_uint8, load_image
    from ...io.out_folder import filling_folder
    from ...ops import randn
    from ...sample_writer import write_upscaled

    arrays = [load_image(f) for f in files]
    sizes = {a.shape[:2] for a in arrays}
    if len(sizes) > 1:
        raise click.BadParameter(f"{input_dir}: images have different sizes {sorted(sizes)}; "
                                 "resize them to one size first", param_hint="--input")
    model = _load_cascade(source, check_device(device))
    low = from_uint8(np.stack(arrays))
    if low.shape[-1] != low.shape[-2]:
        raise click.BadParameter(f"{input_dir}: images are {low.shape[-1]}×{low.shape[-2]}; the "
                                 "stages take square images: crop them first", param_hint="--input")
    size = _check_plan(model, low.shape[-1], to)
    seeds = [seed + k for k in range(len(files))]
    if input_noise > 0:  # each image's noise depends on its seed only
        gens = [torch.Generator().manual_seed(s + INPUT_NOISE_STREAM) for s in seeds]
        low = low + input_noise * randn(low.shape, gens)
    with filling_folder(out, replace=replace, settings=settings) as folder:
        new = write_upscaled(model, low, seeds, [folder / t.relative_to(out) for t in targets],
                             batch=batch, batch_invariant=not fast, to=to, tile=tile)
    click.echo(f"{new} image(s) upscaled to {size}px in {out} "
               f"({len(files) - new} already there)")
