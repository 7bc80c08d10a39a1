#!/usr/bin/env bash
# Installs ShelfTally with its dev tools into .venv, then runs the checks and the test suite:
# ruff, mypy, import-linter (the package dependency rules) and pytest against real SQLite and
# the PostgreSQL server on 127.0.0.1:5432 (trust auth, database "test").
set -euo pipefail
source "$(dirname "$0")/_venv.sh"
install_project "[dev]"
cd "$ROOT"
BIN="$ROOT/.venv/bin"
echo "== ruff";          "$BIN/ruff" check .
echo "== mypy";          "$BIN/mypy"
echo "== import-linter"; "$BIN/lint-imports"
echo "== pytest";        exec "$BIN/python" -m pytest "$@"
