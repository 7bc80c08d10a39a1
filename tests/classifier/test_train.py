"""Training on generated SKUs: the model directory, its metrics, open-set rejection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from classifier.model_dir import read_model_dir
from classifier.openset import (
    auroc,
    class_prototypes,
    prototype_scores,
    read_openset,
    read_prototypes,
    threshold_for_false_accept,
    threshold_for_false_reject,
)
from classifier.recognize import Recognizer
from classifier.train import classification_metrics
from classifier.types import UNKNOWN_CLASS_ID
from tests.classifier.conftest import SHAPE_CLASSES, TOY_INPUT, shape_crop, write_shape_folder

METRIC_KEYS = {
    "top1", "top5", "macro_precision", "macro_recall", "macro_f1", "per_class_accuracy", "training_seconds",
    "epochs_run", "openset",
}


def test_training_writes_a_complete_model_dir(trained_shapes: Path) -> None:
    directory = read_model_dir(trained_shapes)
    for name in ("model.pt", "model.onnx", "architecture.json", "labels.json", "preprocess.json", "metrics.json",
                 "provenance.json", "prototypes.npy", "openset.json"):
        assert (trained_shapes / name).is_file(), name
    assert set(directory.metrics) >= METRIC_KEYS
    assert directory.num_classes == 4  # 6 generated SKUs, 2 held out
    held = directory.metrics["openset"]["held_out_classes"]
    assert len(held) == 2 and not set(held) & set(directory.labels)
    assert set(directory.metrics["per_class_accuracy"]) == set(directory.labels)
    assert 1 <= directory.metrics["epochs_run"] <= 6
    provenance = directory.provenance
    assert len(provenance["dataset"]["sha256"]) == 64
    assert provenance["recipe"]["backbone"] == "mobilenet_v3_small"
    assert {"torch", "torchvision", "numpy"} <= set(provenance["versions"])
    assert provenance["created_at"].endswith("+00:00") and provenance["command"]
    assert read_prototypes(trained_shapes, num_classes=4).shape == (4, 64)


def test_trained_model_beats_chance_widely(trained_shapes: Path) -> None:
    metrics = read_model_dir(trained_shapes).metrics
    assert metrics["top1"] >= 0.6  # chance: 0.25
    assert metrics["top5"] == 1.0  # 4 classes


def test_held_out_classes_are_unknown_at_about_the_calibrated_rate(trained_shapes: Path) -> None:
    directory = read_model_dir(trained_shapes)
    calibration = read_openset(trained_shapes)
    assert calibration is not None and calibration.calibration == "holdout"
    assert calibration.target_false_accept_rate == pytest.approx(0.1)
    assert 0.5 < directory.metrics["openset"]["auroc"] <= 1.0
    names = [name for name, _, _ in SHAPE_CLASSES]
    held = [names.index(code) for code in directory.metrics["openset"]["held_out_classes"]]
    rng = np.random.default_rng(7)
    crops = [shape_crop(rng, held[i % 2]) for i in range(100)]
    with Recognizer.from_model_dir(trained_shapes, backend="onnx", threads=1) as recognizer:
        result = recognizer.classify(crops)
    accepted = float(result.known.mean())
    assert accepted <= 0.3  # target 0.1; 30 calibration crops, a tiny model
    assert np.all(result.class_id[~result.known] == UNKNOWN_CLASS_ID)
    assert all(code is None for code, known in zip(result.sku_code, result.known, strict=True) if not known)


@pytest.mark.parametrize(
    ("known", "unknown", "expected"),
    [
        ([0.9, 0.8], [0.1, 0.2], 1.0),
        ([0.1, 0.2], [0.9, 0.8], 0.0),
        ([0.5, 0.5], [0.5, 0.5], 0.5),
        ([0.9, 0.3], [0.5], 0.5),
    ],
)
def test_auroc_table(known: list[float], unknown: list[float], expected: float) -> None:
    assert auroc(np.array(known), np.array(unknown)) == pytest.approx(expected)


def test_auroc_needs_both_groups() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        auroc(np.zeros(0), np.ones(3))


def test_thresholds_hit_their_rates() -> None:
    scores = np.linspace(0.0, 0.99, 100)
    assert float((scores >= threshold_for_false_accept(scores, 0.1)).mean()) == pytest.approx(0.1)
    assert float((scores >= threshold_for_false_accept(scores, 0.0)).mean()) == 0.0
    assert float((scores < threshold_for_false_reject(scores, 0.05)).mean()) == pytest.approx(0.05)


def test_prototypes_are_unit_class_means() -> None:
    embeddings = np.array([[1, 0], [0.6, 0.8], [0, 1]], np.float32)
    prototypes = class_prototypes(embeddings, np.array([0, 0, 1]), 3)
    assert prototypes.shape == (3, 2)
    np.testing.assert_allclose(np.linalg.norm(prototypes[:2], axis=1), 1.0, atol=1e-6)
    assert not prototypes[2].any()  # a class without items matches nothing
    score, index = prototype_scores(np.array([[0, 1]], np.float32), prototypes)
    assert index.tolist() == [1] and score[0] == pytest.approx(1.0)
    assert prototype_scores(np.zeros((0, 2), np.float32), prototypes)[0].shape == (0,)


def test_classification_metrics_table() -> None:
    logits = np.array([[3, 1, 0], [0, 3, 1], [0, 3, 1], [1, 0, 3]], np.float32)
    metrics = classification_metrics(logits, np.array([0, 1, 2, 2]), ["a", "b", "c"])
    assert metrics["top1"] == pytest.approx(0.75)
    assert metrics["per_class_accuracy"] == {"a": 1.0, "b": 1.0, "c": 0.5}
    assert metrics["macro_recall"] == pytest.approx(2.5 / 3)
    assert metrics["macro_precision"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert classification_metrics(np.zeros((0, 3), np.float32), np.zeros(0, np.int64), ["a", "b", "c"])["top1"] == 0


def test_metrics_json_is_plain_json(trained_shapes: Path) -> None:
    metrics = json.loads((trained_shapes / "metrics.json").read_text())
    assert isinstance(metrics["training_seconds"], float) and metrics["training_seconds"] > 0


def test_a_probe_on_random_weights_ships_the_backbone_it_measured(
    tmp_path: Path, shapes_folder: Path, one_torch_thread: None
) -> None:
    """The features a probe trains on and the network it writes come from one backbone, so the
    deployed model scores what metrics.json says (cross-validation on: it must not change that)."""
    from classifier.backends import load
    from classifier.dataset import load_image, read_image_folder
    from classifier.train import train_classifier

    val = read_image_folder(write_shape_folder(tmp_path / "val", list(range(6)), 8, seed=2))
    out = train_classifier(read_image_folder(shapes_folder), val=val, out_dir=tmp_path / "probe",
                           backbone="resnet18", mode="probe", input_size=TOY_INPUT, epochs=8, batch=16,
                           probe_views=1, cv_folds=2, seed=0)
    measured = json.loads((out / "metrics.json").read_text())["top1"]
    backend = load(out, backend="torch")
    try:
        named = backend.classify([load_image(item.path) for item in val.items])
    finally:
        backend.close()
    deployed = float(np.mean(named.class_id == np.array([item.class_index for item in val.items])))
    assert measured > 0.5  # well above chance (1/6): a network with another backbone would not get it
    assert abs(deployed - measured) <= 2 / len(val.items)  # the cached copies are resized once more


def test_cross_validation_does_not_change_the_model_trained(
    tmp_path: Path, shapes_folder: Path, one_torch_thread: None
) -> None:
    import torch

    from classifier.dataset import read_image_folder
    from classifier.train import train_classifier

    dataset = read_image_folder(shapes_folder)
    stored = []
    for folds in (0, 2):
        out = train_classifier(dataset, out_dir=tmp_path / f"cv{folds}", backbone="resnet18", mode="probe",
                               input_size=TOY_INPUT, epochs=3, batch=16, probe_views=1, cv_folds=folds, seed=0)
        stored.append(torch.load(out / "model.pt", weights_only=True))
    assert stored[0].keys() == stored[1].keys()
    assert all(torch.equal(stored[0][k], stored[1][k]) for k in stored[0])
