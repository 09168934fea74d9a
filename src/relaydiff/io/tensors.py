"""safetensors files: every tensor file relaydiff writes or reads, with errors that name the file.

A failed write (a full disk, a folder that vanished) raises ``OSError`` naming the file; a
missing, truncated or foreign file raises ``ValueError`` naming it. Nothing here pickles.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """Write ``tensors`` (moved to contiguous CPU memory) to a safetensors file at ``path``."""
    state = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    try:
        save_file(state, str(path))
    except (SafetensorError, OSError) as e:
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
