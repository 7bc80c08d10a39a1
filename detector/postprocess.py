"""Decode the raw YOLOv8/YOLO11 detection head into :class:`~detector.types.Detections`.

The head's inference output (ultralytics ``Detect._inference``, also the output of the exported
ONNX/OpenVINO graphs) is (B, 4 + C, A): for each of A anchors, the box centre, width and height
(cx, cy, w, h) in network-input pixels, then C class scores already passed through a sigmoid.

Decoding follows ultralytics' ``non_max_suppression`` (single label per anchor: the best class;
keep scores ``> conf``) with three differences on purpose:

- there is no time limit and no cap on the number of candidates: every candidate above the
  confidence threshold goes through NMS, however many there are;
- boxes are mapped to source pixels, clipped to the picture and degenerate ones dropped *before*
  NMS, so the ``max_det`` kept are all real boxes;
- NMS is OpenCV's ``cv2.dnn.NMSBoxesBatched`` (greedy, class-aware, IoU ``>`` threshold suppresses;
  the same indices as ``torchvision.ops.batched_nms``), so ONNX Runtime and OpenVINO deployments
  need neither torch nor torchvision and every backend decodes identically.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import cv2
import numpy as np
import numpy.typing as npt

from detector.preprocess import Letterbox
from detector.types import Detections

__all__ = ["DEFAULT_MAX_DET", "check_thresholds", "decode", "nms"]

DEFAULT_MAX_DET = 1000


def check_thresholds(conf: float, iou: float, max_det: int) -> None:
    """Validate decoding settings.

    Raises:
        ValueError: ``conf`` or ``iou`` outside [0, 1], or ``max_det < 1``.
    """
    if not 0.0 <= conf <= 1.0:
        raise ValueError(f"conf: expected a value in [0, 1], received {conf}")
    if not 0.0 <= iou <= 1.0:
        raise ValueError(f"iou: expected a value in [0, 1], received {iou}")
    if max_det < 1:
        raise ValueError(f"max_det: expected a positive integer, received {max_det}")


def nms(
    xyxy: npt.NDArray[np.float32],
    confidence: npt.NDArray[np.float32],
    class_id: npt.NDArray[np.int64],
    iou: float,
    *,
    class_agnostic: bool = False,
) -> npt.NDArray[np.int64]:
    """Greedy non-maximum suppression, per class unless ``class_agnostic``.

    A box is suppressed when its IoU with a more confident kept box of the same class is
    strictly greater than ``iou`` (the rule of ``torchvision.ops.nms`` and OpenCV's
    ``NMSBoxes``). Runs in OpenCV's C++ (about O(N x kept)); never stops early.

    Args:
        xyxy: (N, 4) float32 boxes, x1 <= x2, y1 <= y2, any pixel frame.
        confidence: (N,) float32 in [0, 1].
        class_id: (N,) int64.
        iou: IoU threshold in [0, 1].
        class_agnostic: suppress across classes too.

    Returns:
        (K,) int64 indices of the kept boxes, most confident first (ties keep input order).
    """
    n = int(xyxy.shape[0])
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    boxes = np.asarray(xyxy, dtype=np.float64).reshape(n, 4)
    xywh = np.empty_like(boxes)
    xywh[:, :2] = boxes[:, :2]
    xywh[:, 2:] = boxes[:, 2:] - boxes[:, :2]
    scores = np.asarray(confidence, dtype=np.float64).reshape(n)
    classes = np.zeros(n, np.int32) if class_agnostic else np.asarray(class_id).astype(np.int32).reshape(n)
    # OpenCV's Python binding takes arrays where its signature says sequences.
    kept = cv2.dnn.NMSBoxesBatched(
        cast("Sequence[Sequence[float]]", xywh),
        cast("Sequence[float]", scores),
        cast("Sequence[int]", classes),
        -1.0,  # score threshold: candidates are already filtered by confidence
        float(iou),
    )
    keep = np.asarray(kept, dtype=np.int64).reshape(-1)
    order = np.argsort(-scores[keep], kind="stable")
    return keep[order]


def _decode_one(
    pred: npt.NDArray[np.float32],
    box: Letterbox,
    *,
    conf: float,
    iou: float,
    max_det: int,
    class_agnostic: bool,
) -> Detections:
    scores = pred[4:]
    confidence = scores.max(axis=0)
    candidates = np.flatnonzero(confidence > conf)
    if candidates.size == 0:
        return Detections.empty()
    confidence = confidence[candidates].astype(np.float32)
    if scores.shape[0] == 1:
        class_id = np.zeros(candidates.size, dtype=np.int64)
    else:
        class_id = scores[:, candidates].argmax(axis=0).astype(np.int64)
    cx, cy, w, h = (pred[k, candidates].astype(np.float32) for k in range(4))
    xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    xyxy = box.to_source(xyxy)
    width, height = box.source_wh
    np.clip(xyxy[:, 0::2], 0.0, float(width), out=xyxy[:, 0::2])
    np.clip(xyxy[:, 1::2], 0.0, float(height), out=xyxy[:, 1::2])
    real = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])  # also False for NaN
    xyxy, confidence, class_id = xyxy[real], confidence[real], class_id[real]
    keep = nms(xyxy, confidence, class_id, iou, class_agnostic=class_agnostic)
    truncated = keep.size > max_det
    keep = keep[:max_det]
    return Detections(xyxy[keep], np.clip(confidence[keep], 0.0, 1.0), class_id[keep], truncated)


def decode(
    raw: npt.NDArray[np.float32],
    letterboxes: Sequence[Letterbox],
    *,
    conf: float = 0.25,
    iou: float = 0.45,
    max_det: int = DEFAULT_MAX_DET,
    class_agnostic: bool = False,
) -> list[Detections]:
    """Decode a batch of raw head outputs into detections in source-picture pixels.

    Args:
        raw: (B, 4 + C, A) float32: cx, cy, w, h in network-input pixels, then C sigmoid class
            scores, for A anchors (ultralytics ``Detect`` inference output).
        letterboxes: one :class:`~detector.preprocess.Letterbox` per picture; ``len(letterboxes)
            <= B`` (rows beyond are batch padding and are ignored).
        conf: keep candidates whose best class score is ``> conf``.
        iou: NMS IoU threshold (boxes of the same class overlapping more are suppressed).
        max_det: at most this many detections per picture, the most confident; when more
            survive NMS the result has ``truncated=True``.
        class_agnostic: suppress overlapping boxes across classes too.

    Returns:
        One :class:`~detector.types.Detections` per letterbox, xyxy (N, 4) float32 in pixels of
        the source picture, clipped to [0, W] x [0, H], most confident first.

    Raises:
        ValueError: ``raw`` is not (B, 4 + C, A) with C >= 1 and B >= len(letterboxes), or a
            threshold is out of range (see :func:`check_thresholds`).
    """
    check_thresholds(conf, iou, max_det)
    raw = np.asarray(raw)
    if raw.ndim != 3 or raw.shape[1] < 5 or raw.shape[0] < len(letterboxes):
        raise ValueError(
            f"raw: expected shape (B >= {len(letterboxes)}, 4 + C >= 5, A), received {raw.shape}"
        )
    return [
        _decode_one(raw[i], box, conf=conf, iou=iou, max_det=max_det, class_agnostic=class_agnostic)
        for i, box in enumerate(letterboxes)
    ]
