"""Detector runtimes behind one interface, chosen by name.

:data:`BACKENDS` maps a backend name to ``"module:Class"``; the module is imported only when
that backend is loaded, and it imports its runtime only then, so an ONNX Runtime deployment
needs neither torch nor OpenVINO installed.

=============== ===================================== ===========================
name            runtime                               pip extra
=============== ===================================== ===========================
``onnx``        ONNX Runtime (CPU; CUDA when asked)   ``shelftally[onnx]``
``openvino``    OpenVINO                              ``shelftally[openvino]``
``torch``       ultralytics checkpoint, torch forward ``shelftally[train]``
``ultralytics`` same as ``torch``                     ``shelftally[train]``
``tensorrt``    TensorRT engine from ``model.onnx``   ``shelftally[tensorrt]``
=============== ===================================== ===========================

Usage::

    from detector.backends import load
    detector = load("models/detector", backend="openvino", threads=4)
    detections = detector.predict([image])[0]
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Literal

from detector.backends.base import BackendConfig, DetectorBackend, EngineOptions, threads_per_process
from detector.model_dir import ModelDir, read_model_dir
from detector.postprocess import DEFAULT_MAX_DET
from shelftally.errors import ConfigurationError
from shelftally.errors import EngineIncompatibleError as _EngineIncompatibleError

__all__ = [
    "BACKENDS",
    "BackendConfig",
    "DetectorBackend",
    "EngineOptions",
    "backend_class",
    "load",
    "threads_per_process",
]

logger = logging.getLogger(__name__)

BACKENDS: dict[str, str] = {
    "onnx": "detector.backends.onnx:OnnxBackend",
    "openvino": "detector.backends.openvino:OpenVinoBackend",
    "torch": "detector.backends.torch:TorchBackend",
    "ultralytics": "detector.backends.torch:TorchBackend",
    "tensorrt": "detector.backends.tensorrt:TensorRTBackend",
}


def backend_class(name: str) -> type[DetectorBackend]:
    """The class registered under ``name`` (its module is imported now; its runtime is not).

    Raises:
        ConfigurationError: unknown name (reason ``unknown_backend``); the message lists the valid names.
    """
    target = BACKENDS.get(name)
    if target is None:
        raise ConfigurationError(
            f"unknown detector backend {name!r}; valid names: {', '.join(sorted(BACKENDS))}",
            reason="unknown_backend",
        )
    module_name, class_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, DetectorBackend)):
        raise ConfigurationError(f"{target} is not a DetectorBackend", reason="unknown_backend")
    return cls


def load(
    model_dir: str | Path | ModelDir,
    *,
    backend: str = "onnx",
    device: str = "cpu",
    threads: int | None = None,
    conf: float | None = None,
    iou: float = 0.45,
    max_det: int | None = None,
    batch_size: int = 8,
    warmup: bool = True,
    openvino_precision: Literal["auto", "f32", "int8"] = "auto",
    int8_max_drop_points: float = 1.0,
    engine: EngineOptions | None = None,
) -> DetectorBackend:
    """Load a detector model directory into a runtime.

    Args:
        model_dir: the model directory (or one already read).
        backend: a name in :data:`BACKENDS`.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` (OpenVINO: also ``"gpu"``, ``"auto"``).
        threads: intra-op threads per process (None: the runtime's default). With several
            worker processes on one machine, pass ``cores // processes``
            (:func:`threads_per_process`).
        conf: confidence threshold in [0, 1]; None: the model directory's recommended one
            (``inference.json``, :attr:`~detector.model_dir.ModelDir.confidence`), else 0.25.
        iou: NMS IoU threshold in [0, 1].
        max_det: most detections per picture (``Detections.truncated`` tells when it bit); None:
            the model directory's (``inference.json``), else :data:`DEFAULT_MAX_DET`.
        batch_size: pictures per network call.
        warmup: run one batch at load.
        openvino_precision: ``"auto"`` (bf16 where the CPU has it), ``"f32"``, or ``"int8"``
            (the directory's INT8 model when its recorded accuracy loss is within
            ``int8_max_drop_points``, else FP32 with a warning); OpenVINO only.
        int8_max_drop_points: accuracy margin of INT8 in percentage points (:func:`shelftally.int8.choose_int8`).
        engine: TensorRT engine options (precision, cache, calibration).

    Returns:
        The loaded backend. For ``"tensorrt"``, when the engine is refused as built for
        another TensorRT version or GPU (:class:`~detector.errors.EngineIncompatibleError`), a
        warning is logged and an ONNX Runtime backend is returned instead.

    Raises:
        ConfigurationError: unknown backend name or invalid settings.
        ModelLoadError: the directory or a file the backend needs is missing or unreadable.
        MissingDependencyError: the runtime is not installed; the message names the pip extra.
    """
    directory = model_dir if isinstance(model_dir, ModelDir) else read_model_dir(model_dir)
    cls = backend_class(backend)
    config = BackendConfig(
        device=device, threads=threads, conf=directory.confidence if conf is None else conf, iou=iou,
        max_det=(directory.max_det or DEFAULT_MAX_DET) if max_det is None else max_det, batch_size=batch_size,
        warmup=warmup, openvino_precision=openvino_precision,
        int8_max_drop_points=int8_max_drop_points, engine=engine or EngineOptions(),
    )
    try:
        return cls(directory, config)
    except _EngineIncompatibleError as error:
        if backend != "tensorrt":
            raise
        logger.warning("TensorRT engine refused, falling back to ONNX Runtime for %s: %s", directory.path, error)
        return backend_class("onnx")(directory, config)
