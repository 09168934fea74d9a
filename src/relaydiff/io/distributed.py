"""``torchrun`` set-up in one place: the process group (NCCL on GPUs, gloo on CPUs), this
process's rank and device, sharding and small collectives. Used by training, sampling and
evaluation alike; outside ``torchrun`` everything is a single process of rank 0."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the processes of one job."""

    rank: int
    size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: Sequence[T]) -> list[T]:
        """This process's share ``items[rank::size]`` (round robin, so shares differ by ≤ 1)."""
        return list(items[self.rank::self.size])

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum over processes (a copy; unchanged when running alone)."""
        values = values.detach().clone()
        if self.size > 1:
            dist.all_reduce(values)
        return values

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()


def default_device() -> torch.device:
    """``cuda:<LOCAL_RANK>`` when a GPU is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def check_device(device: str | torch.device | None) -> torch.device:
    """The device named by ``device`` (``None``: :func:`default_device`); ``ValueError`` with a
    one-line explanation when it does not exist on this machine."""
    if device is None:
        return default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device {device!r} is not a torch device ({e}); use e.g. cpu or "
                         "cuda:0") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: this machine has no usable CUDA GPU (torch "
                             f"{torch.__version__}); use cpu or leave the device unset")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"device {device!r}: this machine has {count} CUDA device(s)")
        if dev.index is None:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS is not available here; use cpu")
    return dev


def init_world(device: str | torch.device | None = None) -> World:
    """Join torchrun's process group when ``WORLD_SIZE > 1``; pick the device of this rank."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    dev = check_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    rank = dist.get_rank() if size > 1 else 0
    return World(rank, size, dev)


def current_world() -> tuple[int, int]:
    """``(rank, world_size)`` of an initialised process group; ``(0, 1)`` outside ``torchrun``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def close_world(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()
