"""Errors raised by the classifier package (all derive from :class:`shelftally.errors.ShelfTallyError`).

Every error carries a machine-readable ``reason`` (see :class:`shelftally.errors.ShelfTallyError`);
the reasons each function raises are listed in its docstring.
"""

from __future__ import annotations

from shelftally.errors import EngineIncompatibleError as _EngineIncompatibleError
from shelftally.errors import MissingDependencyError, ShelfTallyError
from shelftally.errors import ModelLoadError as _ModelLoadError

__all__ = [
    "AccuracyGateError",
    "ClassifierError",
    "DatasetError",
    "EngineIncompatibleError",
    "MissingDependencyError",
    "ModelLoadError",
]


class ClassifierError(ShelfTallyError):
    """Base class of classifier errors."""

    reason = "classifier_error"


class ModelLoadError(ClassifierError, _ModelLoadError):
    """A classifier model directory, weights file or exported graph cannot be used.

    Also a :class:`shelftally.errors.ModelLoadError`, as every model kind's load error is.

    Reasons: ``model_dir_missing``, ``model_file_missing``, ``model_file_unreadable``,
    ``invalid_labels``, ``invalid_preprocess``, ``invalid_architecture``, ``invalid_model``
    (a graph's inputs or outputs are not what the model directory says),
    ``model_output_mismatch`` (the network's outputs disagree with ``labels.json``),
    ``pretrained_mismatch`` (a local weights file does not fit the architecture),
    ``unknown_architecture`` and ``export_failed``.
    """

    reason = "model_load_failed"


class DatasetError(ClassifierError):
    """A classification dataset cannot be read at all (no split file, no classes, bad class table).

    Problems with single images (missing, unreadable) are not errors: the readers in
    :mod:`classifier.dataset` report them and go on.
    """

    reason = "invalid_dataset"


class EngineIncompatibleError(ClassifierError, _EngineIncompatibleError):
    """A compiled TensorRT engine was built for another GPU or TensorRT version.

    The message names the expected and the actual values; :func:`classifier.backends.load`
    falls back to ONNX Runtime. Also a :class:`shelftally.errors.EngineIncompatibleError` (what
    the shared engine cache raises), so either ``except`` clause catches it.
    """

    reason = "engine_incompatible"


class AccuracyGateError(ClassifierError):
    """A compiled (FP16 / INT8) engine lost more top-1 accuracy than allowed; it was not kept.

    Attributes:
        precision: the engine's precision.
        compiled_top1: top-1 accuracy of the compiled engine on the validation items, in [0, 1].
        reference_top1: top-1 accuracy of the FP32 ONNX model on the same items, in [0, 1].
        max_top1_drop: the largest drop allowed, in [0, 1].
        items: number of validation items.
    """

    reason = "accuracy_gate_failed"

    def __init__(
        self, *, precision: str, compiled_top1: float, reference_top1: float, max_top1_drop: float, items: int
    ) -> None:
        super().__init__(
            f"{precision} engine rejected: top-1 {compiled_top1:.4f} vs FP32 ONNX {reference_top1:.4f} on {items} "
            f"validation items, a drop of {reference_top1 - compiled_top1:.4f} > the allowed {max_top1_drop:.4f}"
        )
        self.precision = precision
        self.compiled_top1 = compiled_top1
        self.reference_top1 = reference_top1
        self.max_top1_drop = max_top1_drop
        self.items = items
