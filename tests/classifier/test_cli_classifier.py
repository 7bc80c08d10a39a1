"""``shelftally classifier train`` and ``shelftally sku enroll / gallery``, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from typer.testing import CliRunner

from tests.classifier.conftest import shape_crop, write_shape_folder
from workers.cli import app

runner = CliRunner()


def test_train_enroll_and_list_gallery(tmp_path: Path, one_torch_thread: None) -> None:
    data = write_shape_folder(tmp_path / "data", [0, 1, 2], 10, seed=3)
    model = tmp_path / "model"
    result = runner.invoke(app, [
        "classifier", "train", "--data", str(data), "--format", "folder", "--out", str(model),
        "--backbone", "mobilenet_v3_small", "--input-size", "64", "--epochs", "2", "--batch", "8",
    ])
    assert result.exit_code == 0, result.output
    assert "top1" in result.output
    metrics = json.loads((model / "metrics.json").read_text())
    assert metrics["epochs_run"] == 2 and metrics["openset"]["calibration"] == "known_quantile"
    assert json.loads((model / "labels.json").read_text()) == ["blue-square", "green-disc", "red-disc"]

    picture = tmp_path / "cross.png"
    crop = shape_crop(np.random.default_rng(0), 7, packshot=True)
    cv2.imwrite(str(picture), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
    result = runner.invoke(app, ["sku", "enroll", "SKU-CROSS", str(picture), "--model", str(model)])
    assert result.exit_code == 0, result.output
    assert "v0001.npz" in result.output
    result = runner.invoke(app, ["sku", "gallery", "--model", str(model)])
    assert result.exit_code == 0, result.output
    assert "* v0001.npz: 1 SKU(s): SKU-CROSS" in result.output


def test_errors_print_their_reason(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["classifier", "train", "--data", str(empty), "--format", "folder",
                                 "--out", str(tmp_path / "m")])
    assert result.exit_code == 1
    assert "no_classes" in result.output
    result = runner.invoke(app, ["classifier", "train", "--data", str(empty), "--format", "yolo",
                                 "--out", str(tmp_path / "m")])
    assert result.exit_code == 2
    result = runner.invoke(app, ["sku", "gallery", "--model", str(empty)])
    assert result.exit_code == 0 and "nothing enrolled" in result.output
