"""The random streams a seed feeds, and the seeds that keep them apart (docs/method.md §4).

Sample ``s`` draws its latents and every stage's sampler noise from a generator seeded with
``s``, its random class label from ``s + LABEL_STREAM`` and the noise of ``relaydiff upscale
--input-noise`` from ``s + INPUT_NOISE_STREAM``. A seed must therefore lie in ``0..MAX_SEED``: a
larger one would draw another seed's label or input noise. :func:`check_seeds` is the one check
(and the one message) for the library (``RelayCascade``) and the command line (docs/sample.md).
"""

from __future__ import annotations

from collections.abc import Sequence

LABEL_STREAM = 1 << 40  # offset of the generators that draw random class labels
INPUT_NOISE_STREAM = 1 << 41  # offset of the generators that draw upscale --input-noise
MAX_SEED = LABEL_STREAM - 1  # larger seeds would overlap the label and input-noise streams
MAX_SEEDS = 10_000_000  # seeds per command-line run (one PNG each); larger jobs take several runs
# Input noise of the artifact-correction measurement (relaydiff.analysis.artifacts): image k draws
# it from ARTIFACT_NOISE_STREAM + k. Kept at 1000 so that the recorded results reproduce; it lies
# among the sample seeds, so its callers upscale with other seeds (demo: 0–7, study: from 2²⁰).
ARTIFACT_NOISE_STREAM = 1000


def check_seeds(seeds: Sequence[int]) -> None:
    """``ValueError`` naming a seed outside ``0..MAX_SEED`` (the lowest if one is negative, else
    the highest), the range and the reason; nothing for good seeds."""
    if not seeds:
        return
    lo, hi = min(seeds), max(seeds)
    bad = lo if lo < 0 else hi if hi > MAX_SEED else None
    if bad is not None:
        raise ValueError(f"seed {bad} is outside 0–{MAX_SEED:,} (it would overlap another seed's "
                         "label or input-noise stream); choose seeds in that range")
