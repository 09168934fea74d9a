"""Improved precision and recall (Kynkäänniemi et al. 2019) as ADM's evaluator computes them.

Each set's manifold is the union of balls around its feature vectors whose radius is the
distance to the ``k``-th nearest other vector of the same set (``k = 3``). Precision is the
fraction of generated vectors inside the real manifold, recall the fraction of real vectors
inside the generated one. Squared distances ``‖u‖² − 2uᵀv + ‖v‖²`` (clamped at 0) are computed in
float32 blocks of ``batch_size × batch_size``; ADM first tries float16 and falls back to float32,
which can move a borderline vector. ADM's reference convention: the 10 000 images of its
reference batch against all samples (``relaydiff eval ref`` keeps up to 10 000 feature vectors).
"""

from __future__ import annotations

import numpy as np
import torch


def _sq_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    d = (a * a).sum(1, keepdim=True) - 2 * a @ b.T + (b * b).sum(1)[None]
    return d.clamp_min_(0)


def manifold_radii(features: torch.Tensor, k: int = 3, batch_size: int = 10000) -> torch.Tensor:
    """Squared distance of every vector to its ``k``-th nearest neighbour in the same set."""
    n = len(features)
    if n <= k:
        raise ValueError(f"precision/recall with k={k} need at least {k + 1} images per set, "
                         f"got {n}")
    radii = torch.empty(n, dtype=features.dtype, device=features.device)
    for i in range(0, n, batch_size):
        rows = features[i:i + batch_size]
        # The k+1 smallest include the vector itself (distance 0).
        best = torch.empty(len(rows), 0, dtype=features.dtype, device=features.device)
        for j in range(0, n, batch_size):
            d = torch.cat([best, _sq_distances(rows, features[j:j + batch_size])], 1)
            best = d.topk(min(k + 1, d.shape[1]), dim=1, largest=False).values
        radii[i:i + batch_size] = best[:, k]
    return radii


def _inside(query: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor,
            batch_size: int) -> torch.Tensor:
    """For every query vector: is it within the ball of some centre?"""
    hit = torch.zeros(len(query), dtype=torch.bool, device=query.device)
    for i in range(0, len(query), batch_size):
        for j in range(0, len(centres), batch_size):
            d = _sq_distances(query[i:i + batch_size], centres[j:j + batch_size])
            hit[i:i + batch_size] |= (d <= radii[j:j + batch_size][None]).any(1)
    return hit


def precision_recall(real: np.ndarray | torch.Tensor, fake: np.ndarray | torch.Tensor,
                     k: int = 3, batch_size: int = 10000,
                     device: str | torch.device = "cpu") -> tuple[float, float]:
    """``(precision, recall)`` of ``fake`` against ``real`` (see the module docstring)."""
    real = torch.as_tensor(real, dtype=torch.float32, device=device)
    fake = torch.as_tensor(fake, dtype=torch.float32, device=device)
    r_real, r_fake = manifold_radii(real, k, batch_size), manifold_radii(fake, k, batch_size)
    precision = _inside(fake, real, r_real, batch_size).double().mean().item()
    recall = _inside(real, fake, r_fake, batch_size).double().mean().item()
    return precision, recall
