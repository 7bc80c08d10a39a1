"""Make the installed ``tensorrt-stubs`` usable by mypy: writes a repaired copy to ``.typings/``.

``tensorrt-stubs`` 10.13.0.35.1 (and every earlier release checked, back to 10.8) cannot be used
as installed:

- it puts ``tensorrt/__init__.pyi`` in site-packages without a ``py.typed`` marker, so mypy skips
  it ("module is installed, but missing library stubs or py.typed marker");
- ``tensorrt_bindings/tensorrt.pyi`` is not valid Python: plugin methods name a parameter ``in``
  (a keyword) and ``INetworkDefinition.add_scale_nd`` puts a parameter without a default after
  ones with defaults; mypy stops at the first syntax error;
- each stub module declares ``bool: DataType`` (the runtime's ``tensorrt.bool`` alias of
  ``DataType.BOOL``), which shadows the builtin, so every ``-> bool`` in the stubs means nothing.

This script copies the stub files of the installed distribution to ``<repo>/.typings/``
(``mypy_path`` in ``pyproject.toml``; git-ignored), renames ``in`` parameters to ``in_`` and
gives such trailing parameters ``= ...``, drops the ``bool`` alias (use ``DataType.BOOL``),
then checks that every file parses. The signatures
are otherwise untouched, so mypy checks our TensorRT code against NVIDIA's API as published.

Usage (``scripts/test.sh`` runs it after installing the stubs)::

    .venv/bin/python scripts/tensorrt_stubs.py
"""

from __future__ import annotations

import ast
import re
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / ".typings"
DISTRIBUTION = "tensorrt-stubs"
_SHADOWS_BOOL = re.compile(r"^bool\s*:")


def _split_parameters(text: str) -> list[str]:
    """Split a parameter list at top-level commas (brackets nest)."""
    parts, depth, current = [], 0, []
    for char in text:
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if "".join(current).strip():
        parts.append("".join(current))
    return parts


def _repair_def(line: str) -> str:
    match = re.match(r"^(\s*def \w+\()(.*)(\)\s*(->.*)?:\s*(\.\.\.)?\s*)$", line)
    if not match:
        return line
    head, params, tail = match.group(1), match.group(2), match.group(3)
    fixed, seen_default = [], False
    for param in _split_parameters(params):
        name = param.strip()
        name = re.sub(r"^in(\s*:)", r"in_\1", name)
        if name.startswith("*") or name == "/":
            seen_default = False if name.startswith("*") else seen_default
        elif "=" in name:
            seen_default = True
        elif seen_default:
            name += " = ..."
        fixed.append(name)
    return head + ", ".join(fixed) + tail


def main() -> int:
    try:
        files = metadata.files(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        sys.stderr.write(f"{DISTRIBUTION} is not installed: pip install --no-deps {DISTRIBUTION}==10.13.0.35.1\n")
        return 1
    stubs = [f for f in files if str(f).endswith(".pyi")]
    if not stubs:
        sys.stderr.write(f"{DISTRIBUTION} has no .pyi files\n")
        return 1
    for stub in stubs:
        source = Path(str(stub.locate()))
        lines = source.read_text(encoding="utf-8").splitlines()
        text = "\n".join(_repair_def(line) for line in lines if not _SHADOWS_BOOL.match(line)) + "\n"
        try:
            ast.parse(text, filename=str(source))
        except SyntaxError as error:
            sys.stderr.write(f"{source}:{error.lineno}: still not valid Python after repair: {error.msg}\n")
            return 1
        target = TARGET / str(stub)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    version = metadata.version(DISTRIBUTION)
    sys.stdout.write(f"wrote {len(stubs)} repaired stub files of {DISTRIBUTION} {version} to {TARGET}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
