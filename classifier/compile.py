"""Compile a classifier to a TensorRT engine behind an accuracy gate.

:func:`compile_classifier` builds (or reuses) the FP16 / INT8 engine of a model directory's
``model.onnx`` (:class:`shelftally.runtimes.tensorrt.TensorRTSession`), then measures top-1
accuracy of the engine and of the FP32 ONNX model (ONNX Runtime on the CPU, the reference every
other runtime is compared with) on the same validation items. When the engine's top-1 is more
than ``max_top1_drop`` below the reference, the engine is deleted from the cache and
:class:`~classifier.errors.AccuracyGateError` is raised with both numbers, so a later
``load(..., backend="tensorrt")`` never picks up an engine that failed the gate. The INT8
calibration table stays (it only depends on the model and the calibration crops).

Usage::

    from classifier.compile import compile_classifier
    from classifier.dataset import read_image_folder
    report = compile_classifier("models/classifier", precision="int8", calibration_dir=Path("crops/calib"),
                                val_items=read_image_folder("crops/val").items)
    report.compiled_top1, report.reference_top1, report.engine_record.path
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from classifier.backends import BackendConfig, ClassifierBackend, EngineOptions
from classifier.dataset import DatasetItem, load_image
from classifier.errors import AccuracyGateError
from classifier.model_dir import ModelDir, read_model_dir
from shelftally.errors import ConfigurationError
from shelftally.runtimes import Precision
from shelftally.runtimes.engine_cache import EngineRecord

if TYPE_CHECKING:
    from shelftally.runtimes.tensorrt import TensorRTRuntime

__all__ = ["CompileReport", "compile_classifier", "top1_accuracy"]

logger = logging.getLogger(__name__)

_LOAD_CHUNK = 256
"""Validation images decoded at a time (bounds memory on large validation sets)."""


@dataclass(frozen=True)
class CompileReport:
    """An engine that passed the accuracy gate.

    Attributes:
        engine_record: the engine's cache entry.
        precision: ``"fp32"``, ``"fp16"`` or ``"int8"``.
        compiled_top1: top-1 accuracy of the engine on the validation items, in [0, 1].
        reference_top1: top-1 accuracy of the FP32 ONNX model on the same items, in [0, 1].
        max_top1_drop: the largest drop that was allowed, in [0, 1].
        items: number of validation items.
    """

    engine_record: EngineRecord
    precision: Precision
    compiled_top1: float
    reference_top1: float
    max_top1_drop: float
    items: int

    @property
    def top1_drop(self) -> float:
        """``reference_top1 - compiled_top1`` (negative when the engine did better)."""
        return self.reference_top1 - self.compiled_top1


def top1_accuracy(backend: ClassifierBackend, items: Sequence[DatasetItem]) -> float:
    """Fraction of items whose best class is their ``class_index``.

    Args:
        backend: a loaded classifier (its ``min_confidence`` should be 0, so no crop is unknown).
        items: labelled images; ``class_index`` is the model's ``class_id`` (index in ``labels.json``).

    Returns:
        Top-1 accuracy in [0, 1].

    Raises:
        ConfigurationError: no items (reason ``invalid_validation_set``).
        DatasetError: an image cannot be read (reason ``unreadable_image``).
    """
    if not items:
        raise ConfigurationError("the accuracy gate needs at least one validation item",
                                 reason="invalid_validation_set")
    correct = 0
    for start in range(0, len(items), _LOAD_CHUNK):
        chunk = items[start : start + _LOAD_CHUNK]
        result = backend.classify([load_image(item.path) for item in chunk])
        expected = np.array([item.class_index for item in chunk], dtype=np.int64)
        correct += int((result.class_id == expected).sum())
    return correct / len(items)


def compile_classifier(
    model_dir: str | Path | ModelDir,
    *,
    precision: Precision,
    calibration_dir: Path | None,
    val_items: Sequence[DatasetItem],
    max_top1_drop: float = 0.01,
    runtime: TensorRTRuntime | None = None,
    device: str = "cuda",
    batch_size: int = 32,
    max_batch: int | None = None,
    cache_dir: Path | None = None,
    calibration_batch: int = 32,
) -> CompileReport:
    """Build a TensorRT engine and keep it only when its top-1 stays within ``max_top1_drop`` of FP32.

    Args:
        model_dir: the classifier model directory (``model.onnx``, labels, preprocess).
        precision: ``"fp16"``, ``"int8"`` or ``"fp32"``.
        calibration_dir: folder of crops for INT8 calibration (required for ``"int8"``).
        val_items: labelled validation crops; ``class_index`` must be the model's ``class_id``.
        max_top1_drop: largest allowed ``reference_top1 - compiled_top1``, in [0, 1]
            (0.01: one percentage point).
        runtime: TensorRT on a GPU; default the real one on ``device``.
        device: ``"cuda"`` or ``"cuda:N"`` (used when ``runtime`` is None).
        batch_size: crops per engine call (the profile's optimum batch).
        max_batch: the profile's largest batch; default ``batch_size``.
        cache_dir: the engine cache; default ``<model dir>/engines``.
        calibration_batch: crops per INT8 calibration batch (``calibration_dir`` needs at least this many).

    Returns:
        The accepted engine's cache entry and both accuracies.

    Raises:
        AccuracyGateError: the engine's top-1 dropped more than ``max_top1_drop``; the message
            and attributes carry both numbers, and the engine was removed from the cache.
        ConfigurationError: ``max_top1_drop`` outside [0, 1], no validation items, INT8
            without ``calibration_dir``, a non-CUDA device.
        ModelLoadError: ``model.onnx`` missing or unusable, engine build failure.
        MissingDependencyError: TensorRT, torch (for a real runtime) or ONNX Runtime missing.
        DatasetError: a validation image cannot be read.
    """
    if not 0.0 <= max_top1_drop <= 1.0:
        raise ConfigurationError(f"max_top1_drop: expected a fraction in [0, 1], received {max_top1_drop!r}",
                                 reason="invalid_backend_config")
    if not val_items:
        raise ConfigurationError("the accuracy gate needs at least one validation item",
                                 reason="invalid_validation_set")
    directory = model_dir if isinstance(model_dir, ModelDir) else read_model_dir(model_dir)
    engine = EngineOptions(precision=precision, cache_dir=cache_dir, calibration_dir=calibration_dir,
                           max_batch=max_batch, calibration_batch=calibration_batch)
    compiled = ClassifierBackend(directory, BackendConfig(device=device, batch_size=batch_size, engine=engine),
                                 "tensorrt", tensorrt_runtime=runtime, fallback=False)
    record = compiled.engine_record
    try:
        compiled_top1 = top1_accuracy(compiled, val_items)
    finally:
        compiled.close()
    with ClassifierBackend(directory, BackendConfig(device="cpu", batch_size=batch_size), "onnx") as reference:
        reference_top1 = top1_accuracy(reference, val_items)
    drop = reference_top1 - compiled_top1
    logger.info("%s engine %s: top-1 %.4f, FP32 ONNX %.4f (drop %.4f, allowed %.4f) on %s items",
                precision, record.path, compiled_top1, reference_top1, drop, max_top1_drop, len(val_items))
    if drop > max_top1_drop:
        compiled.cache.remove(record)
        raise AccuracyGateError(precision=precision, compiled_top1=compiled_top1, reference_top1=reference_top1,
                                max_top1_drop=max_top1_drop, items=len(val_items))
    return CompileReport(record, precision, compiled_top1, reference_top1, max_top1_drop, len(val_items))
