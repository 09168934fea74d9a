"""Inception Score (Salimans et al. 2016): ``IS = exp(E_x KL(p(y|x) ‖ p(y)))``.

As in StyleGAN3 and the original code, the samples are cut into ``splits`` contiguous parts
(part ``i`` is ``[i·N/splits, (i+1)·N/splits)``), ``p(y)`` is the mean prediction of the part,
and the result is the mean and standard deviation of the per-part scores. ``p(y|x)`` is the
softmax of the 1008-way logits of the FID Inception (without the output bias, like StyleGAN3's
``no_output_bias`` and ADM's ``softmax/logits/MatMul``). ADM itself uses parts of 5000 samples
instead of 10 parts: identical for 50 000 samples.
"""

from __future__ import annotations

import numpy as np
from scipy.special import log_softmax


def inception_score(logits: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """Mean and standard deviation over ``splits`` parts of ``exp(mean_x Σ_y p log(p/p̄))``."""
    logits = np.asarray(logits, dtype=np.float64)
    n = len(logits)
    if n < splits:
        raise ValueError(f"Inception Score with {splits} splits needs at least {splits} images, "
                         f"got {n}")
    log_p = log_softmax(logits, axis=1)
    scores = []
    for i in range(splits):
        part = log_p[i * n // splits:(i + 1) * n // splits]
        log_py = np.log(np.exp(part).mean(axis=0))
        kl = (np.exp(part) * (part - log_py)).sum(axis=1).mean()
        scores.append(np.exp(kl))
    return float(np.mean(scores)), float(np.std(scores))
