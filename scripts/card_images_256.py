"""The three-stage model card's pictures (docs/pretrained.md, README) from the folders of its two
acceptance commands: seeds 0–7 at 256 px in a 4×2 grid (``docs/images/pretrained_grid_256.jpg``)
and seeds 0 and 1 at 1024 px side by side (``docs/images/pretrained_1024.jpg``), JPEG quality 90.

    relaydiff sample --cascade fluent-emoji-3d-16to256 --seeds 0-7 --out S256
    relaydiff upscale --cascade fluent-emoji-3d-16to256 --input S256 --to 1024 --tile 256 --out U1024
    python scripts/card_images_256.py S256 U1024
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from relaydiff.io.images import image_grid, load_image
from relaydiff.io.sample_folder import seed_path

IMAGES = Path(__file__).resolve().parents[1] / "docs" / "images"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("s256", type=Path)
    parser.add_argument("u1024", type=Path)
    args = parser.parse_args()
    for folder, seeds, columns, name in ((args.s256, range(8), 4, "pretrained_grid_256.jpg"),
                                         (args.u1024, range(2), 2, "pretrained_1024.jpg")):
        grid = image_grid([load_image(seed_path(folder, s)) for s in seeds], columns)
        Image.fromarray(grid).save(IMAGES / name, quality=90)
        print(f"wrote {IMAGES / name}")


if __name__ == "__main__":
    main()
