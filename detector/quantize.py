"""INT8 post-training quantisation of a detector model directory, with its accuracy delta on labelled sets.

:func:`quantize_detector` calibrates NNCF on pictures of a YOLO dataset split (letterboxed
exactly as the backends do), writes ``openvino-int8/`` into the model directory
(:mod:`shelftally.runtimes.int8`), then scores FP32 and INT8 with the same code on each evaluation set
and records both: the gate in :func:`shelftally.runtimes.int8.choose_int8` uses INT8 only when no set
lost more than the configured margin.

Scoring (:func:`evaluate_backend`) runs a loaded backend over a split and computes mAP the
way ultralytics' validator does: confidence 0.001, NMS IoU 0.7, at most 300 boxes per picture,
predictions matched to labels with ultralytics' ``match_predictions`` at IoU 0.50:0.05:0.95
and integrated with its ``ap_per_class`` (COCO 101-point interpolation). Both need the
``train`` extra (ultralytics, torch); quantising needs ``shelftally[int8]`` (nncf).

Usage::

    shelftally detector quantize models/pallets --data DATA.yaml --eval DATA.yaml:test --eval DATA.yaml:val
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import numpy.typing as npt

from detector._offline import configure_offline
from detector.backends import BackendConfig, DetectorBackend
from detector.dataset import labels_xyxy, prepare_dataset, read_rgb, split_pictures
from detector.errors import DatasetError
from detector.export import export_openvino
from detector.model_dir import WEIGHTS_ONNX, read_model_dir
from detector.preprocess import letterbox
from shelftally.files import sha256_file
from shelftally.runtimes.int8 import (
    STAGED_DIR,
    STAGED_XML,
    Int8Record,
    head_scope_patterns,
    install,
    quantize_openvino,
    stage_progress,
    write_record,
)

__all__ = [
    "EvaluationSet",
    "calibration_batches",
    "evaluate_backend",
    "evaluate_backends",
    "parse_evaluation_set",
    "quantize_detector",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VAL_CONF = 0.001  # ultralytics' validator defaults (DEFAULT_CFG conf for val, iou 0.7, max_det 300)
VAL_IOU = 0.7
VAL_MAX_DET = 300


@dataclass(frozen=True)
class EvaluationSet:
    """A labelled split to score on.

    Attributes:
        data_yaml: the dataset's YAML.
        split: ``"train"``, ``"val"`` or ``"test"``.
        name: how it is named in the record (default ``<dataset folder>/<split>``).
    """

    data_yaml: Path
    split: str
    name: str = ""

    @property
    def label(self) -> str:
        """The record's name for this set."""
        return self.name or f"{self.data_yaml.resolve().parent.name}/{self.split}"


SPLITS = ("train", "val", "test")


def parse_evaluation_set(text: str) -> EvaluationSet:
    """``DATA.yaml:split`` (split ``test`` when omitted) -> :class:`EvaluationSet`.

    Raises:
        ValueError: empty path, or a split other than train, val or test (``:valid`` included:
            Roboflow's ``valid`` folder is the ``val`` split of its data.yaml).
    """
    path, colon, split = text.rpartition(":")
    if not colon or "/" in split or split.endswith((".yaml", ".yml")):
        path, split = text, "test"
    if split not in SPLITS:
        raise ValueError(f"{text!r}: unknown split {split!r}; expected DATA.yaml[:train|val|test]")
    if not path:
        raise ValueError(f"expected DATA.yaml[:train|val|test], received {text!r}")
    return EvaluationSet(Path(path), split)


def evaluate_backend(
    backend: Any, data_yaml: str | Path, *, split: str = "test", agnostic: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Score one loaded detector backend on one split (:func:`evaluate_backends` with one backend)."""
    return evaluate_backends({"model": backend}, data_yaml, split=split, agnostic=agnostic, progress=progress)["model"]


def evaluate_backends(
    backends: Mapping[str, Any], data_yaml: str | Path, *, split: str = "test", agnostic: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Score loaded detector backends on one split of a YOLO dataset, each picture decoded once for all.

    Comparable with, not identical to, ``shelftally detector evaluate`` (ultralytics' validator
    on the ``.pt``): the backends letterbox to their square input, and their NMS keeps one
    class per box and is class-aware also when ``agnostic`` merges the classes afterwards,
    where the validator uses rectangular batches, multi-label and (``single_cls``) agnostic
    NMS. On the test detector the two agree within a few points; for FP32 against INT8 the
    same code scores both, so the difference is the quantisation's.

    Args:
        backends: name -> :class:`detector.backends.DetectorBackend`, loaded with
            ``conf=0.001``, ``iou=0.7``, ``max_det=300`` (ultralytics' validation settings).
        data_yaml: the dataset's YAML (polygons, Roboflow paths: prepared as for training).
        split: the split to score.
        agnostic: every class counts as one (ultralytics ``single_cls``).
        progress: called with ``(done, total)`` after each picture.

    Returns:
        Per name ``{"images", "boxes", "mAP50", "mAP50-95", "precision", "recall"}`` (precision
        and recall at the confidence with the best mean F1, as ultralytics reports them).

    Raises:
        DatasetError: the split has no pictures (``missing_split``) or no labelled box
            (``no_labels``: a score of 0 would prove nothing), a picture cannot be decoded,
            or the model's classes are not the dataset's (and ``agnostic`` is False).
        MissingDependencyError: ultralytics / torch are not installed.
    """
    configure_offline()
    import torch
    from ultralytics.engine.validator import BaseValidator
    from ultralytics.utils.metrics import ap_per_class, box_iou

    matcher = SimpleNamespace(iouv=torch.linspace(0.5, 0.95, 10))
    stats: dict[str, dict[str, list[npt.NDArray[Any]]]] = {
        name: {"tp": [], "conf": [], "pred_cls": [], "target_cls": []} for name in backends
    }
    boxes_total = 0
    with tempfile.TemporaryDirectory(prefix="shelftally-eval-") as work:
        report = prepare_dataset(data_yaml, Path(work) / "data")
        if split not in report.splits or report.splits[split].images == 0:
            raise DatasetError(f"{data_yaml} has no {split!r} images", reason="missing_split")
        for backend in backends.values():
            if not agnostic and list(report.names) != list(backend.labels):
                raise DatasetError(
                    f"the model's classes are not the dataset's {list(report.names)[:5]}; score with agnostic=True",
                    reason="class_mismatch",
                )
        pairs = split_pictures(Path(work) / "data", split)
        for index, (image_path, label_path) in enumerate(pairs):
            image = read_rgb(image_path)
            truth, truth_cls = labels_xyxy(label_path, image.shape[1], image.shape[0])
            if agnostic:
                truth_cls = np.zeros_like(truth_cls)
            boxes_total += len(truth)
            for name, backend in backends.items():
                found = backend.predict([image])[0]
                order = np.argsort(-found.confidence, kind="stable")
                xyxy, conf, cls = found.xyxy[order], found.confidence[order], found.class_id[order].astype(np.int64)
                if agnostic:
                    cls = np.zeros_like(cls)
                if len(truth) and len(xyxy):
                    iou = box_iou(torch.from_numpy(truth), torch.from_numpy(xyxy))
                    tp = BaseValidator.match_predictions(
                        matcher, torch.from_numpy(cls), torch.from_numpy(truth_cls), iou  # type: ignore[arg-type]
                    ).numpy()
                else:
                    tp = np.zeros((len(xyxy), 10), dtype=bool)
                for key, value in (("tp", tp), ("conf", conf), ("pred_cls", cls), ("target_cls", truth_cls)):
                    stats[name][key].append(value)
            if progress is not None:
                progress(index + 1, len(pairs))
    if boxes_total == 0:
        raise DatasetError(f"{data_yaml} split {split!r} has no labelled box to score against", reason="no_labels")
    results: dict[str, dict[str, Any]] = {}
    for name, collected in stats.items():
        joined = {key: np.concatenate(value, axis=0) for key, value in collected.items()}
        result: dict[str, Any] = {"images": len(pairs), "boxes": boxes_total, "agnostic": agnostic,
                                  "conf": VAL_CONF, "iou": VAL_IOU}
        if not len(joined["tp"]):
            results[name] = result | {"mAP50": 0.0, "mAP50-95": 0.0, "precision": 0.0, "recall": 0.0}
            continue
        _, _, precision, recall, _, ap, *_ = ap_per_class(
            joined["tp"], joined["conf"], joined["pred_cls"], joined["target_cls"]
        )
        results[name] = result | {
            "mAP50": round(float(ap[:, 0].mean()), 4), "mAP50-95": round(float(ap.mean()), 4),
            "precision": round(float(precision.mean()), 4), "recall": round(float(recall.mean()), 4),
        }
    return results


def calibration_batches(
    model_dir: str | Path, data_yaml: str | Path, *, split: str = "train", pictures: int = 300, seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[npt.NDArray[np.float32]], int]:
    """Letterboxed network inputs of up to ``pictures`` pictures drawn at random (seeded) from a split.

    Returns:
        ``(batches, available)``: one (1, 3, S, S) float32 batch per picture, and how many
        pictures the split has.

    Raises:
        DatasetError: the split is missing or has no pictures (``missing_split``), or one
            cannot be decoded.
    """
    model = read_model_dir(model_dir)
    with tempfile.TemporaryDirectory(prefix="shelftally-calib-") as work:
        report = prepare_dataset(data_yaml, Path(work) / "data")
        pairs = split_pictures(Path(work) / "data", split) if split in report.splits else []
        if not pairs:
            raise DatasetError(f"{data_yaml} has no {split!r} pictures to calibrate on", reason="missing_split")
        rng = np.random.default_rng(seed)
        chosen = sorted(rng.choice(len(pairs), size=min(pictures, len(pairs)), replace=False).tolist())
        batches = []
        for i in chosen:
            batches.append(letterbox([read_rgb(pairs[i][0])], model.preprocess)[0])
            if progress is not None:
                progress(len(batches), len(chosen))
    return batches, len(pairs)


def quantize_detector(
    model_dir: str | Path,
    data_yaml: str | Path,
    evaluations: Sequence[EvaluationSet],
    *,
    calibration_split: str = "train",
    calibration_pictures: int = 300,
    agnostic: bool = False,
    threads: int | None = None,
    command: str = "",
    progress: Callable[[str, int, int], None] | None = None,
) -> Int8Record:
    """Quantise a detector directory to INT8 and record FP32 and INT8 mAP on each evaluation set.

    Args:
        model_dir: the detector model directory (needs ``model.onnx``; its FP32
            ``openvino/model.xml`` is converted from it again, so that it matches).
        data_yaml: the dataset whose ``calibration_split`` pictures calibrate (never the evaluation pictures).
        evaluations: labelled sets scored with FP32 and INT8 (at least one).
        calibration_split: the split calibration pictures come from.
        calibration_pictures: at most this many (NNCF's default subset is 300).
        agnostic: score every class as one.
        threads: OpenVINO threads while scoring (None: all cores).
        command: the command line, for the record.
        progress: called with ``(stage, done, total)``.

    Returns:
        The record written to ``openvino-int8/int8.json``.

    The new model and its record replace ``openvino-int8/`` in one rename at the end; until
    then (and when anything fails) the previous INT8 model and record stay as they were.

    Raises:
        ValueError: no evaluation set, two with the same name, or one that is the calibration split.
        DatasetError: a dataset or split is missing, or has no labelled box.
        QuantizationError: NNCF / OpenVINO could not quantise the model.
        ModelLoadError, MissingDependencyError: from the model directory, or missing nncf /
            openvino / ultralytics.
    """
    if not evaluations:
        raise ValueError("quantize_detector needs at least one evaluation set (DATA.yaml:split)")
    labels = [evaluation.label for evaluation in evaluations]
    if len(set(labels)) != len(labels):
        raise ValueError(f"evaluation sets need distinct names, received {labels}")
    for evaluation in evaluations:
        if not evaluation.data_yaml.is_file():
            raise DatasetError(f"{evaluation.data_yaml} does not exist", reason="missing_dataset")
        if evaluation.data_yaml.resolve() == Path(data_yaml).resolve() and evaluation.split == calibration_split:
            raise ValueError(f"{evaluation.label}: the calibration pictures cannot also be the evaluation pictures")
    model = read_model_dir(model_dir)
    source_sha256 = sha256_file(model.file(WEIGHTS_ONNX))  # before anything: the weights this record is about
    export_openvino(model.path)  # the FP32 IR, from the current weights: the baseline, and INT8's fallback
    batches, available = calibration_batches(model.path, data_yaml, split=calibration_split,
                                             pictures=calibration_pictures,
                                             progress=stage_progress(progress, "calibration pictures"))
    staged = model.path / STAGED_DIR
    shutil.rmtree(staged, ignore_errors=True)
    try:
        _, kept = quantize_openvino(model.path / WEIGHTS_ONNX, staged, batches, ignored_patterns=head_scope_patterns)
        if not kept:
            logger.warning("%s: no detection-head node found to keep in FP32 (not a YOLOv8-style export?); "
                           "every layer was quantised", model.path)
        results: dict[str, dict[str, Any]] = {}
        config = BackendConfig(threads=threads, conf=VAL_CONF, iou=VAL_IOU, max_det=VAL_MAX_DET, batch_size=1,
                               openvino_precision="f32")
        backends = {"fp32": DetectorBackend(model, config, "openvino"),
                    "int8": DetectorBackend(model, config, "openvino", int8_candidate=STAGED_XML)}
        try:
            for evaluation in evaluations:
                scored = evaluate_backends(backends, evaluation.data_yaml, split=evaluation.split, agnostic=agnostic,
                                           progress=stage_progress(progress, f"score {evaluation.label}"))
                results[evaluation.label] = {
                    "fp32": scored["fp32"]["mAP50"], "int8": scored["int8"]["mAP50"],
                    "pictures": scored["fp32"]["images"], "fp32_detail": scored["fp32"], "int8_detail": scored["int8"],
                }
        finally:
            for backend in backends.values():
                backend.close()
        record = Int8Record(
            source=WEIGHTS_ONNX, source_sha256=source_sha256,
            method="NNCF post-training quantisation (nncf.quantize, MIXED preset), OpenVINO IR; "
                   f"{len(kept)} detection-head nodes (box decoding) kept in FP32",
            calibration={"source": f"{data_yaml}:{calibration_split}", "pictures": len(batches),
                         "available": available},
            metric="mAP50", evaluations=results, command=command,
        )
        write_record(model.path, record, folder=staged)  # the record goes in with its model, in one rename
        install(model.path, staged)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)  # the previous INT8 model and record stay
        raise
    return record
