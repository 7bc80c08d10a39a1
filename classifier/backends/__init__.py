"""Classifier runtimes behind one interface, chosen by name.

:data:`BACKENDS` maps a backend name to ``"module:Class"``; the module is imported only when
that backend is loaded, and it imports its runtime only then, so an ONNX Runtime deployment
needs neither torch nor OpenVINO installed.

=============== =========================================== ===========================
name            runtime                                     pip extra
=============== =========================================== ===========================
``onnx``        ONNX Runtime on ``model.onnx``              ``shelftally[onnx]``
``openvino``    OpenVINO on ``openvino/model.xml``          ``shelftally[openvino]``
``torch``       torch on ``model.pt`` + ``architecture.json`` ``shelftally[train]``
``tensorrt``    TensorRT engine built from ``model.onnx``   ``shelftally[tensorrt]``
=============== =========================================== ===========================

A TensorRT engine refused as built for another TensorRT version or GPU
(:class:`~classifier.errors.EngineIncompatibleError`) makes :func:`load` fall back to ONNX
Runtime with a warning.

Usage::

    from classifier.backends import load
    classifier = load("models/classifier", backend="onnx", threads=2)
    result = classifier.classify(crops)          # crops: list of (h, w, 3) uint8 RGB
    result.sku_code, result.confidence, result.embedding
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Literal

from classifier.backends.base import BackendConfig, ClassifierBackend, EngineOptions, softmax
from classifier.model_dir import ModelDir, read_model_dir
from shelftally.errors import ConfigurationError
from shelftally.errors import EngineIncompatibleError as _EngineIncompatibleError

__all__ = ["BACKENDS", "BackendConfig", "ClassifierBackend", "EngineOptions", "backend_class", "load", "softmax"]

logger = logging.getLogger(__name__)

BACKENDS: dict[str, str] = {
    "onnx": "classifier.backends.onnx:OnnxBackend",
    "openvino": "classifier.backends.openvino:OpenVinoBackend",
    "torch": "classifier.backends.torch:TorchBackend",
    "tensorrt": "classifier.backends.tensorrt:TensorRTBackend",
}


def backend_class(name: str) -> type[ClassifierBackend]:
    """The class registered under ``name`` (its module is imported now; its runtime is not).

    Raises:
        ConfigurationError: unknown name (reason ``unknown_backend``); the message lists the valid names.
    """
    target = BACKENDS.get(name)
    if target is None:
        raise ConfigurationError(
            f"unknown classifier backend {name!r}; valid names: {', '.join(sorted(BACKENDS))}",
            reason="unknown_backend",
        )
    module_name, class_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, ClassifierBackend)):
        raise ConfigurationError(f"{target} is not a ClassifierBackend", reason="unknown_backend")
    return cls


def load(
    model_dir: str | Path | ModelDir,
    *,
    backend: str = "onnx",
    device: str = "cpu",
    threads: int | None = None,
    batch_size: int = 32,
    min_confidence: float = 0.0,
    warmup: bool = True,
    openvino_precision: Literal["auto", "f32", "int8"] = "auto",
    int8_max_drop_points: float = 1.0,
    engine: EngineOptions | None = None,
) -> ClassifierBackend:
    """Load a classifier model directory into a runtime.

    Args:
        model_dir: the model directory (or one already read).
        backend: a name in :data:`BACKENDS`.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` (OpenVINO: also ``"gpu"``, ``"npu"``, ``"auto"``).
        threads: intra-op threads per process (None: the runtime's default). With several
            worker processes on one machine, pass ``cores // processes``.
        batch_size: crops per network call when the model's batch is dynamic; a model exported
            with a fixed batch uses that batch instead.
        min_confidence: best-class probability below which a crop is unknown (0: never).
        warmup: run one batch at load and check the outputs against ``labels.json``.
        openvino_precision: ``"auto"`` (bf16 where the CPU has it), ``"f32"``, or ``"int8"``
            (the directory's INT8 model when its recorded accuracy loss is within
            ``int8_max_drop_points``, else FP32 with a warning); OpenVINO only.
        int8_max_drop_points: accuracy margin of INT8 in percentage points (:func:`shelftally.int8.choose_int8`).
        engine: TensorRT engine options (precision, cache, calibration); TensorRT only.

    Returns:
        The loaded backend; call :meth:`~classifier.backends.base.ClassifierBackend.classify`.
        For ``"tensorrt"``, when the engine is refused as built for another TensorRT version or
        GPU (:class:`~classifier.errors.EngineIncompatibleError`), a warning naming expected and
        actual values is logged and an ONNX Runtime backend is returned instead.

    Raises:
        ConfigurationError: unknown backend name (the message lists the valid names), an
            invalid setting or an unavailable device.
        ModelLoadError: the directory or a file the backend needs is missing or unreadable, or
            the network does not match ``labels.json`` / ``preprocess.json``.
        MissingDependencyError: the runtime is not installed; the message names the pip extra.
    """
    cls = backend_class(backend)
    config = BackendConfig(
        device=device, threads=threads, batch_size=batch_size, min_confidence=min_confidence, warmup=warmup,
        openvino_precision=openvino_precision,
        int8_max_drop_points=int8_max_drop_points, engine=engine or EngineOptions(),
    )
    directory = model_dir if isinstance(model_dir, ModelDir) else read_model_dir(model_dir)
    try:
        return cls(directory, config)
    except _EngineIncompatibleError as error:
        if backend != "tensorrt":
            raise
        logger.warning("TensorRT engine refused, falling back to ONNX Runtime for %s: %s", directory.path, error)
        return backend_class("onnx")(directory, config)
