"""Cascade folders (``save_pretrained``/``from_pretrained``) and the cascades shipped in the package.

On disk::

    DIR/cascade.json            {"format": "relaydiff.cascade", "version": 1, "stages": [...]}
    DIR/<stage>/config.json     a stage folder (relaydiff.stage) per stage, lowest first
    DIR/<stage>/model.safetensors

A folder is written atomically (a temporary sibling, then a rename), so an interrupted write
never leaves a half-written cascade or damages the one it replaces. The packaged cascades live
in ``relaydiff/pretrained/<name>`` and load by name; see docs/pretrained.md. A packaged cascade
may share stages with another packaged one: a stage entry ``"NAME/STAGE"`` is the stage folder
``STAGE`` of the packaged cascade ``NAME`` (so ``fluent-emoji-3d-16to256`` ships only its third
stage); entries never point outside the package.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from .io.files import atomic_folder, fingerprint, read_json, sha256_file, write_json
from .stage import StageConfig, is_stage_folder, load_stage, save_stage
from .version import __version__

CASCADE_FORMAT = "relaydiff.cascade"
CASCADE_FILE = "cascade.json"
PRETRAINED = "fluent-emoji-3d-16to64"
PRETRAINED_256 = "fluent-emoji-3d-16to256"  # PRETRAINED's two stages and a 64→256 relay stage


def pretrained_path(name: str = PRETRAINED) -> Path:
    """Folder of a cascade shipped inside the package (``relaydiff/pretrained/NAME``)."""
    return Path(__file__).parent / "pretrained" / name


def resolve(directory: str | Path) -> Path:
    """A cascade folder: ``directory`` itself, or, for a bare name that is not a folder here,
    the packaged cascade of that name (names never resolve outside the package)."""
    directory = Path(directory)
    if (not directory.exists() and len(directory.parts) == 1
            and (pretrained_path(directory.name) / CASCADE_FILE).is_file()):
        return pretrained_path(directory.name)
    return directory


def stage_name(k: int, config: StageConfig) -> str:
    """Folder name of (1-based) stage ``k``: ``stage2_relay_64``."""
    return f"stage{k}_{config.kind}_{config.resolution}"


GUIDE_FOLDER = "guide"


def write_cascade(directory: str | Path, configs: Sequence[StageConfig],
                  denoisers: Sequence[nn.Module], training: Sequence[dict] | None = None,
                  guides: Sequence[tuple[StageConfig, nn.Module] | None] | None = None,
                  dtype: torch.dtype | None = None, shared: Sequence[str | None] | None = None
                  ) -> None:
    """Write a cascade folder atomically; ``training`` is the optional record of how each stage
    was trained (images seen, device-hours, FLOPs per image, device), kept in ``cascade.json``;
    ``guides`` the optional guide network of each stage (autoguidance), kept as a stage folder
    ``<stage>/guide/``; ``dtype`` the storage precision of the weights (None: as they are).
    ``shared`` (packaged cascades): per stage, ``"NAME/STAGE"`` to refer to that stage of the
    packaged cascade ``NAME`` instead of writing it (it must hold the same stage)."""
    guides = list(guides or [None] * len(configs))
    shared = list(shared or [None] * len(configs))
    with atomic_folder(directory) as tmp:
        names = []
        for k, (cfg, den, guide) in enumerate(zip(configs, denoisers, guides, strict=True), 1):
            if shared[k - 1] is not None:
                names.append(shared[k - 1])
                _stage_folder(tmp, names[-1])  # checks the reference
                continue
            names.append(stage_name(k, cfg))
            save_stage(tmp / names[-1], cfg, den, dtype)
            if guide is not None:
                save_stage(tmp / names[-1] / GUIDE_FOLDER, *guide, dtype)
        meta = {"format": CASCADE_FORMAT, "version": 1, "stages": names,
                "relaydiff_version": __version__}
        if training is not None:
            meta["training"] = [dict(t, stage=n) for t, n in zip(training, names, strict=True)]
        write_json(meta, tmp / CASCADE_FILE, durable=False)


def _meta(directory: Path) -> dict:
    meta = read_json(directory / CASCADE_FILE)
    if not isinstance(meta, dict) or meta.get("format") != CASCADE_FORMAT:
        raise ValueError(f"{directory / CASCADE_FILE}: not a relaydiff cascade description")
    return meta


def _stage_folder(directory: Path, name: str) -> Path:
    """The folder of stage entry ``name`` of the cascade in ``directory``: its own sub-folder, or
    for ``"NAME/STAGE"`` that stage of the packaged cascade ``NAME`` (``ValueError`` otherwise)."""
    parts = name.split("/")
    if len(parts) == 1 and name not in ("", ".", ".."):
        return directory / name
    if len(parts) == 2 and all(p and p not in (".", "..") and "\\" not in p for p in parts):
        if (pretrained_path(parts[0]) / CASCADE_FILE).is_file():
            return pretrained_path(parts[0]) / parts[1]
    raise ValueError(f"{directory / CASCADE_FILE}: stage entry {name!r} is neither a stage folder "
                     "of this cascade nor NAME/STAGE of a packaged cascade")


def read_cascade(directory: str | Path) -> tuple[list[StageConfig], list[nn.Module], list | None,
                                                list]:
    """The stage configs, denoisers, training record (``None`` if absent) and guides (``None``
    per stage without one) of a cascade folder (or packaged name), lowest stage first."""
    directory = resolve(directory)
    meta = _meta(directory)
    configs, denoisers, guides = [], [], []
    for name in meta.get("stages", []):
        folder = _stage_folder(directory, name)
        cfg, den = load_stage(folder)
        configs.append(cfg)
        denoisers.append(den)
        guide = folder / GUIDE_FOLDER
        guides.append(load_stage(guide) if is_stage_folder(guide) else None)
    return configs, denoisers, meta.get("training"), guides


def cascade_fingerprint(directory: str | Path) -> str:
    """``sha256:…`` over the files of a cascade folder (or packaged name), names and contents:
    what an output folder records to tell the cascade that made it from any other."""
    directory = resolve(directory)
    roots = {"": directory} | {name: _stage_folder(directory, name)
                               for name in _meta(directory).get("stages", []) if "/" in name}
    files = sorted(("/".join(filter(None, (label, p.relative_to(root).as_posix()))), p)
                   for label, root in roots.items()
                   for p in root.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    return fingerprint((name, sha256_file(p).encode()) for name, p in files)


def read_training_record(directory: str | Path) -> list | None:
    """How the stages of a cascade folder (or packaged name) were trained, if it says."""
    return _meta(resolve(directory)).get("training")
