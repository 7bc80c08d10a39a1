"""The detector-as-counter evaluation: greedy matching, count error, thresholds, COCO and YOLO input, the CLI."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from detector.counting import (
    PictureCount,
    count_error,
    evaluate_counts,
    match_greedy,
    recommend,
    summarize,
)
from detector.errors import DatasetError, ModelLoadError
from detector.model_dir import INFERENCE, read_model_dir
from detector.types import Detections
from tests.detector.conftest import toy_picture


def _boxes(*rows: tuple[float, float, float, float]) -> np.ndarray:
    return np.array(rows, np.float32).reshape(-1, 4)


def test_one_true_box_is_taken_once_by_the_most_confident_overlapping_detection() -> None:
    truth = _boxes((0, 0, 10, 10))
    detected = _boxes((0, 0, 10, 10), (1, 0, 11, 10))
    assert match_greedy(detected, np.array([0.4, 0.9], np.float32), truth).tolist() == [False, True]


def test_a_detection_takes_the_free_true_box_it_overlaps_most() -> None:
    truth = _boxes((0, 0, 10, 10), (6, 0, 16, 10))
    detected = _boxes((5, 0, 15, 10), (0, 0, 10, 10))
    # The first (more confident) overlaps the second true box more (IoU 0.82 against 0.33); the
    # second detection then still finds the first true box free.
    assert match_greedy(detected, np.array([0.9, 0.8], np.float32), truth).tolist() == [True, True]


def test_iou_under_a_half_is_no_match_and_no_truth_means_no_hit() -> None:
    truth = _boxes((0, 0, 10, 10))
    assert match_greedy(_boxes((5, 0, 15, 10)), np.array([0.9], np.float32), truth).tolist() == [False]  # IoU 1/3
    assert match_greedy(_boxes((0, 0, 10, 10)), np.array([0.9], np.float32), _boxes()).tolist() == [False]
    assert match_greedy(_boxes(), np.zeros(0, np.float32), truth).tolist() == []
    with pytest.raises(ValueError, match="confidences"):
        match_greedy(_boxes((0, 0, 1, 1)), np.zeros(2, np.float32), truth)


def test_count_error_is_relative_and_undefined_without_true_boxes() -> None:
    assert count_error(8, 10) == pytest.approx(0.2)
    assert count_error(12, 10) == pytest.approx(0.2)
    assert count_error(0, 0) is None
    assert count_error(3, 0) is None
    with pytest.raises(ValueError):
        count_error(-1, 2)


def _picture(name: str, true: int, conf: list[float], hit: list[bool]) -> PictureCount:
    return PictureCount(name, true, np.array(conf, np.float32), np.array(hit, bool))


def test_summary_by_hand_with_an_empty_photo_and_a_confidence_threshold() -> None:
    pictures = [
        # 10 products, 10 confident right boxes and one low-confidence wrong one
        _picture("a", 10, [0.9] * 10 + [0.1], [True] * 10 + [False]),
        # 5 products, 3 found, one wrong box: detected 4 of 5 -> error 0.2, not within 10 %
        _picture("b", 5, [0.8, 0.7, 0.6, 0.5], [True, True, True, False]),
        # no product, nothing detected above 0.3: within
        _picture("c", 0, [0.2], [False]),
        # no product, two boxes: not within
        _picture("d", 0, [0.9, 0.6], [False, False]),
    ]
    report = summarize(pictures, confidence=0.3)
    assert (report.pictures, report.true_boxes, report.detected_boxes) == (4, 15, 16)
    assert report.precision == pytest.approx(round(13 / 16, 4))
    assert report.recall == pytest.approx(round(13 / 15, 4))
    assert report.count_error == pytest.approx(round((0.0 + 0.2) / 2, 4))  # photos with true boxes only
    assert report.count_within_10pct == pytest.approx(0.5)  # a and c
    assert (report.empty_pictures, report.false_boxes_on_empty) == (2, 2)
    assert 0.0 < report.mAP50 <= 1.0


def test_no_true_box_anywhere_gives_zero_recall_and_no_count_error() -> None:
    report = summarize([_picture("a", 0, [], []), _picture("b", 0, [0.9], [False])], confidence=0.25)
    assert (report.recall, report.precision, report.count_error, report.mAP50) == (0.0, 0.0, None, 0.0)
    assert report.count_within_10pct == pytest.approx(0.5)


def test_perfect_detections_score_one_and_the_best_f1_threshold_drops_the_wrong_boxes() -> None:
    pictures = [_picture("a", 3, [0.9, 0.8, 0.7, 0.2, 0.1], [True, True, True, False, False])]
    report = summarize(pictures, confidence=0.05)
    assert report.recall == 1.0 and report.precision == pytest.approx(0.6)
    assert report.mAP50 == pytest.approx(1.0, abs=0.01)
    # The threshold sits just under the third box's score: the backends keep scores > conf.
    assert report.best_f1_confidence == pytest.approx(0.6999) and report.best_f1 == pytest.approx(1.0)
    assert summarize(pictures, confidence=report.best_f1_confidence).precision == 1.0
    settings = recommend(pictures)
    assert settings["confidence"] == pytest.approx(0.6999) and settings["max_det"] == 300


def test_recommended_object_size_is_the_smallest_of_the_photos_counted_at_least_half_right() -> None:
    def sized(name: str, size: float, hits: int, true: int = 4) -> PictureCount:
        return PictureCount(name, true, np.array([0.9] * hits, np.float32), np.array([True] * hits, bool),
                            object_px=size)

    # Ten close-ups counted right (sizes 100..190 px), one photo of small products the model missed
    # (20 px: not evidence that it sees them), one photo without products.
    pictures = [sized(f"c{i}", 100.0 + 10 * i, 4) for i in range(10)] + [sized("missed", 20.0, 1)]
    pictures.append(PictureCount("empty", 0, np.zeros(0, np.float32), np.zeros(0, bool)))
    settings = recommend(pictures)
    assert settings["object_px"] == 100.0  # the smallest counted, not the typical size (145)
    assert "object_px" not in recommend([sized("missed", 20.0, 1)])  # nothing counted half right: no size


class _Scripted:
    """A backend that returns fixed detections per picture size (so tiling never applies: small photos)."""

    def __init__(self, by_width: dict[int, Detections]) -> None:
        self.by_width = by_width
        self.preprocess = SimpleNamespace(input_size=640)
        self.config = SimpleNamespace(max_det=300, iou=0.45)

    def predict(self, images: list[np.ndarray]) -> list[Detections]:
        return [self.by_width[image.shape[1]] for image in images]


def _det(rows: list[tuple[float, float, float, float, float]]) -> Detections:
    array = np.array(rows, np.float32).reshape(-1, 5)
    return Detections(array[:, :4], array[:, 4], np.zeros(len(array), np.int64))


def _write_coco(root: Path, pictures: list[tuple[int, list[list[float]]]], broken: bool = False) -> Path:
    images, annotations = [], []
    for index, (width, boxes) in enumerate(pictures):
        name = f"p{index}.jpg"
        cv2.imwrite(str(root / name), np.full((60, width, 3), 128, np.uint8))
        images.append({"id": index + 1, "file_name": name, "width": width, "height": 60})
        for box in boxes:
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, "bbox": box, "category_id": 1})
    if broken:
        (root / "bad.jpg").write_bytes(b"not a jpeg")
        images.append({"id": 99, "file_name": "bad.jpg", "width": 10, "height": 10})
    path = root / "coco.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1}]}))
    return path


def test_coco_photos_with_hand_made_boxes_and_an_undecodable_one(tmp_path: Path) -> None:
    coco = _write_coco(tmp_path, [
        (100, [[0, 0, 10, 10], [20, 0, 10, 10]]),  # two products (xywh), both found
        (101, []),  # an empty shelf, one false box
    ], broken=True)
    backend = _Scripted({100: _det([(0, 0, 10, 10, 0.9), (20, 0, 30, 10, 0.8)]), 101: _det([(5, 5, 9, 9, 0.5)])})
    report, pictures = evaluate_counts(backend, coco, confidence=0.25)  # type: ignore[arg-type]
    assert [p.true for p in pictures] == [2, 0]
    assert (report.precision, report.recall, report.count_error, report.count_within_10pct) == (
        pytest.approx(2 / 3, abs=1e-4), 1.0, 0.0, 0.5)
    assert report.false_boxes_on_empty == 1
    assert report.unreadable == (str(tmp_path / "bad.jpg"),)


def test_a_json_that_is_not_coco_is_a_typed_error(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text('{"images": [{"file_name": "a.jpg"}]}')
    with pytest.raises(DatasetError) as caught:
        evaluate_counts(_Scripted({}), path, confidence=0.25)  # type: ignore[arg-type]
    assert caught.value.reason == "invalid_coco"


def _toy_coco(root: Path, n: int = 12, seed: int = 3) -> tuple[Path, int]:
    rng = np.random.default_rng(seed)
    images, annotations, total = [], [], 0
    for index in range(n):
        image, rows = toy_picture(rng)
        if index == n - 1:  # one photo without products
            image, rows = toy_picture(rng)[0] * 0 + 128, rows[:0]
        cv2.imwrite(str(root / f"t{index}.png"), cv2.cvtColor(image.astype(np.uint8), cv2.COLOR_RGB2BGR))
        images.append({"id": index, "file_name": f"t{index}.png"})
        for _cls, x1, y1, x2, y2 in rows:
            annotations.append({"id": total, "image_id": index, "bbox": [float(x1), float(y1),
                                                                       float(x2 - x1), float(y2 - y1)]})
            total += 1
    path = root / "toy.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return path, total


def test_evaluate_detector_command_from_onnx_only_and_recommended_threshold(
    tiny_detector: Path, tmp_path: Path
) -> None:
    import shutil

    from workers.cli import app

    model = tmp_path / "model"
    shutil.copytree(tiny_detector, model, ignore=shutil.ignore_patterns("model.pt", "openvino"))
    coco, total = _toy_coco(tmp_path)
    runner = CliRunner()
    done = runner.invoke(app, ["evaluate", "detector", "--data", str(coco), "--detector", str(model), "--json",
                               "--recommend"])
    assert done.exit_code == 0, done.output
    result: dict[str, Any] = json.loads(done.stdout)
    assert result["true_boxes"] == total and result["pictures"] == 12 and result["empty_pictures"] == 1
    assert result["recall"] > 0.8 and result["precision"] > 0.8 and result["mAP50"] > 0.8
    assert result["confidence"] == 0.25  # no inference.json yet
    written = json.loads((model / INFERENCE).read_text())
    assert written["confidence"] == result["recommended"]["confidence"] == result["best_f1_confidence"]
    assert read_model_dir(model).confidence == written["confidence"]
    again = runner.invoke(app, ["evaluate", "detector", "--data", str(coco), "--detector", str(model), "--json",
                                "--record-as", "toy"])
    assert json.loads(again.stdout)["confidence"] == written["confidence"]  # the model's own threshold now
    recorded = json.loads((model / "metrics.json").read_text())
    assert recorded["counting"]["toy"]["recall"] == json.loads(again.stdout)["recall"]
    assert "mAP50" in recorded  # the training metrics stay
    missing = runner.invoke(app, ["evaluate", "detector", "--data", str(tmp_path / "toy.json"), "--detector",
                                  str(model), "--split", "val", "--json", "--tiling", "sometimes"])
    assert missing.exit_code == 2
    # Photos without any true box: nothing to choose a threshold from, the model's own is kept.
    unlabelled = tmp_path / "unlabelled.json"
    unlabelled.write_text(json.dumps({"images": json.loads(coco.read_text())["images"][:2], "annotations": []}))
    before = (model / INFERENCE).read_text()
    refused = runner.invoke(app, ["evaluate", "detector", "--data", str(unlabelled), "--detector", str(model),
                                  "--json", "--recommend"])
    assert refused.exit_code == 1 and json.loads(refused.stdout)["reason"] == "no_true_matches"
    assert (model / INFERENCE).read_text() == before


def test_backends_follow_the_model_directorys_inference_json(tiny_detector: Path, tmp_path: Path) -> None:
    import shutil

    from detector.backends import load

    model = tmp_path / "model"
    shutil.copytree(tiny_detector, model, ignore=shutil.ignore_patterns("model.pt", "openvino"))
    (model / INFERENCE).write_text(json.dumps({"confidence": 0.42, "max_det": 77}))
    loaded = load(model, backend="onnx", warmup=False)
    assert (loaded.config.conf, loaded.config.max_det) == (0.42, 77)
    assert load(model, backend="onnx", warmup=False, conf=0.1).config.conf == 0.1
    (model / INFERENCE).write_text(json.dumps({"confidence": 3}))
    with pytest.raises(ModelLoadError) as caught:
        read_model_dir(model)
    assert caught.value.reason == "invalid_inference"


def test_a_yolo_set_with_only_a_test_split_is_evaluated_and_a_missing_split_is_named(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    (tmp_path / "test" / "images").mkdir(parents=True)
    (tmp_path / "test" / "labels").mkdir(parents=True)
    for index in range(2):
        image, rows = toy_picture(rng)
        height, width = image.shape[:2]
        cv2.imwrite(str(tmp_path / "test" / "images" / f"p{index}.png"), image[:, :, ::-1].astype(np.uint8))
        (tmp_path / "test" / "labels" / f"p{index}.txt").write_text("".join(
            f"0 {(x1 + x2) / 2 / width} {(y1 + y2) / 2 / height} {(x2 - x1) / width} {(y2 - y1) / height}\n"
            for _cls, x1, y1, x2, y2 in rows))
    data = tmp_path / "data.yaml"
    data.write_text("test: test/images\nnames: [product]\n")  # a user's own labelled photos: no train, no val
    scripted = _Scripted(defaultdict(lambda: _det([])))
    report, pictures = evaluate_counts(scripted, data, split="test", confidence=0.25)  # type: ignore[arg-type]
    assert report.pictures == 2 and report.true_boxes == sum(p.true for p in pictures) > 0
    assert report.recall == 0.0  # the scripted backend finds nothing in these pictures
    with pytest.raises(DatasetError) as caught:
        evaluate_counts(scripted, data, split="val", confidence=0.25)  # type: ignore[arg-type]
    assert caught.value.reason == "missing_split" and "test" in str(caught.value)
