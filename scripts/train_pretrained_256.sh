#!/usr/bin/env bash
# Train the third stage of the packaged fluent-emoji-3d-16to256 cascade (docs/pretrained.md): a
# 64→256 relay stage (relaydiff/configs/relay_64to256.json) trained on 64-px crops of the 256-px
# renders, 104,720 training images (1.14 device-hours on one CPU core of a shared 2-core
# machine), then package it with the packaged 16→64 cascade's two stages (shared, not copied).
#   scripts/train_pretrained_256.sh [RUNS_DIR]
# The run resumes where it stopped when the script is run again.
set -euo pipefail
out="${1:-runs/pretrained256}"
data="$(python -c 'from relaydiff.data.sources import default_dataset; print(default_dataset((256, 64, 16)))')"
mkdir -p "$out"
OMP_NUM_THREADS=1 relaydiff train relay_64to256 --out "$out/r3" --set data.path="$data/256" \
  --set total_images=104720 --set checkpoint.keep=100 --no-progress --resume auto
python scripts/package_16to256.py "$out/r3"
echo "evaluate it with scripts/eval_pretrained_256.py and update docs/pretrained.md"
