"""Fusing what a package looks like with what it says, and measuring it on Grocery Store val.

The visual classifier gives a probability per trained SKU; the text matcher
(:mod:`classifier.text`) gives a text score in [0, 1] per SKU of the SKU master, trained or not.
They are fused log-linearly, one SKU at a time::

    fused(k) = log(p_visual(k) + EPS) + weight * text(k)

where a SKU the classifier was never trained on gets the uniform prior ``p_visual = 1 / K`` (K
SKUs in the master): the classifier says nothing of it, so only its text can lift it above the
trained SKUs. ``weight`` is calibrated on labelled val pictures (:func:`calibrate_weight`: the weight of
a grid that names the most pictures right, the smallest on a tie); ``weight = 0`` is the visual
classifier alone, and is in the grid, so on the pictures it is calibrated on fusion never names
fewer right than vision alone. A barcode whose GTIN is in the SKU master names its SKU outright,
whatever the rest says. The report's fused top-1 is 2-fold cross-validated (the weight chosen on
one half of val, scored on the other), so it is not scored on the pictures that chose it.

Open-set rejection is kept by the caller: a crop with no text match and a low visual confidence
is still unknown (the fused SKU is only used where the text matched something).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from classifier.text import SkuText, TextMatcher

__all__ = [
    "DEFAULT_WEIGHT",
    "EPS",
    "TEXT_FUSION",
    "WEIGHTS",
    "NamedCrop",
    "TextFusion",
    "ZeroShotReport",
    "calibrate_weight",
    "evaluate_zero_shot",
    "fuse",
    "grocery_master",
    "read_weight",
]

logger = logging.getLogger(__name__)

EPS = 1e-4
"""Added to visual probabilities before the log, so an untrained SKU (p = 0) is log(EPS), not -inf."""

WEIGHTS: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 12.0, 20.0, 40.0)
"""The grid :func:`calibrate_weight` searches (0 = vision alone)."""


def fuse(
    visual: npt.NDArray[np.float64], text: npt.NDArray[np.float64], weight: float,
    untrained: npt.NDArray[np.bool_] | None = None,
) -> npt.NDArray[np.float64]:
    """Fused scores (see the module docstring).

    Args:
        visual: (N, K) visual probabilities over the K master SKUs.
        text: (N, K) text scores in [0, 1].
        weight: the text weight (>= 0).
        untrained: (K,) True for SKUs the classifier was not trained on (their visual
            probability is replaced by the uniform prior 1 / K); None: every SKU is trained.

    Returns:
        (N, K) float64; the argmax of a row is its fused SKU.
    """
    visual = np.asarray(visual, np.float64)
    if untrained is not None and untrained.any():
        visual = np.where(untrained[None, :], 1.0 / visual.shape[1], visual)
    fused: npt.NDArray[np.float64] = np.log(visual + EPS) + weight * np.asarray(text)
    return fused


def calibrate_weight(
    visual: npt.NDArray[np.float64], text: npt.NDArray[np.float64], truth: npt.NDArray[np.int64],
    weights: Sequence[float] = WEIGHTS, untrained: npt.NDArray[np.bool_] | None = None,
) -> float:
    """The text weight of ``weights`` that names the most rows right (the smallest on a tie).

    Args:
        visual, text: (N, K) as :func:`fuse` takes them.
        truth: (N,) the index of each row's true SKU.
        weights: the grid, which should hold 0 (vision alone).
        untrained: see :func:`fuse`.
    """
    best_weight, best_right = 0.0, -1
    for weight in sorted(weights):
        right = int((fuse(visual, text, weight, untrained).argmax(axis=1) == truth).sum())
        if right > best_right:
            best_weight, best_right = float(weight), right
    return best_weight


def grocery_master(root: str | Path) -> tuple[list[SkuText], set[str]]:
    """The Grocery Store classes as a SKU master (name and description), and the packaged ones.

    Args:
        root: the dataset folder (see :func:`classifier.dataset.read_grocery_store`).

    Returns:
        ``(skus, packaged)``: one :class:`~classifier.text.SkuText` per class, its description read
        from the class's description file (None when missing); the codes of classes under
        ``Packages/`` (juice, milk, yoghurt, ...: the ones with printed text).
    """
    from classifier.dataset import read_grocery_classes

    skus, packaged = [], set()
    for grocery in read_grocery_classes(root):
        text = grocery.description.read_text(encoding="utf-8", errors="replace") if grocery.description.is_file() \
            else None
        skus.append(SkuText(grocery.name, grocery.name.replace("-", " "), text))
        if "Packages" in grocery.iconic_image.parts:
            packaged.add(grocery.name)
    return skus, packaged


@dataclass(frozen=True)
class ZeroShotReport:
    """Visual, text and fused SKU naming on one labelled split (the docs' point 3 table).

    Attributes:
        split: the split scored.
        pictures: how many pictures.
        visual_top1: the visual classifier alone, all classes.
        fused_top1: visual + text, all classes, 2-fold cross-validated weight.
        fused_top1_in_sample: visual + text with the weight chosen on the whole split (what ships).
        weight: the text weight chosen on the whole split.
        text_only_top1_packaged: text alone (no training picture at all) on the packaged classes.
        packaged_pictures: how many pictures of packaged classes.
        held_out_classes: SKUs the model was not trained on (its ``metrics.json``), if any.
        held_out_pictures: their pictures.
        held_out_text_top1: of those, named right by fusion (only text can help them); None when
            the model has no held-out classes.
        pictures_with_text: pictures on which the matcher matched something.
        seconds_per_picture_text: text reading and matching time per picture.
        seconds_per_picture_visual: visual classification time per picture.
    """

    split: str
    pictures: int
    visual_top1: float
    fused_top1: float
    fused_top1_in_sample: float
    weight: float
    text_only_top1_packaged: float | None
    packaged_pictures: int
    held_out_classes: list[str] = field(default_factory=list)
    held_out_pictures: int = 0
    held_out_text_top1: float | None = None
    pictures_with_text: int = 0
    seconds_per_picture_text: float = 0.0
    seconds_per_picture_visual: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, rounded to 4 decimals."""
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def _two_fold(visual: npt.NDArray[np.float64], text: npt.NDArray[np.float64], truth: npt.NDArray[np.int64],
              untrained: npt.NDArray[np.bool_], seed: int = 0) -> npt.NDArray[np.int64]:
    """Each row's fused prediction with the weight calibrated on the other half of the rows."""
    order = np.random.default_rng(seed).permutation(len(truth))
    halves = (order[: len(order) // 2], order[len(order) // 2 :])
    predicted = np.zeros(len(truth), np.int64)
    for scored, chosen in ((halves[0], halves[1]), (halves[1], halves[0])):
        weight = calibrate_weight(visual[chosen], text[chosen], truth[chosen], untrained=untrained) \
            if len(chosen) else 0.0
        predicted[scored] = fuse(visual[scored], text[scored], weight, untrained).argmax(axis=1)
    return predicted


def evaluate_zero_shot(
    data: str | Path,
    model_dir: str | Path,
    *,
    split: str = "val",
    backend: str = "onnx",
    threads: int | None = None,
    limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ZeroShotReport:
    """Score vision alone, text alone and their fusion on a Grocery Store split.

    Args:
        data: the Grocery Store dataset folder.
        model_dir: a classifier model directory; its labels must be class names of ``data``.
        split: the split to score.
        backend: the classifier's runtime.
        threads: threads for the classifier and the text reader.
        limit: score only the first ``limit`` pictures of each class (name order), for a quick look.
        progress: called with (done, total) after each picture.

    Raises:
        DatasetError: the dataset or split is missing or malformed.
        ModelLoadError: the model directory cannot be loaded.
        MissingDependencyError: the ``text`` extra is not installed.
    """
    from classifier.backends import load, softmax
    from classifier.dataset import load_image, read_grocery_store
    from classifier.model_dir import read_model_dir
    from classifier.ocr import text_reader

    skus, packaged = grocery_master(data)
    codes = [s.sku_code for s in skus]
    column = {code: k for k, code in enumerate(codes)}
    dataset = read_grocery_store(data, split)
    items = list(dataset.items)
    if limit is not None:
        taken: dict[int, int] = {}
        chosen = []
        for item in sorted(items, key=lambda i: str(i.path)):
            if taken.get(item.class_index, 0) < limit:
                taken[item.class_index] = taken.get(item.class_index, 0) + 1
                chosen.append(item)
        items = chosen
    directory = read_model_dir(model_dir)
    openset = directory.metrics.get("openset") or {}
    held_out = sorted(openset.get("held_out_classes") or []) if isinstance(openset, dict) else []
    matcher = TextMatcher(skus)
    reader = text_reader(threads)
    classifier = load(directory, backend=backend, threads=threads)
    model_columns = [column.get(label) for label in classifier.labels]
    n, k = len(items), len(codes)
    visual = np.zeros((n, k), np.float64)
    text = np.zeros((n, k), np.float64)
    truth = np.zeros(n, np.int64)
    barcode = np.full(n, -1, np.int64)
    seconds_text = seconds_visual = 0.0
    with classifier:
        for row, item in enumerate(items):
            picture = load_image(item.path)
            started = time.perf_counter()
            logits, _ = classifier.outputs([picture])
            probabilities = softmax(logits)[0]
            seconds_visual += time.perf_counter() - started
            for j, target in enumerate(model_columns):
                if target is not None:
                    visual[row, target] = probabilities[j]
            started = time.perf_counter()
            read = reader.read(picture)
            text[row] = matcher.scores(read.texts)
            by_code = matcher.sku_of_barcodes(read.gtins)
            if by_code is not None:
                barcode[row] = column[by_code[0]]
            seconds_text += time.perf_counter() - started
            truth[row] = column[dataset.class_names[item.class_index]]
            if progress is not None:
                progress(row + 1, n)
    untrained = np.ones(k, bool)
    untrained[[c for c in model_columns if c is not None]] = False
    weight = calibrate_weight(visual, text, truth, untrained=untrained)
    cross = _two_fold(visual, text, truth, untrained)
    in_sample = fuse(visual, text, weight, untrained).argmax(axis=1)
    for predictions in (cross, in_sample):
        predictions[barcode >= 0] = barcode[barcode >= 0]  # a known GTIN names its SKU outright
    packaged_rows = np.array([codes[t] in packaged for t in truth], bool)
    held_rows = np.array([codes[t] in held_out for t in truth], bool)
    text_best = np.where(text.max(axis=1) > 0, text.argmax(axis=1), -1)

    def share(hit: npt.NDArray[np.bool_], rows: npt.NDArray[np.bool_] | None = None) -> float | None:
        chosen = hit if rows is None else hit[rows]
        return float(chosen.mean()) if chosen.size else None

    return ZeroShotReport(
        split=split,
        pictures=n,
        visual_top1=share(visual.argmax(axis=1) == truth) or 0.0,
        fused_top1=share(cross == truth) or 0.0,
        fused_top1_in_sample=share(in_sample == truth) or 0.0,
        weight=weight,
        text_only_top1_packaged=share(text_best == truth, packaged_rows),
        packaged_pictures=int(packaged_rows.sum()),
        held_out_classes=held_out,
        held_out_pictures=int(held_rows.sum()),
        held_out_text_top1=share(cross == truth, held_rows) if held_out else None,
        pictures_with_text=int((text.max(axis=1) > 0).sum()),
        seconds_per_picture_text=seconds_text / max(n, 1),
        seconds_per_picture_visual=seconds_visual / max(n, 1),
    )


DEFAULT_WEIGHT = 12.0
"""The text weight used when a classifier directory has no ``text_fusion.json``: the weight
``shelftally evaluate zero-shot`` chose for the shipped Grocery classifier on Grocery Store val
(296 pictures; see docs/models.md)."""

TEXT_FUSION = "text_fusion.json"
"""A classifier directory's fusion record (written by ``shelftally evaluate zero-shot --record``)."""


def read_weight(model_dir: str | Path) -> float:
    """The text weight recorded in a classifier directory's ``text_fusion.json``, else :data:`DEFAULT_WEIGHT`.

    Raises:
        ValueError: the record is not JSON with a ``weight`` >= 0.
    """
    import json

    path = Path(model_dir) / TEXT_FUSION
    if not path.is_file():
        return DEFAULT_WEIGHT
    record = json.loads(path.read_text(encoding="utf-8"))
    weight = float(record["weight"])
    if not weight >= 0:
        raise ValueError(f"{path}: weight expected >= 0, received {weight}")
    return weight


@dataclass(frozen=True)
class NamedCrop:
    """How one crop was named once its text and barcodes were read.

    Attributes:
        sku_code: the SKU named, None for unknown.
        confidence: in [0, 1]: the visual confidence (``visual``), the fused probability
            (``text``, ``visual+text``) or 1 (``barcode``).
        modality: ``"visual"`` (text not read, or nothing matched), ``"visual+text"`` (the text
            agreed with the visual SKU), ``"text"`` (the text changed or supplied the SKU), or
            ``"barcode"`` (a GTIN of the SKU master).
        visual_sku: what vision alone named (None: unknown), kept where another modality decided.
        text: what was read (lines joined, at most 120 characters), None when not read.
        gtin: the GTIN that named it, if any.
    """

    sku_code: str | None
    confidence: float
    modality: str = "visual"
    visual_sku: str | None = None
    text: str | None = None
    gtin: str | None = None


class TextFusion:
    """Reads text and barcodes on the crops that need it and fuses them with the visual answer.

    Which crops are read (for speed: OCR costs far more than the classifier per crop): those the
    classifier called unknown or named below ``max_visual_confidence``, whose shorter side is at
    least ``min_crop_px`` (smaller text does not read), at most ``max_crops`` per picture (the
    least confident first).

    Args:
        matcher: the SKU master's text.
        reader: the text reader.
        weight: the text weight of :func:`fuse`.
        min_text_score: a text score below this is no evidence.
        max_visual_confidence, min_crop_px, max_crops: which crops are read (above).
    """

    def __init__(self, matcher: TextMatcher, reader: Any, *, weight: float = DEFAULT_WEIGHT,
                 min_text_score: float = 0.05, max_visual_confidence: float = 0.9, min_crop_px: int = 48,
                 max_crops: int = 64) -> None:
        self.matcher = matcher
        self.reader = reader
        self.weight = weight
        self.min_text_score = min_text_score
        self.max_visual_confidence = max_visual_confidence
        self.min_crop_px = min_crop_px
        self.max_crops = max_crops
        self._codes = [s.sku_code for s in matcher.skus]
        self._column = {code: k for k, code in enumerate(self._codes)}

    def chosen(self, crops: Sequence[npt.NDArray[np.uint8]], visual_sku: Sequence[str | None],
               visual_confidence: Sequence[float]) -> list[int]:
        """Indices of the crops to read, least visually confident first."""
        wanted = [
            i for i, crop in enumerate(crops)
            if (visual_sku[i] is None or visual_confidence[i] < self.max_visual_confidence)
            and min(crop.shape[:2]) >= self.min_crop_px
        ]
        return sorted(wanted, key=lambda i: visual_confidence[i])[: self.max_crops]

    def name(
        self,
        crops: Sequence[npt.NDArray[np.uint8]],
        labels: Sequence[str],
        probabilities: npt.NDArray[np.float32],
        visual_sku: Sequence[str | None],
        visual_confidence: Sequence[float],
    ) -> list[NamedCrop]:
        """Name each crop from its look, and for the chosen ones also from its text and barcodes.

        Args:
            crops: (h, w, 3) uint8 RGB each.
            labels: the classifier's SKU codes (columns of ``probabilities``).
            probabilities: (N, C) the classifier's softmax.
            visual_sku, visual_confidence: what the classifier (with open-set rejection) named.

        Returns:
            One :class:`NamedCrop` per crop. An unreadable crop (nothing matched) keeps its
            visual answer, unknown included.
        """
        named = [NamedCrop(visual_sku[i], float(visual_confidence[i])) for i in range(len(crops))]
        chosen = self.chosen(crops, visual_sku, visual_confidence)
        if not chosen:
            return named
        # the classifier's labels as columns of the SKU master (the same for every crop)
        pairs = [(j, self._column[label]) for j, label in enumerate(labels) if label in self._column]
        model_columns, master_columns = [j for j, _ in pairs], [c for _, c in pairs]
        untrained = np.ones(len(self._codes), bool)
        untrained[master_columns] = False
        for i in chosen:
            read = self.reader.read(crops[i])
            text = " ".join(read.texts)[:120] or None
            by_code = self.matcher.sku_of_barcodes(read.gtins)
            if by_code is not None:
                named[i] = NamedCrop(by_code[0], 1.0, "barcode", visual_sku[i], text, by_code[1])
                continue
            scores = self.matcher.scores(read.texts)
            if scores.max(initial=0.0) < self.min_text_score:
                if text is not None:
                    named[i] = replace(named[i], text=text)
                continue
            visual = np.zeros(len(self._codes), np.float64)
            visual[master_columns] = probabilities[i, model_columns]
            fused = fuse(visual[None, :], scores[None, :], self.weight, untrained)[0]
            shifted = np.exp(fused - fused.max())
            best = int(fused.argmax())
            sku = self._codes[best]
            modality = "visual+text" if sku == visual_sku[i] else "text"
            named[i] = NamedCrop(sku, float(shifted[best] / shifted.sum()), modality, visual_sku[i], text)
        return named
