"""A classifier model is a directory; this module reads and writes its metadata.

Layout (``labels.json`` and ``preprocess.json`` are required; a backend needs its own weights)::

    model.pt            torch state dict of :class:`classifier.backbones.EmbeddingClassifier`
                        (torch backend, fine-tuning); read with ``torch.load(weights_only=True)``
    architecture.json   how to rebuild the network for model.pt (:class:`Architecture`):
                        {"name": "mobilenet_v3_small", "embedding_dim": 128, "head": "cosine", ...}
    model.onnx          ONNX; input "images" (B, 3, S, S) float32, normalised per preprocess.json;
                        outputs "logits" (B, C) and "embedding" (B, D), L2-normalised. Batch
                        dynamic, or fixed (the backends then split and pad to that batch)
    openvino/model.xml  OpenVINO IR (+ model.bin) of the same graph
    labels.json         SKU codes, list index = class_id: ["Granny-Smith", "Pink-Lady", ...]
    preprocess.json     input size, resize policy, mean/std, channel order (:class:`Preprocess`)
    metrics.json        accuracy and friends on the validation split (free-form JSON object)
    provenance.json     dataset hash, training recipe, library versions, creation time (free-form)

Everything here is standard library: reading a model directory needs no runtime.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, get_args

from classifier.errors import ModelLoadError
from shelftally.files import sha256_file

__all__ = [
    "ARCHITECTURE",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LABELS",
    "METRICS",
    "ONNX_INPUT",
    "ONNX_OUTPUTS",
    "OPENVINO_XML",
    "PREPROCESS",
    "PROVENANCE",
    "WEIGHTS_ONNX",
    "WEIGHTS_PT",
    "Architecture",
    "HeadKind",
    "Interpolation",
    "ModelDir",
    "Preprocess",
    "ResizePolicy",
    "read_model_dir",
    "sha256_file",
    "write_metadata",
]

LABELS = "labels.json"
PREPROCESS = "preprocess.json"
ARCHITECTURE = "architecture.json"
METRICS = "metrics.json"
PROVENANCE = "provenance.json"
WEIGHTS_PT = "model.pt"
WEIGHTS_ONNX = "model.onnx"
OPENVINO_XML = "openvino/model.xml"

ONNX_INPUT = "images"
"""Name of the exported graph's input, (B, 3, S, S) float32."""

ONNX_OUTPUTS = ("logits", "embedding")
"""Names of the exported graph's outputs, (B, C) and (B, D) float32, in this order."""

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
"""Per-channel RGB mean of ImageNet in [0, 1] units, as torchvision's ImageNet weights expect
(``torchvision.transforms._presets.ImageClassification``)."""

IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
"""Per-channel RGB standard deviation of ImageNet in [0, 1] units (same source as the mean)."""

ResizePolicy = Literal["letterbox", "stretch", "center_crop"]
Interpolation = Literal["auto", "linear", "area", "cubic", "nearest"]
HeadKind = Literal["cosine", "linear"]


def _check_triple(name: str, value: object, *, positive: bool) -> tuple[float, float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise ValueError(f"{name}: expected 3 numbers (one per channel), received {value!r}")
    numbers = tuple(float(v) for v in value)
    if positive and any(v <= 0 for v in numbers):
        raise ValueError(f"{name}: expected positive numbers, received {value!r}")
    return numbers[0], numbers[1], numbers[2]


@dataclass(frozen=True)
class Preprocess:
    """How a crop becomes one (3, S, S) slice of the network input (see :mod:`classifier.preprocess`).

    The crop arrives as (h, w, 3) uint8 RGB. It is resized to ``input_size`` by ``resize``,
    converted to float32, scaled by ``scale``, normalised per channel as ``(x - mean) / std``
    (mean and std in RGB order) and finally reordered to ``channel_order``, layout NCHW.

    Attributes:
        input_size: side S of the square network input, pixels.
        resize: ``"letterbox"``: scale by ``min(S / h, S / w)`` keeping the aspect ratio, then pad
            to S x S (centred) with ``pad_value``; nothing of the crop is lost.
            ``"stretch"``: resize to S x S ignoring the aspect ratio.
            ``"center_crop"``: scale so the shorter side is ``floor(S / crop_pct)`` and cut the
            central S x S (timm's evaluation transform, ``timm.data.transforms_factory``).
        crop_pct: fraction of the resized shorter side kept by ``center_crop``, in (0, 1]; 0.875
            is timm's ``DEFAULT_CROP_PCT``.
        pad_value: grey level (0-255) of ``letterbox`` padding; 114 (the detector's letterbox
            grey) is close to the ImageNet mean colour (124, 116, 104): with ImageNet
            normalisation the padding becomes about (-0.17, -0.04, 0.18).
        interpolation: OpenCV interpolation. ``"auto"``: ``INTER_AREA`` when the crop shrinks on
            both axes (anti-aliased, like torchvision's ``antialias=True``), else ``INTER_LINEAR``.
        scale: uint8 values are multiplied by this first (1/255: [0, 255] -> [0, 1]).
        mean: per-channel mean in scaled units, RGB order (default ImageNet, :data:`IMAGENET_MEAN`).
        std: per-channel standard deviation in scaled units, RGB order (:data:`IMAGENET_STD`).
        channel_order: channel order the network expects, ``"RGB"`` or ``"BGR"``.
        layout: ``"NCHW"``.

    Raises:
        ValueError: on construction, for a value out of range; the message names the field.
    """

    input_size: int = 224
    resize: ResizePolicy = "letterbox"
    crop_pct: float = 0.875
    pad_value: int = 114
    interpolation: Interpolation = "auto"
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channel_order: Literal["RGB", "BGR"] = "RGB"
    layout: Literal["NCHW"] = "NCHW"

    def __post_init__(self) -> None:
        if isinstance(self.input_size, bool) or not isinstance(self.input_size, int) or self.input_size < 8:
            raise ValueError(f"input_size: expected an integer >= 8 pixels, received {self.input_size!r}")
        if self.resize not in get_args(ResizePolicy):
            raise ValueError(f"resize: expected one of {get_args(ResizePolicy)}, received {self.resize!r}")
        if not 0.0 < float(self.crop_pct) <= 1.0:
            raise ValueError(f"crop_pct: expected a fraction in (0, 1], received {self.crop_pct!r}")
        if isinstance(self.pad_value, bool) or not isinstance(self.pad_value, int) or not 0 <= self.pad_value <= 255:
            raise ValueError(f"pad_value: expected an integer grey level in [0, 255], received {self.pad_value!r}")
        if self.interpolation not in get_args(Interpolation):
            raise ValueError(
                f"interpolation: expected one of {get_args(Interpolation)}, received {self.interpolation!r}"
            )
        if not float(self.scale) > 0:
            raise ValueError(f"scale: expected a positive number, received {self.scale!r}")
        object.__setattr__(self, "mean", _check_triple("mean", self.mean, positive=False))
        object.__setattr__(self, "std", _check_triple("std", self.std, positive=True))
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order: expected 'RGB' or 'BGR', received {self.channel_order!r}")
        if self.layout != "NCHW":
            raise ValueError(f"layout: expected 'NCHW', received {self.layout!r}")


@dataclass(frozen=True)
class Architecture:
    """How to rebuild the network whose state dict is ``model.pt`` (see :mod:`classifier.backbones`).

    Attributes:
        name: torchvision backbone, a key of ``classifier.backbones.BACKBONES``
            (e.g. ``"mobilenet_v3_small"``).
        embedding_dim: D, length of the L2-normalised embedding.
        head: ``"cosine"``: logits = ``logit_scale`` x cosine between the embedding and each
            class's weight vector (NormSoftmax, Zhai & Wu, BMVC 2019); ``"linear"``: an
            ``nn.Linear`` with bias on the normalised embedding.
        logit_scale: the cosine head's scale (inverse temperature); ignored by ``"linear"``.
        dropout: dropout probability on the pooled backbone features during training.
        backbone_weights: registered pretrained weights (``classifier.pretrained``) the backbone
            holds unchanged (a linear probe); ``model.pt`` then stores only the embedding and
            head, and the backbone is rebuilt from those weights (checked by sha256). None:
            ``model.pt`` holds every tensor.
    """

    name: str
    embedding_dim: int = 128
    head: HeadKind = "cosine"
    logit_scale: float = 16.0
    dropout: float = 0.2
    backbone_weights: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name: expected a backbone name, received {self.name!r}")
        if isinstance(self.embedding_dim, bool) or not isinstance(self.embedding_dim, int) or self.embedding_dim < 1:
            raise ValueError(f"embedding_dim: expected a positive integer, received {self.embedding_dim!r}")
        if self.head not in get_args(HeadKind):
            raise ValueError(f"head: expected one of {get_args(HeadKind)}, received {self.head!r}")
        if not float(self.logit_scale) > 0:
            raise ValueError(f"logit_scale: expected a positive number, received {self.logit_scale!r}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1), received {self.dropout!r}")
        if self.backbone_weights is not None and not (
            isinstance(self.backbone_weights, str) and self.backbone_weights.startswith(self.name + ".")
        ):
            raise ValueError(
                f"backbone_weights: expected a name {self.name}.<tag>, received {self.backbone_weights!r}"
            )


@dataclass(frozen=True)
class ModelDir:
    """A classifier model directory, read by :func:`read_model_dir`.

    Attributes:
        path: the directory.
        labels: SKU codes; index = ``class_id``.
        preprocess: input preparation.
        architecture: the network of ``model.pt`` (None when ``architecture.json`` is absent,
            e.g. a directory shipped with ``model.onnx`` only).
        metrics: contents of ``metrics.json`` (empty if absent).
        provenance: contents of ``provenance.json`` (empty if absent).
    """

    path: Path
    labels: list[str]
    preprocess: Preprocess
    architecture: Architecture | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """C, the number of SKUs the model names."""
        return len(self.labels)

    def file(self, name: str) -> Path:
        """Path of a file in the directory.

        Raises:
            ModelLoadError: it does not exist (reason ``model_file_missing``).
        """
        path = self.path / name
        if not path.exists():
            raise ModelLoadError(f"model directory {self.path} has no {name}", reason="model_file_missing")
        return path

    @cached_property
    def version(self) -> str:
        """``<directory name>@<12 hex digits>``: content hash of the weights (recorded on every scan)."""
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


def _check_labels(labels: Any, path: Path) -> list[str]:
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x.strip() for x in labels):
        raise ModelLoadError(f"{path} must be a non-empty JSON list of non-empty strings", reason="invalid_labels")
    duplicates = sorted(code for code, count in Counter(labels).items() if count > 1)
    if duplicates:
        raise ModelLoadError(f"{path}: SKU codes must be unique, repeated: {duplicates}", reason="invalid_labels")
    return labels


def _build(cls: type[Preprocess] | type[Architecture], data: Any, path: Path, reason: str) -> Any:
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: expected a JSON object, received {type(data).__name__}", reason=reason)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ModelLoadError(f"{path}: unknown keys {unknown}; valid keys: {sorted(known)}", reason=reason)
    try:
        return cls(**data)
    except (TypeError, ValueError) as error:
        raise ModelLoadError(f"{path}: {error}", reason=reason) from error


def read_model_dir(path: str | Path) -> ModelDir:
    """Read a model directory's metadata (weights are opened by the backends).

    Args:
        path: the model directory.

    Returns:
        The directory's labels, preprocessing, architecture (if recorded), metrics and provenance.

    Raises:
        ModelLoadError: with reason ``model_dir_missing`` (not a directory),
            ``model_file_missing`` (no ``labels.json`` or ``preprocess.json``),
            ``model_file_unreadable`` (a JSON file cannot be read or parsed),
            ``invalid_labels`` (not a non-empty list of unique non-empty strings),
            ``invalid_preprocess`` / ``invalid_architecture`` (unknown keys or values out of range).
    """
    root = Path(path)
    if not root.is_dir():
        raise ModelLoadError(f"{root} is not a model directory", reason="model_dir_missing")
    for name in (LABELS, PREPROCESS):
        if not (root / name).is_file():
            raise ModelLoadError(f"model directory {root} has no {name}", reason="model_file_missing")
    labels = _check_labels(_read_json(root / LABELS), root / LABELS)
    preprocess: Preprocess = _build(Preprocess, _read_json(root / PREPROCESS), root / PREPROCESS, "invalid_preprocess")
    architecture: Architecture | None = None
    if (root / ARCHITECTURE).is_file():
        architecture = _build(
            Architecture, _read_json(root / ARCHITECTURE), root / ARCHITECTURE, "invalid_architecture"
        )
    metrics = _read_json(root / METRICS) if (root / METRICS).is_file() else {}
    provenance = _read_json(root / PROVENANCE) if (root / PROVENANCE).is_file() else {}
    for name, value in ((METRICS, metrics), (PROVENANCE, provenance)):
        if not isinstance(value, dict):
            raise ModelLoadError(f"{root / name}: expected a JSON object", reason="model_file_unreadable")
    return ModelDir(root, labels, preprocess, architecture, metrics, provenance)


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


def write_metadata(
    path: str | Path,
    *,
    labels: list[str],
    preprocess: Preprocess,
    architecture: Architecture | None = None,
    metrics: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Write ``labels.json``, ``preprocess.json`` and, when given, the other JSON files.

    Args:
        path: the model directory (created if needed).
        labels: SKU codes; index = ``class_id``.
        preprocess: input preparation.
        architecture: the network of ``model.pt`` (written to ``architecture.json``).
        metrics: written to ``metrics.json``.
        provenance: written to ``provenance.json``.

    Returns:
        The model directory.

    Raises:
        ModelLoadError: ``labels`` is not a non-empty list of unique non-empty strings
            (reason ``invalid_labels``); nothing is written then.
    """
    root = Path(path)
    _check_labels(list(labels), root / LABELS)
    root.mkdir(parents=True, exist_ok=True)
    _write_json(root / LABELS, list(labels))
    _write_json(root / PREPROCESS, asdict(preprocess))
    if architecture is not None:
        _write_json(root / ARCHITECTURE, asdict(architecture))
    if metrics is not None:
        _write_json(root / METRICS, metrics)
    if provenance is not None:
        _write_json(root / PROVENANCE, provenance)
    return root
