"""The demo's metric table in words: samples against the round-trip floor ``up(down(x))``.

The floor is the data itself sent through the 16 px bottleneck (box-averaged 4×4, then
nearest-upsampled): it keeps every real image's shapes and colours and matches the data exactly
at 16 px, and lacks only the detail above 16 px. :func:`explain_metrics` says, per metric and
then in one summary, whether a run's samples beat that floor; every claim is computed from the
two rows it is given (lower or higher is better per metric), so the text cannot contradict the
table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

FLOOR = "the up(down(x)) floor"
LOWER_IS_BETTER = {"FID": True, "KID ×1e3": True, "precision": False, "recall": False,
                   "SWD ×1e3": True, "spectrum distance (dB)": True}
INCEPTION = ("FID", "KID ×1e3", "precision", "recall")
PIXEL = ("SWD ×1e3", "spectrum distance (dB)")
MEANING = {
    "FID": "distance between Inception-feature statistics of the two sets (lower is better)",
    "KID ×1e3": "like FID, without FID's bias at small counts (lower is better)",
    "precision": "share of samples that land on the data's feature manifold (higher is better)",
    "recall": "share of the data's manifold the samples cover (higher is better)",
    "SWD ×1e3": "sliced Wasserstein distance of local 7×7 patches at several scales (lower is "
                "better)",
    "spectrum distance (dB)": "how far the radial power spectrum is from the data's, i.e. "
                              "whether fine detail has the right amount of energy (lower is better)",
}


def number(value: float) -> str:
    """One decimal from 10 up (``64.0``), else three significant digits (``0.523``)."""
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}"


def outcomes(samples: dict, floor: dict) -> dict[str, int]:
    """Per metric finite in both rows: ``1`` if the samples beat the floor, ``-1`` if the floor
    beats the samples, ``0`` if they are equal (in :data:`LOWER_IS_BETTER` order)."""
    found = {}
    for key, lower in LOWER_IS_BETTER.items():
        a, b = samples.get(key), floor.get(key)
        if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
            continue
        found[key] = 0 if a == b else (1 if (a < b) == lower else -1)
    return found


def _listing(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def summary(samples: dict, floor: dict) -> str:
    """Which metrics the samples beat the floor on and which not (with both values), and what
    each kind of loss or win means; empty when no metric is finite in both rows."""
    result = outcomes(samples, floor)
    if not result:
        return ""
    won = [k for k, v in result.items() if v > 0]
    not_won = [f"{k} ({number(samples[k])} vs {number(floor[k])})"
               for k, v in result.items() if v <= 0]
    if not not_won:
        head = f"The samples beat {FLOOR} on every metric here ({_listing(won)})."
    elif not won:
        head = f"The samples do not beat {FLOOR} on any metric: {_listing(not_won)}."
    else:
        head = f"The samples beat {FLOOR} on {_listing(won)}, but not on {_listing(not_won)}."
    sentences = [head]
    if any(result.get(k, 0) < 0 for k in INCEPTION):
        sentences.append("The Inception-feature metrics respond to shapes and colours, which the "
                         "floor keeps exactly from the real images, while the cascade must invent "
                         "them in its 16 px stage 1.")
    pixel_lost = [k for k in PIXEL if result.get(k, 0) < 0]
    pixel_won = [k for k in PIXEL if result.get(k, 0) > 0]
    if pixel_lost or pixel_won:
        sentences.append("SWD and the spectrum distance compare pixel statistics (local patches at "
                         "several scales, energy per frequency), and the floor matches the data "
                         "exactly at 16 px, lacking only finer detail.")
    if pixel_lost:
        sentences.append(f"Losing to it on {_listing(pixel_lost)} means the samples' statistics "
                         "there are further from the data's than those of the blurred data.")
    if pixel_won:
        sentences.append(f"Beating it on {_listing(pixel_won)} means the detail the samples have "
                         "above 16 px brings those statistics closer to the data's than leaving "
                         "it out does.")
    return " ".join(sentences)


def explain_metrics(rows: Sequence[dict]) -> str:
    """For the rows ``[samples, floor]``: a sentence per metric (what it measures, whether the
    samples beat the floor on it, both values), then :func:`summary`."""
    samples, floor = rows
    words = {1: "beat", -1: "do not beat", 0: "equal"}
    sentences = [f"<b>{key}</b> ({MEANING[key]}): the samples {words[v]} the floor "
                 f"({number(samples[key])} vs {number(floor[key])})."
                 for key, v in outcomes(samples, floor).items()]
    return " ".join([*sentences, summary(samples, floor)]).strip()
