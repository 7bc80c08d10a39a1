"""Enrollment evaluation: held-out SKUs enrolled from a packshot or a few pictures, then recognised."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from classifier.evaluate import EvaluationError, evaluate_enrollment, recognition_accuracy
from classifier.gallery import list_versions
from classifier.model_dir import read_model_dir
from tests.classifier.conftest import write_shape_grocery
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
