"""Merging labelled sets into one class-agnostic product dataset, and FP16 weight storage of an ONNX model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from detector.errors import DatasetError
from detector.merge import MergeSource, merge_datasets, parse_source
from tests.detector.conftest import write_toy_dataset
from tests.detector.test_backends import iou_matrix


def _roboflow_polygons(root: Path) -> Path:
    """A Roboflow-style set: ``valid`` folder, polygons, two classes, a test split."""
    for split in ("train", "valid", "test"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "labels").mkdir(parents=True)
        for i in range(2):
            import cv2

            cv2.imwrite(str(root / split / "images" / f"{split}{i}.jpg"), np.full((40, 60, 3), 100, np.uint8))
            (root / split / "labels" / f"{split}{i}.txt").write_text("1 0.1 0.1 0.5 0.1 0.5 0.6 0.1 0.6\n")
    data = root / "data.yaml"
    data.write_text("train: ../train/images\nval: ../valid/images\ntest: ../test/images\nnc: 2\nnames: [a, b]\n")
    return data


def test_sources_become_one_product_class_and_keep_their_splits(tmp_path: Path) -> None:
    toy = write_toy_dataset(tmp_path / "toy", n_train=5, n_val=3)
    real = _roboflow_polygons(tmp_path / "real")
    report = merge_datasets([MergeSource(real), parse_source(f"{toy}:train")], tmp_path / "out")
    assert report.images == {"train": 7, "val": 2, "test": 2}
    data = yaml.safe_load((tmp_path / "out" / "data.yaml").read_text())
    assert data["names"] == ["product"] and data["nc"] == 1
    labels = list((tmp_path / "out" / "labels").rglob("*.txt"))
    classes = {line.split()[0] for path in labels for line in path.read_text().splitlines()}
    assert classes == {"0"}
    # The polygon became a box (x 0.1-0.5, y 0.1-0.6); the toy set's val pictures are not in val.
    polygon = (tmp_path / "out" / "labels" / "val" / "00-real" / "valid0.txt").read_text().split()
    assert [float(v) for v in polygon[1:]] == pytest.approx([0.3, 0.35, 0.4, 0.5])
    assert not list((tmp_path / "out" / "images" / "val").glob("01-*"))
    recorded = json.loads((tmp_path / "out" / "merge.json").read_text())
    assert recorded["sources"][1]["splits"] == {"train": {"images": 5, "boxes": report.boxes["train"] - 2}}
    again = merge_datasets([MergeSource(real), parse_source(f"{toy}:train")], tmp_path / "out")
    assert again.dataset_hash == report.dataset_hash  # rerun into the same folder replaces it


def test_bad_merges_are_typed_errors(tmp_path: Path) -> None:
    toy = write_toy_dataset(tmp_path / "toy", n_train=2, n_val=1)
    with pytest.raises(DatasetError) as caught:
        merge_datasets([parse_source(f"{toy}:test")], tmp_path / "a")
    assert caught.value.reason == "missing_split"
    with pytest.raises(DatasetError) as caught:
        merge_datasets([parse_source(f"{toy}:train")], tmp_path / "b")
    assert caught.value.reason == "split_empty"  # no val anywhere
    with pytest.raises(DatasetError) as caught:
        parse_source(f"{toy}:train,tests")
    assert caught.value.reason == "invalid_split"
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "precious.txt").write_text("keep me")
    with pytest.raises(DatasetError) as caught:
        merge_datasets([MergeSource(toy)], tmp_path / "c")
    assert caught.value.reason == "out_dir_not_empty" and (tmp_path / "c" / "precious.txt").is_file()


def test_fp16_weights_halve_the_onnx_file_and_keep_the_detections(tiny_detector: Path, tmp_path: Path) -> None:
    from detector.backends import load
    from detector.export import export_model_dir, store_weights_fp16
    from tests.detector.conftest import toy_picture

    model = tmp_path / "model"
    shutil.copytree(tiny_detector, model, ignore=shutil.ignore_patterns("model.pt", "openvino"))
    before = (model / "model.onnx").stat().st_size
    rng = np.random.default_rng(21)
    pictures = [toy_picture(rng)[0] for _ in range(6)]
    reference = load(model, backend="onnx", warmup=False).predict(pictures)
    export_model_dir(model, "onnx", fp16_weights=True)  # no model.pt: converts model.onnx
    assert (model / "model.onnx").stat().st_size < 0.6 * before
    assert store_weights_fp16(model / "model.onnx")["converted"] == 0  # already converted
    converted = load(model, backend="onnx", warmup=False).predict(pictures)
    for ours, theirs in zip(converted, reference, strict=True):
        assert len(ours) == len(theirs)
        if len(ours):
            assert iou_matrix(ours.xyxy, theirs.xyxy).max(axis=1).min() > 0.98
            assert np.abs(np.sort(ours.confidence) - np.sort(theirs.confidence)).max() < 0.01
