"""Training, evaluation and export through ultralytics, offline, on generated shelves.

The acceptance test trains a YOLOv8n (built from its YAML, no downloaded weights) on 128 pictures
made by :mod:`detector.synth` (256x192, 2-4 drawn products each, class-agnostic) for 10 epochs at
128 px with the default small-data recipe, and requires mAP50 >= 0.8 on 32 generated val
pictures. Measured on 2 CPU cores: about 40 s for training, evaluation and ONNX export.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from detector.dataset import prepare_dataset
from detector.errors import DatasetError, DetectorError, ModelLoadError
from detector.export import export_model_dir, export_onnx, export_openvino
from detector.model_dir import read_model_dir
from detector.synth import SceneConfig, drawn_packshots, write_synthetic_datasets
from detector.train import EpochProgress, resolve_model, train_detector
from shelftally.files import sha256_file

IMGSZ = 128
EPOCHS = 10


@pytest.fixture(scope="module")
def shelves(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated shelves: 128 train / 32 val / 16 test pictures; returns the class-agnostic data.yaml."""
    packshots = drawn_packshots([f"SKU-{i:02d}" for i in range(8)], height_px=96)
    config = SceneConfig(size_wh=(256, 192), min_objects=2, max_objects=4)
    result = write_synthetic_datasets(tmp_path_factory.mktemp("shelves"), packshots, n_images=176,
                                      val_fraction=0.18, test_fraction=0.09, seed=0, config=config)
    assert result.images == {"train": 128, "val": 32, "test": 16}
    return result.agnostic_yaml


@pytest.fixture(scope="module")
def trained(shelves: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[EpochProgress], float]:
    """The acceptance model directory, the progress reports it made, and its wall time in seconds."""
    reports: list[EpochProgress] = []
    started = time.monotonic()
    out = train_detector(shelves, model="yolov8n.yaml", imgsz=IMGSZ, epochs=EPOCHS, batch=8,
                         out_dir=tmp_path_factory.mktemp("model") / "detector", seed=0, progress=reports.append)
    return out, reports, time.monotonic() - started


@pytest.mark.slow
def test_tiny_detector_learns_generated_shelves(trained: tuple[Path, list[EpochProgress], float]) -> None:
    model_dir, _reports, seconds = trained
    metrics = read_model_dir(model_dir).metrics
    print(f"trained in {seconds:.1f} s: val mAP50 {metrics['mAP50']:.3f}, test mAP50 {metrics['test_mAP50']:.3f}")
    assert metrics["mAP50"] >= 0.8
    assert metrics["test_mAP50"] >= 0.7


@pytest.mark.slow
def test_model_directory_has_every_file_and_key(
    trained: tuple[Path, list[EpochProgress], float], shelves: Path, tmp_path: Path
) -> None:
    model_dir, _reports, _seconds = trained
    for name in ("model.pt", "model.onnx", "labels.json", "preprocess.json", "metrics.json", "provenance.json"):
        assert (model_dir / name).is_file(), name
    info = read_model_dir(model_dir)
    assert info.labels == ["product"]
    assert info.preprocess.input_size == IMGSZ and info.preprocess.stride == 32
    for key in ("mAP50", "mAP50-95", "precision", "recall", "test_mAP50", "test_mAP50-95", "test_precision",
                "test_recall"):
        assert 0.0 <= info.metrics[key] <= 1.0, key
    assert info.metrics["images"] == 32 and info.metrics["test_images"] == 16

    provenance = info.provenance
    # The hash is of the dataset's content: preparing it anew elsewhere gives the same one.
    assert provenance["dataset_hash"] == prepare_dataset(shelves, tmp_path / "again").dataset_hash
    assert re.fullmatch(r"[0-9a-f]{64}", provenance["dataset_hash"])
    recipe = provenance["recipe"]["requested"]
    assert recipe["nbs"] == 8 and recipe["optimizer"] == "AdamW" and recipe["lr0"] == 0.003
    assert recipe["mosaic"] == 0.0 and recipe["amp"] is False and recipe["warmup_epochs"] == 0.5
    assert provenance["recipe"]["ultralytics_args"]["epochs"] == EPOCHS
    for library in ("torch", "ultralytics", "onnx", "numpy", "python"):
        assert provenance["libraries"][library], library
    assert any(k.startswith("opencv") for k in provenance["libraries"])
    created = datetime.fromisoformat(provenance["created_at"])
    assert created.utcoffset() == timedelta(0)
    command = provenance["command"]
    assert command.startswith("shelftally detector train --data ")
    assert f"--imgsz {IMGSZ} --epochs {EPOCHS} --batch 8" in command and "--model yolov8n.yaml" in command


@pytest.mark.slow
def test_progress_reports_every_epoch(trained: tuple[Path, list[EpochProgress], float]) -> None:
    _model_dir, reports, _seconds = trained
    validated = [r for r in reports if r.validated]
    assert [r.epoch for r in reports if not r.validated] == list(range(1, EPOCHS + 1))
    assert {r.epoch for r in validated} == set(range(1, EPOCHS + 1))
    assert all(r.epochs == EPOCHS and set(r.losses) == {"box_loss", "cls_loss", "dfl_loss"} for r in reports)
    assert reports[0].val_map50 is None  # before the first validation
    assert validated[-1].val_map50 is not None and validated[-1].val_map50 >= 0.8
    assert all(b.elapsed_s >= a.elapsed_s for a, b in itertools.pairwise(reports))


@pytest.mark.slow
def test_onnx_has_dynamic_batch(trained: tuple[Path, list[EpochProgress], float]) -> None:
    import onnxruntime as ort

    model_dir, _reports, _seconds = trained
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "images"
    for batch in (1, 3):
        (output,) = session.run(None, {"images": np.random.default_rng(0).random((batch, 3, IMGSZ, IMGSZ),
                                                                                np.float32)})
        assert output.shape == (batch, 4 + 1, 336)  # cx, cy, w, h, one class; 16^2 + 8^2 + 4^2 anchors


@pytest.mark.slow
def test_openvino_export_matches_onnx(trained: tuple[Path, list[EpochProgress], float], tmp_path: Path) -> None:
    import onnxruntime as ort
    import openvino as ov

    model_dir, _reports, _seconds = trained
    xml = export_openvino(model_dir, tmp_path / "copy")
    assert xml == tmp_path / "copy" / "openvino" / "model.xml" and xml.with_suffix(".bin").is_file()
    batch = np.random.default_rng(1).random((2, 3, IMGSZ, IMGSZ), np.float32)
    (expected,) = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"images": batch}
    )
    # CPUs with bf16 support run OpenVINO in bf16 unless told otherwise: ask for f32 to compare graphs.
    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    received = compiled(batch)[compiled.output(0)]
    assert received.shape == expected.shape
    np.testing.assert_allclose(received, expected, rtol=1e-3, atol=1e-2)
    # From the checkpoint through ultralytics, and in place in the model directory.
    from_pt = export_openvino(model_dir / "model.pt", tmp_path / "from_pt")
    assert from_pt.is_file() and not list((tmp_path / "from_pt").glob("*_openvino_model"))
    assert export_model_dir(model_dir, "openvino") == model_dir / "openvino" / "model.xml"
    assert not list(model_dir.glob("*_openvino_model"))
    onnx_again = export_onnx(model_dir / "model.pt", tmp_path / "again.onnx", IMGSZ)
    assert onnx_again.is_file() and not (model_dir / "model_openvino_model").exists()


@pytest.mark.slow
def test_fine_tune_from_a_local_checkpoint(
    trained: tuple[Path, list[EpochProgress], float], shelves: Path, tmp_path: Path
) -> None:
    model_dir, _reports, _seconds = trained
    source = model_dir / "model.pt"
    out = train_detector(shelves, model=source, imgsz=IMGSZ, epochs=1, batch=8, out_dir=tmp_path / "tuned",
                         export=False, lr0=0.0005)
    info = read_model_dir(out)
    assert (out / "model.pt").is_file() and not (out / "model.onnx").exists()
    assert info.provenance["base_model"] == {"model": str(source.resolve()), "sha256": sha256_file(source)}
    assert "--fine-tune-from" in info.provenance["command"] and "--set lr0=0.0005" in info.provenance["command"]
    assert info.provenance["recipe"]["requested"]["lr0"] == 0.0005
    assert info.metrics["mAP50"] >= 0.5  # starts from a model that already knows the products


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        ("yolo11n.pt", "model_not_local"),  # ultralytics would download this one
        ("yolov8n", "model_not_local"),
        ("https://example.com/weights.pt", "model_not_local"),
        ("missing/folder/model.pt", "model_not_local"),
        ("yolov99z.yaml", "model_yaml_unknown"),
    ],
)
def test_models_that_would_need_a_download_are_refused(model: str, reason: str, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as caught:
        train_detector(tmp_path / "data.yaml", model=model, out_dir=tmp_path / "out", epochs=1)
    assert caught.value.reason == reason
    assert "download" in str(caught.value) or "ships" in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_resolve_model_accepts_local_files_and_shipped_yamls(tmp_path: Path) -> None:
    assert resolve_model("yolov8n.yaml") == "yolov8n.yaml"
    assert resolve_model("yolo11s.yaml") == "yolo11s.yaml"
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.pt").write_bytes(b"x")
    assert resolve_model(tmp_path / "m") == str((tmp_path / "m" / "model.pt").resolve())
    (tmp_path / "weights.onnx").write_bytes(b"x")
    with pytest.raises(ModelLoadError):
        resolve_model(tmp_path / "weights.onnx")


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"imgsz": 100}, "invalid_training_argument"),
        ({"epochs": 0}, "invalid_training_argument"),
        ({"learning_rate": 0.1}, "unknown_hyperparameter"),
        ({"data": "other.yaml"}, "invalid_training_argument"),
    ],
)
def test_bad_training_arguments(kwargs: dict[str, object], reason: str, tmp_path: Path) -> None:
    with pytest.raises(DetectorError) as caught:
        train_detector(tmp_path / "data.yaml", out_dir=tmp_path / "out", **kwargs)  # type: ignore[arg-type]
    assert caught.value.reason == reason


def test_missing_dataset_is_a_dataset_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as caught:
        train_detector(tmp_path / "nowhere.yaml", out_dir=tmp_path / "out", epochs=1)
    assert caught.value.reason == "data_yaml_missing"


def test_export_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError):
        export_onnx(tmp_path / "missing.pt", tmp_path, 128)
    with pytest.raises(ModelLoadError):
        export_openvino(tmp_path)  # neither model.onnx nor model.pt
    (tmp_path / "labels.json").write_text(json.dumps(["product"]))
    (tmp_path / "preprocess.json").write_text(json.dumps({"input_size": 128}))
    with pytest.raises(ModelLoadError) as caught:
        export_model_dir(tmp_path, "tflite")
    assert caught.value.reason == "unknown_format"
    with pytest.raises(ModelLoadError) as caught:
        export_model_dir(tmp_path, "onnx")
    assert caught.value.reason == "model_file_missing"
