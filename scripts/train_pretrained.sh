#!/usr/bin/env bash
# Train the packaged 16→64 emoji cascade (docs/pretrained.md) and copy it into the package:
# stage 1 and its quarter-size autoguidance guide, the relay stage and its quarter-size guide.
# About 1.4 device-hours on one CPU core (most of it stage 1); minutes on a GPU.
#   scripts/train_pretrained.sh [RUNS_DIR]
# Each run resumes where it stopped when the script is run again.
set -euo pipefail
out="${1:-runs/pretrained}"
data="$(python -c 'from relaydiff.data.sources import default_dataset; print(default_dataset((64, 16)))')"
pkg="$(python -c 'import relaydiff, pathlib; print(pathlib.Path(relaydiff.__file__).parent)')"
mkdir -p "$out"
train() { relaydiff train "$@" --set checkpoint.keep=100 --no-progress --resume auto; }
train "$pkg/configs/stage1_16.json" --out "$out/s1" --set data.path="$data/16" \
  --set total_images=310464 --set ema.halflife_images=20000 --set checkpoint.every_images=16000
train "$pkg/configs/stage1_16.json" --out "$out/g1" --set data.path="$data/16" \
  --set stage.network.model_channels=16 --set total_images=16000
train "$pkg/configs/study/emoji64_relay.json" --out "$out/r0" --set data.path="$data/64" \
  --set total_images=36000
train "$pkg/configs/study/emoji64_relay.json" --out "$out/g2b" --set data.path="$data/64" \
  --set total_images=4000 --set stage.network.model_channels=8 --set stage.network.channels_per_head=8
relaydiff cascade build --stage "$out/s1" --guide "$out/g1" --guidance 2 \
  --stage "$out/r0" --guide "$out/g2b" --guidance 3 --out "$out/cascade" --overwrite
dest="$(python -c 'from relaydiff.pretrained import pretrained_path; print(pretrained_path())')"
rm -rf "$dest.new" && cp -r "$out/cascade" "$dest.new" && rm -rf "$dest" && mv "$dest.new" "$dest"
echo "copied $out/cascade to $dest; evaluate it with scripts/eval_pretrained.py and update docs/pretrained.md"
