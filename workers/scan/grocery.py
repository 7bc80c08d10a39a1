"""End to end on real photos: the Grocery Store val split through the detector and the classifier.

Each Grocery Store picture (Klasson, Zhang and Kjellström, WACV 2019) shows one product held up
in front of a shelf full of others, and is labelled with that product's SKU only.
:func:`evaluate_grocery` runs every val picture through the same stages as a scan (decode,
detect, crop, classify) and measures:

- **main-box accuracy**: the picture's *main detection* is its largest box with detector
  confidence >= ``main_confidence``; the fraction of pictures whose main box is named as the
  picture's label. A picture without any such box counts as wrong.
- **main box off the held product** (a proxy, the dataset has no boxes): the main box misses
  when it does not contain the picture centre or covers less than ``min_main_area`` of the
  picture (the held product is large and central in this dataset).
- **whole-picture accuracy**: the classifier on the uncropped picture, its own val setting: the
  ceiling the detector can at best keep.
- **background counts**: facings per SKU of every other confident box: the shelf count a
  warehouse would get from these pictures.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from classifier.dataset import read_grocery_store
from classifier.recognize import Recognizer
from detector.backends import DetectorBackend
from detector.tiling import detect
from workers.ingest import read_image
from workers.scan.pipeline import crop_boxes

__all__ = ["GroceryReport", "PictureResult", "evaluate_grocery"]


@dataclass(frozen=True)
class PictureResult:
    """One val picture: its label, its confident boxes, the main box's SKU (None: unknown or no box),
    whether the main box sits on the held product (proxy), the uncropped picture's SKU and the
    other boxes' SKUs."""

    path: str
    label: str
    boxes: int
    main_sku: str | None
    main_hit: bool
    main_centred: bool
    whole_picture_sku: str | None
    background: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class GroceryReport:
    """Result of :func:`evaluate_grocery` (fractions in [0, 1]).

    Attributes:
        pictures: val pictures evaluated.
        main_box_accuracy: main box named as the label.
        whole_picture_accuracy: uncropped picture named as the label.
        no_main_box: pictures without a confident box.
        main_box_off_product: main box off the held product (proxy, see the module docstring).
        mean_boxes: confident boxes per picture.
        background_counts: facings per SKU over all pictures, main boxes excluded ("unknown" for
            boxes the classifier rejects).
        per_picture: one entry per picture.
    """

    pictures: int
    main_box_accuracy: float
    whole_picture_accuracy: float
    no_main_box: float
    main_box_off_product: float
    mean_boxes: float
    background_counts: dict[str, int]
    per_picture: list[PictureResult]

    def to_dict(self, *, pictures: bool = False) -> dict[str, Any]:
        """JSON-ready; the per-picture list only with ``pictures=True``."""
        data = asdict(self)
        if not pictures:
            data.pop("per_picture")
        return data


def evaluate_grocery(
    root: str | Path,
    detector: DetectorBackend,
    recognizer: Recognizer,
    *,
    split: str = "val",
    main_confidence: float = 0.25,
    min_main_area: float = 0.05,
    limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> GroceryReport:
    """Run the Grocery Store split through detection and classification (see the module docstring).

    Args:
        root: the Grocery Store dataset folder (or the folder above its ``dataset/``).
        detector: a loaded detector backend.
        recognizer: a loaded classifier (open set and gallery included).
        split: ``"val"`` (the test split is held out of this project).
        main_confidence: detector confidence a main box needs.
        min_main_area: smallest main box, as a fraction of the picture, not to count as off the product.
        limit: only the first N pictures (for a quick look).
        progress: called with (pictures done, total).

    Returns:
        The report.

    Raises:
        DatasetError: the dataset cannot be read.
    """
    data = read_grocery_store(root, split)
    items = data.items[:limit] if limit is not None else data.items
    results: list[PictureResult] = []
    for done, item in enumerate(items, start=1):
        pixels = read_image(item.path).pixels
        height, width = pixels.shape[:2]
        label = data.class_names[item.class_index]
        detections = detect(detector, pixels)  # as a scan detects (tiling large pictures)
        detections = detections[detections.confidence >= main_confidence]
        crops, kept = crop_boxes(pixels, detections)
        named = recognizer.classify([*crops, pixels])
        codes = list(named.sku_code)
        whole = codes.pop()
        main_sku: str | None = None
        centred = False
        background: Counter[str] = Counter()
        if len(kept):
            areas = detections.area[kept]
            main = int(np.argmax(areas))
            main_sku = codes[main]
            x1, y1, x2, y2 = detections.xyxy[kept[main]].tolist()
            centred = (x1 <= width / 2 <= x2 and y1 <= height / 2 <= y2
                       and float(areas[main]) >= min_main_area * width * height)
            background.update(code or "unknown" for i, code in enumerate(codes) if i != main)
        results.append(PictureResult(str(item.path), label, len(kept), main_sku, main_sku == label, centred, whole,
                                     dict(background)))
        if progress is not None:
            progress(done, len(items))
    n = max(1, len(results))
    totals: Counter[str] = Counter()
    for result in results:
        totals.update(result.background)
    return GroceryReport(
        pictures=len(results),
        main_box_accuracy=sum(r.main_hit for r in results) / n,
        whole_picture_accuracy=sum(r.whole_picture_sku == r.label for r in results) / n,
        no_main_box=sum(r.boxes == 0 for r in results) / n,
        main_box_off_product=sum(not r.main_centred for r in results) / n,
        mean_boxes=sum(r.boxes for r in results) / n,
        background_counts=dict(totals.most_common()),
        per_picture=results,
    )
