# Sourced by the scripts in this folder: makes .venv with Python 3.11 and installs the project.
# Usage: install_project EXTRAS   (e.g. install_project "" or install_project "[dev]")
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      PYTHON="$candidate"; break
    fi
  done
fi
if [ -z "$PYTHON" ]; then
  echo "ShelfTally needs Python 3.11 (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi
# pip's own output (package-index warnings from this machine's pip configuration, setuptools'
# editable-install notice) goes to .venv/install.log; it is printed only when the install fails.
install_project() {
  if [ ! -x "$ROOT/.venv/bin/python" ]; then
    "$PYTHON" -m venv "$ROOT/.venv"
  fi
  local log="$ROOT/.venv/install.log"
  echo "installing ShelfTally$1 into .venv (pip's output: .venv/install.log) ..." >&2
  if ! { "$ROOT/.venv/bin/python" -m pip install --quiet --upgrade pip \
         && "$ROOT/.venv/bin/python" -m pip install --quiet -e "$ROOT$1"; } > "$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "installation failed; the whole of pip's output is in $log" >&2
    return 1
  fi
}
