"""safetensors files: every tensor file relaydiff writes or reads, with errors that name the file.

A failed write (a full disk, a folder that vanished) raises ``OSError`` naming the file; a
missing, truncated or foreign file raises ``ValueError`` naming it. Nothing here pickles.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path,
                 metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` (moved to contiguous CPU memory) to a safetensors file at ``path``,
    with optional string ``metadata``."""
    state = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")  # a complete file or none: written, then renamed
    try:
        save_file(state, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    except (SafetensorError, OSError) as e:
        tmp.unlink(missing_ok=True)
        reason = str(e)
        if "StorageFull" in reason or "No space" in reason:
            reason = "no space left on the device"
        raise OSError(f"{path}: could not write ({reason})") from None


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file onto the CPU."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path}: unreadable safetensors file ({e})") from None
