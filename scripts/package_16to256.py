"""Package the three-stage cascade ``fluent-emoji-3d-16to256`` (docs/pretrained.md): the packaged
16→64 cascade's two stages (shared, not copied: ``NAME/STAGE`` entries) and a 64→256 relay
stage from a training run (its newest snapshot's EMA weights), written into the package.

    python scripts/package_16to256.py RUN_DIR
"""

from __future__ import annotations

import argparse
from pathlib import Path

from relaydiff.cascade import RelayCascade
from relaydiff.io.files import read_json
from relaydiff.pretrained import CASCADE_FILE, PRETRAINED, PRETRAINED_256, pretrained_path, write_cascade
from relaydiff.training.export import load_stage_source

NAME = PRETRAINED_256


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="the 64→256 relay stage's run (or snapshot) folder")
    parser.add_argument("--relay-steps", type=int, default=4,
                        help="points of the third stage's Karras grid (with --relay-trunc 0.9: "
                             "σ 0.74 → 0.008 → 0, one Heun step and 3 evaluations per image; "
                             "chosen by scripts/sweep_pretrained_256.py)")
    parser.add_argument("--relay-trunc", type=float, default=0.9,
                        help="the grid starts at its first σ at or below this")
    args = parser.parse_args()
    base = RelayCascade.from_pretrained(PRETRAINED)
    stages = read_json(pretrained_path(PRETRAINED) / CASCADE_FILE)["stages"]
    config, denoiser, record = load_stage_source(args.run)
    config.relay_sampler.steps = args.relay_steps
    config.relay_sampler.sigma_trunc = args.relay_trunc
    record["source"] = str(Path(record["source"]).relative_to(Path(args.run).resolve().parent))
    guides = [(base.guide_configs[k], base.guides[str(k)]) if k in base.guide_configs else None
              for k in range(len(base.configs))] + [None]
    write_cascade(pretrained_path(NAME), [*base.configs, config], [*base.denoisers, denoiser],
                  [*base.training, record], guides,
                  shared=[f"{PRETRAINED}/{s}" for s in stages] + [None])
    RelayCascade.from_pretrained(NAME)  # loads
    print(f"wrote {pretrained_path(NAME)}")


if __name__ == "__main__":
    main()
