"""The one runtime layer: a model directory's network run by ONNX Runtime, OpenVINO, torch or TensorRT.

:data:`RUNTIMES` is a plain table from a runtime's name to ``"module:Class"``. A module is
imported only when its runtime is opened, and it imports the runtime itself only then, so an
ONNX Runtime deployment needs neither torch nor OpenVINO installed. Adding a runtime is one new
module holding a :class:`~shelftally.runtimes.base.Session` subclass, and one row here.

=============== ===================================== ===========================
name            runtime                               pip extra
=============== ===================================== ===========================
``onnx``        ONNX Runtime (CPU; CUDA when asked)   ``shelftally[onnx]``
``openvino``    OpenVINO (FP32, BF16 or NNCF INT8)    ``shelftally[openvino]``
``torch``       a torch ``nn.Module`` the kind builds ``shelftally[train]``
``tensorrt``    TensorRT engine from ``model.onnx``   ``shelftally[tensorrt]``
=============== ===================================== ===========================

Model kinds (``detector/``, ``classifier/``) keep only what is theirs: preprocessing, output
decoding, training, export and the contents of their model directories. They describe their
network with a :class:`~shelftally.runtimes.base.SessionSpec` and call :func:`open_session`::

    session = open_session("openvino", SessionSpec(root=Path("models/x"), what="detector", input_size=640))
    (raw,) = session.run(batch)          # batch: (B, 3, 640, 640) float32

This package imports only the standard library, numpy and :mod:`shelftally.errors` at import
time, and no task code at all (an import-linter contract checks it).
"""

from __future__ import annotations

from shelftally.runtimes._imports import import_runtime, onnxruntime_errors
from shelftally.runtimes.base import (
    EngineOptions,
    ErrorKinds,
    ModelLoadError,
    Precision,
    RuntimeArgs,
    RuntimeOptions,
    Session,
    SessionSpec,
    threads_per_process,
)
from shelftally.runtimes.devices import parse_cuda_device
from shelftally.runtimes.model import LoadedModel
from shelftally.runtimes.registry import FALLBACK, RUNTIMES, open_session, resolve_runtime, session_class

__all__ = [
    "FALLBACK",
    "RUNTIMES",
    "EngineOptions",
    "ErrorKinds",
    "LoadedModel",
    "ModelLoadError",
    "Precision",
    "RuntimeArgs",
    "RuntimeOptions",
    "Session",
    "SessionSpec",
    "import_runtime",
    "onnxruntime_errors",
    "open_session",
    "parse_cuda_device",
    "resolve_runtime",
    "session_class",
    "threads_per_process",
]
