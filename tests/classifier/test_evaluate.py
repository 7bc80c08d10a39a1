"""Classifier evaluation on labelled pictures (open-set metrics, the shipped model on real photos) and
enrollment evaluation: held-out SKUs enrolled from a packshot or a few pictures, then recognised."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from classifier.dataset import load_image, read_grocery_store, read_image_folder
from classifier.evaluate import (
    EvaluationError,
    evaluate_classifier,
    evaluate_enrollment,
    recognition_accuracy,
)
from classifier.gallery import list_versions
from classifier.metrics import classification_metrics, open_set_metrics
from classifier.model_dir import read_model_dir
from classifier.openset import read_openset
from classifier.recognize import Recognizer
from tests.classifier.conftest import GROCERY, toy_crop, write_shape_grocery
from workers.cli import app


@pytest.fixture(scope="module")
def shape_grocery(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 6 trained shapes in Grocery Store format: 10 train and 8 val pictures per class."""
    return write_shape_grocery(tmp_path_factory.mktemp("grocery"), list(range(6)), train=10, val=8, seed=5)


@pytest.mark.parametrize(
    ("predicted", "truth", "expected"),
    [
        ([], [], 0.0),
        (["A", "B"], ["A", "B"], 1.0),
        (["A", None, "C", "A"], ["A", "B", "B", "B"], 0.25),
    ],
)
def test_recognition_accuracy_counts_unknown_as_wrong(
    predicted: list[str | None], truth: list[str], expected: float
) -> None:
    assert recognition_accuracy(predicted, truth) == pytest.approx(expected)


def test_recognition_accuracy_needs_equal_lengths() -> None:
    with pytest.raises(ValueError, match="expected 2 entries"):
        recognition_accuracy(["A"], ["A", "B"])


@pytest.mark.parametrize("shots", [0, 3])
def test_enrolled_held_out_skus_are_recognised(trained_shapes: Path, shape_grocery: Path, shots: int) -> None:
    held_out = read_model_dir(trained_shapes).metrics["openset"]["held_out_classes"]
    report = evaluate_enrollment(trained_shapes, shape_grocery, shots=shots, threads=1)
    assert report.source == ("iconic" if shots == 0 else f"train:{shots}")
    assert report.held_out_classes == held_out
    assert report.held_out_items == 8 * len(held_out) and report.known_items == 8 * (6 - len(held_out))
    # Without the gallery no held-out picture can be named; enrolled, a good share is (threshold
    # off: 2 of 6 classes, chance 1/6). With the threshold on, this tiny model's threshold
    # (calibrated on the two held-out classes, which its colour-only features merge with trained
    # ones) can reject nearly everything: it did on one CPU and not on another, so only the
    # accounting is asserted for it: of the pictures it lets through, most are named right.
    assert report.closed_set_held_out_accuracy >= 0.25
    named = 1.0 - report.held_out_unknown_rate
    if named >= 0.2:
        assert report.held_out_accuracy / named >= 0.6
    assert set(report.per_sku_accuracy) == set(held_out)
    assert report.held_out_accuracy + report.held_out_unknown_rate + report.held_out_as_trained_rate <= 1.0 + 1e-9
    # Enrolling costs the trained SKUs little.
    assert report.known_accuracy >= report.known_accuracy_without_gallery - 0.1
    expected_overall = (
        report.held_out_accuracy * report.held_out_items + report.known_accuracy * report.known_items
    ) / (report.held_out_items + report.known_items)
    assert report.overall_accuracy == pytest.approx(expected_overall)
    # The threshold only turns answers into "unknown": without it nothing named right is lost.
    assert report.closed_set_held_out_accuracy >= report.held_out_accuracy
    assert report.closed_set_known_accuracy >= report.known_accuracy
    assert report.threshold is not None
    assert report.auroc == read_model_dir(trained_shapes).metrics["openset"]["auroc"]
    assert list_versions(trained_shapes) == []  # the model directory is not changed


def test_a_model_without_held_out_classes_is_refused(tiny_classifier: object, shape_grocery: Path) -> None:
    with pytest.raises(EvaluationError) as caught:
        evaluate_enrollment(tiny_classifier.dynamic, shape_grocery)  # type: ignore[attr-defined]
    assert caught.value.reason == "no_held_out_classes"


def test_too_few_training_pictures_is_refused(trained_shapes: Path, tmp_path: Path) -> None:
    root = write_shape_grocery(tmp_path, list(range(6)), train=2, val=2, seed=6)
    with pytest.raises(EvaluationError) as caught:
        evaluate_enrollment(trained_shapes, root, shots=3)
    assert caught.value.reason == "missing_reference"


def test_cli_prints_and_writes_the_report(trained_shapes: Path, shape_grocery: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    result = CliRunner().invoke(app, [
        "classifier", "evaluate-enrollment", "--model", str(trained_shapes), "--data", str(shape_grocery),
        "--json", "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed == json.loads(out.read_text())
    assert printed["source"] == "iconic" and 0.0 <= printed["held_out_accuracy"] <= 1.0


def test_cli_reports_a_model_without_held_out_classes(tiny_classifier: object, shape_grocery: Path) -> None:
    result = CliRunner().invoke(app, [
        "classifier", "evaluate-enrollment", "--model", str(tiny_classifier.dynamic),  # type: ignore[attr-defined]
        "--data", str(shape_grocery), "--json",
    ])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["reason"] == "no_held_out_classes"


# ---- open-set metrics --------------------------------------------------------------------------

NAMES = ["A", "B", "C", "X"]  # the model knows A, B, C; X is a class it does not name
KNOWN = np.array([True, True, True, False])


@pytest.mark.parametrize(
    ("predicted", "ranked", "truth", "expected", "error"),
    [
        # no pictures
        ([], np.zeros((0, 2), np.int64), [], {"top1": 0.0, "top5": 0.0, "unknown_rate": 0.0, "items": 0,
                                              "unknown_class_rejection": None, "per_class_accuracy": {}}, None),
        # all right, nothing rejected
        ([0, 1, 2], [[0, 1], [1, 0], [2, 0]], [0, 1, 2],
         {"top1": 1.0, "top5": 1.0, "macro_f1": 1.0, "unknown_rate": 0.0, "unknown_class_items": 0}, None),
        # a known picture rejected (wrong for top-1, a top-5 hit by the ranking); an X picture
        # rejected (right) and one named A (wrong, and never a top-5 hit)
        ([0, -1, -1, 0], [[0, 1], [1, 0], [0, 1], [0, 1]], [0, 1, 3, 3],
         {"top1": 0.5, "top5": 0.75, "unknown_rate": 0.5, "known_class_items": 2, "top1_known_classes": 0.5,
          "unknown_rate_known_classes": 0.5, "unknown_class_items": 2, "unknown_class_rejection": 0.5,
          "per_class_accuracy": {"A": 1.0, "B": 0.0, "X": 0.5}, "per_class_items": {"A": 1, "B": 1, "X": 2},
          # classes present: A (P 1/2, R 1), B (P 0, R 0), unknown (P 1/2, R 1/2)
          "macro_precision": (0.5 + 0 + 0.5) / 3, "macro_recall": (1 + 0 + 0.5) / 3,
          "macro_f1": (2 / 3 + 0 + 0.5) / 3}, None),
        ([0], [[0]], [4], {}, "truth: expected indices in"),
        ([5], [[0]], [0], {}, "predicted: expected indices in"),
        ([0, 1], [[0]], [0, 1], {}, "ranked: expected shape"),
    ],
)
def test_open_set_metrics(
    predicted: list[int], ranked: Any, truth: list[int], expected: dict[str, Any], error: str | None
) -> None:
    args = (np.array(predicted, np.int64), np.array(ranked, np.int64), np.array(truth, np.int64), KNOWN, NAMES)
    if error is not None:
        with pytest.raises(ValueError, match=error):
            open_set_metrics(*args)
        return
    figures = open_set_metrics(*args)
    for key, value in expected.items():
        assert figures[key] == (pytest.approx(value) if isinstance(value, float) else value), key


def test_open_set_metrics_equal_classification_metrics_when_closed_set() -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(60, 7)).astype(np.float32)
    truth = rng.integers(0, 6, 60).astype(np.int64)  # class 6 has no pictures
    names = [f"S{i}" for i in range(7)]
    closed = classification_metrics(logits, truth, names)
    ranked = np.argsort(-logits, axis=1)[:, :5]
    opened = open_set_metrics(logits.argmax(axis=1), ranked, truth, np.ones(7, np.bool_), names)
    for key in ("top1", "top5", "macro_precision", "macro_recall", "macro_f1", "per_class_accuracy"):
        assert opened[key] == pytest.approx(closed[key]), key
    assert opened["unknown_rate"] == 0.0 and opened["unknown_class_rejection"] is None


# ---- the shipped model on real photos ----------------------------------------------------------

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "classifier-grocery"
REAL_CLASSES = ("Granny-Smith", "Banana", "Oatly-Oat-Milk")
OUTSIDER = "Toy-Shape-Not-A-Product"
needs_grocery = pytest.mark.skipif(not GROCERY.is_dir(), reason="../shared/data/grocerystore is not on this machine")
needs_shipped = pytest.mark.skipif(not (SHIPPED / "labels.json").is_file(),
                                   reason="models/classifier-grocery is not in this checkout")


def real_folder(root: Path) -> Path:
    """An image folder: 3 real Grocery Store val photos of each of :data:`REAL_CLASSES` and 3
    generated toy crops under :data:`OUTSIDER`, a SKU code the shipped model does not name."""
    val = read_grocery_store(GROCERY, "val")
    for code in REAL_CLASSES:
        index = val.class_names.index(code)
        paths = [item.path for item in val.items if item.class_index == index][:3]
        assert len(paths) == 3, code
        (root / code).mkdir(parents=True)
        for path in paths:
            shutil.copy(path, root / code / path.name)
    (root / OUTSIDER).mkdir()
    rng = np.random.default_rng(11)
    for n in range(3):
        crop = cv2.resize(toy_crop(rng, n % 4), (348, 464))
        cv2.imwrite(str(root / OUTSIDER / f"toy-{n}.png"), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
    return root


@needs_grocery
@needs_shipped
def test_shipped_model_on_real_photos_matches_the_recognizer(tmp_path: Path) -> None:
    dataset = read_image_folder(real_folder(tmp_path / "crops"), split="val")
    report = evaluate_classifier(SHIPPED, dataset, threads=1, batch=4)  # 12 pictures: 3 batches
    truth = [dataset.class_names[item.class_index] for item in dataset.items]
    with Recognizer.from_model_dir(SHIPPED, threads=1) as recognizer:
        named = recognizer.classify([load_image(item.path) for item in dataset.items]).sku_code
    expected = [None if code == OUTSIDER else code for code in truth]
    right = sum(n == e for n, e in zip(named, expected, strict=True))
    assert report.items == 12 and report.left_out_items == 0
    assert report.top1 == pytest.approx(right / 12)
    assert report.unknown_rate == pytest.approx(sum(n is None for n in named) / 12)
    assert report.unknown_classes == [OUTSIDER] and report.unknown_class_items == 3
    assert report.known_class_items == 9
    assert report.top1_known_classes == pytest.approx(
        sum(n == t for n, t in zip(named, truth, strict=True) if t != OUTSIDER) / 9)
    assert report.unknown_class_rejection == pytest.approx(
        sum(n is None for n, t in zip(named, truth, strict=True) if t == OUTSIDER) / 3)
    assert report.top1 <= report.top5 <= 1.0
    assert set(report.per_class_accuracy) == {*REAL_CLASSES, OUTSIDER}
    assert set(report.per_class_items.values()) == {3}
    overall = sum(report.per_class_accuracy[c] * 3 for c in report.per_class_accuracy) / 12
    assert report.top1 == pytest.approx(overall)
    calibration = read_openset(SHIPPED)
    assert report.threshold == (calibration.threshold if calibration is not None else None)
    assert report.model_version == read_model_dir(SHIPPED).version and report.backend == "onnx"
    # The shipped model knows these SKUs: most real photos are named right.
    assert report.top1_known_classes >= 0.5


@needs_grocery
@needs_shipped
def test_an_undecodable_picture_is_left_out(tmp_path: Path) -> None:
    root = real_folder(tmp_path / "crops")
    (root / "Banana" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 64)  # a JPEG header only
    dataset = read_image_folder(root)
    report = evaluate_classifier(SHIPPED, dataset, threads=1)
    assert report.items == 12 and report.left_out_items == 1


@needs_grocery
@needs_shipped
def test_a_dataset_without_decodable_pictures_is_refused(tmp_path: Path) -> None:
    dataset = read_grocery_store(GROCERY, "val")
    with pytest.raises(EvaluationError) as caught:
        evaluate_classifier(SHIPPED, replace(dataset, items=[]))
    assert caught.value.reason == "no_pictures"
