"""A detector model is a directory; this module reads and writes it.

Layout (files other than ``labels.json`` and ``preprocess.json`` are optional, a backend needs
its own)::

    model.pt            ultralytics checkpoint (torch backend, fine-tuning)
    model.onnx          ONNX, dynamic batch; input "images" (B, 3, H, W) float32 RGB in [0, 1];
                        output (B, 4 + C, A): cx, cy, w, h in input pixels, then C class scores
    openvino/model.xml  OpenVINO IR (+ model.bin) of the same graph; source.json names the
                        weights file it was converted from and their SHA-256
    engines/            TensorRT engine cache (see shelftally.runtimes.tensorrt)
    labels.json         ["product"] or SKU codes; list index = class_id
    preprocess.json     input size, letterbox, normalisation, channel order (:class:`Preprocess`)
    metrics.json        mAP50, mAP50-95, precision, recall on the validation split (and more)
    inference.json      the model's counting settings: {"confidence", "max_det", "object_px", "chosen_on"}
                        (the best-F1 confidence on its validation split, detector.counting.recommend);
                        backends loaded without an explicit threshold use them
    provenance.json     dataset hash, training recipe, library versions, creation time
    train_log.csv       per-epoch losses and validation metrics of the training run
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from detector.errors import ModelLoadError
from shelftally.files import sha256_file

LABELS = "labels.json"
PREPROCESS = "preprocess.json"
METRICS = "metrics.json"
PROVENANCE = "provenance.json"
INFERENCE = "inference.json"
#: What a backend uses where neither the caller nor ``inference.json`` sets a threshold.
DEFAULT_CONFIDENCE = 0.25
WEIGHTS_PT = "model.pt"
WEIGHTS_ONNX = "model.onnx"
OPENVINO_XML = "openvino/model.xml"
#: Records the weights file (and its SHA-256) an OpenVINO IR was converted from.
OPENVINO_SOURCE = "openvino/source.json"
#: Files and folders a training run writes; replaced together when a model directory is retrained.
ARTIFACTS = (WEIGHTS_PT, WEIGHTS_ONNX, "openvino", "engines", LABELS, PREPROCESS, METRICS, PROVENANCE,
             INFERENCE, "train_log.csv")


@dataclass(frozen=True)
class Preprocess:
    """How a picture becomes the model's input tensor (the ultralytics YOLO convention).

    Attributes:
        input_size: side of the square network input in pixels (``imgsz``).
        letterbox: resize keeping the aspect ratio and pad to ``input_size`` (centred).
        pad_value: grey level of the padding (0-255).
        scale: pixel values are multiplied by this (1/255: uint8 -> [0, 1]).
        channel_order: ``"RGB"`` (pictures are decoded RGB; OpenCV's BGR is converted).
        layout: ``"NCHW"``.
        stride: largest stride of the network; dynamic input sizes must be multiples of it.
    """

    input_size: int = 640
    letterbox: bool = True
    pad_value: int = 114
    scale: float = 1.0 / 255.0
    channel_order: str = "RGB"
    layout: str = "NCHW"
    stride: int = 32

    def __post_init__(self) -> None:
        if self.input_size <= 0 or self.input_size % self.stride:
            raise ValueError(f"input_size must be a positive multiple of {self.stride}, got {self.input_size}")
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be RGB or BGR, got {self.channel_order!r}")
        if self.layout != "NCHW":
            raise ValueError(f"layout must be NCHW, got {self.layout!r}")


@dataclass(frozen=True)
class ModelDir:
    """A detector model directory, read by :func:`read_model_dir`.

    Attributes:
        path: the directory.
        labels: class names; index = class_id.
        preprocess: input preparation.
        metrics: contents of ``metrics.json`` (empty if absent).
        provenance: contents of ``provenance.json`` (empty if absent).
        inference: contents of ``inference.json`` (empty if absent).
    """

    path: Path
    labels: list[str]
    preprocess: Preprocess
    metrics: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    inference: dict[str, Any] = field(default_factory=dict)

    @property
    def confidence(self) -> float:
        """The model's counting confidence: ``inference.json``'s, else :data:`DEFAULT_CONFIDENCE`."""
        return float(self.inference.get("confidence", DEFAULT_CONFIDENCE))

    @property
    def max_det(self) -> int | None:
        """The most detections per picture ``inference.json`` asks for (None: the backend's default)."""
        value = self.inference.get("max_det")
        return int(value) if value is not None else None

    def file(self, name: str) -> Path:
        """Path of a file in the directory.

        Raises:
            ModelLoadError: it does not exist.
        """
        path = self.path / name
        if not path.exists():
            raise ModelLoadError(f"model directory {self.path} has no {name}", reason="model_file_missing")
        return path

    @cached_property
    def version(self) -> str:
        """Short content hash identifying these weights (recorded on every scan)."""
        for name in (WEIGHTS_ONNX, WEIGHTS_PT):
            path = self.path / name
            if path.exists():
                return f"{self.path.name}@{sha256_file(path)[:12]}"
        return f"{self.path.name}@unknown"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot read {path}: {error}", reason="model_file_unreadable") from error


def read_model_dir(path: str | Path) -> ModelDir:
    """Read a model directory's metadata (weights are opened by the backends).

    Raises:
        ModelLoadError: not a directory, or ``labels.json`` / ``preprocess.json`` missing or invalid.
    """
    root = Path(path)
    if not root.is_dir():
        raise ModelLoadError(f"{root} is not a model directory", reason="model_dir_missing")
    for name in (LABELS, PREPROCESS):
        if not (root / name).is_file():
            raise ModelLoadError(f"model directory {root} has no {name}", reason="model_file_missing")
    labels = _read_json(root / LABELS)
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise ModelLoadError(f"{root / LABELS} must be a non-empty JSON list of strings", reason="invalid_labels")
    try:
        preprocess = Preprocess(**_read_json(root / PREPROCESS))
    except (TypeError, ValueError) as error:
        raise ModelLoadError(f"{root / PREPROCESS}: {error}", reason="invalid_preprocess") from error
    metrics = _read_json(root / METRICS) if (root / METRICS).is_file() else {}
    provenance = _read_json(root / PROVENANCE) if (root / PROVENANCE).is_file() else {}
    inference = _read_json(root / INFERENCE) if (root / INFERENCE).is_file() else {}
    confidence = inference.get("confidence", DEFAULT_CONFIDENCE) if isinstance(inference, dict) else None
    max_det = inference.get("max_det", 1) if isinstance(inference, dict) else None
    object_px = inference.get("object_px", 1) if isinstance(inference, dict) else None
    if not (isinstance(confidence, int | float) and 0 <= confidence <= 1
            and isinstance(max_det, int) and max_det >= 1 and isinstance(object_px, int | float) and object_px > 0):
        raise ModelLoadError(f"{root / INFERENCE} must be an object with confidence in [0, 1], max_det >= 1 "
                             "and object_px > 0", reason="invalid_inference")
    return ModelDir(root, labels, preprocess, metrics, provenance, inference)


def write_metadata(
    path: str | Path,
    *,
    labels: list[str],
    preprocess: Preprocess,
    metrics: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
    inference: dict[str, Any] | None = None,
) -> None:
    """Write ``labels.json``, ``preprocess.json`` and, when given, ``metrics.json`` / ``provenance.json``
    / ``inference.json``."""
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    (root / LABELS).write_text(json.dumps(labels, indent=2) + "\n", encoding="utf-8")
    (root / PREPROCESS).write_text(json.dumps(asdict(preprocess), indent=2) + "\n", encoding="utf-8")
    if metrics is not None:
        (root / METRICS).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    if provenance is not None:
        (root / PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
    if inference is not None:
        (root / INFERENCE).write_text(json.dumps(inference, indent=2) + "\n", encoding="utf-8")
