"""The metric names ``relaydiff eval`` knows (no torch import: the CLI's help texts use them)."""

from __future__ import annotations

from collections.abc import Sequence

METRICS = ("fid", "sfid", "is", "pr", "kid", "swd", "spectrum")
"""The names of ``relaydiff.metrics.evaluate.METRIC_TABLE``, where everything else about a metric is."""


def parse_metrics(text: str | Sequence[str]) -> list[str]:
    """``"fid,pr"`` → ``["fid", "pr"]``, refusing unknown names."""
    names = [m.strip().lower() for m in (text.split(",") if isinstance(text, str) else text)]
    names = [m for m in names if m]
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise ValueError(f"unknown metric {unknown[0] if unknown else '(none)'!r}; choose from "
                         f"{','.join(METRICS)}")
    return list(dict.fromkeys(names))
