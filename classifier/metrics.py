"""Classification metrics on network outputs: numpy only (no torch), shared by training and evaluation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["UNKNOWN_PREDICTION", "classification_metrics", "open_set_metrics"]

UNKNOWN_PREDICTION = -1
"""Predicted class index of a picture rejected as unknown (as :data:`classifier.types.UNKNOWN_CLASS_ID`)."""


def _per_class_scores(
    truth: npt.NDArray[np.int64], predicted: npt.NDArray[np.int64], classes: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """From the confusion matrix of ``classes`` classes: the classes present in ``truth`` and
    each class's precision, recall and F1, all (classes,) float64 (0 where undefined)."""
    confusion = np.zeros((classes, classes), np.int64)
    np.add.at(confusion, (truth, predicted), 1)
    true_positive = np.diag(confusion).astype(np.float64)
    recall = true_positive / np.maximum(confusion.sum(axis=1), 1)
    precision = true_positive / np.maximum(confusion.sum(axis=0), 1)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    return np.flatnonzero(confusion.sum(axis=1)), precision, recall, f1


def classification_metrics(
    logits: npt.NDArray[np.float32], class_ids: npt.NDArray[np.int64], labels: Sequence[str]
) -> dict[str, Any]:
    """Top-1, top-5, macro precision / recall / F1 and per-class accuracy.

    Args:
        logits: (N, C) float32 network outputs.
        class_ids: (N,) int64 true classes.
        labels: the C SKU codes.

    Returns:
        ``{"top1", "top5", "macro_precision", "macro_recall", "macro_f1", "per_class_accuracy",
        "val_items"}``; macro averages run over the classes present in ``class_ids`` (precision
        of a class never predicted counts as 0); ``per_class_accuracy`` maps each SKU code with
        validation items to its recall.
    """
    n, c = logits.shape
    if n == 0:
        return {"top1": 0.0, "top5": 0.0, "macro_precision": 0.0, "macro_recall": 0.0, "macro_f1": 0.0,
                "per_class_accuracy": {}, "val_items": 0}
    predicted = logits.argmax(axis=1)
    top5 = np.argsort(-logits, axis=1)[:, : min(5, c)]
    present, precision, recall, f1 = _per_class_scores(class_ids, predicted, c)
    return {
        "top1": float((predicted == class_ids).mean()),
        "top5": float((top5 == class_ids[:, None]).any(axis=1).mean()),
        "macro_precision": float(precision[present].mean()),
        "macro_recall": float(recall[present].mean()),
        "macro_f1": float(f1[present].mean()),
        "per_class_accuracy": {labels[i]: float(recall[i]) for i in present.tolist()},
        "val_items": int(n),
    }


def open_set_metrics(
    predicted: npt.NDArray[np.int64],
    ranked: npt.NDArray[np.int64],
    truth: npt.NDArray[np.int64],
    known: npt.NDArray[np.bool_],
    class_names: Sequence[str],
) -> dict[str, Any]:
    """Accuracy figures of an open-set classifier, where a picture can be rejected as unknown.

    A picture is right (top-1) when its class is one the model knows and it is named as that
    class, or when its class is one the model does not know and it is rejected as unknown; a
    picture of a known class rejected as unknown is wrong. Top-5 also counts a picture of a known
    class whose class is among ``ranked`` (the head's best classes, before the open-set decision),
    so ``top1 <= top5``; for a class the model does not know top-5 equals top-1.

    Macro precision / recall / F1 treat all classes the model does not know as one class,
    "unknown" (predicted by a rejection), so the average runs over the known classes present in
    ``truth`` plus, when there are pictures of unknown classes, that one. Precision of a class
    never predicted counts as 0. With every class known and nothing rejected (``predicted`` the
    argmax of the logits, ``ranked`` their five best), top1, top5 and the macro figures equal
    :func:`classification_metrics`'.

    Args:
        predicted: (N,) int64 index into ``class_names`` of the class named, or
            :data:`UNKNOWN_PREDICTION` (-1) for a rejected picture.
        ranked: (N, R) int64, R >= 0, indices into ``class_names`` of the head's best classes,
            best first (-1 pads a row: never a hit).
        truth: (N,) int64 index into ``class_names`` of each picture's class.
        known: (M,) bool, True for the classes the model can name.
        class_names: the M class names (SKU codes).

    Returns:
        ``{"top1", "top5", "macro_precision", "macro_recall", "macro_f1", "unknown_rate",
        "known_class_items", "top1_known_classes", "unknown_rate_known_classes",
        "unknown_class_items", "unknown_class_rejection", "per_class_accuracy",
        "per_class_items", "items"}``: fractions in [0, 1] (0.0 when there is no picture to
        average over; ``unknown_class_rejection``, the share of unknown-class pictures rejected,
        is None without such pictures). ``unknown_rate`` is the share of all pictures rejected,
        ``unknown_rate_known_classes`` that of known-class pictures (false rejections).
        ``per_class_accuracy`` maps each class name with pictures to the share of its pictures
        that are right (for a class the model does not know: rejected), in ``class_names``
        order; ``per_class_items`` to its number of pictures.

    Raises:
        ValueError: shapes disagree, or an index is outside ``class_names``.
    """
    names = list(class_names)
    m = len(names)
    predicted = np.asarray(predicted, np.int64).reshape(-1)
    truth = np.asarray(truth, np.int64).reshape(-1)
    known = np.asarray(known, np.bool_).reshape(-1)
    n = truth.shape[0]
    ranked = np.asarray(ranked, np.int64)
    if ranked.size == 0 and ranked.ndim != 2:
        ranked = ranked.reshape(n, 0)
    if known.shape != (m,):
        raise ValueError(f"known: expected shape ({m},), received {known.shape}")
    if predicted.shape != (n,):
        raise ValueError(f"predicted: expected shape ({n},), received {predicted.shape}")
    if ranked.ndim != 2 or ranked.shape[0] != n:
        raise ValueError(f"ranked: expected shape ({n}, R), received {ranked.shape}")
    if n and (truth.min() < 0 or truth.max() >= m):
        raise ValueError(f"truth: expected indices in [0, {m}), received [{truth.min()}, {truth.max()}]")
    if n and (predicted.min() < UNKNOWN_PREDICTION or predicted.max() >= m):
        raise ValueError(
            f"predicted: expected indices in [{UNKNOWN_PREDICTION}, {m}), "
            f"received [{predicted.min()}, {predicted.max()}]"
        )
    if n == 0:
        return {"top1": 0.0, "top5": 0.0, "macro_precision": 0.0, "macro_recall": 0.0, "macro_f1": 0.0,
                "unknown_rate": 0.0, "known_class_items": 0, "top1_known_classes": 0.0,
                "unknown_rate_known_classes": 0.0, "unknown_class_items": 0, "unknown_class_rejection": None,
                "per_class_accuracy": {}, "per_class_items": {}, "items": 0}
    of_known = known[truth]
    rejected = predicted == UNKNOWN_PREDICTION
    correct = np.where(of_known, predicted == truth, rejected)
    in_ranked = (ranked == truth[:, None]).any(axis=1) & of_known
    # Open-set labels: the classes the model does not know merge into one, index m ("unknown").
    truth_open = np.where(of_known, truth, m)
    predicted_open = np.where(rejected, m, predicted)
    present, precision, recall, f1 = _per_class_scores(truth_open, predicted_open, m + 1)
    items = np.bincount(truth, minlength=m)
    hits = np.bincount(truth, weights=correct.astype(np.float64), minlength=m)
    with_items = np.flatnonzero(items).tolist()
    known_items = int(of_known.sum())
    unknown_items = n - known_items
    return {
        "top1": float(correct.mean()),
        "top5": float((correct | in_ranked).mean()),
        "macro_precision": float(precision[present].mean()),
        "macro_recall": float(recall[present].mean()),
        "macro_f1": float(f1[present].mean()),
        "unknown_rate": float(rejected.mean()),
        "known_class_items": known_items,
        "top1_known_classes": float(correct[of_known].mean()) if known_items else 0.0,
        "unknown_rate_known_classes": float(rejected[of_known].mean()) if known_items else 0.0,
        "unknown_class_items": unknown_items,
        "unknown_class_rejection": float(rejected[~of_known].mean()) if unknown_items else None,
        "per_class_accuracy": {names[i]: float(hits[i] / items[i]) for i in with_items},
        "per_class_items": {names[i]: int(items[i]) for i in with_items},
        "items": int(n),
    }
