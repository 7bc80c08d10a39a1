"""INT8 quantisation of a detector directory, and the mAP it is judged by."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from detector.backends import load
from detector.evaluate import evaluate_detector
from detector.quantize import (
    VAL_CONF,
    VAL_IOU,
    VAL_MAX_DET,
    EvaluationSet,
    evaluate_backend,
    parse_evaluation_set,
    quantize_detector,
)
from shelftally.runtimes.int8 import INT8_XML, read_record
from tests.detector.conftest import toy_picture, write_toy_dataset

pytest.importorskip("nncf", reason="INT8 quantisation needs nncf (extra shelftally[int8])")


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh toy dataset (other pictures than the tiny detector was trained on)."""
    return write_toy_dataset(tmp_path_factory.mktemp("toy-int8"), n_train=32, n_val=24, seed=7)


@pytest.fixture(scope="module")
def quantized(tiny_detector: Path, toy_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = tmp_path_factory.mktemp("det-int8") / "model"
    shutil.copytree(tiny_detector, model)
    quantize_detector(model, toy_data, [EvaluationSet(toy_data, "val", name="toy/val")], calibration_pictures=32,
                      threads=1, command="pytest")
    return model


def test_backend_map_matches_ultralytics_validator(tiny_detector: Path, toy_data: Path) -> None:
    """Our scoring of a backend and ultralytics' validator on the .pt agree on the same pictures."""
    reference = evaluate_detector(tiny_detector, toy_data, split="val")
    backend = load(tiny_detector, backend="onnx", conf=VAL_CONF, iou=VAL_IOU, max_det=VAL_MAX_DET, threads=1)
    ours = evaluate_backend(backend, toy_data, split="val")
    assert (ours["images"], ours["boxes"]) == (reference["images"], reference["boxes"])
    assert reference["mAP50"] > 0.5
    assert ours["mAP50"] == pytest.approx(reference["mAP50"], abs=0.03)
    assert ours["mAP50-95"] == pytest.approx(reference["mAP50-95"], abs=0.03)


def test_record_and_gate(quantized: Path) -> None:
    record = read_record(quantized)
    assert record.metric == "mAP50" and record.calibration["pictures"] == 32
    scores = record.evaluations["toy/val"]
    assert scores["pictures"] == 24 and scores["fp32"] > 0.5 and scores["int8"] > 0.0
    assert scores["fp32_detail"]["mAP50"] == scores["fp32"]
    assert scores["fp32_detail"]["boxes"] > 0 and not (quantized / "openvino-int8.staged").exists()
    drop = record.worst_drop_points()
    used = load(quantized, backend="openvino", openvino_precision="int8", int8_max_drop_points=drop + 1, threads=1)
    assert used.precision == "int8" and used.version.endswith("-int8")


def test_a_record_outside_the_margin_runs_fp32(quantized: Path, tmp_path: Path) -> None:
    copy = tmp_path / "model"
    shutil.copytree(quantized, copy)
    data = json.loads((copy / "openvino-int8" / "int8.json").read_text())
    data["evaluations"]["toy/val"]["int8"] = data["evaluations"]["toy/val"]["fp32"] - 0.02  # 2 points lost
    (copy / "openvino-int8" / "int8.json").write_text(json.dumps(data))
    assert load(copy, backend="openvino", openvino_precision="int8", int8_max_drop_points=1.0).precision == "fp32"
    assert load(copy, backend="openvino", openvino_precision="int8", int8_max_drop_points=2.5).precision == "int8"


def test_a_failed_quantisation_keeps_the_previous_int8_and_its_record(
    quantized: Path, toy_data: Path, tmp_path: Path
) -> None:
    from detector.errors import DatasetError

    copy = tmp_path / "model"
    shutil.copytree(quantized, copy)
    before = {p.name: p.read_bytes() for p in (copy / "openvino-int8").iterdir()}
    with pytest.raises(DatasetError) as raised:  # the toy set has no test split: found while scoring
        quantize_detector(copy, toy_data, [EvaluationSet(toy_data, "test")], calibration_pictures=4, threads=1)
    assert raised.value.reason == "missing_split"
    assert {p.name: p.read_bytes() for p in (copy / "openvino-int8").iterdir()} == before
    assert not (copy / "openvino-int8.staged").exists()


def test_an_unlabelled_split_cannot_vouch_for_int8(tiny_detector: Path, tmp_path: Path) -> None:
    from detector.errors import DatasetError

    data = write_toy_dataset(tmp_path / "toy", n_train=4, n_val=4, seed=9)
    for label in (tmp_path / "toy" / "labels" / "val").glob("*.txt"):
        label.write_text("")
    backend = load(tiny_detector, backend="onnx", conf=VAL_CONF, threads=1)
    with pytest.raises(DatasetError) as raised:
        evaluate_backend(backend, data, split="val")
    assert raised.value.reason == "no_labels"


def test_int8_boxes_follow_fp32(quantized: Path) -> None:
    """Same pictures, same boxes: most FP32 boxes have an INT8 box of the same class at IoU >= 0.7."""
    from tests.detector.test_backends import iou_matrix

    int8 = load(quantized, backend="openvino", openvino_precision="int8", int8_max_drop_points=100, threads=1)
    fp32 = load(quantized, backend="openvino", openvino_precision="f32", threads=1)
    rng = np.random.default_rng(3)
    matched = total = 0
    for _ in range(12):
        image, _ = toy_picture(rng)
        a, b = int8.predict([image])[0], fp32.predict([image])[0]
        total += len(b)
        if len(a) and len(b):
            iou = iou_matrix(b.xyxy, a.xyxy) * (b.class_id[:, None] == a.class_id[None, :])
            matched += int(np.sum(iou.max(axis=1) >= 0.7))
    assert total > 0 and matched / total >= 0.8


def test_stale_int8_is_not_used(quantized: Path, tmp_path: Path) -> None:
    copy = tmp_path / "model"
    shutil.copytree(quantized, copy)
    data = json.loads((copy / "openvino-int8" / "int8.json").read_text())
    data["source_sha256"] = "0" * 64  # as if model.onnx had been retrained since
    (copy / "openvino-int8" / "int8.json").write_text(json.dumps(data))
    assert (copy / INT8_XML).is_file()
    assert load(copy, backend="openvino", openvino_precision="int8", threads=1).precision == "fp32"


def test_parse_evaluation_set() -> None:
    assert parse_evaluation_set("a/data.yaml:val") == EvaluationSet(Path("a/data.yaml"), "val")
    assert parse_evaluation_set("a/data.yaml") == EvaluationSet(Path("a/data.yaml"), "test")
    assert parse_evaluation_set("C:/x/data.yaml") == EvaluationSet(Path("C:/x/data.yaml"), "test")
    for wrong in ("a/data.yaml:valid", "a/data.yaml:TEST", ":val"):
        with pytest.raises(ValueError):
            parse_evaluation_set(wrong)
    assert EvaluationSet(Path("/x/pallets/data.yaml"), "test").label == "pallets/test"
