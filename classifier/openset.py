"""Open-set recognition: say "unknown" for crops of SKUs the model was never taught.

Score. A crop's open-set score is its best cosine similarity to the class prototypes
(:func:`prototype_scores`), both taken after centring: the mean training embedding ``mu``
(``embedding_mean.npy``) is subtracted and the result re-normalised (:func:`centre`; "CL2N" of
SimpleShot, Wang et al., 2019). A prototype is the mean centred training embedding of a class,
re-normalised (``prototypes.npy``, rows in ``labels.json`` order). Centring matters for small,
briefly trained models: their unit embeddings share a large common component (measured on the
test suite's generated SKUs: every crop within cosine 0.99 of every prototype), which drowns
the class-specific directions; after centring, held-out classes separated better (AUROC). The
same score works unchanged for SKUs enrolled later from a few pictures
(:mod:`classifier.gallery`), which have a prototype but no head weight. Softmax confidence is
not used for rejection: it is relative between classes and stays high for a foreign crop that
is merely closer to one class than to the others.

Threshold (``openset.json``, :class:`OpenSetCalibration`). A crop is unknown (``class_id`` -1)
when its score is below ``threshold``. Two calibrations:

- ``"holdout"`` (``train_classifier(..., holdout_classes=N)``): N classes are left out of
  training; their pictures are split in two halves. The threshold is the
  ``1 - target_false_accept_rate`` quantile of the first half's scores (so that fraction of
  unknown crops is accepted); the second half measures the false-accept rate actually
  reached, and AUROC (:func:`auroc`) is computed on known validation crops against all
  held-out crops.
- ``"known_quantile"`` (no held-out classes): without unknown examples the false-accept rate
  cannot be measured; the threshold is set so that ``target_false_reject_rate`` of the known
  validation crops are rejected (the ``target_false_reject_rate`` quantile of their scores).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from classifier.errors import ModelLoadError

__all__ = [
    "EMBEDDING_MEAN",
    "OPENSET",
    "PROTOTYPES",
    "Calibration",
    "OpenSetCalibration",
    "auroc",
    "centre",
    "class_prototypes",
    "prototype_scores",
    "read_embedding_mean",
    "read_openset",
    "read_prototypes",
    "threshold_for_false_accept",
    "threshold_for_false_reject",
    "write_openset",
]

PROTOTYPES = "prototypes.npy"
"""(C, D) float32 unit rows, one per entry of ``labels.json``, in the model directory."""

EMBEDDING_MEAN = "embedding_mean.npy"
"""(D,) float32, the mean training embedding subtracted before open-set scoring (:func:`centre`)."""

OPENSET = "openset.json"
"""The open-set threshold and how it was calibrated (:class:`OpenSetCalibration`)."""

Calibration = Literal["holdout", "known_quantile"]


@dataclass(frozen=True)
class OpenSetCalibration:
    """How unknown crops are rejected (see the module docstring).

    Attributes:
        threshold: best prototype cosine similarity below which a crop is unknown, in [-1, 1].
        calibration: ``"holdout"`` or ``"known_quantile"``.
        target_false_accept_rate: with ``"holdout"``, the fraction of unknown crops meant to be
            accepted; None otherwise.
        target_false_reject_rate: with ``"known_quantile"``, the fraction of known crops meant
            to be rejected; None otherwise.
        score: the score compared with ``threshold`` (``"max_prototype_cosine"``).
    """

    threshold: float
    calibration: Calibration
    target_false_accept_rate: float | None = None
    target_false_reject_rate: float | None = None
    score: str = "max_prototype_cosine"

    def __post_init__(self) -> None:
        if not -1.0 <= float(self.threshold) <= 1.0:
            raise ValueError(f"threshold: expected a cosine similarity in [-1, 1], received {self.threshold!r}")
        if self.calibration not in ("holdout", "known_quantile"):
            raise ValueError(f"calibration: expected 'holdout' or 'known_quantile', received {self.calibration!r}")


def centre(embeddings: npt.NDArray[np.float32], mean: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Subtract the mean embedding and re-normalise each row (SimpleShot's CL2N).

    Args:
        embeddings: (N, D) float32.
        mean: (D,) float32 (zeros: plain re-normalisation).

    Returns:
        (N, D) float32 unit rows (a row equal to ``mean`` becomes zeros).
    """
    shifted = np.asarray(embeddings, dtype=np.float32) - np.asarray(mean, dtype=np.float32)[None, :]
    norms = np.linalg.norm(shifted, axis=1, keepdims=True)
    centred: npt.NDArray[np.float32] = (shifted / np.maximum(norms, 1e-12)).astype(np.float32)
    return centred


def class_prototypes(
    embeddings: npt.NDArray[np.float32], class_ids: npt.NDArray[np.int64], num_classes: int
) -> npt.NDArray[np.float32]:
    """Mean embedding of each class, re-normalised to unit L2 norm.

    Args:
        embeddings: (N, D) float32 unit rows.
        class_ids: (N,) int64 in [0, num_classes).
        num_classes: C.

    Returns:
        (C, D) float32 unit rows; a class without any embedding gets a zero row (it matches nothing).

    Raises:
        ValueError: shapes disagree or a class id is out of range.
    """
    embeddings = np.asarray(embeddings, dtype=np.float32)
    class_ids = np.asarray(class_ids, dtype=np.int64)
    if embeddings.ndim != 2 or class_ids.shape != (embeddings.shape[0],):
        raise ValueError(
            f"expected embeddings (N, D) and class_ids (N,), received {embeddings.shape}, {class_ids.shape}"
        )
    if class_ids.size and (class_ids.min() < 0 or class_ids.max() >= num_classes):
        raise ValueError(
            f"class_ids: expected values in [0, {num_classes}), received {class_ids.min()}..{class_ids.max()}"
        )
    sums = np.zeros((num_classes, embeddings.shape[1]), np.float64)
    np.add.at(sums, class_ids, embeddings)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    prototypes: npt.NDArray[np.float32] = np.where(norms > 0, sums / np.maximum(norms, 1e-12), 0.0).astype(np.float32)
    return prototypes


def prototype_scores(
    embeddings: npt.NDArray[np.float32], prototypes: npt.NDArray[np.float32]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Best cosine similarity of each embedding to the prototypes, and which prototype it is.

    Args:
        embeddings: (N, D) float32 unit rows.
        prototypes: (K, D) float32 unit rows (K >= 1).

    Returns:
        ``(score, index)``: (N,) float32 in [-1, 1] and (N,) int64 row of ``prototypes``.

    Raises:
        ValueError: the widths differ or there is no prototype.
    """
    embeddings = np.asarray(embeddings, dtype=np.float32)
    prototypes = np.asarray(prototypes, dtype=np.float32)
    if prototypes.ndim != 2 or prototypes.shape[0] == 0:
        raise ValueError(f"prototypes: expected (K, D) with K >= 1, received {prototypes.shape}")
    if embeddings.ndim != 2 or embeddings.shape[1] != prototypes.shape[1]:
        raise ValueError(f"embeddings: expected (N, {prototypes.shape[1]}), received {embeddings.shape}")
    if embeddings.shape[0] == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    similarity = embeddings @ prototypes.T
    index = similarity.argmax(axis=1).astype(np.int64)
    score = np.clip(similarity[np.arange(len(index)), index], -1.0, 1.0).astype(np.float32)
    return score, index


def auroc(known: npt.NDArray[np.floating], unknown: npt.NDArray[np.floating]) -> float:
    """Area under the ROC curve of separating known from unknown crops by score (higher = known).

    The probability that a random known crop scores above a random unknown one, ties counting
    one half (the Mann-Whitney U statistic divided by ``n_known * n_unknown``).

    Raises:
        ValueError: either group is empty.
    """
    known = np.asarray(known, dtype=np.float64).ravel()
    unknown = np.asarray(unknown, dtype=np.float64).ravel()
    if known.size == 0 or unknown.size == 0:
        raise ValueError(f"auroc: expected both groups non-empty, received {known.size} known, {unknown.size} unknown")
    scores = np.concatenate([known, unknown])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(scores.size, np.float64)
    ranks[order] = np.arange(1, scores.size + 1)
    # average ranks of ties
    sorted_scores = scores[order]
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    for start, count in zip(first.tolist(), counts.tolist(), strict=True):
        if count > 1:
            ranks[order[start : start + count]] = start + (count + 1) / 2
    u = ranks[: known.size].sum() - known.size * (known.size + 1) / 2
    return float(u / (known.size * unknown.size))


def _check_rate(name: str, rate: float) -> None:
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"{name}: expected a fraction in [0, 1], received {rate!r}")


def threshold_for_false_accept(unknown: npt.NDArray[np.floating], rate: float) -> float:
    """The score threshold that accepts about ``rate`` of the unknown crops (score >= threshold).

    Raises:
        ValueError: no scores, or ``rate`` outside [0, 1].
    """
    _check_rate("rate", rate)
    values = np.sort(np.asarray(unknown, dtype=np.float64).ravel())
    if values.size == 0:
        raise ValueError("unknown: expected at least one score")
    accepted = int(np.floor(rate * values.size))
    if accepted == 0:
        return float(min(1.0, np.nextafter(values[-1], np.inf)))
    return float(values[values.size - accepted])


def threshold_for_false_reject(known: npt.NDArray[np.floating], rate: float) -> float:
    """The score threshold that rejects about ``rate`` of the known crops (score < threshold).

    Raises:
        ValueError: no scores, or ``rate`` outside [0, 1].
    """
    _check_rate("rate", rate)
    values = np.sort(np.asarray(known, dtype=np.float64).ravel())
    if values.size == 0:
        raise ValueError("known: expected at least one score")
    rejected = min(int(np.floor(rate * values.size)), values.size - 1)
    return float(values[rejected])


def write_openset(
    model_dir: str | Path,
    prototypes: npt.NDArray[np.float32],
    mean: npt.NDArray[np.float32],
    calibration: OpenSetCalibration,
) -> None:
    """Write ``prototypes.npy`` (centred), ``embedding_mean.npy`` and ``openset.json`` into a model directory."""
    root = Path(model_dir)
    np.save(root / EMBEDDING_MEAN, np.asarray(mean, dtype=np.float32), allow_pickle=False)
    np.save(root / PROTOTYPES, np.asarray(prototypes, dtype=np.float32), allow_pickle=False)
    (root / OPENSET).write_text(json.dumps(asdict(calibration), indent=2) + "\n", encoding="utf-8")


def read_prototypes(model_dir: str | Path, *, num_classes: int | None = None) -> npt.NDArray[np.float32]:
    """Read ``prototypes.npy``: (C, D) float32.

    Raises:
        ModelLoadError: missing (reason ``model_file_missing``), unreadable or not (C, D) with C
            = ``num_classes`` when given (``model_file_unreadable``).
    """
    path = Path(model_dir) / PROTOTYPES
    if not path.is_file():
        raise ModelLoadError(f"model directory {model_dir} has no {PROTOTYPES}", reason="model_file_missing")
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot read {path}: {error}", reason="model_file_unreadable") from error
    if array.ndim != 2 or (num_classes is not None and array.shape[0] != num_classes):
        raise ModelLoadError(
            f"{path}: expected ({num_classes if num_classes is not None else 'C'}, D), received {array.shape}",
            reason="model_file_unreadable",
        )
    prototypes: npt.NDArray[np.float32] = array.astype(np.float32)
    return prototypes


def read_embedding_mean(model_dir: str | Path, dim: int) -> npt.NDArray[np.float32]:
    """Read ``embedding_mean.npy`` ((D,) float32); zeros when the directory has none.

    Raises:
        ModelLoadError: unreadable or not (``dim``,) (reason ``model_file_unreadable``).
    """
    path = Path(model_dir) / EMBEDDING_MEAN
    if not path.is_file():
        return np.zeros(dim, np.float32)
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot read {path}: {error}", reason="model_file_unreadable") from error
    if array.shape != (dim,):
        raise ModelLoadError(f"{path}: expected ({dim},), received {array.shape}", reason="model_file_unreadable")
    mean: npt.NDArray[np.float32] = array.astype(np.float32)
    return mean


def read_openset(model_dir: str | Path) -> OpenSetCalibration | None:
    """Read ``openset.json`` (None when the directory has none).

    Raises:
        ModelLoadError: unreadable or invalid (reason ``model_file_unreadable``).
    """
    path = Path(model_dir) / OPENSET
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return OpenSetCalibration(**data)
    except (OSError, ValueError, TypeError) as error:
        raise ModelLoadError(f"cannot read {path}: {error}", reason="model_file_unreadable") from error
