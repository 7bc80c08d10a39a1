#!/usr/bin/env bash
# Installs ShelfTally (with the train and onnx extras) into .venv and runs the main job on the
# embedded default (SQLite, in-process): shelf photos to counts, discrepancies and evidence.
set -euo pipefail
source "$(dirname "$0")/_venv.sh"
install_project "[train,onnx]"  # the demo trains its models (torch, ultralytics) and scans with ONNX Runtime
cd "$ROOT"
exec "$ROOT/.venv/bin/shelftally" demo "$@"
