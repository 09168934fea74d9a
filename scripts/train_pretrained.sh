#!/usr/bin/env bash
# Train the packaged 16→64 emoji cascade (docs/pretrained.md) and copy it into the package.
# On a GPU the demo's time budget goes to training; about 10 minutes of an H100 in all.
set -euo pipefail
minutes="${1:-8}"
out="${2:-runs/pretrained}"
relaydiff demo --out "$out" --minutes "$minutes" --samples 1000
dest="$(python -c 'from relaydiff.pretrained import pretrained_path; print(pretrained_path())')"
rm -rf "$dest.new" && cp -r "$out/cascade" "$dest.new" && rm -rf "$dest" && mv "$dest.new" "$dest"
echo "copied $out/cascade to $dest; update docs/pretrained.md from $out/results.json"
