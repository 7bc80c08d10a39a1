#!/usr/bin/env bash
# Rebuilds the shipped product-agnostic detector (models/product-agnostic) and its figures:
#   1. trains bench/detector_real.py's row `ship` (YOLOv8n neck and head on the frozen ImageNet
#      EfficientNet-Lite0 trunk, 320 px, 0.3 h on the real train splits plus generated shelves;
#      not retrained when work/detector-real/ship already holds that training) and writes its
#      row of bench/results/detector_real.json;
#   2. copies it without model.pt, weights stored as float16 (the repository takes model
#      directories under 15 MB);
#   3. chooses its counting confidence on the 51 real val photos (inference.json) and records
#      its scores on every real test split in metrics.json (counting.NAME-test).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
BIN=.venv/bin
DATA=../shared/data
OUT=models/product-agnostic
"$BIN/python" bench/detector_real.py --row ship
rm -rf "$OUT"
mkdir -p "$OUT"
for f in model.onnx labels.json preprocess.json metrics.json provenance.json train_log.csv; do
    cp "work/detector-real/ship/$f" "$OUT/"
done
"$BIN/shelftally" detector export "$OUT" --format onnx --fp16-weights
"$BIN/shelftally" evaluate detector --data work/detector-real/data/mix/data.yaml --split val --detector "$OUT" \
    --recommend --record-as real-val
for set in shelf-testing-ccby/data.yaml pallets-ccby/repo_data.yaml packages-public-domain/data.yaml; do
    name="${set%%-ccby*}"; name="${name%%-public-domain*}"; name="${name%%/*}"
    "$BIN/shelftally" evaluate detector --data "$DATA/$set" --split test --detector "$OUT" --record-as "$name-test"
done
du -sh "$OUT"
