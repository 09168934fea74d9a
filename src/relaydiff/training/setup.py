"""A training run's config checked and completed against its data and the snapshot it resumes:
class labels, the images' resolution, settings that changed since the snapshot."""

from __future__ import annotations

import math
from dataclasses import replace

from ..config import ConfigError
from ..stage import StageConfig
from .checkpoint import Snapshot
from .config import TrainConfig, config_differences

# Config keys that may change when a run is resumed (everything else must match the snapshot).
RESUMABLE_CHANGES = (
    "total_images",
    "stage.edm_sampler.",  # sampling settings do not touch training
    "stage.relay_sampler.",
    "stage.guidance.",
    "checkpoint.",
    "log.",
    "data.workers",
    "data.skip_bad",
    "device",
    "max_bad_steps",
    "compile",
    "description",
)


def resolve_stage(config: TrainConfig, num_classes: int, data_name: str) -> TrainConfig:
    """Fill in the stage's label dimension from the data set (class-conditional runs)."""
    stage = config.stage
    cond = config.cond or stage.label_dim > 0
    if not cond:
        return config
    if num_classes == 0:
        raise ConfigError(
            "cond",
            f"{data_name}: class-conditional training (cond) needs labels, but this data set "
            "has none",
            "add a dataset.json with labels or one sub-folder per class, or set cond=false",
        )
    if stage.label_dim not in (0, num_classes):
        raise ValueError(
            f"stage.label_dim is {stage.label_dim} but {data_name} has {num_classes} "
            "classes; set stage.label_dim to that or leave it 0"
        )
    network = {**stage.network, "label_dim": num_classes}
    return replace(config, cond=True, stage=replace(stage, label_dim=num_classes, network=network))


def check_resume(config: TrainConfig, snapshot: Snapshot) -> None:
    """Refuse to resume ``snapshot`` with settings other than its own (but those in
    :data:`RESUMABLE_CHANGES`), naming them."""
    where = str(snapshot.path / "state.json")
    # Through the schema, so that keys added since (with their defaults) compare equal.
    old = TrainConfig.from_dict(snapshot.state["config"], where).to_dict()
    changed = [k for k in config_differences(old, config.to_dict()) if not k.startswith(RESUMABLE_CHANGES)]
    if changed:
        raise ValueError(
            f"{snapshot.path / 'state.json'}: the checkpoint was trained with other "
            f"settings ({', '.join(changed)}); resume with the same config or start "
            "a new run folder"
        )


def wrong_resolution(path: str, example: tuple[str, tuple[int, int]], stage: StageConfig) -> str:
    """Why a data set whose images are not at the stage's resolution is refused, and the
    command that makes a copy at the right resolutions."""
    name, (w, h) = example
    res = stage.resolution
    also = f" --also {stage.input_resolution}" if stage.scale else ""
    what = {"edm": "EDM", "relay": "relay", "sr": "super-resolution"}[stage.kind]
    return (f"{path}: {name} is {w}×{h}, but this {what} stage trains at {res}×{res}; make a copy "
            f"at that resolution with `relaydiff data build {path} --out DIR --resolution {res}"
            f"{also}` (then data.path=DIR), or set data.resize=true to resize while reading")


def check_crop(config: TrainConfig, multiple: int) -> None:
    """Refuse a ``data.crop`` that is not a patch-aligned window the network can run on: a stage
    other than relay or super-resolution, larger than the stage's resolution, or not a multiple of
    the patch size and of the network's downsampling ``multiple``, or on the official relay
    variant (its block noise wraps around the image) (one line naming the fix)."""
    crop, stage = config.data.crop, config.stage
    if crop is None:
        return
    if stage.scale is None:
        raise ValueError(f"data.crop is {crop}, but crops are for relay and super-resolution stages "
                         "(an EDM stage 1 generates whole images); remove data.crop")
    if stage.relay is not None and stage.relay.variant == "official":
        raise ValueError(f"data.crop is {crop}, but relay.variant 'official' draws box-filter block "
                         "noise that wraps around the image's edges, so a crop's noise is not a "
                         "window of the image's; use relay.variant 'trapezoidal' or remove data.crop")
    need = math.lcm(stage.scale, multiple)
    if crop < 1 or crop > stage.resolution or crop % need:
        raise ValueError(f"data.crop is {crop}: it must be a multiple of {need} (the patch size "
                         f"{stage.scale} and the network's downsampling {multiple}) and at most the "
                         f"stage resolution {stage.resolution}")
