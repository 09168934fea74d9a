"""safetensors files: every tensor file relaydiff writes or reads, with errors that name the file.

Writing streams each tensor's bytes straight into the file (the format: an 8-byte little-endian
header length, a JSON header of dtype, shape and byte offsets per tensor, then the raw bytes;
https://github.com/huggingface/safetensors), so a write holds no second copy of the weights in
memory. A durable write also flushes the file to disk while it is written (a background
``fdatasync`` every ``FLUSH_BEHIND`` bytes), so the final ``fsync`` has little left to wait for.
Reading uses the safetensors library. A failed write (a full disk, a folder that
vanished) raises ``OSError`` naming the file; a missing, truncated or foreign file raises
``ValueError`` naming it. Nothing here pickles.
"""

from __future__ import annotations

import json
import os
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .files import write_failure

DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
          torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
          torch.uint8: "U8", torch.bool: "BOOL"}
FLUSH_BEHIND = 64 << 20  # bytes written between background flushes of a durable write


def _header(state: dict[str, torch.Tensor], metadata: dict[str, str] | None) -> bytes:
    """The length-prefixed JSON header, padded with spaces to a multiple of 8 bytes."""
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, t in state.items():
        if t.dtype not in DTYPES:
            raise ValueError(f"tensor {name!r}: dtype {t.dtype} cannot be stored in safetensors")
        size = t.numel() * t.element_size()
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


def _write_file(path: Path, header: bytes, state: dict[str, torch.Tensor], durable: bool) -> None:
    with open(path, "wb") as f, ThreadPoolExecutor(1) as flusher:
        f.write(header)
        flushing: Future | None = None
        unflushed = 0
        for t in state.values():
            if t.numel():
                unflushed += f.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
            if durable and unflushed >= FLUSH_BEHIND and (flushing is None or flushing.done()):
                if flushing is not None:
                    flushing.result()  # a failed flush (e.g. EIO) fails the write
                flushing = flusher.submit(os.fdatasync, f.fileno())
                unflushed = 0
        if flushing is not None:
            flushing.result()
        if durable:
            f.flush()
            os.fsync(f.fileno())


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path,
                 metadata: dict[str, str] | None = None, *, durable: bool = False) -> None:
    """Write ``tensors`` (moved to contiguous CPU memory) to a safetensors file at ``path``,
    with optional string ``metadata``; ``durable``: on disk (fsynced) before it is renamed into
    place."""
    assert sys.byteorder == "little", "safetensors stores little-endian bytes"
    state = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")  # a complete file or none: written, then renamed
    try:
        _write_file(tmp, _header(state, metadata), state, durable)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise write_failure(path, e) from None


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file onto the CPU."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path}: unreadable safetensors file ({e})") from None
