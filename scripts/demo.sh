#!/usr/bin/env bash
# `make demo`: the main job end to end on the embedded synthetic scene, on 2 CPU cores.
#   1. render the indoor_room preset and record it as rosbags, as a robot would (visloc synth --bag)
#   2. turn the mapping bag into a dataset (visloc dataset from-bag: RGB-D images, pose from /ground_truth/pose
#      composed with the camera mount read from /tf_static)
#   3. train the PoseNet-style APR baseline (visloc train) and build a relpose map (visloc map build)
#   4. replay a query bag (a different path) through the REAL localizer node over DDS for each
#      artifact (visloc replay) and print both reports side by side.
# Everything goes to demo_out/ (DEMO_OUT=...); stages already done are skipped (delete to redo).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${DEMO_OUT:-demo_out}
EPOCHS=${DEMO_EPOCHS:-}          # override the config's 30 epochs (quick checks)
MAX_FRAMES=${DEMO_MAX_FRAMES:-}  # fewer frames per sequence (quick checks)
mkdir -p "$OUT"
start=$(date +%s)
stage() { echo; echo "=== [$(( $(date +%s) - start )) s] $*"; }

if [ ! -d "$OUT/synth" ]; then
  stage "1/5 visloc synth indoor_room (dataset + one rosbag2 per sequence)"
  visloc synth indoor_room --out "$OUT/synth" --bag "$OUT/bags" --depth --preview ${MAX_FRAMES:+--max-frames $MAX_FRAMES}
fi

if [ ! -d "$OUT/map_dataset" ]; then
  stage "2/5 visloc dataset from-bag (mapping bag -> dataset)"
  visloc dataset from-bag "$OUT/bags/indoor_room_map_outer" --image-topic /camera/image_raw \
    --depth-topic /camera/depth/image_raw \
    --pose-topic /ground_truth/pose --scene indoor_room --sequence map_outer --split train \
    --out "$OUT/map_dataset"
fi

if [ ! -d "$OUT/apr" ]; then
  stage "3/5 visloc train config/models/posenet.yaml (APR baseline)"
  visloc train config/models/posenet.yaml --data "$OUT/map_dataset" --out "$OUT/apr" ${EPOCHS:+--epochs $EPOCHS}
fi

if [ ! -d "$OUT/relpose_map" ]; then
  stage "4/5 visloc map build config/models/relpose_xfeat.yaml (retrieval + relative pose map)"
  visloc map build config/models/relpose_xfeat.yaml --data "$OUT/map_dataset" --out "$OUT/relpose_map"
fi

stage "5/5 visloc replay: the query bag through the localizer node, once per artifact"
QUERY_BAG="$OUT/bags/indoor_room_query_day"
visloc replay "$QUERY_BAG" "$OUT/apr" --image-topic /camera/image_raw --out "$OUT/report_apr" --wait --condition day
visloc replay "$QUERY_BAG" "$OUT/relpose_map" --image-topic /camera/image_raw --out "$OUT/report_relpose" --wait --condition day

python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = [("APR (posenet)", out / "report_apr"), ("relpose (xfeat)", out / "report_relpose")]
keys = [("localized", None), ("median m", "median_translation_m"), ("median deg", "median_rotation_deg"),
        ("0.25m/2deg", "0.25m_2deg"), ("0.5m/5deg", "0.5m_5deg"), ("e2e latency ms (median)", None)]
print("\n=== summary: query_day bag replayed through the localizer node")
print(f"{'':26s}" + "".join(f"{name:>18s}" for name, _ in rows))
reps = [json.loads((d / "report.json").read_text()) for _, d in rows]
def val(r, label, key):
    if label == "localized":
        return f"{r['n_localized']}/{r['n_frames']}"
    if label.startswith("e2e"):
        lat = r.get("end_to_end_latency_ms") or r.get("latency_ms", {})
        return f"{lat.get('median', float('nan')):.1f}"
    v = r.get(key, r.get("recall", {}).get(key))
    return f"{v:.3f}" if isinstance(v, (int, float)) else str(v)
for label, key in keys:
    print(f"{label:26s}" + "".join(f"{val(r, label, key):>18s}" for r in reps))
for name, d in rows:
    print(f"{name}: {d}/report.json, {d}/frames.csv, plots {', '.join(p.name for p in sorted(d.glob('*.png')))}")
print(f"synthetic preview: {out}/synth/preview.png")
PY
stage "demo finished"
