"""Detector backends on the tiny trained detector: agreement, batching, registry and load errors."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from detector.backends import BACKENDS, DetectorBackend, load, threads_per_process
from detector.errors import MissingDependencyError, ModelLoadError
from detector.model_dir import read_model_dir
from detector.types import Detections
from shelftally.errors import ConfigurationError
from shelftally.runtimes import RUNTIMES, Session, session_class
from tests.detector.conftest import toy_picture


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) IoU of xyxy boxes."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def assert_same_detections(ours: Detections, reference: Detections, *, min_iou: float, label: str) -> None:
    assert len(ours) == len(reference), f"{label}: {len(ours)} boxes vs {len(reference)}"
    if not len(ours):
        return
    iou = iou_matrix(ours.xyxy, reference.xyxy)
    best = iou.argmax(axis=1)
    assert np.all(iou.max(axis=1) >= min_iou), f"{label}: IoU {iou.max(axis=1).round(4)}"
    assert len(set(best.tolist())) == len(ours), f"{label}: two boxes matched the same reference box"
    assert np.array_equal(ours.class_id, reference.class_id[best]), f"{label}: classes differ"


@pytest.fixture(scope="module")
def toy_set() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Eight toy pictures (128 px, like training) and their painted boxes (rows of class, x1, y1, x2, y2)."""
    rng = np.random.default_rng(123)
    pictures, truths = zip(*(toy_picture(rng) for _ in range(8)), strict=True)
    return list(pictures), list(truths)


@pytest.fixture(scope="module")
def backends(tiny_detector: Path) -> dict[str, DetectorBackend]:
    loaded = {name: load(tiny_detector, backend=name, threads=2) for name in ("torch", "onnx", "openvino")}
    loaded["openvino f32"] = load(tiny_detector, backend="openvino", threads=2, openvino_precision="f32")
    return loaded


def test_every_backend_finds_the_painted_rectangles(
    backends: dict[str, DetectorBackend], toy_set: tuple[list[np.ndarray], list[np.ndarray]]
) -> None:
    pictures, truths = toy_set
    for name, backend in backends.items():
        found = backend.predict(pictures)
        matched = total = 0
        for detections, truth in zip(found, truths, strict=True):
            total += len(truth)
            if len(detections):
                iou = iou_matrix(truth[:, 1:], detections.xyxy)
                hit = iou.max(axis=1) >= 0.5
                right_class = truth[:, 0] == detections.class_id[iou.argmax(axis=1)]
                matched += int(np.sum(hit & right_class))
        assert matched / total >= 0.8, f"{name}: found {matched} of {total} painted rectangles"


def test_onnx_and_openvino_agree_with_torch(
    backends: dict[str, DetectorBackend], toy_set: tuple[list[np.ndarray], list[np.ndarray]]
) -> None:
    pictures, _ = toy_set
    reference = backends["torch"].predict(pictures)
    assert sum(len(r) for r in reference) >= len(pictures), "the reference found (almost) nothing"
    # "openvino" is OpenVINO's own choice (bf16 on CPUs that have it), "openvino f32" forced fp32.
    for name in ("onnx", "openvino", "openvino f32"):
        for i, (ours, theirs) in enumerate(zip(backends[name].predict(pictures), reference, strict=True)):
            assert_same_detections(ours, theirs, min_iou=0.98, label=f"{name} picture {i}")
            np.testing.assert_allclose(ours.confidence, theirs.confidence, atol=0.02)


@pytest.mark.parametrize("name", ["onnx", "openvino", "torch"])
def test_a_batch_of_eight_equals_one_by_one(
    name: str, backends: dict[str, DetectorBackend], toy_set: tuple[list[np.ndarray], list[np.ndarray]]
) -> None:
    pictures, _ = toy_set
    # Mixed sizes, so the batch holds different letterboxes.
    pictures = [pictures[0], pictures[1][:, :90], pictures[2][:70], *pictures[3:]]
    batched = backends[name].predict(pictures)
    assert len(batched) == 8
    for i, picture in enumerate(pictures):
        (alone,) = backends[name].predict([picture])
        assert_same_detections(batched[i], alone, min_iou=0.999, label=f"{name} picture {i}")


def test_predict_chunks_larger_inputs_by_batch_size(
    tiny_detector: Path, toy_set: tuple[list[np.ndarray], list[np.ndarray]]
) -> None:
    pictures, _ = toy_set
    backend = load(tiny_detector, backend="onnx", batch_size=3, threads=1)
    calls: list[int] = []
    infer = backend._infer

    def counting(batch: np.ndarray) -> np.ndarray:
        calls.append(batch.shape[0])
        return infer(batch)

    backend._infer = counting  # type: ignore[method-assign]
    results = backend.predict(pictures)
    assert calls == [3, 3, 2]
    assert len(results) == 8
    assert backend.predict([]) == []


def test_a_model_with_a_fixed_batch_dimension_is_fed_whole_batches(
    tiny_detector: Path, tmp_path: Path, toy_set: tuple[list[np.ndarray], list[np.ndarray]]
) -> None:
    onnx = pytest.importorskip("onnx")
    fixed = tmp_path / "fixed"
    shutil.copytree(tiny_detector, fixed, ignore=shutil.ignore_patterns("openvino", "engines"))
    model = onnx.load(str(fixed / "model.onnx"))
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    batch_dim.ClearField("dim_param")
    batch_dim.dim_value = 4
    onnx.save(model, str(fixed / "model.onnx"))
    pictures, _ = toy_set
    pictures = pictures[:6]
    backend = load(fixed, backend="onnx", batch_size=8, threads=1)
    assert backend.fixed_batch == 4 and backend.chunk_size == 4
    dynamic = load(tiny_detector, backend="onnx", batch_size=8, threads=1)
    for ours, theirs in zip(backend.predict(pictures), dynamic.predict(pictures), strict=True):
        assert_same_detections(ours, theirs, min_iou=0.999, label="fixed batch")


def test_backends_expose_labels_preprocess_and_version(
    backends: dict[str, DetectorBackend], tiny_detector: Path
) -> None:
    model_dir = read_model_dir(tiny_detector)
    for backend in backends.values():
        assert backend.labels == ["red", "blue"]
        assert backend.preprocess.input_size == 128
        assert backend.version == model_dir.version and "@" in backend.version


def test_the_registry_names_all_runtimes() -> None:
    assert set(BACKENDS) == {"onnx", "openvino", "torch", "ultralytics", "tensorrt"}
    for runtime in BACKENDS.values():
        assert runtime in RUNTIMES and issubclass(session_class(runtime), Session)
    assert BACKENDS["ultralytics"] == BACKENDS["torch"] == "torch"


def test_an_unknown_backend_name_lists_the_valid_ones(tiny_detector: Path) -> None:
    with pytest.raises(ConfigurationError) as caught:
        load(tiny_detector, backend="tflite")
    assert caught.value.reason == "unknown_backend"
    for name in ("onnx", "openvino", "tensorrt", "torch", "ultralytics"):
        assert name in str(caught.value)


def _copy_without(source: Path, target: Path, *names: str) -> Path:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("engines"))
    for name in names:
        path = target / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    return target


@pytest.mark.parametrize(
    ("backend", "missing", "reason", "mentions"),
    [
        ("onnx", "labels.json", "model_file_missing", "labels.json"),
        ("onnx", "preprocess.json", "model_file_missing", "preprocess.json"),
        ("onnx", "model.onnx", "model_file_missing", "model.onnx"),
        ("openvino", "openvino", "model_file_missing", "openvino/model.xml"),
        ("openvino", "openvino/model.bin", "model_file_unreadable", "model.xml"),
        ("torch", "model.pt", "model_file_missing", "model.pt"),
    ],
    ids=["no labels", "no preprocess", "onnx: no model.onnx", "openvino: no IR", "openvino: no weights",
         "torch: no model.pt"],
)
def test_a_model_dir_with_missing_files_is_refused_with_a_reason(
    tiny_detector: Path, tmp_path: Path, backend: str, missing: str, reason: str, mentions: str
) -> None:
    broken = _copy_without(tiny_detector, tmp_path / "model", missing)
    with pytest.raises(ModelLoadError) as caught:
        load(broken, backend=backend)
    assert caught.value.reason == reason
    assert mentions in str(caught.value)


def test_a_missing_model_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as caught:
        load(tmp_path / "nowhere")
    assert caught.value.reason == "model_dir_missing"


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_a_corrupt_weights_file_is_refused(tiny_detector: Path, tmp_path: Path, backend: str) -> None:
    broken = _copy_without(tiny_detector, tmp_path / "model")
    name = "model.onnx" if backend == "onnx" else "model.pt"
    (broken / name).write_bytes(b"not a model at all")
    with pytest.raises(ModelLoadError) as caught:
        load(broken, backend=backend)
    assert caught.value.reason == "model_file_unreadable"


def test_labels_that_do_not_match_the_network_are_refused(tiny_detector: Path, tmp_path: Path) -> None:
    broken = _copy_without(tiny_detector, tmp_path / "model")
    (broken / "labels.json").write_text('["red", "blue", "green"]')
    with pytest.raises(ModelLoadError) as caught:
        load(broken, backend="onnx")
    assert caught.value.reason == "model_output_mismatch"
    assert "(8, 7, A)" in str(caught.value)


@pytest.mark.parametrize(
    ("backend", "module", "extra"),
    [
        ("onnx", "onnxruntime", "shelftally[onnx]"),
        ("openvino", "openvino", "shelftally[openvino]"),
        ("torch", "torch", "shelftally[train]"),
        ("ultralytics", "ultralytics", "shelftally[train]"),
        ("tensorrt", "tensorrt", "shelftally[tensorrt]"),
    ],
)
def test_a_missing_runtime_names_its_pip_extra(
    tiny_detector: Path, monkeypatch: pytest.MonkeyPatch, backend: str, module: str, extra: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes "import <module>" raise ImportError
    with pytest.raises(MissingDependencyError) as caught:
        load(tiny_detector, backend=backend, device="cuda" if backend == "tensorrt" else "cpu")
    assert extra in str(caught.value)
    assert caught.value.reason == "missing_dependency"


@pytest.mark.parametrize(
    ("settings", "mentions"),
    [
        ({"conf": 1.5}, "conf"),
        ({"iou": -0.1}, "iou"),
        ({"max_det": 0}, "max_det"),
        ({"batch_size": 0}, "batch_size"),
        ({"threads": 0}, "threads"),
        ({"device": "tpu"}, "device"),
        ({"openvino_precision": "int4"}, "openvino_precision"),
        ({"int8_max_drop_points": -1.0}, "int8_max_drop_points"),
        ({"int8_max_drop_points": float("nan")}, "int8_max_drop_points"),
    ],
)
def test_invalid_settings_are_refused(tiny_detector: Path, settings: dict[str, object], mentions: str) -> None:
    with pytest.raises(ConfigurationError, match=mentions):
        load(tiny_detector, backend="onnx", **settings)  # type: ignore[arg-type]


def test_onnx_on_cuda_without_the_cuda_provider_runs_on_the_cpu(
    tiny_detector: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend = load(tiny_detector, backend="onnx", device="cuda", threads=1)
    assert backend.name == "onnx"
    if "CUDAExecutionProvider" not in backend.providers:
        assert backend.providers == ["CPUExecutionProvider"]
        assert "CUDAExecutionProvider" in caplog.text


def test_predict_wants_a_list_of_pictures(backends: dict[str, DetectorBackend]) -> None:
    with pytest.raises(ValueError, match="expected a list of \\(H, W, 3\\) pictures"):
        backends["onnx"].predict(np.zeros((128, 128, 3), np.uint8))


def test_threads_per_process_divides_the_cores() -> None:
    cores = threads_per_process(1)
    assert cores >= 1
    assert threads_per_process(cores * 4) == 1
    assert threads_per_process(2) == max(1, cores // 2)
    with pytest.raises(ValueError):
        threads_per_process(0)
