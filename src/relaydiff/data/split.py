"""A held-out split of a built multi-resolution data set (``relaydiff data build`` output).

``split_dataset(ROOT, OUT, heldout=512, seed=0)`` writes ``OUT/train`` and ``OUT/heldout``, each a
built data set of its own (same resolutions, same file names, labels kept), so that every stage
can train on ``train`` and be evaluated on images it never saw. The held-out images are a seeded
random choice, the same at every resolution; a re-run with the same arguments does nothing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from ..io.files import atomic_folder, read_json, write_json
from .datasets import INFO_FILE, LABELS_FILE


def split_dataset(root: str | Path, out: str | Path, heldout: int,
                  seed: int = 0) -> tuple[Path, Path]:
    """``(OUT/train, OUT/heldout)`` of the built data set ``root``; ``ValueError`` when
    ``heldout`` leaves fewer than 2 training images or ``root`` is not a built data set."""
    root, out = Path(root), Path(out)
    if not (root / INFO_FILE).is_file():
        raise ValueError(f"{root}: not a built data set (no {INFO_FILE}); make one with "
                         "`relaydiff data build`")
    info = read_json(root / INFO_FILE)
    resolutions = [int(r) for r in info["resolutions"]]
    top = root / str(resolutions[0])
    names = sorted(p.relative_to(top).as_posix() for p in top.rglob("*.png"))
    if not 1 <= heldout <= len(names) - 2:
        raise ValueError(f"heldout={heldout}: {root} has {len(names)} images; hold out between 1 "
                         f"and {len(names) - 2}")
    chosen = set(np.random.default_rng(seed).permutation(len(names))[:heldout].tolist())
    parts = {"train": [n for k, n in enumerate(names) if k not in chosen],
             "heldout": [n for k, n in enumerate(names) if k in chosen]}
    record = {"source": str(root), "source_fingerprint": info.get("fingerprint"), "seed": seed,
              "heldout": heldout}
    for part, members in parts.items():
        dest = out / part
        if (dest / INFO_FILE).is_file() and read_json(dest / INFO_FILE).get("split") == \
                {**record, "part": part}:
            continue
        with atomic_folder(dest) as tmp:
            for r in resolutions:
                labels = read_json(root / str(r) / LABELS_FILE)
                keep = set(members)
                if labels.get("labels") is not None:
                    labels = {**labels, "labels": [e for e in labels["labels"] if e[0] in keep]}
                for name in members:
                    (tmp / str(r) / name).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(root / str(r) / name, tmp / str(r) / name)
                write_json(labels, tmp / str(r) / LABELS_FILE, durable=False)
            write_json({**info, "count": len(members), "split": {**record, "part": part}},
                       tmp / INFO_FILE, durable=False)
    return out / "train", out / "heldout"
