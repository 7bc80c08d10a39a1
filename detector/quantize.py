"""INT8 post-training quantisation of a detector model directory, with its accuracy delta on labelled sets.

:func:`quantize_detector` calibrates NNCF on pictures of a YOLO dataset split (letterboxed
exactly as the backends do), writes ``openvino-int8/`` into the model directory
(:mod:`shelftally.int8`), then scores FP32 and INT8 with the same code on each evaluation set
and records both: the gate in :func:`shelftally.int8.choose_int8` uses INT8 only when no set
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
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from detector._offline import configure_offline
from detector.backends.base import BackendConfig
from detector.backends.openvino import OpenVinoBackend
from detector.dataset import prepare_dataset
from detector.errors import DatasetError
from detector.export import export_openvino
from detector.model_dir import OPENVINO_XML, WEIGHTS_ONNX, read_model_dir
from detector.preprocess import letterbox
from shelftally.files import sha256_file
from shelftally.int8 import INT8_DIR, INT8_XML, Int8Record, head_scope_patterns, quantize_openvino, write_record

__all__ = ["EvaluationSet", "evaluate_backend", "parse_evaluation_set", "quantize_detector", "split_pictures"]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VAL_CONF = 0.001  # ultralytics' validator defaults (DEFAULT_CFG conf for val, iou 0.7, max_det 300)
VAL_IOU = 0.7
VAL_MAX_DET = 300


def _stage_progress(
    progress: Callable[[str, int, int], None] | None, stage: str
) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    report = progress
    return lambda done, total: report(stage, done, total)


class _Int8Candidate(OpenVinoBackend):
    """The OpenVINO backend on the INT8 model just written, before its record lets the gate accept it."""

    def _model_path(self) -> tuple[Path, str]:
        return self.model_dir.file(INT8_XML), "int8"


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


def parse_evaluation_set(text: str) -> EvaluationSet:
    """``DATA.yaml:split`` (split ``test`` when omitted) -> :class:`EvaluationSet`.

    Raises:
        ValueError: empty path or an unknown split.
    """
    path, _, split = text.rpartition(":") if text.rsplit(":", 1)[-1] in ("train", "val", "test") else (text, "", "test")
    if not path:
        raise ValueError(f"expected DATA.yaml[:train|val|test], received {text!r}")
    return EvaluationSet(Path(path), split or "test")


def split_pictures(prepared_root: Path, split: str) -> list[tuple[Path, Path]]:
    """``(image, label)`` pairs of a split prepared by :func:`detector.dataset.prepare_dataset`, sorted by path."""
    images = prepared_root / "images" / split
    pairs = []
    for image in sorted(p for p in images.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        label = (prepared_root / "labels" / split / image.relative_to(images)).with_suffix(".txt")
        pairs.append((image, label))
    return pairs


def _read_rgb(path: Path) -> npt.NDArray[np.uint8]:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)  # applies EXIF orientation, as ultralytics' loader does
    if image is None:
        raise DatasetError(f"cannot decode {path}", reason="image_unreadable")
    return np.ascontiguousarray(image[:, :, ::-1])


def _labels_xyxy(label: Path, width: int, height: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    rows = [line.split() for line in label.read_text(encoding="utf-8").splitlines() if line.strip()] \
        if label.is_file() else []
    if not rows:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    data = np.array(rows, dtype=np.float64)
    cx, cy, w, h = data[:, 1] * width, data[:, 2] * height, data[:, 3] * width, data[:, 4] * height
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1).astype(np.float32)
    return boxes, data[:, 0].astype(np.int64)


def evaluate_backend(
    backend: Any, data_yaml: str | Path, *, split: str = "test", agnostic: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Score a loaded detector backend on one split of a YOLO dataset.

    Args:
        backend: a :class:`detector.backends.DetectorBackend` loaded with ``conf=0.001``,
            ``iou=0.7``, ``max_det=300`` (ultralytics' validation settings) for scores
            comparable with ``shelftally detector evaluate``.
        data_yaml: the dataset's YAML (polygons, Roboflow paths: prepared as for training).
        split: the split to score.
        agnostic: every class counts as one (ultralytics ``single_cls``).
        progress: called with ``(done, total)`` after each picture.

    Returns:
        ``{"images", "boxes", "mAP50", "mAP50-95", "precision", "recall"}`` (precision and
        recall at the confidence with the best mean F1, as ultralytics reports them).

    Raises:
        DatasetError: the split has no pictures, a picture cannot be decoded, or the model's
            classes are not the dataset's (and ``agnostic`` is False).
        MissingDependencyError: ultralytics / torch are not installed.
    """
    configure_offline()
    import torch
    from ultralytics.engine.validator import BaseValidator
    from ultralytics.utils.metrics import ap_per_class, box_iou

    with tempfile.TemporaryDirectory(prefix="shelftally-eval-") as work:
        report = prepare_dataset(data_yaml, Path(work) / "data")
        if split not in report.splits or report.splits[split].images == 0:
            raise DatasetError(f"{data_yaml} has no {split!r} images", reason="missing_split")
        if not agnostic and list(report.names) != list(backend.labels):
            raise DatasetError(
                f"the model's classes are not the dataset's {list(report.names)[:5]}; score with agnostic=True",
                reason="class_mismatch",
            )
        pairs = split_pictures(Path(work) / "data", split)
        matcher = SimpleNamespace(iouv=torch.linspace(0.5, 0.95, 10))
        stats: dict[str, list[npt.NDArray[Any]]] = {"tp": [], "conf": [], "pred_cls": [], "target_cls": []}
        boxes_total = 0
        for index, (image_path, label_path) in enumerate(pairs):
            image = _read_rgb(image_path)
            truth, truth_cls = _labels_xyxy(label_path, image.shape[1], image.shape[0])
            found = backend.predict([image])[0]
            order = np.argsort(-found.confidence, kind="stable")
            xyxy, conf, cls = found.xyxy[order], found.confidence[order], found.class_id[order].astype(np.int64)
            if agnostic:
                cls, truth_cls = np.zeros_like(cls), np.zeros_like(truth_cls)
            boxes_total += len(truth)
            if len(truth) and len(xyxy):
                iou = box_iou(torch.from_numpy(truth), torch.from_numpy(xyxy))
                tp = BaseValidator.match_predictions(
                    matcher, torch.from_numpy(cls), torch.from_numpy(truth_cls), iou  # type: ignore[arg-type]
                ).numpy()
            else:
                tp = np.zeros((len(xyxy), 10), dtype=bool)
            stats["tp"].append(tp)
            stats["conf"].append(conf)
            stats["pred_cls"].append(cls)
            stats["target_cls"].append(truth_cls)
            if progress is not None:
                progress(index + 1, len(pairs))
    joined = {key: np.concatenate(value, axis=0) for key, value in stats.items()}
    result: dict[str, Any] = {"images": len(pairs), "boxes": boxes_total}
    if not len(joined["target_cls"]) or not len(joined["tp"]):
        return result | {"mAP50": 0.0, "mAP50-95": 0.0, "precision": 0.0, "recall": 0.0}
    _, _, precision, recall, _, ap, *_ = ap_per_class(
        joined["tp"], joined["conf"], joined["pred_cls"], joined["target_cls"]
    )
    return result | {
        "mAP50": round(float(ap[:, 0].mean()), 4), "mAP50-95": round(float(ap.mean()), 4),
        "precision": round(float(precision.mean()), 4), "recall": round(float(recall.mean()), 4),
    }


def calibration_batches(
    model_dir: str | Path, data_yaml: str | Path, *, split: str = "train", pictures: int = 300, seed: int = 0
) -> tuple[list[npt.NDArray[np.float32]], int]:
    """Letterboxed network inputs of up to ``pictures`` pictures drawn at random (seeded) from a split.

    Returns:
        ``(batches, available)``: one (1, 3, S, S) float32 batch per picture, and how many
        pictures the split has.

    Raises:
        DatasetError: the split has no pictures or one cannot be decoded.
    """
    model = read_model_dir(model_dir)
    with tempfile.TemporaryDirectory(prefix="shelftally-calib-") as work:
        report = prepare_dataset(data_yaml, Path(work) / "data")
        if split not in report.splits:
            raise DatasetError(f"{data_yaml} has no {split!r} split for calibration", reason="missing_split")
        pairs = split_pictures(Path(work) / "data", split)
        rng = np.random.default_rng(seed)
        chosen = sorted(rng.choice(len(pairs), size=min(pictures, len(pairs)), replace=False).tolist())
        batches = [letterbox([_read_rgb(pairs[i][0])], model.preprocess)[0] for i in chosen]
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
            ``openvino/model.xml`` is converted from it when missing).
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

    Raises:
        ValueError: no evaluation set.
        DatasetError, ModelLoadError, MissingDependencyError: from the dataset, the model
            directory, or missing nncf / openvino / ultralytics.
    """
    if not evaluations:
        raise ValueError("quantize_detector needs at least one evaluation set (DATA.yaml:split)")
    model = read_model_dir(model_dir)
    model.file(WEIGHTS_ONNX)
    if not (model.path / OPENVINO_XML).is_file():  # the FP32 IR: the baseline, and the fallback of INT8
        export_openvino(model.path)
    batches, available = calibration_batches(model.path, data_yaml, split=calibration_split,
                                             pictures=calibration_pictures)
    if progress is not None:
        progress("calibrate", 0, len(batches))
    quantize_openvino(model.path / WEIGHTS_ONNX, model.path / INT8_DIR, batches, ignored_patterns=head_scope_patterns)
    results: dict[str, dict[str, Any]] = {}
    for evaluation in evaluations:
        scores: dict[str, Any] = {}
        for precision in ("fp32", "int8"):
            config = BackendConfig(threads=threads, conf=VAL_CONF, iou=VAL_IOU, max_det=VAL_MAX_DET, batch_size=1,
                                   openvino_precision="f32")
            backend = OpenVinoBackend(model, config) if precision == "fp32" else _Int8Candidate(model, config)
            stage = f"{evaluation.label} {precision}"
            scored = evaluate_backend(
                backend, evaluation.data_yaml, split=evaluation.split, agnostic=agnostic,
                progress=_stage_progress(progress, stage),
            )
            scores[precision] = scored["mAP50"]
            scores[f"{precision}_detail"] = scored
            scores["pictures"] = scored["images"]
        results[evaluation.label] = scores
    record = Int8Record(
        source=WEIGHTS_ONNX, source_sha256=sha256_file(model.path / WEIGHTS_ONNX),
        method="NNCF post-training quantisation (nncf.quantize, MIXED preset), OpenVINO IR; "
               "detection head's box decoding kept in FP32",
        calibration={"source": f"{data_yaml}:{calibration_split}", "pictures": len(batches), "available": available},
        metric="mAP50", evaluations=results, command=command,
    )
    write_record(model.path, record)
    return record
