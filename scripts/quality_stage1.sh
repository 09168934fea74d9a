#!/usr/bin/env bash
# Guidance on the study's 16 px stage 1 (docs/quality.md, "Measured"): FID of N samples against
# all 3,391 fluent-emoji-3d images at 16 px, for no guidance, classifier-free guidance (with and
# without a guidance interval), autoguidance with a less-trained checkpoint of the same stage as
# the guide, and fewer sampling steps.
#
#   scripts/quality_stage1.sh STAGE1_RUN GUIDE OUT [N]
#
# STAGE1_RUN: the stage-1 run folder (its newest checkpoint is used); GUIDE: a checkpoint or stage
# folder of the same stage trained for fewer images. Every result lands in OUT/<setting>.json;
# OUT/summary.json collects them. Rerunning skips finished settings.
set -euo pipefail
run=$1 guide=$2 out=$3 n=${4:-256}
ref=${REF:-$HOME/.cache/relaydiff/datasets/fluent-emoji-3d-64-16/16}
mkdir -p "$out"
[ -d "$out/plain" ] || relaydiff cascade build --stage "$run" --out "$out/plain"
[ -d "$out/auto" ] || relaydiff cascade build --stage "$run" --guide "$guide" --guidance 2 --out "$out/auto"

setting() {  # name cascade [sample flags…]
  local name=$1 cascade=$2
  shift 2
  [ -f "$out/$name.json" ] && return
  local t0=$SECONDS
  relaydiff sample --cascade "$out/$cascade" --seeds "0-$((n - 1))" --out "$out/samples-$name" "$@"
  local seconds=$((SECONDS - t0))
  relaydiff eval samples "$out/samples-$name" --ref "$ref" --metrics fid,pr,kid --quiet \
    --out "$out/$name.tmp.json"
  python - "$out/$name.tmp.json" "$out/$name.json" "$seconds" "$*" <<'EOF'
import json, os, sys
src, dst, seconds, flags = sys.argv[1:]
result = json.load(open(src))
result["sampling_seconds"] = int(seconds)
result["sample_flags"] = flags
json.dump(result, open(dst + ".part", "w"), indent=1, allow_nan=False)
os.replace(dst + ".part", dst)
os.remove(src)
EOF
}

setting none plain --guidance 1
setting cfg2 plain --guidance 2
setting cfg3 plain --guidance 3
setting cfg3-interval plain --guidance 3 --guidance-interval 0.3:5
setting auto1.5 auto --guidance 1.5
setting auto2 auto --guidance 2
setting cfg2-16steps plain --guidance 2 --steps 16

python - "$out" <<'EOF'
import json, os, sys
out = sys.argv[1]
rows = {}
for name in ("none", "cfg2", "cfg3", "cfg3-interval", "auto1.5", "auto2", "cfg2-16steps"):
    path = os.path.join(out, name + ".json")
    if os.path.isfile(path):
        rows[name] = json.load(open(path))
json.dump(rows, open(os.path.join(out, "summary.json"), "w"), indent=1, allow_nan=False)
for name, r in rows.items():
    print(f"{name:<14} FID {r['fid']:7.2f}  KID×1e3 {1e3 * r['kid']:6.2f}  precision "
          f"{r['precision']:.3f}  recall {r['recall']:.3f}  sampling {r['sampling_seconds']} s")
EOF
