#!/usr/bin/env bash
# Installs ShelfTally into .venv and runs the main job on the embedded default (SQLite, in-process).
set -euo pipefail
source "$(dirname "$0")/_venv.sh"
install_project ""
cd "$ROOT"
exec "$ROOT/.venv/bin/shelftally" demo "$@"
