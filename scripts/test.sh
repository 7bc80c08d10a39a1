#!/usr/bin/env bash
# Installs ShelfTally with its dev tools into .venv, then runs the checks and the test suite:
# ruff, mypy, import-linter (the package dependency rules), the docs site (mkdocs build --strict)
# and pytest against real SQLite and the PostgreSQL server on 127.0.0.1:5432 (trust auth, database "test").
set -euo pipefail
source "$(dirname "$0")/_venv.sh"
install_project "[dev]"
# Type stubs for the TensorRT code (TensorRT itself installs only from NVIDIA's index); the stubs
# package declares a dependency on tensorrt, so it is installed without dependencies.
"$ROOT/.venv/bin/python" -m pip install --quiet --no-deps tensorrt-stubs==10.13.0.35.1
# The published stubs do not parse; mypy reads a repaired copy from .typings/ (mypy_path).
"$ROOT/.venv/bin/python" "$ROOT/scripts/tensorrt_stubs.py"
cd "$ROOT"
BIN="$ROOT/.venv/bin"
echo "== ruff";          "$BIN/ruff" check .
echo "== mypy";          "$BIN/mypy"
echo "== import-linter"; "$BIN/lint-imports"
# The documentation site; the settings and CLI pages are generated from the code (docs/hooks.py).
# Not --quiet: with it, mkdocs 1.6 --strict no longer fails on warnings (a broken link passes).
echo "== mkdocs";        NO_MKDOCS_2_WARNING=1 "$BIN/mkdocs" build --strict --site-dir "$ROOT/.site"
echo "== pytest";        exec "$BIN/python" -m pytest "$@"
