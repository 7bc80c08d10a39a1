"""INT8 quantisation of a classifier directory (NNCF, OpenVINO) and the gate that decides whether it runs."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from classifier.backends import load
from classifier.dataset import load_image, read_image_folder
from classifier.quantize import quantize_classifier, top1
from classifier.recognize import Recognizer
from shelftally.runtimes.int8 import INT8_RECORD, INT8_XML, read_record
from tests.classifier.conftest import SHAPE_CLASSES, write_shape_folder

pytest.importorskip("nncf", reason="INT8 quantisation needs nncf (extra shelftally[int8])")


@pytest.fixture(scope="module")
def quantized(trained_shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A copy of the trained shapes classifier quantised on fresh pictures of its SKUs, and its val folder."""
    model = tmp_path_factory.mktemp("int8") / "model"
    shutil.copytree(trained_shapes, model, ignore=shutil.ignore_patterns("openvino"))
    labels = json.loads((model / "labels.json").read_text())
    classes = [i for i, entry in enumerate(SHAPE_CLASSES) if entry[0] in labels]
    calibration = write_shape_folder(tmp_path_factory.mktemp("calibration"), classes, 8, seed=11)
    val = write_shape_folder(tmp_path_factory.mktemp("val"), classes, 10, seed=12)
    quantize_classifier(model, read_image_folder(calibration), read_image_folder(val, split="val"),
                        calibration_pictures=24, threads=1, command="pytest")
    return model, val


def test_record_holds_fp32_and_int8_top1_measured_on_the_val_pictures(quantized: tuple[Path, Path]) -> None:
    model, val = quantized
    assert (model / INT8_XML).is_file() and (model / "openvino" / "model.xml").is_file()
    record = read_record(model)
    assert record.metric == "top1" and record.calibration["pictures"] == 24 and record.command == "pytest"
    (name, scores), = record.evaluations.items()
    assert scores["pictures"] == len(read_image_folder(val).items)
    dataset = read_image_folder(val, split="val")
    assert scores["fp32"] == pytest.approx(top1(load(model, backend="openvino", openvino_precision="f32", threads=1),
                                                dataset), abs=1e-4)
    assert scores["fp32"] > 0.45  # well above chance (4 SKUs: 0.25): a baseline INT8 can lose against
    assert json.loads((model / INT8_RECORD).read_text())["delta_points"][name] == pytest.approx(
        (scores["int8"] - scores["fp32"]) * 100, abs=0.01)


def test_int8_runs_within_the_margin_and_agrees_with_fp32(quantized: tuple[Path, Path]) -> None:
    model, val = quantized
    drop = read_record(model).worst_drop_points()
    int8 = load(model, backend="openvino", openvino_precision="int8", int8_max_drop_points=drop + 0.5, threads=1)
    fp32 = load(model, backend="openvino", openvino_precision="f32", threads=1)
    assert int8.precision == "int8" and int8.version == fp32.version + "-int8"
    crops = [load_image(item.path) for item in read_image_folder(val).items]
    a, b = int8.classify(crops), fp32.classify(crops)
    assert np.mean(a.class_id == b.class_id) >= 0.8  # a weakly trained toy: small margins, some flips (0.875 seen)
    cosine = np.sum(a.embedding * b.embedding, axis=1) / (
        np.linalg.norm(a.embedding, axis=1) * np.linalg.norm(b.embedding, axis=1))
    assert float(np.median(cosine)) > 0.95


def test_outside_the_margin_fp32_runs_with_a_warning(
    quantized: tuple[Path, Path], caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    model, _ = quantized
    worse = tmp_path / "model"
    shutil.copytree(model, worse)
    data = json.loads((worse / INT8_RECORD).read_text())
    for scores in data["evaluations"].values():
        scores["int8"] = scores["fp32"] - 0.05  # as if INT8 had lost 5 points
    (worse / INT8_RECORD).write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING):
        backend = load(worse, backend="openvino", openvino_precision="int8", int8_max_drop_points=1.0, threads=1)
    assert backend.precision == "fp32" and not backend.version.endswith("-int8")
    assert "int8_accuracy_outside_margin" in caplog.text
    recognizer = Recognizer.from_model_dir(worse, backend="openvino", openvino_precision="int8",
                                           int8_max_drop_points=10.0, threads=1)
    assert recognizer.backend.precision == "int8"
