"""Artifact correction (paper appendix C.3) of the packaged 16→64 cascade, for docs/pretrained.md.

The demo's measurement (``relaydiff demo``, ``relaydiff.analysis.artifacts``): 8 evenly spaced
16-px data images with Gaussian noise σ = 0.1, upsampled to 64 px by nearest, bicubic and the
packaged cascade's relay stage (seeds 0–7, exact CPU sampling, its guide included); the noise
each passes on, measured back at 16 px, in total and in the upper half of the frequencies.
About ten seconds on one core.

    python scripts/artifacts_pretrained.py [--out docs/images/pretrained_artifacts.json]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from relaydiff.analysis.artifacts import NOISE_SIGMA, artifact_correction
from relaydiff.cascade import RelayCascade
from relaydiff.data.datasets import open_dataset
from relaydiff.data.floors import data_images, evenly_spaced
from relaydiff.data.sources import default_dataset
from relaydiff.io.files import write_json
from relaydiff.pretrained import PRETRAINED
from relaydiff.version import __version__

IMAGES = 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images/pretrained_artifacts.json"))
    args = parser.parse_args()
    folder = default_dataset((64, 16)) / "16"
    total = len(open_dataset(folder, resolution=16))
    indices = evenly_spaced(IMAGES, total)
    low = data_images(folder, indices, 16)
    cascade = RelayCascade.from_pretrained(PRETRAINED)
    seeds = list(range(IMAGES))
    rows, _ = artifact_correction({"relay": lambda x: cascade(seeds, low_res=x.float())[-1]},
                                  low, cascade.configs[-1].relay.scale)
    write_json({"what": "noise passed on from a noisy 16-px input (docs/pretrained.md, "
                        "scripts/artifacts_pretrained.py)",
                "relaydiff_version": __version__, "cascade": PRETRAINED,
                "data_indices": [int(i) for i in indices], "data_images": total,
                "seeds": seeds, "noise_sigma": NOISE_SIGMA, "rows": rows}, args.out)
    for r in rows:
        print(f"{r['method']:<22} {r['noise energy ×1e4']:6.1f} {r['high-frequency part ×1e4']:6.1f}")


if __name__ == "__main__":
    main()
