"""The metric names ``relaydiff eval`` knows (no torch import: the CLI's help texts use them)."""

from __future__ import annotations

from collections.abc import Sequence

METRICS = ("fid", "sfid", "is", "pr", "kid", "swd", "spectrum")
INCEPTION_METRICS = frozenset({"fid", "sfid", "is", "pr", "kid"})
MIN_IMAGES = {"fid": 2, "sfid": 2, "is": 10, "pr": 4, "kid": 2, "swd": 1, "spectrum": 1}


def parse_metrics(text: str | Sequence[str]) -> list[str]:
    """``"fid,pr"`` → ``["fid", "pr"]``, refusing unknown names."""
    names = [m.strip().lower() for m in (text.split(",") if isinstance(text, str) else text)]
    names = [m for m in names if m]
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise ValueError(f"unknown metric {unknown[0] if unknown else '(none)'!r}; choose from "
                         f"{','.join(METRICS)}")
    return list(dict.fromkeys(names))
