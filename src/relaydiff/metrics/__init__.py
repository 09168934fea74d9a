"""Evaluation metrics: FID, sFID, IS, precision/recall, KID (Inception-v3 features, the standard
FID graph) and the weight-free SWD and power-spectrum distances. See docs/eval.md."""

from .evaluate import METRICS, build_reference, evaluate, format_table, periodic_fid
from .fid import frechet_distance, gaussian_stats
from .inception import InceptionFeatures, InceptionV3, preprocess
from .inception_score import inception_score
from .kid import kernel_inception_distance
from .precision_recall import precision_recall
from .reference import Reference
from .weights import load_inception, weights_hash

__all__ = [
    "METRICS",
    "InceptionFeatures",
    "InceptionV3",
    "Reference",
    "build_reference",
    "evaluate",
    "format_table",
    "frechet_distance",
    "gaussian_stats",
    "inception_score",
    "kernel_inception_distance",
    "load_inception",
    "periodic_fid",
    "precision_recall",
    "preprocess",
    "weights_hash",
]
