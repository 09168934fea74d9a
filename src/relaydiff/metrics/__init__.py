"""Evaluation metrics: FID, sFID, IS, precision/recall, KID (Inception-v3 features, the standard
FID graph) and the weight-free SWD and power-spectrum distances. See docs/eval.md.

The names below load on first use, so that ``relaydiff.metrics.names`` (and the CLI's help)
does not import torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "METRICS": "names",
    "parse_metrics": "names",
    "build_reference": "evaluate",
    "evaluate": "evaluate",
    "format_table": "evaluate",
    "periodic_fid": "evaluate",
    "frechet_distance": "fid",
    "gaussian_stats": "fid",
    "InceptionFeatures": "inception",
    "InceptionV3": "inception",
    "preprocess": "inception",
    "inception_score": "inception_score",
    "kernel_inception_distance": "kid",
    "precision_recall": "precision_recall",
    "Reference": "reference",
    "load_inception": "weights",
    "weights_hash": "weights",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
