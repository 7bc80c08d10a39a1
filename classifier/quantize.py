"""INT8 post-training quantisation of a classifier model directory, with its top-1 delta on a labelled set.

:func:`quantize_classifier` calibrates NNCF on training pictures (each prepared exactly as the
backends prepare a crop: :func:`classifier.preprocess.prepare_batch`), writes
``openvino-int8/`` into the model directory (:mod:`shelftally.runtimes.int8`), then measures top-1
(argmax of the logits, no open-set threshold) of the FP32 and INT8 OpenVINO models on the
evaluation pictures and records both; :func:`shelftally.runtimes.int8.choose_int8` uses INT8 only when
the loss is within the configured margin.

Usage::

    shelftally classifier quantize models/classifier-grocery --data ../shared/data/grocerystore --format grocery
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from classifier.backends import BackendConfig, ClassifierBackend
from classifier.dataset import ImageDataset, load_image
from classifier.errors import ClassifierError
from classifier.export import export_openvino
from classifier.model_dir import WEIGHTS_ONNX, read_model_dir
from classifier.preprocess import prepare_batch
from shelftally.files import sha256_file
from shelftally.runtimes.int8 import (
    STAGED_DIR,
    STAGED_XML,
    Int8Record,
    install,
    quantize_openvino,
    stage_progress,
    write_record,
)

__all__ = ["quantize_classifier", "top1"]

logger = logging.getLogger(__name__)


def top1(
    backend: Any, dataset: ImageDataset, *, batch: int = 32, progress: Callable[[int, int], None] | None = None
) -> float:
    """Top-1 accuracy in [0, 1] of a loaded classifier backend on a labelled dataset.

    The prediction is the backend's ``class_id`` (argmax of the logits when its
    ``min_confidence`` is 0); an item whose class is not among the model's labels counts as wrong.

    Raises:
        ClassifierError: the dataset is empty (reason ``empty_dataset``), or none of its classes
            is one of the model's SKU codes (``no_known_sku``: a score of 0 would prove nothing).
    """
    if not dataset.items:
        raise ClassifierError(f"{dataset.root}: no pictures to score", reason="empty_dataset")
    index_of = {code: i for i, code in enumerate(backend.labels)}
    truth = np.array([index_of.get(dataset.class_names[item.class_index], -2) for item in dataset.items])
    if (truth < 0).all():
        raise ClassifierError(f"{dataset.root}: none of its classes {dataset.class_names[:5]} is one of the model's "
                              "SKU codes (labels.json)", reason="no_known_sku")
    predicted: list[int] = []
    for start in range(0, len(dataset.items), batch):
        crops = [load_image(item.path) for item in dataset.items[start:start + batch]]
        predicted.extend(backend.classify(crops).class_id.tolist())
        if progress is not None:
            progress(len(predicted), len(dataset.items))
    return float(np.mean(np.array(predicted) == truth))


def quantize_classifier(
    model_dir: Any,
    calibration: ImageDataset,
    evaluation: ImageDataset,
    *,
    calibration_pictures: int = 300,
    threads: int | None = None,
    seed: int = 0,
    evaluation_name: str | None = None,
    command: str = "",
    progress: Callable[[str, int, int], None] | None = None,
) -> Int8Record:
    """Quantise a classifier directory to INT8 and record FP32 and INT8 top-1 on ``evaluation``.

    Args:
        model_dir: the classifier model directory (needs ``model.onnx``; its FP32
            ``openvino/model.xml`` is converted from it again, so that it matches).
        calibration: pictures to calibrate on (training pictures; never the evaluation ones).
        evaluation: labelled pictures to score on (classes named by SKU code, as in ``labels.json``).
        calibration_pictures: at most this many, drawn at random (``seed``).
        threads: OpenVINO threads while scoring (None: all cores).
        seed: the calibration draw.
        evaluation_name: the evaluation set's name in the record (default ``<folder>/<split>``).
        command: the command line, for the record.
        progress: called with ``(stage, done, total)``.

    Returns:
        The record written to ``openvino-int8/int8.json``.

    The new model and its record replace ``openvino-int8/`` in one rename at the end; until
    then (and when anything fails) the previous INT8 model and record stay as they were. The
    record scores the logits' top-1 only: the open-set threshold and gallery prototypes were
    made from FP32 embeddings and are used unchanged with INT8.

    Raises:
        ClassifierError: no calibration or evaluation pictures, or no evaluation class the model knows.
        QuantizationError: NNCF / OpenVINO could not quantise the model.
        ModelLoadError, MissingDependencyError: from the model directory or missing nncf / openvino.
    """
    model = read_model_dir(model_dir)
    source_sha256 = sha256_file(model.file(WEIGHTS_ONNX))  # before anything: the weights this record is about
    export_openvino(model.path / WEIGHTS_ONNX)  # the FP32 IR, from the current weights: baseline and fallback
    if not calibration.items:
        raise ClassifierError(f"{calibration.root}: no calibration pictures", reason="empty_dataset")
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(calibration.items), size=min(calibration_pictures, len(calibration.items)),
                               replace=False).tolist())
    batches: list[npt.NDArray[np.float32]] = []
    for done, i in enumerate(chosen, start=1):
        batches.append(prepare_batch([load_image(calibration.items[i].path)], model.preprocess))
        if progress is not None:
            progress("calibration pictures", done, len(chosen))
    staged = model.path / STAGED_DIR
    shutil.rmtree(staged, ignore_errors=True)
    try:
        quantize_openvino(model.path / WEIGHTS_ONNX, staged, batches)
        scores: dict[str, Any] = {"pictures": len(evaluation.items)}
        config = BackendConfig(threads=threads, openvino_precision="f32")
        for name in ("fp32", "int8"):
            candidate = STAGED_XML if name == "int8" else None
            backend = ClassifierBackend(model, config, "openvino", int8_candidate=candidate)
            try:
                scores[name] = round(top1(backend, evaluation, progress=stage_progress(progress, f"top-1 {name}")), 4)
            finally:
                backend.close()
        set_name = evaluation_name or f"{evaluation.root.name}/{evaluation.split or 'val'}"
        record = Int8Record(
            source=WEIGHTS_ONNX, source_sha256=source_sha256,
            method="NNCF post-training quantisation (nncf.quantize, MIXED preset), OpenVINO IR",
            calibration={"source": f"{calibration.root}:{calibration.split}", "pictures": len(batches),
                         "available": len(calibration.items)},
            metric="top1", evaluations={set_name: scores}, command=command,
        )
        write_record(model.path, record, folder=staged)  # the record goes in with its model, in one rename
        install(model.path, staged)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)  # the previous INT8 model and record stay
        raise
    return record
