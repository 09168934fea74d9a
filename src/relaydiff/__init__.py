"""relaydiff: Relay Diffusion Models (Teng et al., ICLR 2024) in PyTorch."""

from __future__ import annotations

from .version import __version__

__all__ = ["RelayCascade", "__version__"]


def __getattr__(name: str):
    # Lazy import keeps `import relaydiff.ops` light and independent of the cascade's I/O code.
    if name == "RelayCascade":
        from .cascade import RelayCascade

        return RelayCascade
    raise AttributeError(f"module 'relaydiff' has no attribute {name!r}")
