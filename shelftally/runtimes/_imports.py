"""Importing the optional inference runtimes, for every session of :mod:`shelftally.runtimes`.

Runtimes are imported by name only when a backend is loaded (this module itself imports only the
standard library), and a missing one is reported with the pip extra that installs it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from shelftally.errors import MissingDependencyError


def import_runtime(
    module: str, *, extra: str, purpose: str, error: type[MissingDependencyError] = MissingDependencyError
) -> ModuleType:
    """Import an optional runtime (``onnxruntime``, ``openvino``, ``tensorrt``, ...).

    Args:
        module: the module to import.
        extra: the ``shelftally[...]`` extra that installs it.
        purpose: what needs it, for the message (e.g. ``"the onnx detector backend"``).
        error: the class to raise (a model kind's own subclass).

    Raises:
        MissingDependencyError: it is not installed; the message names the extra.
    """
    try:
        return importlib.import_module(module)
    except ImportError as failure:
        raise error(f"{purpose} needs {module}: pip install 'shelftally[{extra}]'") from failure


def onnxruntime_errors(ort: ModuleType) -> tuple[type[BaseException], ...]:
    """The exceptions ONNX Runtime raises on a bad model (its own classes do not derive from RuntimeError)."""
    state = ort.capi.onnxruntime_pybind11_state
    names = ("Fail", "InvalidArgument", "InvalidProtobuf", "NoSuchFile", "NoModel", "RuntimeException")
    found = tuple(getattr(state, n) for n in names if isinstance(getattr(state, n, None), type))
    return (*found, RuntimeError, OSError, ValueError)
