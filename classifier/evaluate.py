"""How well a deployed classifier recognises labelled photos, and how well enrollment works.

:func:`evaluate_classifier` runs a model directory on a user's labelled pictures exactly as a
scan does (:class:`classifier.recognize.Recognizer`: trained head, prototypes, gallery and the
open-set threshold, on ONNX Runtime, OpenVINO or torch), each picture being one whole crop,
and reports top-1, top-5, macro precision / recall / F1, the unknown rate and per-class
accuracy (:func:`classifier.metrics.open_set_metrics`).

Enrollment: SKUs held out of training, enrolled from a few pictures, then recognised.

A model trained with ``holdout_classes=N`` (:func:`classifier.train.train_classifier`) never saw
N classes; their names are in its ``metrics.json`` (``openset.held_out_classes``).
:func:`evaluate_enrollment` enrolls each of them into an in-memory gallery (the model directory
is not changed) from

- its catalogue packshot alone (``shots=0``: the Grocery Store's iconic image, the picture a
  retailer has for a new SKU before anyone photographs it in a store), or
- ``shots`` of its training pictures (chosen at random, seeded),

and then recognises every validation picture with :class:`classifier.recognize.Recognizer`
(trained head + prototypes + gallery + the open-set threshold), exactly as a deployment would.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from classifier.backends import load
from classifier.dataset import DatasetItem, ImageDataset, load_image, read_grocery_classes, read_grocery_store
from classifier.errors import ClassifierError, DatasetError
from classifier.gallery import MAX_PICTURES, Gallery, prototype_from_embeddings
from classifier.metrics import UNKNOWN_PREDICTION, open_set_metrics
from classifier.model_dir import ModelDir, read_model_dir
from classifier.openset import read_embedding_mean, read_openset, read_prototypes
from classifier.recognize import Recognizer

__all__ = [
    "ClassifierReport",
    "EnrollmentReport",
    "EvaluationError",
    "evaluate_classifier",
    "evaluate_enrollment",
    "recognition_accuracy",
]

logger = logging.getLogger(__name__)

TOP_K = 5
"""Classes of the head's ranking that count for top-5."""


class EvaluationError(ClassifierError):
    """An enrollment evaluation cannot run.

    Reasons: ``no_held_out_classes`` (the model was trained on every class),
    ``missing_reference`` (a held-out class has no packshot or too few training pictures),
    ``no_pictures`` (the dataset has no picture that can be decoded).
    """

    reason = "evaluation_failed"


@dataclass(frozen=True)
class EnrollmentReport:
    """Result of :func:`evaluate_enrollment`; every accuracy is a fraction in [0, 1].

    Attributes:
        model: the model directory.
        source: ``"iconic"`` (packshot alone) or ``"train:K"`` (K training pictures per SKU).
        held_out_classes: the enrolled SKU codes.
        held_out_items: validation pictures of those SKUs.
        held_out_accuracy: of those, the fraction named as their SKU.
        held_out_unknown_rate: of those, the fraction called unknown.
        held_out_as_trained_rate: of those, the fraction named as a trained SKU (the costly error).
        known_items: validation pictures of the trained SKUs.
        known_accuracy: their accuracy with the enrolled gallery present.
        known_accuracy_without_gallery: the same without it (what enrolling costs them).
        overall_accuracy: all validation pictures, trained and enrolled SKUs together.
        per_sku_accuracy: enrolled SKU code -> its accuracy.
        threshold: the model's open-set threshold (None: the model has none).
        closed_set_held_out_accuracy: held-out pictures named right when nothing is rejected as
            unknown (the threshold off): what the gallery alone achieves.
        closed_set_known_accuracy: trained-SKU pictures named right with the gallery, threshold off.
        closed_set_overall_accuracy: all val pictures, threshold off.
        auroc: known vs held-out AUROC from the model's ``metrics.json`` (before enrollment).
    """

    model: str
    source: str
    held_out_classes: list[str]
    held_out_items: int
    held_out_accuracy: float
    held_out_unknown_rate: float
    held_out_as_trained_rate: float
    known_items: int
    known_accuracy: float
    known_accuracy_without_gallery: float
    overall_accuracy: float
    per_sku_accuracy: dict[str, float]
    threshold: float | None
    closed_set_held_out_accuracy: float
    closed_set_known_accuracy: float
    closed_set_overall_accuracy: float
    auroc: float | None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the fields."""
        return asdict(self)


def recognition_accuracy(predicted: Sequence[str | None], truth: Sequence[str]) -> float:
    """Fraction of pictures whose predicted SKU code equals the true one (unknown = wrong).

    Args:
        predicted: per picture the recognised SKU code, or None for unknown.
        truth: per picture the true SKU code.

    Returns:
        The accuracy in [0, 1]; 0.0 for no pictures.

    Raises:
        ValueError: the two sequences differ in length.
    """
    if len(predicted) != len(truth):
        raise ValueError(f"predicted: expected {len(truth)} entries, received {len(predicted)}")
    if not truth:
        return 0.0
    return sum(p == t for p, t in zip(predicted, truth, strict=True)) / len(truth)


def _references(
    root: Path, codes: list[str], shots: int, rng: np.random.Generator
) -> dict[str, list[Path]]:
    if shots == 0:
        classes = {c.name: c for c in read_grocery_classes(root)}
        missing = [code for code in codes if code not in classes or not classes[code].iconic_image.is_file()]
        if missing:
            raise EvaluationError(f"no packshot for {', '.join(missing)}", reason="missing_reference")
        return {code: [classes[code].iconic_image] for code in codes}
    train = read_grocery_store(root, "train")
    by_code: dict[str, list[DatasetItem]] = {}
    for item in train.items:
        by_code.setdefault(train.class_names[item.class_index], []).append(item)
    references: dict[str, list[Path]] = {}
    for code in codes:
        items = by_code.get(code, [])
        if len(items) < shots:
            raise EvaluationError(
                f"{code}: {len(items)} training pictures, {shots} needed", reason="missing_reference"
            )
        chosen = rng.choice(len(items), size=shots, replace=False)
        references[code] = [items[i].path for i in sorted(chosen.tolist())]
    return references


def evaluate_enrollment(
    model_dir: str | Path,
    root: str | Path,
    *,
    shots: int = 0,
    backend: str = "onnx",
    threads: int | None = None,
    seed: int = 0,
) -> EnrollmentReport:
    """Enroll a model's held-out Grocery Store classes and measure recognition on the val split.

    Args:
        model_dir: a classifier model directory trained with held-out classes.
        root: the Grocery Store dataset folder (``classes.csv``, ``train.txt``, ``val.txt``).
        shots: 0 enrolls each SKU from its catalogue packshot alone; 1-10 from that many of its
            training pictures (seeded random choice).
        backend: the runtime (:func:`classifier.backends.load`).
        threads: intra-op threads (None: the runtime's default).
        seed: seeds the choice of training pictures.

    Returns:
        The report (see :class:`EnrollmentReport`).

    Raises:
        EvaluationError: the model has no held-out classes (reason ``no_held_out_classes``) or
            a class lacks its references (``missing_reference``).
        DatasetError: the dataset cannot be read; ModelLoadError, MissingDependencyError: the
            model or its runtime cannot be loaded.
        ValueError: ``shots`` outside 0-10.
    """
    if not 0 <= shots <= MAX_PICTURES:
        raise ValueError(f"shots: expected 0 to {MAX_PICTURES}, received {shots}")
    directory = read_model_dir(model_dir)
    openset = directory.metrics.get("openset", {})
    held_out = [str(code) for code in openset.get("held_out_classes", [])]
    if not held_out:
        raise EvaluationError(
            f"{directory.path}: the model was trained on every class (train with --holdout-classes N)",
            reason="no_held_out_classes",
        )
    root = Path(root)
    references = _references(root, held_out, shots, np.random.default_rng(seed))
    val = read_grocery_store(root, "val")
    truth = [val.class_names[item.class_index] for item in val.items]
    pictures = [load_image(item.path) for item in val.items]

    calibration = read_openset(directory.path)
    prototypes = read_prototypes(directory.path, num_classes=directory.num_classes)
    mean = read_embedding_mean(directory.path, prototypes.shape[1])
    scale = directory.architecture.logit_scale if directory.architecture is not None else 16.0
    with load(directory, backend=backend, threads=threads, warmup=False) as network:
        reference_images = [load_image(path) for code in held_out for path in references[code]]
        embedding = network.classify(reference_images).embedding
        rows: list[npt.NDArray[np.float32]] = []
        start = 0
        for code in held_out:
            count = len(references[code])
            rows.append(prototype_from_embeddings(embedding[start : start + count]))
            start += count
        gallery = Gallery(
            "in-memory", list(held_out), np.stack(rows).astype(np.float32),
            np.array([len(references[c]) for c in held_out], np.int64),
        )
        threshold = calibration.threshold if calibration is not None else None
        with_gallery = Recognizer(
            network, prototypes, threshold=threshold, embedding_mean=mean, gallery=gallery, logit_scale=scale
        ).classify(pictures).sku_code
        without_gallery = Recognizer(
            network, prototypes, threshold=threshold, embedding_mean=mean, logit_scale=scale
        ).classify(pictures).sku_code
        closed = Recognizer(
            network, prototypes, threshold=None, embedding_mean=mean, gallery=gallery, logit_scale=scale
        ).classify(pictures).sku_code

    held = set(held_out)
    trained = set(directory.labels)
    h_index = [i for i, t in enumerate(truth) if t in held]
    k_index = [i for i, t in enumerate(truth) if t not in held]
    h_pred = [with_gallery[i] for i in h_index]
    per_sku = {
        code: recognition_accuracy(
            [with_gallery[i] for i in h_index if truth[i] == code], [code] * sum(truth[i] == code for i in h_index)
        )
        for code in held_out
    }
    auroc = openset.get("auroc")
    return EnrollmentReport(
        model=str(directory.path),
        source="iconic" if shots == 0 else f"train:{shots}",
        held_out_classes=list(held_out),
        held_out_items=len(h_index),
        held_out_accuracy=recognition_accuracy(h_pred, [truth[i] for i in h_index]),
        held_out_unknown_rate=sum(p is None for p in h_pred) / len(h_pred) if h_pred else 0.0,
        held_out_as_trained_rate=sum(p in trained for p in h_pred) / len(h_pred) if h_pred else 0.0,
        known_items=len(k_index),
        known_accuracy=recognition_accuracy([with_gallery[i] for i in k_index], [truth[i] for i in k_index]),
        known_accuracy_without_gallery=recognition_accuracy(
            [without_gallery[i] for i in k_index], [truth[i] for i in k_index]
        ),
        overall_accuracy=recognition_accuracy(with_gallery, truth),
        per_sku_accuracy=per_sku,
        threshold=threshold,
        closed_set_held_out_accuracy=recognition_accuracy([closed[i] for i in h_index], [truth[i] for i in h_index]),
        closed_set_known_accuracy=recognition_accuracy([closed[i] for i in k_index], [truth[i] for i in k_index]),
        closed_set_overall_accuracy=recognition_accuracy(closed, truth),
        auroc=float(auroc) if auroc is not None else None,
    )


@dataclass(frozen=True)
class ClassifierReport:
    """Result of :func:`evaluate_classifier`; every rate and accuracy is a fraction in [0, 1].

    A picture rejected as unknown is wrong, except when its class is one the model does not
    name: such pictures are right exactly when rejected (see
    :func:`classifier.metrics.open_set_metrics`, which also defines the macro figures).

    Attributes:
        model_dir: the model directory.
        model_version: the version a scan records (``<dir>@<hash>``, ``-int8`` for INT8).
        backend: the runtime that ran (``onnx``, ``openvino``, ``torch``, ...; ``onnx`` where a
            TensorRT engine was refused and ONNX Runtime ran instead).
        threshold: the open-set threshold on the best prototype cosine (None: never unknown).
        data: the dataset folder or list file.
        split: the dataset split (``""`` when the format has none).
        items: pictures evaluated.
        left_out_items: pictures of the dataset left out (missing, unreadable or undecodable).
        top1: share of pictures right.
        top5: share whose class is among the head's five best (before the open-set decision),
            or that are right; for a class the model does not name it equals top-1.
        macro_precision, macro_recall, macro_f1: averages over the classes present.
        unknown_rate: share of pictures rejected as unknown.
        known_class_items: pictures of classes the model names.
        top1_known_classes: top-1 over those.
        unknown_rate_known_classes: share of those rejected (false rejections).
        unknown_class_items: pictures of classes the model does not name.
        unknown_class_rejection: share of those rejected (None without any).
        unknown_classes: the dataset's classes with pictures that the model does not name.
        per_class_accuracy: class name -> share of its pictures that are right, dataset order.
        per_class_items: class name -> its number of pictures.
        seconds: wall time of decoding and recognition, s.
    """

    model_dir: str
    model_version: str
    backend: str
    threshold: float | None
    data: str
    split: str
    items: int
    left_out_items: int
    top1: float
    top5: float
    macro_precision: float
    macro_recall: float
    macro_f1: float
    unknown_rate: float
    known_class_items: int
    top1_known_classes: float
    unknown_rate_known_classes: float
    unknown_class_items: int
    unknown_class_rejection: float | None
    unknown_classes: list[str]
    per_class_accuracy: dict[str, float]
    per_class_items: dict[str, int]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: the fields, with ``model`` as ``{"dir", "version"}``."""
        data = asdict(self)
        return {"model": {"dir": data.pop("model_dir"), "version": data.pop("model_version")}, **data}


def evaluate_classifier(
    model_dir: str | Path | ModelDir,
    dataset: ImageDataset,
    *,
    backend: str = "onnx",
    threads: int | None = None,
    batch: int = 32,
    progress: Callable[[int, int], None] | None = None,
) -> ClassifierReport:
    """Recognise every picture of a labelled dataset with a deployed model, as a scan would.

    The model is loaded with :meth:`classifier.recognize.Recognizer.from_model_dir` (head,
    prototypes, current gallery, open-set threshold); each picture is decoded with
    :func:`classifier.dataset.load_image` and is one whole crop. The network runs once per batch;
    its logits give the head's ranking for top-5 and go with the embeddings to
    :meth:`~classifier.recognize.Recognizer.decide`, the same decision ``classify`` makes. The
    classes the model names are :attr:`Recognizer.labels` (``labels.json`` and enrolled SKUs);
    dataset classes are matched to them by SKU code.

    Args:
        model_dir: the classifier model directory.
        dataset: the labelled pictures (:func:`~classifier.dataset.read_grocery_store`,
            :func:`~classifier.dataset.read_image_folder`, :func:`~classifier.dataset.read_list_file`).
        backend: the runtime (:data:`classifier.backends.BACKENDS`).
        threads: intra-op threads (None: the runtime's default).
        batch: pictures decoded and recognised at a time, >= 1.
        progress: called as ``progress(done, total)`` in pictures after each batch (and once at 0).

    Returns:
        The report (see :class:`ClassifierReport`).

    Raises:
        EvaluationError: no picture of the dataset can be decoded (reason ``no_pictures``).
        ModelLoadError, GalleryError, MissingDependencyError, ConfigurationError: the model or
            its runtime cannot be loaded (unknown backend: ``unknown_backend``).
        ValueError: ``batch`` < 1.
    """
    if batch < 1:
        raise ValueError(f"batch: expected >= 1, received {batch}")
    started = time.perf_counter()
    total = len(dataset.items)
    if total == 0:
        raise EvaluationError(f"{dataset.root}: no pictures to evaluate", reason="no_pictures")
    predicted_codes: list[str | None] = []
    ranked_codes: list[list[str]] = []
    truth_index: list[int] = []
    left_out = len(dataset.problems)
    with Recognizer.from_model_dir(model_dir, backend=backend, threads=threads) as recognizer:
        ran = recognizer.backend.name  # a refused TensorRT engine falls back to ONNX Runtime
        head_labels = recognizer.backend.labels
        version = recognizer.backend.version
        directory = recognizer.backend.model_dir.path
        if progress is not None:
            progress(0, total)
        for start in range(0, total, batch):
            chunk = dataset.items[start : start + batch]
            crops: list[npt.NDArray[np.uint8]] = []
            for item in chunk:
                try:
                    crops.append(load_image(item.path))
                except DatasetError as error:
                    logger.warning("evaluate %s: picture left out: %s", dataset.root, error)
                    left_out += 1
                    continue
                truth_index.append(item.class_index)
            if crops:
                logits, embedding = recognizer.backend.outputs(crops)
                named = recognizer.decide(logits, embedding)
                predicted_codes.extend(named.sku_code)
                best = np.argsort(-logits, axis=1, kind="stable")[:, :TOP_K]
                ranked_codes.extend([head_labels[j] for j in row] for row in best.tolist())
            if progress is not None:
                progress(min(start + batch, total), total)
        model_labels = list(recognizer.labels)
        threshold = recognizer.threshold
    if not truth_index:
        raise EvaluationError(f"{dataset.root}: none of its {total} pictures can be decoded", reason="no_pictures")
    # One label space: the dataset's classes, then the model's classes the dataset lacks.
    in_data, in_model = set(dataset.class_names), set(model_labels)
    names = list(dataset.class_names) + [c for c in model_labels if c not in in_data]
    index = {name: i for i, name in enumerate(names)}
    known = np.array([name in in_model for name in names], np.bool_)
    predicted = np.array(
        [UNKNOWN_PREDICTION if code is None else index[code] for code in predicted_codes], np.int64
    )
    ranked = np.array([[index[code] for code in row] for row in ranked_codes], np.int64).reshape(len(predicted), -1)
    figures = open_set_metrics(predicted, ranked, np.array(truth_index, np.int64), known, names)
    figures.pop("items")
    return ClassifierReport(
        model_dir=str(directory),
        model_version=version,
        backend=ran,
        threshold=threshold,
        data=str(dataset.root),
        split=dataset.split,
        items=len(truth_index),
        left_out_items=left_out,
        unknown_classes=[name for name in figures["per_class_items"] if not known[index[name]]],
        seconds=time.perf_counter() - started,
        **figures,
    )
