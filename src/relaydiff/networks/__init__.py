"""Raw networks ``F(x, c_noise, labels)`` and a registry that builds them from JSON configs."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Class decorator adding a network constructor under ``name``."""

    def wrap(cls: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = cls
        return cls

    return wrap


def build_network(config: dict) -> nn.Module:
    """Build a raw network from ``{"name": …, **kwargs}``."""
    from . import song_unet, toy, unet  # noqa: F401  (registers their networks)

    name = config.get("name")
    if name not in _REGISTRY:
        raise ValueError(f"unknown network name {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    kwargs = {k: v for k, v in config.items() if k != "name"}
    try:
        return _REGISTRY[name](**kwargs)
    except TypeError as e:
        raise ValueError(f"network {name!r}: bad configuration {kwargs}: {e}") from None


def size_multiple(model: nn.Module) -> int:
    """The number that input heights and widths must be multiples of: ``2^(levels−1)`` for a
    network with ``levels`` resolution levels (``1`` for networks without downsampling)."""
    return 2 ** (getattr(model, "levels", 1) - 1)
