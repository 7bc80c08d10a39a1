"""Score a product detector as a counter, on labelled photos, from its exported model.

What a stock count needs of a detector is that each photo's number of boxes is right and that
the boxes are on products. :func:`evaluate_counts` runs a loaded backend (ONNX Runtime or
OpenVINO: a shipped model directory need not hold ``model.pt``) over a labelled split, through
the same :func:`detector.tiling.detect` path as a scan (large photos are tiled), and reports:

- precision and recall at IoU 0.5 at the counting confidence: detections are matched to true
  boxes greedily in decreasing confidence, each to the still unmatched true box it overlaps most
  (IoU >= 0.5), as the COCO evaluation matches (Lin et al., "Microsoft COCO", ECCV 2014;
  ``pycocotools`` ``COCOeval.evaluateImg``);
- mAP50: the area under the precision-recall curve of all detections down to confidence 0.001,
  COCO's 101-point interpolation (precision made monotone, sampled at recall 0, 0.01, ..., 1),
  computed here in NumPy so that an ONNX-only installation can run it;
- the per-photo count error ``mean(|detected - true| / true)`` over photos with at least one true
  box, and the share of photos whose count is within ±10 % of the truth (a photo with no true
  box is within only when nothing is detected on it);
- the confidence with the best F1 on the split (:func:`recommend`, which a model directory then
  carries in ``inference.json`` as its counting threshold).

Scoring is class-agnostic (every box is "a product"): the detector is product-agnostic and the
labelled sets name products differently. Greedy matching in confidence order is a prefix
property: the matches of the detections above any threshold are the first steps of the matching
of all of them, so one pass at confidence 0.001 gives the figures at every threshold. Photos large
enough to be tiled are the exception: the tile size and the fragment suppression depend on the
threshold, so they are detected at the counting confidence, as a scan detects them, and their
curve starts there (``tiled_pictures`` says how many; their mAP50 share is a lower bound).
"Detected at threshold t" means confidence ``> t``, as the backends keep scores ``> conf``.

Labelled photos come as a YOLO ``data.yaml`` (prepared as for training, Roboflow quirks
included) or a COCO detection JSON (``images``, ``annotations`` with ``bbox`` ``[x, y, w, h]`` in
pixels; ``file_name`` relative to the JSON's folder; ``iscrowd`` boxes are ignored).
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from detector.backends import DetectorBackend
from detector.dataset import labels_xyxy, prepare_dataset, read_rgb, require_split, split_pictures
from detector.errors import DatasetError

__all__ = [
    "CountReport",
    "PictureCount",
    "count_error",
    "evaluate_counts",
    "labelled_pictures",
    "match_greedy",
    "recommend",
    "summarize",
]

IOU_MATCH = 0.5
#: Confidence down to which detections are kept for the precision-recall curve (ultralytics' val).
CURVE_CONFIDENCE = 0.001
#: Relative count error within which a photo counts as counted right.
COUNT_TOLERANCE = 0.10

Tiling = Literal["auto", "always", "never"]


def _iou(box: npt.NDArray[np.float32], boxes: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    result: npt.NDArray[np.float32] = (inter / np.maximum(area + areas - inter, 1e-9)).astype(np.float32)
    return result


def match_greedy(
    detected: npt.NDArray[np.float32], confidence: npt.NDArray[np.float32], truth: npt.NDArray[np.float32],
    iou: float = IOU_MATCH,
) -> npt.NDArray[np.bool_]:
    """Which detections are true positives, matched greedily in decreasing confidence.

    Args:
        detected: (N, 4) float32 xyxy pixels.
        confidence: (N,) float32.
        truth: (M, 4) float32 xyxy pixels.
        iou: the least IoU of a match.

    Returns:
        (N,) bool in the order of ``detected``: True where the detection took a true box (each
        true box is taken at most once, by the most confident detection overlapping it enough,
        and each detection takes the free true box it overlaps most).

    Raises:
        ValueError: shapes disagree.
    """
    detected = np.asarray(detected, np.float32).reshape(-1, 4)
    truth = np.asarray(truth, np.float32).reshape(-1, 4)
    confidence = np.asarray(confidence, np.float32).reshape(-1)
    if len(confidence) != len(detected):
        raise ValueError(f"{len(detected)} boxes but {len(confidence)} confidences")
    hit = np.zeros(len(detected), dtype=bool)
    if not len(truth):
        return hit
    free = np.ones(len(truth), dtype=bool)
    for index in np.argsort(-confidence, kind="stable"):
        overlaps = np.where(free, _iou(detected[index], truth), -1.0)
        best = int(np.argmax(overlaps))
        if overlaps[best] >= iou:
            hit[index] = True
            free[best] = False
    return hit


def count_error(detected: int, true: int) -> float | None:
    """``|detected - true| / true``; None for a photo with no true box (the ratio is undefined)."""
    if detected < 0 or true < 0:
        raise ValueError(f"counts must be >= 0, got detected={detected}, true={true}")
    return None if true == 0 else abs(detected - true) / true


def _within(detected: int, true: int, tolerance: float = COUNT_TOLERANCE) -> bool:
    return detected == 0 if true == 0 else abs(detected - true) <= tolerance * true


@dataclass(frozen=True)
class PictureCount:
    """One photo's detections, kept down to :data:`CURVE_CONFIDENCE` for every threshold.

    Attributes:
        picture: the photo's path.
        true: the number of labelled boxes.
        confidence: (N,) float32 of its detections, decreasing.
        hit: (N,) bool, the detection matched a true box (:func:`match_greedy`).
        truncated: the backend's ``max_det`` cut the detections.
        object_px: the median true box side (square root of its area) in network-input pixels
            with the whole photo letterboxed; None without true boxes.
        tiled: the photo was large enough to tile and was detected at the counting confidence.
    """

    picture: str
    true: int
    confidence: npt.NDArray[np.float32]
    hit: npt.NDArray[np.bool_]
    truncated: bool = False
    object_px: float | None = None
    tiled: bool = False

    def detected(self, threshold: float) -> int:
        """Detections with confidence ``> threshold`` (the backends' rule)."""
        return int(np.count_nonzero(self.confidence > threshold))

    def found(self, threshold: float) -> int:
        """True boxes matched by a detection with confidence ``> threshold`` (true positives)."""
        return int(np.count_nonzero(self.hit[self.confidence > threshold]))


@dataclass(frozen=True)
class CountReport:
    """The figures of :func:`summarize` (see the module docstring)."""

    pictures: int
    true_boxes: int
    detected_boxes: int
    confidence: float
    precision: float
    recall: float
    mAP50: float
    count_error: float | None
    count_within_10pct: float
    empty_pictures: int
    false_boxes_on_empty: int
    truncated_pictures: int
    tiled_pictures: int
    best_f1_confidence: float
    best_f1: float
    unreadable: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return asdict(self)


def _best_f1(pictures: list[PictureCount]) -> tuple[float, float]:
    confidence = np.concatenate([p.confidence for p in pictures]) if pictures else np.zeros(0, np.float32)
    hit = np.concatenate([p.hit for p in pictures]) if pictures else np.zeros(0, bool)
    true = sum(p.true for p in pictures)
    if not len(confidence) or true == 0:
        return 0.25, 0.0
    order = np.argsort(-confidence, kind="stable")
    tp = np.cumsum(hit[order])
    detected = np.arange(1, len(order) + 1)
    f1 = 2 * tp / (detected + true)
    # A threshold must keep all detections tied at it: only the last index of each confidence value counts.
    sorted_conf = confidence[order]
    last = np.r_[sorted_conf[1:] != sorted_conf[:-1], True]
    f1 = np.where(last, f1, -1.0)
    best = int(np.argmax(f1))
    return _threshold_under(float(sorted_conf[best])), float(f1[best])


def _threshold_under(score: float) -> float:
    """A 4-decimal threshold that keeps a detection of ``score`` under the ``> threshold`` rule."""
    threshold = math.floor(score * 1e4) / 1e4
    if threshold >= score:
        threshold -= 1e-4
    return round(max(threshold, 0.0), 4)


def _ap50(pictures: list[PictureCount]) -> float:
    """COCO 101-point interpolated average precision of all detections (see the module docstring)."""
    true = sum(p.true for p in pictures)
    confidence = np.concatenate([p.confidence for p in pictures]) if pictures else np.zeros(0, np.float32)
    if true == 0 or not len(confidence):
        return 0.0
    hit = np.concatenate([p.hit for p in pictures])
    order = np.argsort(-confidence, kind="stable")
    tp = np.cumsum(hit[order])
    recall = tp / true
    precision = tp / np.arange(1, len(order) + 1)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]  # best precision at this recall or beyond
    samples = np.linspace(0.0, 1.0, 101)
    index = np.searchsorted(recall, samples, side="left")
    sampled = np.where(index < len(envelope), envelope[np.minimum(index, len(envelope) - 1)], 0.0)
    return float(sampled.mean())


def summarize(pictures: list[PictureCount], confidence: float, unreadable: tuple[str, ...] = ()) -> CountReport:
    """The counting figures of scored photos at one confidence threshold.

    Args:
        pictures: per-photo detections (:func:`evaluate_counts` collects them).
        confidence: detections at or above it are counted.
        unreadable: photos that could not be decoded (reported, not scored).

    Returns:
        The report. With no true box at all, recall is 0 and ``count_error`` None; with no
        detection, precision is 0 (and 1.0 would be claimed by nobody).
    """
    true = sum(p.true for p in pictures)
    detected = sum(p.detected(confidence) for p in pictures)
    tp = sum(p.found(confidence) for p in pictures)
    errors = [e for p in pictures if (e := count_error(p.detected(confidence), p.true)) is not None]
    empty = [p for p in pictures if p.true == 0]
    best_conf, best_f1 = _best_f1(pictures)
    return CountReport(
        pictures=len(pictures), true_boxes=true, detected_boxes=detected, confidence=round(confidence, 4),
        precision=round(tp / detected, 4) if detected else 0.0, recall=round(tp / true, 4) if true else 0.0,
        mAP50=round(_ap50(pictures), 4),
        count_error=round(float(np.mean(errors)), 4) if errors else None,
        count_within_10pct=round(sum(_within(p.detected(confidence), p.true) for p in pictures) / len(pictures), 4)
        if pictures else 0.0,
        empty_pictures=len(empty), false_boxes_on_empty=sum(p.detected(confidence) for p in empty),
        truncated_pictures=sum(p.truncated for p in pictures), tiled_pictures=sum(p.tiled for p in pictures),
        best_f1_confidence=round(best_conf, 4), best_f1=round(best_f1, 4), unreadable=unreadable,
    )


def recommend(pictures: list[PictureCount]) -> dict[str, Any]:
    """A model directory's counting settings from scored photos (what ``inference.json`` holds).

    Returns:
        ``{"confidence": the best-F1 threshold, "max_det": at least 300 and twice the most true
        boxes of a photo, "object_px": the small end of the product sizes the model was shown
        to count (what :func:`detector.tiling.detect` brings smaller products up to by tiling;
        absent when no photo qualifies), "chosen_on": {"pictures", "true_boxes", "f1"}}``.

    ``object_px`` is the smallest per-photo median product size (network-input pixels) among
    the photos in which the model found at least half of the products at the chosen
    confidence: products that small were shown to be counted, and only pictures of smaller
    ones are tiled. It is not the typical size: from a validation set of close-ups that would
    make every large picture of an ordinary shelf tile, and tiles smaller than its products
    cut them into parts that are counted as products.
    """
    conf, f1 = _best_f1(pictures)
    threshold = max(conf, CURVE_CONFIDENCE)
    most = max((p.true for p in pictures), default=0)
    settings: dict[str, Any] = {"confidence": round(threshold, 4), "max_det": max(300, 2 * most)}
    sizes = [p.object_px for p in pictures if p.object_px is not None and p.true and 2 * p.found(threshold) >= p.true]
    if sizes:
        settings["object_px"] = round(float(min(sizes)), 1)
    settings["chosen_on"] = {"pictures": len(pictures), "true_boxes": sum(p.true for p in pictures),
                             "f1": round(f1, 4)}
    return settings


def _coco_pictures(path: Path) -> list[tuple[Path, npt.NDArray[np.float32]]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        images = {int(i["id"]): path.parent / str(i["file_name"]) for i in data["images"]}
        boxes: dict[int, list[list[float]]] = {key: [] for key in images}
        for ann in data.get("annotations", []):
            if ann.get("iscrowd"):
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            if w > 0 and h > 0:
                boxes.setdefault(int(ann["image_id"]), []).append([x, y, x + w, y + h])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise DatasetError(f"{path} is not a COCO detection JSON: {error}", reason="invalid_coco") from error
    unknown = sorted(set(boxes) - set(images))
    if unknown:
        raise DatasetError(f"{path}: annotations name image ids that are not in 'images': {unknown[:5]}",
                           reason="invalid_coco")
    return [(images[key], np.array(boxes[key], np.float32).reshape(-1, 4)) for key in sorted(images)]


def _fixed_boxes(boxes: npt.NDArray[np.float32], _width: int, _height: int) -> npt.NDArray[np.float32]:
    return boxes


def _label_boxes(label: Path, width: int, height: int) -> npt.NDArray[np.float32]:
    return labels_xyxy(label, width, height)[0]


@contextmanager
def labelled_pictures(data: str | Path, split: str = "test") -> Iterator[list[tuple[Path, Callable[[int, int],
                                                                                            npt.NDArray[np.float32]]]]]:
    """The photos of a labelled set and, per photo, its true boxes given the decoded size.

    Args:
        data: a YOLO ``data.yaml`` (``split`` chosen from it) or a COCO ``.json`` (all its images).
        split: ``train``, ``val`` or ``test`` (YOLO only).

    Yields:
        ``[(picture path, boxes(width, height) -> (M, 4) float32 xyxy pixels)]``, sorted by path.

    Raises:
        DatasetError: the split is missing or empty (``missing_split``), the JSON is not COCO
            (``invalid_coco``), or the data set cannot be prepared.
    """
    path = Path(data)
    if path.suffix.lower() == ".json":
        coco = _coco_pictures(path)
        if not coco:
            raise DatasetError(f"{path} lists no images", reason="missing_split")
        yield [(picture, partial(_fixed_boxes, boxes)) for picture, boxes in coco]
        return
    with tempfile.TemporaryDirectory(prefix="shelftally-count-") as work:
        report = prepare_dataset(path, Path(work) / "data", required=())  # a test-only set is enough
        require_split(report, split)
        yield [(image, partial(_label_boxes, label)) for image, label in split_pictures(Path(work) / "data", split)]


def evaluate_counts(
    backend: DetectorBackend,
    data: str | Path,
    *,
    split: str = "test",
    confidence: float,
    tiling: Tiling = "auto",
    counting_backend: DetectorBackend | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[CountReport, list[PictureCount]]:
    """Score a detector backend as a counter on a labelled set (see the module docstring).

    Args:
        backend: a loaded backend with ``conf`` at most :data:`CURVE_CONFIDENCE`-ish (it bounds
            the curve: detections below the backend's own threshold are never seen).
        data: a YOLO ``data.yaml`` or a COCO JSON.
        split: the YOLO split.
        confidence: the counting threshold.
        tiling: ``"auto"`` (large photos tiled, as a scan does), ``"always"`` or ``"never"``.
        counting_backend: the same model loaded at ``confidence``; photos that are tiled are
            detected with it (see the module docstring). None: ``backend`` for everything.
        progress: called with ``(done, total)`` after each photo.

    Returns:
        The report at ``confidence`` and the per-photo detections (for other thresholds).

    Raises:
        DatasetError: see :func:`labelled_pictures`; no photo can be decoded (``image_unreadable``;
            single undecodable photos are listed in the report's ``unreadable`` and skipped).
    """
    from detector.tiling import detect, detect_tiled

    scored: list[PictureCount] = []
    unreadable: list[str] = []
    with labelled_pictures(data, split) as pictures:
        for index, (picture, truth_of) in enumerate(pictures):
            try:
                image = read_rgb(picture)
            except DatasetError:
                unreadable.append(str(picture))  # reported, never scored as a photo with no boxes
                continue
            truth = truth_of(image.shape[1], image.shape[0])
            large = max(image.shape[:2]) > 3 * backend.preprocess.input_size  # detect()'s default threshold
            tiled = tiling == "always" or (tiling == "auto" and large)
            at_threshold = counting_backend if counting_backend is not None and tiled else backend
            if tiling == "always":
                found = detect_tiled(at_threshold, image)
            elif tiling == "never":
                found = backend.predict([image])[0]
            else:
                found = detect(at_threshold, image)
            order = np.argsort(-found.confidence, kind="stable")
            conf = found.confidence[order].astype(np.float32)
            sides = np.sqrt(np.clip((truth[:, 2] - truth[:, 0]) * (truth[:, 3] - truth[:, 1]), 0, None))
            scale = backend.preprocess.input_size / max(image.shape[:2])
            scored.append(PictureCount(str(picture), len(truth), conf, match_greedy(found.xyxy[order], conf, truth),
                                       found.truncated, float(np.median(sides)) * scale if len(truth) else None,
                                       tiled and at_threshold is not backend))
            if progress is not None:
                progress(index + 1, len(pictures))
    if not scored:
        raise DatasetError(f"{data}: none of the {len(unreadable)} pictures could be decoded",
                           reason="image_unreadable")
    return summarize(scored, confidence, tuple(unreadable)), scored


def _write_json(path: Path, data: dict[str, Any]) -> None:
    from detector.errors import ModelLoadError

    try:
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    except OSError as error:
        raise ModelLoadError(f"cannot write {path}: {error}", reason="model_dir_not_writable") from error


def _check_writable(folder: Path) -> None:
    from detector.errors import ModelLoadError

    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as error:
        raise ModelLoadError(f"cannot write into {folder}: {error}", reason="model_dir_not_writable") from error


def evaluate_model_dir(
    model_dir: str | Path,
    data: str | Path,
    *,
    split: str = "test",
    confidence: float | None = None,
    backend: str = "onnx",
    threads: int | None = None,
    tiling: Tiling = "auto",
    recommend_into: bool = False,
    record_as: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """``shelftally evaluate detector``: a model directory's exported model scored as a counter.

    Args:
        model_dir: the detector model directory (``model.onnx`` or ``openvino/``; no ``model.pt`` needed).
        data: a YOLO ``data.yaml`` or a COCO JSON.
        split: the YOLO split.
        confidence: the counting threshold; None: the directory's (``inference.json``), else 0.25.
        backend: ``onnx`` or ``openvino`` (any name :func:`detector.backends.load` takes).
        threads: intra-op threads.
        tiling: see :func:`evaluate_counts`.
        recommend_into: also write :func:`recommend`'s settings to the directory's
            ``inference.json`` (do it on a validation split, never on the test split you report).
        record_as: also store the result in the directory's ``metrics.json`` under
            ``counting[record_as]``.
        progress: called with ``(done, total)`` after each photo.

    Returns:
        :meth:`CountReport.to_dict` plus ``"model"`` (its version), ``"data"``, ``"split"``,
        ``"backend"``, ``"tiling"``, and ``"recommended"`` when ``recommend_into``.

    Raises:
        ModelLoadError, MissingDependencyError, ConfigurationError: from loading the backend;
            ``model_dir_not_writable`` when ``recommend_into`` or ``record_as`` cannot write
            (checked before the evaluation).
        DatasetError: see :func:`evaluate_counts`; ``no_true_matches`` when ``recommend_into``
            and the split has no true box or no detection matches one (nothing is written).
    """
    from detector.backends import load
    from detector.model_dir import INFERENCE, METRICS, read_model_dir

    directory = read_model_dir(model_dir)
    if recommend_into or record_as is not None:
        _check_writable(directory.path)  # before the evaluation, not after it
    threshold = directory.confidence if confidence is None else confidence
    loaded = load(directory, backend=backend, threads=threads, conf=CURVE_CONFIDENCE,
                  max_det=max(directory.max_det or 300, 300))
    counting = load(directory, backend=backend, threads=threads, conf=threshold, warmup=False)
    report, pictures = evaluate_counts(loaded, data, split=split, confidence=threshold, tiling=tiling,
                                       counting_backend=counting, progress=progress)
    result: dict[str, Any] = {"model": loaded.version, "data": str(data), "split": split, "backend": backend,
                              "tiling": tiling, **report.to_dict()}
    if recommend_into:
        settings = recommend(pictures) | {"data": str(data), "split": split}
        if not report.true_boxes or settings["chosen_on"]["f1"] <= 0:
            raise DatasetError(
                f"{data} (split {split}): nothing to choose a threshold from ({report.true_boxes} true boxes, best F1 "
                f"{settings['chosen_on']['f1']:.3f}); {directory.path / INFERENCE} is left as it was",
                reason="no_true_matches",
            )
        _write_json(directory.path / INFERENCE, settings)
        result["recommended"] = settings
    if record_as is not None:
        metrics = dict(directory.metrics)
        metrics.setdefault("counting", {})[record_as] = {k: v for k, v in result.items() if k != "unreadable"}
        _write_json(directory.path / METRICS, metrics)
    return result
