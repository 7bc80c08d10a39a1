"""Errors raised by the detector package (all derive from :class:`shelftally.errors.ShelfTallyError`)."""

from __future__ import annotations

from shelftally.errors import EngineIncompatibleError as _EngineIncompatibleError
from shelftally.errors import MissingDependencyError, ShelfTallyError
from shelftally.errors import ModelLoadError as _ModelLoadError

__all__ = [
    "DatasetError",
    "DetectorError",
    "EngineIncompatibleError",
    "MissingDependencyError",
    "ModelLoadError",
]


class DetectorError(ShelfTallyError):
    """Base class of detector errors."""

    reason = "detector_error"


class ModelLoadError(DetectorError, _ModelLoadError):
    """A model directory is missing files, or a file in it cannot be read by the backend.

    Also a :class:`shelftally.errors.ModelLoadError`, as every model kind's load error is.
    """

    reason = "model_load_failed"


class DatasetError(DetectorError):
    """A training dataset cannot be used (no ``data.yaml``, no images, no classes)."""

    reason = "invalid_dataset"


class EngineIncompatibleError(DetectorError, _EngineIncompatibleError):
    """A compiled TensorRT engine was built for another GPU or TensorRT version.

    The message names the expected and the actual values; callers fall back to ONNX Runtime.
    Also a :class:`shelftally.errors.EngineIncompatibleError` (what the shared engine cache
    raises), so either ``except`` clause catches it.
    """

    reason = "engine_incompatible"
