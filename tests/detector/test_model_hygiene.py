"""What an operator runs into on a bad day: stale exports, wrong folders, wrong inputs, wrong sets."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from detector.backends import load
from detector.errors import DatasetError, DetectorError, ModelLoadError
from detector.evaluate import evaluate_detector
from detector.export import export_openvino
from detector.tiling import detect
from detector.train import train_detector
from tests.detector.conftest import write_toy_dataset
from workers.cli import app


@pytest.fixture
def model_copy(tiny_detector: Path, tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(tiny_detector, target)
    shutil.rmtree(target / "openvino")
    export_openvino(target)  # records which model.onnx the IR came from
    return target


def test_openvino_ir_of_earlier_weights_is_refused(model_copy: Path) -> None:
    load(model_copy, backend="openvino").close()  # matching IR loads
    onnx = model_copy / "model.onnx"
    onnx.write_bytes(onnx.read_bytes() + b"\0")  # stands for retrained weights (never parsed: the check comes first)
    with pytest.raises(ModelLoadError) as info:
        load(model_copy, backend="openvino")
    assert info.value.reason == "stale_openvino"
    assert "--format openvino" in str(info.value)


@pytest.mark.parametrize("kind", ["file", "foreign_folder"])
def test_train_refuses_an_output_that_is_not_a_model_directory(tmp_path: Path, kind: str) -> None:
    out = tmp_path / "out"
    if kind == "file":
        out.write_text("x")
    else:
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    data = write_toy_dataset(tmp_path / "data", n_train=4, n_val=2)
    with pytest.raises(DetectorError) as info:
        train_detector(data, out_dir=out, imgsz=64, epochs=1, batch=2)
    assert info.value.reason == "invalid_out_dir"
    assert kind == "file" or (out / "notes.txt").read_text() == "mine"


def test_train_refuses_a_cuda_device_this_machine_lacks(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    data = write_toy_dataset(tmp_path / "data", n_train=4, n_val=2)
    with pytest.raises(Exception) as info:
        train_detector(data, out_dir=tmp_path / "m", imgsz=64, epochs=1, batch=2, device="cuda:0")
    assert getattr(info.value, "reason", None) == "invalid_device"


def test_evaluate_refuses_a_dataset_with_other_classes(tiny_detector: Path, tmp_path: Path) -> None:
    data = write_toy_dataset(tmp_path / "data", n_train=4, n_val=4)
    data.write_text(data.read_text().replace("names: ['red', 'blue']", "names: ['cola', 'juice']"))
    with pytest.raises(DatasetError) as info:
        evaluate_detector(tiny_detector, data, split="val")
    assert info.value.reason == "class_mismatch" and "--agnostic" in str(info.value)
    with pytest.raises(DatasetError) as missing:
        evaluate_detector(tiny_detector, data, split="test")
    assert missing.value.reason == "missing_split" and "train, val" in str(missing.value)


def test_a_corrupt_checkpoint_is_a_model_load_error(tiny_detector: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_detector, broken)
    (broken / "model.pt").write_bytes(b"not a checkpoint")
    data = write_toy_dataset(tmp_path / "data", n_train=4, n_val=4)
    with pytest.raises(ModelLoadError) as info:
        evaluate_detector(broken, data, split="val")
    assert info.value.reason == "model_file_unreadable"


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.zeros((64, 64, 3), np.uint8), "wrap a single picture in a list"),
        (None, "received NoneType"),
        ("picture.jpg", "received str"),
    ],
)
def test_predict_explains_what_it_wants(tiny_detector: Path, images: object, message: str) -> None:
    backend = load(tiny_detector, backend="onnx")
    with pytest.raises(ValueError, match=message):
        backend.predict(images)  # type: ignore[arg-type]
    assert backend.predict(iter([np.zeros((64, 64, 3), np.uint8)]))[0].xyxy.shape[1] == 4  # any iterable


def test_detect_wants_one_picture(tiny_detector: Path) -> None:
    backend = load(tiny_detector, backend="onnx")
    with pytest.raises(ValueError, match="one \\(H, W, 3\\) uint8 RGB array, received list"):
        detect(backend, [np.zeros((64, 64, 3), np.uint8)])  # type: ignore[arg-type]


def test_cli_errors_print_paths_with_brackets_verbatim(tmp_path: Path) -> None:
    folder = tmp_path / "we[" / "ird]"  # the path reads .../we[/ird]/data.yaml: a rich closing tag
    folder.mkdir(parents=True)
    (folder / "data.yaml").write_text("this: [is: not yaml")
    result = CliRunner().invoke(app, ["detector", "train", "--data", str(folder / "data.yaml"), "--out",
                                      str(tmp_path / "m"), "--imgsz", "64", "--epochs", "1"])
    assert result.exit_code == 1, result.output
    assert "we[/ird]" in result.output and "Traceback" not in result.output
