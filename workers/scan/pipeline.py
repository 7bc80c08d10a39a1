"""The scan pipeline: one picture of one location in, counts, discrepancies and evidence out.

Per picture (:meth:`ScanPipeline.scan`)::

    bytes -> sha256 -> decode (workers.ingest) -> capture time -> location (given, or read from a
    location label in the picture) -> already scanned? -> detect -> crop -> classify in batches
    -> facings per SKU -> one transaction: Scan + Detections + Observations, reconcile, alerts
    -> evidence image

- **Idempotent.** A picture is identified by (sha256, location, capture time). Scanning it
  again returns the earlier scan (``status == "duplicate"``) without running the models. When
  neither the caller nor the camera (EXIF) gives the capture time, a byte-identical picture
  already scanned at the location is a duplicate whatever the file's time: copying a file
  changes its modification time, not the shelf it shows.
- **Rejections lose nothing and count nothing.** A picture that cannot be decoded, whose
  location cannot be read, or whose capture time is refused is recorded as a ``rejected`` scan
  with its machine-readable reason (:func:`inventory.reconcile.record_rejected_scan`) and never
  produces observations or alerts; the caller gets a :class:`ScanResult` and goes on.
- **Capture time**: the caller's, else the camera's EXIF DateTimeOriginal (a time without
  offset is read in ``PipelineConfig.camera_timezone``, default the machine's local zone),
  else the file's modification time (paths), else now. The capture time orders scans per
  location, so it must be the time the shelf looked like this.
- **Location labels**: when the location is read from a label (QR code / barcode) in the
  picture, detections lying mostly on a read code are dropped: a label is not a product.
- **Crops**: detector boxes are already clipped to the picture; boxes narrower or lower than
  ``min_box_px`` pixels are dropped as degenerate (they are counted nowhere).
- **Counting**: every kept box is one facing of the SKU the classifier names; a box the
  classifier rejects as unknown, or names with a SKU code that is not in the SKU master, is an
  unknown facing (``Scan.unknown_facings``; many of them open an ``unknown_product``
  discrepancy). Facings become units by the location's facing rule (:mod:`inventory.models`).
- **Models load once per process** (:func:`load_models` keeps them per process id), never in a
  parent that forks workers.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from classifier.backends import softmax
from classifier.recognize import Recognizer
from detector.backends import DetectorBackend
from detector.tiling import detect
from detector.types import Detections
from inventory import queries
from inventory.db import run_in_transaction
from inventory.errors import InvalidInputError, NaiveDatetimeError
from inventory.models import DiscrepancyKind, Location, Scan, Sku
from inventory.reconcile import (
    DetectedItem,
    ObservedCount,
    ReconcileOutcome,
    ReconcilePolicy,
    ScanRecord,
    reconcile_scans,
    record_rejected_scan,
    record_scans,
)
from shelftally.errors import ConfigurationError, InvalidImageError, ShelfTallyError
from workers.ingest import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, DecodedImage, decode_image
from workers.scan.evidence import EvidenceItem, draw_evidence, evidence_path, write_evidence
from workers.scan.locate import LocationError, location_code_from_labels, read_labels

__all__ = [
    "AdmittedPicture",
    "ObservedBox",
    "ObservedPicture",
    "PipelineConfig",
    "ScanPipeline",
    "ScanResult",
    "SkuLine",
    "crop_boxes",
    "load_models",
]

if TYPE_CHECKING:
    from classifier.zeroshot import TextFusion

logger = logging.getLogger(__name__)

_NOTHING_READ = hashlib.sha256(b"").hexdigest()
"""Digest recorded for a rejected file whose bytes were never read (unreadable, or over ``max_bytes``)."""

STAGES = ("decode", "locate", "detect", "crop", "classify", "read_text", "persist", "reconcile", "evidence")
"""Stage names of :attr:`ScanResult.timings_ms`, in pipeline order."""


@dataclass(frozen=True)
class PipelineConfig:
    """How the pipeline treats pictures.

    Attributes:
        max_pixels: largest picture decoded, width x height (default 150 MP).
        max_bytes: largest picture file read, bytes (default 200 MB); larger ones are rejected
            (``file_too_large``) without being read.
        min_box_px: boxes narrower or lower than this, in pixels, are dropped as degenerate.
        evidence_dir: where evidence images go (``<dir>/<location>/scan-<id>.jpg``); None: none.
        location_prefix: payload prefix of ShelfTally location labels (:mod:`workers.scan.locate`).
        camera_timezone: zone of EXIF capture times that carry no offset; None: the machine's
            local zone.
        channels: alert channels written to the outbox by reconciliation.
    """

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    min_box_px: float = 2.0
    evidence_dir: Path | None = None
    location_prefix: str = "LOC:"
    camera_timezone: tzinfo | None = None
    channels: tuple[str, ...] = ()


@dataclass(frozen=True)
class SkuLine:
    """One SKU of a scanned location after reconciliation.

    Attributes:
        sku_code: the SKU (None for the location's unrecognised products).
        counted: facings this scan counted.
        book: book quantity at the location (units), None when not stocked there.
        discrepancy: the active discrepancy kind at the location after this scan, or None.
        consecutive_scans: how many scans in a row saw that discrepancy (0 without one).
    """

    sku_code: str | None
    counted: int
    book: int | None
    discrepancy: str | None = None
    consecutive_scans: int = 0


@dataclass(frozen=True)
class ScanResult:
    """What happened to one picture.

    Attributes:
        source: where the picture came from (path, camera id, upload name).
        status: ``"processed"`` (counted and reconciled), ``"duplicate"`` (scanned before:
            ``scan_id`` is the earlier scan, nothing was recomputed) or ``"rejected"``.
        scan_id: the scan row (None only when a rejection could not be recorded).
        location_code: the location (None when it could not be known).
        captured_at: aware UTC capture time used.
        image_sha256: hex digest of the picture's bytes.
        reason: machine-readable rejection reason (``corrupt_image``, ``location_not_found``, ...).
        message: human-readable detail of a rejection.
        counts: facings per recognised SKU code.
        unknown_facings: boxes no SKU (of the master) was recognised for.
        lines: per SKU: counted, book and discrepancy after reconciliation (processed only).
        outcome: what reconciliation changed (processed only).
        evidence: path of the evidence image, when one was written.
        evidence_error: why the evidence image could not be written (the counts are recorded).
        timings_ms: milliseconds per stage (:data:`STAGES`) that ran.
        named_by: recognised facings per modality that named them (``visual``, ``visual+text``,
            ``text``, ``barcode``).
    """

    source: str
    status: Literal["processed", "duplicate", "rejected"]
    scan_id: int | None
    location_code: str | None
    captured_at: datetime
    image_sha256: str
    reason: str | None = None
    message: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    unknown_facings: int = 0
    lines: list[SkuLine] = field(default_factory=list)
    outcome: ReconcileOutcome | None = None
    evidence: Path | None = None
    evidence_error: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    named_by: dict[str, int] = field(default_factory=dict)

    @property
    def stale(self) -> bool:
        """Captured before the newest scan already reconciled at its location: stored, but it
        changed nothing (``lines`` then show the location's current state, not this picture's)."""
        return self.outcome is not None and self.outcome.stale


@dataclass(frozen=True)
class AdmittedPicture:
    """A picture past the first stage (:meth:`ScanPipeline.admit`): decodable, placed and timed, not
    scanned before. Plain values only, so that it travels in a task message (:meth:`to_dict`).

    Attributes:
        source: where the picture came from.
        image_sha256: hex digest of the picture's bytes (its key in an image store).
        size_bytes: the picture file's size, bytes.
        location_code: the location.
        captured_at: aware UTC capture time.
        label_boxes: xyxy pixel boxes of the location labels read in the picture.
        timings_ms: milliseconds per stage so far.
    """

    source: str
    image_sha256: str
    size_bytes: int
    location_code: str
    captured_at: datetime
    label_boxes: tuple[tuple[float, float, float, float], ...] = ()
    timings_ms: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the capture time as ISO 8601 with offset)."""
        return {
            "source": self.source, "image_sha256": self.image_sha256, "size_bytes": self.size_bytes,
            "location_code": self.location_code, "captured_at": self.captured_at.isoformat(),
            "label_boxes": [list(box) for box in self.label_boxes], "timings_ms": dict(self.timings_ms),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AdmittedPicture:
        """Inverse of :meth:`to_dict`. Raises KeyError / ValueError on a malformed message."""
        captured_at = datetime.fromisoformat(data["captured_at"])
        if captured_at.utcoffset() is None:
            raise ValueError(f"captured_at {data['captured_at']!r} has no UTC offset")
        boxes = tuple((float(a), float(b), float(c), float(d)) for a, b, c, d in data.get("label_boxes", ()))
        return cls(
            source=str(data["source"]), image_sha256=str(data["image_sha256"]), size_bytes=int(data["size_bytes"]),
            location_code=str(data["location_code"]), captured_at=captured_at.astimezone(UTC), label_boxes=boxes,
            timings_ms={str(k): float(v) for k, v in dict(data.get("timings_ms", {})).items()},
        )


@dataclass(frozen=True)
class ObservedBox:
    """One kept detection and what the classifier named it.

    Attributes:
        xyxy: box in pixels of the picture (x1, y1, x2, y2).
        confidence: detector confidence in [0, 1].
        class_id: the detector's class index.
        sku_code: the SKU code named, None for unknown (open-set rejection).
        sku_confidence: the naming confidence in [0, 1].
        modality: what named it: ``"visual"``, ``"visual+text"``, ``"text"`` or ``"barcode"``
            (:class:`classifier.zeroshot.NamedCrop`; only ``"visual"`` unless text is read).
        visual_sku: what the look alone named, where text or a barcode decided.
        read_text: what was read on the crop (at most 120 characters), None when not read.
        gtin: the barcode that named it, if any.
    """

    xyxy: tuple[float, float, float, float]
    confidence: float
    class_id: int
    sku_code: str | None
    sku_confidence: float
    modality: str = "visual"
    visual_sku: str | None = None
    read_text: str | None = None
    gtin: str | None = None


@dataclass(frozen=True)
class ObservedPicture:
    """A picture past the second stage (:meth:`ScanPipeline.observe`): what the models saw.

    Attributes:
        picture: the admitted picture (its ``timings_ms`` include the model stages).
        width_px, height_px: decoded size, pixels.
        detector_version, classifier_version: versions of the models that looked.
        boxes: the kept detections, in detection order.
    """

    picture: AdmittedPicture
    width_px: int
    height_px: int
    detector_version: str
    classifier_version: str
    boxes: tuple[ObservedBox, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; each box is ``[x1, y1, x2, y2, confidence, class_id, sku_code, sku_confidence,
        modality, visual_sku, read_text, gtin]``."""
        return {
            "picture": self.picture.to_dict(), "width_px": self.width_px, "height_px": self.height_px,
            "detector_version": self.detector_version, "classifier_version": self.classifier_version,
            "boxes": [[*box.xyxy, box.confidence, box.class_id, box.sku_code, box.sku_confidence, box.modality,
                       box.visual_sku, box.read_text, box.gtin] for box in self.boxes],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ObservedPicture:
        """Inverse of :meth:`to_dict`. Raises KeyError / ValueError on a malformed message."""
        def box(row: Sequence[Any]) -> ObservedBox:  # 8 items from a worker before text reading, else 12
            x1, y1, x2, y2, conf, cls_id, code, sku_conf = row[:8]
            extra = [*row[8:12], None, None, None, None][:4]
            modality, visual_sku, read_text, gtin = extra[0] or "visual", extra[1], extra[2], extra[3]
            return ObservedBox((float(x1), float(y1), float(x2), float(y2)), float(conf), int(cls_id),
                               None if code is None else str(code), float(sku_conf), str(modality),
                               None if visual_sku is None else str(visual_sku),
                               None if read_text is None else str(read_text), None if gtin is None else str(gtin))

        boxes = tuple(box(row) for row in data["boxes"])
        return cls(
            picture=AdmittedPicture.from_dict(data["picture"]), width_px=int(data["width_px"]),
            height_px=int(data["height_px"]), detector_version=str(data["detector_version"]),
            classifier_version=str(data["classifier_version"]), boxes=boxes,
        )


def crop_boxes(
    pixels: npt.NDArray[np.uint8], detections: Detections, *, min_box_px: float = 2.0
) -> tuple[list[npt.NDArray[np.uint8]], npt.NDArray[np.int64]]:
    """Cut each detection's box out of the picture.

    Boxes are clipped to the picture, rounded outwards to whole pixels, and dropped when the
    clipped box is narrower or lower than ``min_box_px``.

    Args:
        pixels: (H, W, 3) uint8 RGB picture.
        detections: boxes in pixels of ``pixels``.
        min_box_px: smallest width and height kept, pixels.

    Returns:
        ``(crops, kept)``: the (h, w, 3) uint8 crops (views of ``pixels``) and the (K,) int64
        indices of the detections they belong to, in detection order.

    Raises:
        ValueError: ``pixels`` is not (H, W, 3) uint8.
    """
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"pixels: expected (H, W, 3) uint8, received {pixels.shape} {pixels.dtype}")
    height, width = pixels.shape[:2]
    crops: list[npt.NDArray[np.uint8]] = []
    kept: list[int] = []
    for index, (x1, y1, x2, y2) in enumerate(detections.xyxy.tolist()):
        left, top = max(0, int(np.floor(x1))), max(0, int(np.floor(y1)))
        right, bottom = min(width, int(np.ceil(x2))), min(height, int(np.ceil(y2)))
        if min(x2, width) - max(x1, 0) < min_box_px or min(y2, height) - max(y1, 0) < min_box_px:
            continue
        if right <= left or bottom <= top:
            continue
        crops.append(pixels[top:bottom, left:right])
        kept.append(index)
    return crops, np.array(kept, np.int64)


_MODELS: dict[tuple[Any, ...], tuple[DetectorBackend, Recognizer]] = {}


def load_models(
    detector_dir: str | Path,
    classifier_dir: str | Path,
    *,
    backend: str = "onnx",
    threads: int | None = None,
    conf: float | None = None,
    detector_precision: Literal["fp32", "int8"] = "fp32",
    classifier_precision: Literal["fp32", "int8"] = "fp32",
    int8_max_drop_points: float = 1.0,
    device: str = "cpu",
) -> tuple[DetectorBackend, Recognizer]:
    """Load the detector and the classifier (with its open-set threshold and gallery) once per process.

    The models are kept per process id: a forked worker loads its own and never uses the
    parent's runtime sessions.

    Args:
        detector_dir: detector model directory.
        classifier_dir: classifier model directory.
        backend: runtime of both (``onnx``, ``openvino``, ``torch``, ``tensorrt``).
        threads: intra-op threads per model (None: the runtime's default).
        conf: detector confidence threshold in [0, 1]; None: the detector directory's
            recommended one (``inference.json``), else 0.25.
        detector_precision, classifier_precision: ``"int8"`` runs that model's INT8 variant
            (OpenVINO only) when its recorded accuracy loss is within ``int8_max_drop_points``,
            else its FP32 one with a warning (:func:`shelftally.runtimes.int8.choose_int8`); the
            backend's ``precision`` and ``version`` (suffix ``-int8``) say which ran, and scans
            record that version. Per model, because INT8 is not faster for every network on
            every CPU (``bench/int8.py``, ``bench/e2e.py --int8``).
        int8_max_drop_points: the accuracy margin, percentage points of mAP50 / top-1.
        device: where both run: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` (TensorRT needs one), or an
            OpenVINO device name (``"gpu"``, ``"npu"``, ``"auto"``).

    Returns:
        ``(detector, recognizer)``.

    Raises:
        ConfigurationError: ``detector_dir`` is a classifier model directory (reason
            ``not_a_detector``), or a backend setting is invalid.
        ModelLoadError, MissingDependencyError: from the backends.
    """
    from detector.backends import load as load_detector

    for name in ("architecture.json", "prototypes.npy"):  # written only into classifier model directories
        if (Path(detector_dir) / name).is_file():
            raise ConfigurationError(
                f"{detector_dir} is a classifier model directory, not a detector (it has {name}); "
                "are the detector and classifier directories swapped?",
                reason="not_a_detector",
            )
    if "int8" in (detector_precision, classifier_precision) and backend != "openvino":
        raise ConfigurationError(f"precision int8 runs on the openvino backend, not {backend!r}",
                                 reason="int8_needs_openvino")
    key = (os.getpid(), str(Path(detector_dir).resolve()), str(Path(classifier_dir).resolve()), backend, threads,
           conf, detector_precision, classifier_precision, int8_max_drop_points, device)
    if key not in _MODELS:
        detector = load_detector(detector_dir, backend=backend, threads=threads, conf=conf,
                                 openvino_precision="int8" if detector_precision == "int8" else "auto",
                                 int8_max_drop_points=int8_max_drop_points, device=device)
        recognizer = Recognizer.from_model_dir(classifier_dir, backend=backend, threads=threads,
                                               openvino_precision="int8" if classifier_precision == "int8" else "auto",
                                               int8_max_drop_points=int8_max_drop_points, device=device)
        _MODELS[key] = (detector, recognizer)
        logger.info("loaded detector %s (%s) and classifier %s (%s) on %s",
                    detector_dir, detector.version, classifier_dir, recognizer.backend.version, backend)
    return _MODELS[key]


class ScanPipeline:
    """Turns pictures into scans (see the module docstring).

    Args:
        factory: session factory of the inventory database.
        detector: a loaded detector backend (None: a pipeline that only admits and records
            pictures, as on a Celery worker of the ``db`` queue).
        recognizer: a loaded classifier with open-set rejection and gallery (None with ``detector``).
        policy: reconciliation tolerances and hysteresis.
        config: picture handling, evidence folder, alert channels.
        clock: returns the current aware time (tests pass a fixed one).
        text_fusion: reads text and barcodes on the crops that need it and fuses them with the
            classifier's answer (:class:`classifier.zeroshot.TextFusion`); None: the look alone.
    """

    def __init__(
        self,
        *,
        factory: sessionmaker[Session],
        detector: DetectorBackend | None,
        recognizer: Recognizer | None,
        policy: ReconcilePolicy,
        config: PipelineConfig | None = None,
        clock: Callable[[], datetime] | None = None,
        text_fusion: TextFusion | None = None,
    ) -> None:
        self.text_fusion = text_fusion
        self.factory = factory
        self.detector = detector
        self.recognizer = recognizer
        self.policy = policy
        self.config = config or PipelineConfig()
        self.clock = clock or (lambda: datetime.now(UTC))
        _allow_pillow_pixels(self.config.max_pixels)

    # ------------------------------------------------------------------ entry points

    def scan_path(
        self, path: str | Path, *, location_code: str | None = None, captured_at: datetime | None = None
    ) -> ScanResult:
        """Scan a picture file (read as bytes; any Unicode path).

        An unreadable file (permissions, a folder, vanished) is rejected with reason
        ``unreadable_file``, a file over ``max_bytes`` with ``file_too_large`` (not read); see
        :meth:`scan` for everything else.
        """
        path = Path(path)
        try:
            info = path.stat()
            if info.st_size > self.config.max_bytes:
                return self._reject(
                    source=str(path), sha256=_NOTHING_READ, size_bytes=info.st_size, location_code=location_code,
                    captured_at=captured_at or self.clock(),
                    error=InvalidImageError(f"{path} has {info.st_size} bytes, more than the limit of "
                                            f"{self.config.max_bytes}", reason="file_too_large"),
                    timings={},
                )
            data = path.read_bytes()
            modified: datetime | None = datetime.fromtimestamp(info.st_mtime, UTC)
        except OSError as error:
            when = captured_at or self.clock()
            return self._reject(
                source=str(path), sha256=_NOTHING_READ, size_bytes=0, location_code=location_code, captured_at=when,
                error=InvalidImageError(f"cannot read {path}: {error.strerror or error}", reason="unreadable_file"),
                timings={},
            )
        return self.scan(data, source=str(path), location_code=location_code, captured_at=captured_at,
                         fallback_time=modified)

    def scan(
        self,
        data: bytes,
        *,
        source: str,
        location_code: str | None = None,
        captured_at: datetime | None = None,
        fallback_time: datetime | None = None,
    ) -> ScanResult:
        """Scan one picture: :meth:`admit`, then :meth:`observe`, then :meth:`record`.

        Args:
            data: the picture file's bytes.
            source: where it came from (recorded with the scan; at most 255 characters kept).
            location_code: the location; None: read it from a location label in the picture.
            captured_at: aware capture time; None: EXIF, else ``fallback_time``, else now.
            fallback_time: capture time when neither the caller nor EXIF gives one.

        Returns:
            The result; rejections are results too (``status == "rejected"``).

        Raises:
            UnknownLocationError: ``location_code`` is not a location (a caller's mistake: no
                picture of an unknown place is recorded).
            NaiveDatetimeError: ``captured_at`` has no UTC offset.
            ShelfTallyError: a model or the database fails (not the picture's fault).
        """
        admitted = self.admit(data, source=source, location_code=location_code, captured_at=captured_at,
                              fallback_time=fallback_time)
        if isinstance(admitted, ScanResult):
            return admitted
        picture, decoded = admitted
        return self.record(self.observe(picture, decoded), decoded=decoded)

    # ------------------------------------------------------------------ the three stages

    def admit(
        self,
        data: bytes,
        *,
        source: str,
        location_code: str | None = None,
        captured_at: datetime | None = None,
        fallback_time: datetime | None = None,
    ) -> tuple[AdmittedPicture, DecodedImage] | ScanResult:
        """First stage (no models): decode, fix the capture time and location, skip pictures
        scanned before, record rejections.

        Args: as :meth:`scan`.

        Returns:
            ``(picture, decoded)`` for a picture to look at, or the final :class:`ScanResult` of
            a rejected or duplicate one.

        Raises:
            UnknownLocationError, NaiveDatetimeError, ShelfTallyError: as :meth:`scan`.
        """
        if captured_at is not None and captured_at.utcoffset() is None:
            raise NaiveDatetimeError(f"captured_at {captured_at.isoformat()} has no UTC offset")
        timings: dict[str, float] = {}
        started = time.perf_counter()
        sha256 = hashlib.sha256(data).hexdigest()
        when = captured_at.astimezone(UTC) if captured_at is not None else None
        try:
            decoded = decode_image(data, max_pixels=self.config.max_pixels)
        except InvalidImageError as error:
            timings["decode"] = _ms(started)
            return self._reject(source=source, sha256=sha256, size_bytes=len(data), location_code=location_code,
                                captured_at=when or fallback_time or self.clock(), error=error, timings=timings)
        timings["decode"] = _ms(started)
        camera_time = when or self._exif_time(decoded)
        when = (camera_time or fallback_time or self.clock()).astimezone(UTC)

        label_boxes: list[tuple[float, float, float, float]] = []
        if location_code is None:
            step = time.perf_counter()
            try:
                location_code, label_boxes = self._read_location(decoded)
            except LocationError as error:
                timings["locate"] = _ms(step)
                return self._reject(source=source, sha256=sha256, size_bytes=len(data), location_code=None,
                                    captured_at=when, error=error, timings=timings)
            timings["locate"] = _ms(step)

        # Without a capture time from the caller or the camera, the time is only the file's (or
        # now): a byte-identical copy of a picture already scanned here is that picture again.
        earlier = self._existing_scan(sha256, location_code, when if camera_time is not None else None)
        if earlier is not None:
            logger.info("scan_id=%s: %s at %s captured %s was scanned before", earlier, source, location_code, when)
            return ScanResult(source=source, status="duplicate", scan_id=earlier, location_code=location_code,
                              captured_at=when, image_sha256=sha256, timings_ms=timings)
        picture = AdmittedPicture(
            source=source, image_sha256=sha256, size_bytes=len(data), location_code=location_code,
            captured_at=when, label_boxes=tuple(label_boxes), timings_ms=timings,
        )
        return picture, decoded

    def observe(self, picture: AdmittedPicture, decoded: DecodedImage) -> ObservedPicture:
        """Second stage (models, no database): detect, crop and classify.

        Args:
            picture: what :meth:`admit` returned for these pixels.
            decoded: the decoded picture.

        Returns:
            The kept boxes with their SKU codes, ready for :meth:`record`.

        Raises:
            ConfigurationError: the pipeline was built without models (reason ``no_models``).
            ShelfTallyError: a model fails.
        """
        if self.detector is None or self.recognizer is None:
            raise ConfigurationError("this pipeline has no models; it can only admit and record pictures",
                                     reason="no_models")
        timings = dict(picture.timings_ms)
        step = time.perf_counter()
        # Large pictures of small products are tiled at the products' scale (detector.tiling.detect).
        detections = _without_labels(detect(self.detector, decoded.pixels), picture.label_boxes)
        timings["detect"] = _ms(step)
        step = time.perf_counter()
        crops, kept = crop_boxes(decoded.pixels, detections, min_box_px=self.config.min_box_px)
        timings["crop"] = _ms(step)
        step = time.perf_counter()
        logits, embedding = self.recognizer.backend.outputs(crops)
        named = self.recognizer.decide(logits, embedding)
        timings["classify"] = _ms(step)
        detections = detections[kept]
        boxes = [
            ObservedBox((float(x1), float(y1), float(x2), float(y2)), float(conf), int(cls),
                        code, float(sku_conf))
            for (x1, y1, x2, y2), conf, cls, code, sku_conf in zip(
                detections.xyxy.tolist(), detections.confidence.tolist(), detections.class_id.tolist(),
                named.sku_code, named.confidence.tolist(), strict=True,
            )
        ]
        if self.text_fusion is not None and crops:
            step = time.perf_counter()
            fused = self.text_fusion.name(crops, self.recognizer.backend.labels, softmax(logits), named.sku_code,
                                          named.confidence.tolist())
            boxes = [
                replace(box, sku_code=crop.sku_code, sku_confidence=crop.confidence, modality=crop.modality,
                        visual_sku=crop.visual_sku if crop.modality != "visual" else None, read_text=crop.text,
                        gtin=crop.gtin)
                for box, crop in zip(boxes, fused, strict=True)
            ]
            timings["read_text"] = _ms(step)
        return ObservedPicture(
            picture=replace(picture, timings_ms=timings), width_px=decoded.resolution_wh[0],
            height_px=decoded.resolution_wh[1], detector_version=self.detector.version,
            classifier_version=self.recognizer.backend.version, boxes=tuple(boxes),
        )

    def record(
        self,
        observed: ObservedPicture,
        *,
        decoded: DecodedImage | None = None,
        withhold: Collection[DiscrepancyKind] = (),
    ) -> ScanResult:
        """Third stage (database, no models): one transaction writes the scan, its detections and
        observations and reconciles it; then the evidence image (when ``decoded`` is given and
        an evidence folder is configured).

        Recording the same picture twice (a redelivered task) records it once: the second call
        returns ``status == "duplicate"`` with the first scan's id.

        Args:
            observed: what :meth:`observe` returned.
            decoded: the picture's pixels, for the evidence image only.
            withhold: discrepancy kinds this picture is not trusted to show (see
                :func:`inventory.reconcile.reconcile_scans`).

        Returns:
            The result (``processed``, ``duplicate``, or ``rejected`` when the database refuses
            the picture's metadata, e.g. ``captured_in_future``).

        Raises:
            ShelfTallyError: the database fails.
        """
        picture = observed.picture
        timings = dict(picture.timings_ms)
        step = time.perf_counter()
        try:
            persisted = run_in_transaction(
                self.factory, lambda session: self._persist(session, observed, withhold),
            )
        except InvalidInputError as error:  # e.g. captured_in_future: the picture's metadata is refused
            timings["persist"] = _ms(step)
            return self._reject(source=picture.source, sha256=picture.image_sha256, size_bytes=picture.size_bytes,
                                location_code=picture.location_code, captured_at=picture.captured_at, error=error,
                                timings=timings)
        scan_id, created, counts, unknown, lines, outcome, items, reconcile_ms = persisted
        timings["persist"] = round(_ms(step) - reconcile_ms, 2)
        if created:
            timings["reconcile"] = reconcile_ms
        location_code, when, source = picture.location_code, picture.captured_at, picture.source
        if not created:  # a concurrent delivery of the same picture recorded it first
            return ScanResult(source=source, status="duplicate", scan_id=scan_id, location_code=location_code,
                              captured_at=when, image_sha256=picture.image_sha256, timings_ms=timings)
        evidence, evidence_error = None, None
        if self.config.evidence_dir is not None and decoded is not None:
            step = time.perf_counter()
            evidence, evidence_error = self._write_evidence(
                self.config.evidence_dir, decoded, scan_id, location_code, when, items, lines
            )
            timings["evidence"] = _ms(step)
        logger.info("scan_id=%s: %s at %s: %s facings of %s SKUs, %s unknown, %s discrepancies",
                    scan_id, source, location_code, sum(counts.values()), len(counts), unknown,
                    sum(1 for line in lines if line.discrepancy))
        return ScanResult(
            source=source, status="processed", scan_id=scan_id, location_code=location_code, captured_at=when,
            image_sha256=picture.image_sha256, counts=counts, unknown_facings=unknown, lines=lines, outcome=outcome,
            evidence=evidence, evidence_error=evidence_error, timings_ms=timings,
            named_by=dict(Counter(box.modality for box in observed.boxes if box.sku_code in counts)),
        )

    # ------------------------------------------------------------------ stages

    def _exif_time(self, decoded: DecodedImage) -> datetime | None:
        taken = decoded.exif_datetime_original
        if taken is None:
            return None
        if taken.tzinfo is None:
            zone = self.config.camera_timezone or datetime.now().astimezone().tzinfo
            taken = taken.replace(tzinfo=zone)
        return taken.astimezone(UTC)

    def _read_location(self, decoded: DecodedImage) -> tuple[str, list[tuple[float, float, float, float]]]:
        labels = read_labels(decoded.pixels)
        prefix = self.config.location_prefix
        candidates = {label.text for label in labels} | {label.text.removeprefix(prefix) for label in labels}
        with self.factory() as session:  # only the codes the labels could name, not the whole location table
            known = set(session.scalars(
                sa.select(Location.location_code).where(Location.location_code.in_(candidates))
            ))
        code = location_code_from_labels(labels, known_codes=known, prefix=prefix)
        return code, [label.xyxy for label in labels]

    def _existing_scan(self, sha256: str, location_code: str, captured_at: datetime | None) -> int | None:
        """The earliest scan of these bytes at this location (at this capture time, when one is given)."""
        stmt = (
            sa.select(Scan.id)
            .join(Location, Location.id == Scan.location_id)
            .where(Scan.image_sha256 == sha256, Location.location_code == location_code)
            .order_by(Scan.id)
            .limit(1)
        )
        if captured_at is not None:
            stmt = stmt.where(Scan.captured_at == captured_at)
        with self.factory() as session:
            return session.scalars(stmt).first()

    def _persist(
        self, session: Session, observed: ObservedPicture, withhold: Collection[DiscrepancyKind]
    ) -> tuple[int, bool, dict[str, int], int, list[SkuLine], ReconcileOutcome | None, list[EvidenceItem], float]:
        picture = observed.picture
        codes = {box.sku_code for box in observed.boxes if box.sku_code is not None}
        master = set(session.scalars(sa.select(Sku.sku_code).where(Sku.sku_code.in_(codes)))) if codes else set()
        strangers = sorted(codes - master)
        if strangers:
            logger.warning("%s: the classifier named SKU code(s) not in the SKU master, counted as unknown: %s",
                           picture.source, ", ".join(strangers))
        sku_of = [box.sku_code if box.sku_code in master else None for box in observed.boxes]
        counts = Counter(code for code in sku_of if code is not None)
        unknown = sum(1 for code in sku_of if code is None)
        confidence: dict[str, list[float]] = {}
        for code, box in zip(sku_of, observed.boxes, strict=True):
            if code is not None:
                confidence.setdefault(code, []).append(box.sku_confidence)
        record = ScanRecord(
            location_code=picture.location_code, captured_at=picture.captured_at, image_sha256=picture.image_sha256,
            image_size_bytes=picture.size_bytes, source=picture.source[:255],
            observations=[
                ObservedCount(code, n, float(np.mean(confidence[code]))) for code, n in sorted(counts.items())
            ],
            unknown_facings=unknown, width_px=observed.width_px, height_px=observed.height_px,
            detector_version=observed.detector_version, classifier_version=observed.classifier_version,
            detections=[
                DetectedItem(box.xyxy, box.confidence, box.class_id, code,
                             box.sku_confidence if code is not None else None)
                for box, code in zip(observed.boxes, sku_of, strict=True)
            ],
        )
        (scan_id, created), = record_scans(session, scans=[record], now=self.clock())
        if not created:
            return scan_id, False, dict(counts), unknown, [], None, [], 0.0
        step = time.perf_counter()
        outcome, = reconcile_scans(session, scan_ids=[scan_id], policy=self.policy, channels=self.config.channels,
                                   withhold=withhold)
        reconcile_ms = _ms(step)
        lines = self._lines(session, picture.location_code, counts, unknown)
        kind_of = {line.sku_code: line.discrepancy for line in lines}
        items = [
            EvidenceItem(xyxy=box.xyxy, sku_code=code, confidence=box.sku_confidence, discrepancy=kind_of.get(code),
                         modality=box.modality if code is not None else "visual")
            for box, code in zip(observed.boxes, sku_of, strict=True)
        ]
        return scan_id, True, dict(counts), unknown, lines, outcome, items, reconcile_ms

    def _lines(self, session: Session, location_code: str, counts: Counter[str], unknown: int) -> list[SkuLine]:
        book = {
            row.sku_code: row.book_quantity
            for row in queries.counts(session, location_prefix=location_code)
            if row.location_code == location_code
        }
        active = {
            row["sku_code"]: row
            for row in queries.discrepancies(session, location_prefix=location_code,
                                             confirm_after_scans=self.policy.confirm_after_scans)
            if row["location_code"] == location_code
        }
        codes = sorted(set(counts) | {c for c in book if c is not None} | {c for c in active if c is not None})
        lines = [
            SkuLine(
                code, counts.get(code, 0), book.get(code),
                active[code]["kind"] if code in active else None,
                int(active[code]["consecutive_scans"]) if code in active else 0,
            )
            for code in codes
        ]
        if unknown or None in active:
            lines.append(SkuLine(
                None, unknown, None, active[None]["kind"] if None in active else None,
                int(active[None]["consecutive_scans"]) if None in active else 0,
            ))
        return lines

    def _write_evidence(
        self,
        folder: Path,
        decoded: DecodedImage,
        scan_id: int,
        location_code: str,
        captured_at: datetime,
        items: Sequence[EvidenceItem],
        lines: Sequence[SkuLine],
    ) -> tuple[Path | None, str | None]:
        summary = [
            f"{line.sku_code or 'unknown'}: {line.counted} counted"
            + (f", book {line.book}" if line.book is not None else "")
            + (f" -> {line.discrepancy} ({line.consecutive_scans} scan(s))" if line.discrepancy else "")
            for line in lines
        ]
        title = f"scan {scan_id} | {location_code} | {captured_at:%Y-%m-%d %H:%M:%S} UTC"
        try:
            image = draw_evidence(decoded.pixels, items, title=title, summary_lines=summary)
            return write_evidence(evidence_path(folder, location_code, scan_id), image), None
        except OSError as error:  # the counts are committed; a full disk must not lose them
            logger.error("scan_id=%s: evidence image not written: %s", scan_id, error)
            return None, f"evidence image not written: {error}"

    def _reject(
        self,
        *,
        source: str,
        sha256: str,
        size_bytes: int,
        location_code: str | None,
        captured_at: datetime,
        error: ShelfTallyError,
        timings: dict[str, float],
    ) -> ScanResult:
        when = captured_at.astimezone(UTC)
        logger.warning("%s rejected (%s): %s", source, error.reason, error)
        scan_id, _ = run_in_transaction(
            self.factory,
            lambda session: record_rejected_scan(
                session, location_code=location_code, captured_at=when, image_sha256=sha256,
                image_size_bytes=size_bytes, source=source[:255], reason=error.reason,
            ),
        )
        return ScanResult(source=source, status="rejected", scan_id=scan_id, location_code=location_code,
                          captured_at=when, image_sha256=sha256, reason=error.reason, message=str(error),
                          timings_ms=timings)


def _without_labels(detections: Detections, label_boxes: Sequence[tuple[float, float, float, float]]) -> Detections:
    """Drop the detections that are a barcode / QR code read in the picture, or the label around it.

    A location label is not a product, but a class-agnostic detector may box the code or the
    whole printed card. A detection goes when over half of its area lies on a read code, or when
    it holds a read code (90 % of the code inside) that covers at least a quarter of it: a card
    is little more than its code and its caption, while a product's own barcode covers a small
    part of the product (EAN-13 on a carton: a few percent).
    """
    if not label_boxes or not len(detections):
        return detections
    boxes = detections.xyxy
    area = np.maximum(detections.area, 1e-6)
    keep = np.ones(len(detections), bool)
    for x1, y1, x2, y2 in label_boxes:
        width = np.clip(np.minimum(boxes[:, 2], x2) - np.maximum(boxes[:, 0], x1), 0, None)
        height = np.clip(np.minimum(boxes[:, 3], y2) - np.maximum(boxes[:, 1], y1), 0, None)
        overlap = width * height
        code_area = max((x2 - x1) * (y2 - y1), 1e-6)
        keep &= (overlap / area <= 0.5) & ~((overlap >= 0.9 * code_area) & (code_area >= 0.25 * area))
    return detections[keep]


def _allow_pillow_pixels(max_pixels: int) -> None:
    """Let ``max_pixels`` decide which pictures are too large, not Pillow's own guard.

    Pillow refuses, while opening, any picture over twice ``PIL.Image.MAX_IMAGE_PIXELS``
    (179 MP by default) as a decompression bomb, before the decoder can check the header against
    ``max_pixels``. Raised (never lowered) once per process, at pipeline start-up.
    """
    from PIL import Image

    current = Image.MAX_IMAGE_PIXELS
    if current is not None and current < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000.0, 2)
