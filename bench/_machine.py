"""The machine a benchmark ran on, for its results (speed figures are only comparable on one CPU)."""

from __future__ import annotations

import platform
from pathlib import Path

#: vector instruction sets that decide CPU inference speed, as /proc/cpuinfo names them
VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu() -> str:
    """The CPU's model name and which of :data:`VECTOR_FLAGS` it has, from ``/proc/cpuinfo``
    (``platform.processor()`` where that file is missing)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    lines = info.splitlines()
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    return f"{name} ({', '.join(f for f in VECTOR_FLAGS if f in flags) or 'no AVX2'})"
