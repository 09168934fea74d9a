"""Datasets, dataset building and image sources."""

from .build import build_dataset
from .datasets import ImageDataset, ImageFolderDataset, ZipDataset, flip_decision, open_dataset
from .photos import sample_photos
from .sources import default_dataset, fetch_fluent_emoji_3d

__all__ = [
    "ImageDataset",
    "ImageFolderDataset",
    "ZipDataset",
    "build_dataset",
    "default_dataset",
    "fetch_fluent_emoji_3d",
    "flip_decision",
    "open_dataset",
    "sample_photos",
]
