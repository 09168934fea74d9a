"""Sample photographs shipped inside installed Python packages (no download needed).

Used by ``relaydiff analyze spectrum`` as real photographs to measure. Only files that are
photographs of natural scenes are listed (not charts, logos, test patterns or binary masks).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

PHOTOS: dict[str, tuple[str, tuple[str, ...]]] = {
    # package: (folder inside the package, photograph files)
    "skimage": (
        "data",
        (
            "astronaut.png",
            "brick.png",
            "camera.png",
            "chelsea.png",
            "coffee.png",
            "coins.png",
            "grass.png",
            "gravel.png",
            "hubble_deep_field.jpg",
            "moon.png",
            "motorcycle_left.png",
            "rocket.jpg",
        ),
    ),
    "sklearn": ("datasets/images", ("china.jpg", "flower.jpg")),
    "matplotlib": ("mpl-data/sample_data", ("grace_hopper.jpg",)),
}


def package_folder(package: str) -> Path | None:
    """Where an installed top-level ``package`` lives, without importing it (``None`` if absent)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def sample_photos() -> list[Path]:
    """Paths of the sample photographs of scikit-image, scikit-learn and matplotlib that are
    installed, in the order of :data:`PHOTOS`."""
    found = []
    for package, (subfolder, files) in PHOTOS.items():
        root = package_folder(package)
        if root is None:
            continue
        found += [root / subfolder / f for f in files if (root / subfolder / f).is_file()]
    return found
