"""Classifier TensorRT backend, its engine cache keys, the fallback to ONNX Runtime and the accuracy gate.

TensorRT cannot be installed on these machines (NVIDIA's index is unreachable and there is no
GPU), so the engine cache keys, the refusal of engines built for another TensorRT or GPU, the
fallback to ONNX Runtime and the INT8 accuracy gate are tested with fakes named as such:
``FakeTensorRTRuntime`` stands in for :class:`shelftally.runtimes.tensorrt.CudaTensorRTRuntime`
and its "engines" run ``model.onnx`` through ONNX Runtime; ``FakeInt8Runtime`` additionally
gets a chosen fraction of each batch wrong, as a badly calibrated INT8 engine would. The tests
that build and run real engines skip when TensorRT is absent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest

import shelftally.runtimes.tensorrt as trt_backend
from classifier.backends import BackendConfig, ClassifierBackend, EngineOptions, load
from classifier.compile import compile_classifier, top1_accuracy
from classifier.dataset import DatasetItem, load_image
from classifier.errors import AccuracyGateError, EngineIncompatibleError, MissingDependencyError, ModelLoadError
from classifier.model_dir import read_model_dir
from classifier.preprocess import prepare_batch
from shelftally.errors import ConfigurationError
from shelftally.errors import EngineIncompatibleError as SharedEngineIncompatibleError
from shelftally.files import sha256_file
from shelftally.runtimes.engine_cache import (
    EngineCache,
    EngineKey,
    calibration_cache_path,
    read_calibration_cache,
    write_calibration_cache,
)
from shelftally.runtimes.tensorrt import BuildSpec, tensorrt_installed
from tests.classifier.conftest import TOY_INPUT, TinyClassifier, toy_crops

FAKE_MAGIC = b"FAKE-TENSORRT-ENGINE\n"
TRT_VERSION = "10.13.3.9"


class FakeTensorRTEngine:
    """Stands in for a deserialised engine: runs the ONNX file named in the fake plan on the CPU.

    ``wrong_fraction`` of each batch (its first rows) get their logits rotated by one class, so
    their best class moves to the next one: a controlled loss of accuracy.
    """

    def __init__(self, onnx_path: str, wrong_fraction: float = 0.0) -> None:
        import onnxruntime as ort

        self._session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        self.wrong_fraction = wrong_fraction
        self.closed = False

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, embedding = (np.asarray(a, np.float32) for a in self._session.run(None, {"images": batch}))
        wrong = round(self.wrong_fraction * len(batch))
        logits[:wrong] = np.roll(logits[:wrong], 1, axis=1)
        return logits, embedding

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeTensorRTRuntime:
    """Stands in for TensorRT on a GPU (none here): records builds, 'serialises' the ONNX path."""

    version: str = TRT_VERSION
    compute_capability: str = "9.0"
    device_name: str = "Fake H200"
    builds: list[BuildSpec] = field(default_factory=list)
    calibration: list[np.ndarray] = field(default_factory=list)
    refuse_plans: bool = False

    def build(self, spec: BuildSpec) -> bytes:
        self.builds.append(spec)
        if spec.precision == "int8":
            assert spec.calibration is not None and spec.calibration_cache is not None
            self.calibration = list(spec.calibration())
            write_calibration_cache(spec.calibration_cache, f"fake table, {len(self.calibration)} batches".encode())
        return FAKE_MAGIC + f"{self.version}|{self.compute_capability}|{spec.onnx_path}".encode()

    def _plan(self, engine: bytes) -> str:
        if self.refuse_plans or not engine.startswith(FAKE_MAGIC):
            raise EngineIncompatibleError(f"fake TensorRT {self.version} cannot deserialise this plan")
        version, capability, onnx_path = engine[len(FAKE_MAGIC):].decode().split("|")
        if (version, capability) != (self.version, self.compute_capability):
            raise EngineIncompatibleError(f"plan for TensorRT {version} / sm {capability}")
        return onnx_path

    def deserialize(self, engine: bytes, outputs: object = None) -> FakeTensorRTEngine:
        return FakeTensorRTEngine(self._plan(engine))


@dataclass
class FakeInt8Runtime(FakeTensorRTRuntime):
    """A FakeTensorRTRuntime whose engines get ``wrong_fraction`` of every batch wrong."""

    wrong_fraction: float = 0.0

    def deserialize(self, engine: bytes, outputs: object = None) -> FakeTensorRTEngine:
        return FakeTensorRTEngine(self._plan(engine), self.wrong_fraction)


@pytest.fixture
def fake_runtime(monkeypatch: pytest.MonkeyPatch) -> FakeTensorRTRuntime:
    """Replaces shelftally.runtimes.tensorrt.open_runtime with a FakeTensorRTRuntime (H200, TensorRT 10.13)."""
    runtime = FakeTensorRTRuntime()
    monkeypatch.setattr(trt_backend, "open_runtime", lambda device, **_: runtime)
    return runtime


def _write_crops(folder: Path, n: int, seed: int) -> list[DatasetItem]:
    """n toy crops written as PNG files; their DatasetItems (class_index = the toy model's class_id)."""
    folder.mkdir(parents=True, exist_ok=True)
    crops, class_ids = toy_crops(np.random.default_rng(seed), n)
    items = []
    for i, (crop, class_id) in enumerate(zip(crops, class_ids, strict=True)):
        path = folder / f"{i:03d}.png"
        cv2.imwrite(str(path), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
        items.append(DatasetItem(path, int(class_id)))
    return items


@pytest.fixture(scope="module")
def val_items(tmp_path_factory: pytest.TempPathFactory) -> list[DatasetItem]:
    """40 labelled toy crops on disk."""
    return _write_crops(tmp_path_factory.mktemp("val"), 40, seed=21)


def _stale_engine(cache_dir: Path, model: Path, **recorded: str) -> None:
    """Stores an engine built by a FakeTensorRTRuntime of another TensorRT version / GPU."""
    other = FakeTensorRTRuntime(**recorded)  # type: ignore[arg-type]
    spec = BuildSpec(onnx_path=model / "model.onnx", precision="fp16", input_size=TOY_INPUT, min_batch=1,
                     opt_batch=32, max_batch=32, workspace_bytes=1 << 30)
    key = EngineKey(sha256_file(spec.onnx_path), other.version, other.compute_capability, "fp16", spec.profile)
    EngineCache(cache_dir).store(key, other.build(spec), {"device_name": "Fake A10"})


# --- engine cache keys ----------------------------------------------------------------------------


def test_fake_runtime_first_load_builds_an_engine_keyed_by_model_version_gpu_precision_then_reuses_it(
    tiny_classifier: TinyClassifier, tmp_path: Path, fake_runtime: FakeTensorRTRuntime
) -> None:
    options = EngineOptions(cache_dir=tmp_path / "engines", precision="fp16")
    first = load(tiny_classifier.dynamic, backend="tensorrt", device="cuda", batch_size=16, engine=options)
    assert first.name == "tensorrt"
    (spec,) = fake_runtime.builds
    assert (spec.min_batch, spec.opt_batch, spec.max_batch, spec.input_size) == (1, 16, 16, TOY_INPUT)
    key = first.engine_record.key
    assert key.model_sha256 == sha256_file(tiny_classifier.dynamic / "model.onnx")
    assert (key.runtime_version, key.compute_capability, key.precision) == (TRT_VERSION, "9.0", "fp16")
    assert key.profile == spec.profile
    assert first.engine_record.details["builder"] == "shelftally.runtimes.tensorrt"
    assert first.engine_record.path.parent == tmp_path / "engines"

    again = load(tiny_classifier.dynamic, backend="tensorrt", device="cuda:0", batch_size=16, engine=options)
    assert again.name == "tensorrt" and again.engine_record.path == first.engine_record.path
    assert len(fake_runtime.builds) == 1, "the cached engine was reused"

    fake_runtime.compute_capability = "8.9"  # another GPU: another entry, built anew
    other_gpu = load(tiny_classifier.dynamic, backend="tensorrt", device="cuda", batch_size=16, engine=options)
    assert other_gpu.name == "tensorrt"
    assert other_gpu.engine_record.path != first.engine_record.path and len(fake_runtime.builds) == 2


def test_fake_engine_classifies_like_onnx_runtime_through_the_shared_preprocessing(
    tiny_classifier: TinyClassifier, tmp_path: Path, fake_runtime: FakeTensorRTRuntime
) -> None:
    crops, _ = toy_crops(np.random.default_rng(5), 11)
    backend = load(tiny_classifier.dynamic, backend="tensorrt", device="cuda", batch_size=4,
                   engine=EngineOptions(cache_dir=tmp_path))
    reference = load(tiny_classifier.dynamic, backend="onnx", batch_size=4, threads=1)
    ours, theirs = backend.classify(crops), reference.classify(crops)
    assert ours.sku_code == theirs.sku_code
    np.testing.assert_allclose(ours.embedding, theirs.embedding, atol=1e-5)
    backend.close()


def test_fake_int8_build_calibrates_on_crops_prepared_as_at_inference_and_writes_the_table(
    tiny_classifier: TinyClassifier, tmp_path: Path, fake_runtime: FakeTensorRTRuntime
) -> None:
    items = _write_crops(tmp_path / "calibration", 20, seed=8)
    (tmp_path / "calibration" / "notes.txt").write_text("not a crop")
    options = EngineOptions(cache_dir=tmp_path / "engines", precision="int8", calibration_dir=tmp_path / "calibration",
                            calibration_batch=8)
    backend = load(tiny_classifier.dynamic, backend="tensorrt", device="cuda", batch_size=8, engine=options)
    assert backend.name == "tensorrt"
    assert backend.engine_record.key.precision == "int8"
    assert len(fake_runtime.calibration) == 2, "20 crops in batches of 8: the incomplete last batch is dropped"
    expected = prepare_batch([load_image(item.path) for item in items[:8]], read_model_dir(
        tiny_classifier.dynamic).preprocess)
    np.testing.assert_array_equal(fake_runtime.calibration[0], expected)
    (table,) = (tmp_path / "engines").glob("*.calib")
    assert TRT_VERSION in table.name and table.read_bytes() == b"fake table, 2 batches"
    assert backend.engine_record.details["calibration_cache"] == table.name


# --- refusal and fallback -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("recorded", "expected_words"),
    [
        ({"version": "10.0.1.6"}, f"runtime version expected {TRT_VERSION}, actual 10.0.1.6"),
        ({"compute_capability": "8.6"}, "compute capability expected 9.0, actual 8.6"),
    ],
    ids=["older TensorRT", "other GPU"],
)
def test_fake_runtime_refuses_a_stale_engine_naming_both_values_and_load_falls_back_to_onnx(
    tiny_classifier: TinyClassifier, tmp_path: Path, fake_runtime: FakeTensorRTRuntime,
    caplog: pytest.LogCaptureFixture, recorded: dict[str, str], expected_words: str,
) -> None:
    _stale_engine(tmp_path, tiny_classifier.dynamic, **recorded)
    options = EngineOptions(cache_dir=tmp_path, build_missing=False)
    with pytest.raises(EngineIncompatibleError) as caught:
        ClassifierBackend(read_model_dir(tiny_classifier.dynamic), BackendConfig(device="cuda", engine=options),
                          "tensorrt", fallback=False)
    assert expected_words in str(caught.value)
    assert isinstance(caught.value, SharedEngineIncompatibleError) and caught.value.reason == "engine_incompatible"

    with caplog.at_level(logging.WARNING, logger="classifier.backends"):
        backend = load(tiny_classifier.dynamic, backend="tensorrt", device="cuda", engine=options)
    assert backend.name == "onnx"
    assert "falling back to ONNX Runtime" in caplog.text and expected_words in caplog.text
    assert fake_runtime.builds == [], "nothing was built"
    assert backend.classify(toy_crops(np.random.default_rng(2), 3)[0]).class_id.shape == (3,)


def test_fake_runtime_refuses_a_prebuilt_engine_path_for_another_gpu_and_falls_back(
    tiny_classifier: TinyClassifier, tmp_path: Path, fake_runtime: FakeTensorRTRuntime,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _stale_engine(tmp_path, tiny_classifier.dynamic, compute_capability="8.9")
    (engine_path,) = tmp_path.glob("*.engine")
    backend = load(tiny_classifier.dynamic, backend="tensorrt", device="cuda",
                   engine=EngineOptions(engine_path=engine_path))
    assert backend.name == "onnx"
    assert "compute capability expected 9.0, actual 8.9" in caplog.text
    assert fake_runtime.builds == []


def test_fake_runtime_that_cannot_deserialise_falls_back_to_onnx(
    tiny_classifier: TinyClassifier, tmp_path: Path, fake_runtime: FakeTensorRTRuntime
) -> None:
    fake_runtime.refuse_plans = True
    backend = load(tiny_classifier.dynamic, backend="tensorrt", device="cuda", engine=EngineOptions(cache_dir=tmp_path))
    assert backend.name == "onnx"


def test_no_engine_and_building_off_is_a_load_error_not_a_fallback(
    tiny_classifier: TinyClassifier, tmp_path: Path, fake_runtime: FakeTensorRTRuntime
) -> None:
    with pytest.raises(ModelLoadError) as caught:
        load(tiny_classifier.dynamic, backend="tensorrt", device="cuda",
             engine=EngineOptions(cache_dir=tmp_path, build_missing=False))
    assert caught.value.reason == "engine_missing"


def test_a_prebuilt_engine_of_another_model_is_a_load_error_not_a_fallback(
    tiny_classifier: TinyClassifier, tmp_path: Path, fake_runtime: FakeTensorRTRuntime
) -> None:
    key = EngineKey("cd" * 32, TRT_VERSION, "9.0", "fp16", "1x3x64x64-32x3x64x64-32x3x64x64")
    record = EngineCache(tmp_path).store(key, b"plan of another model")
    with pytest.raises(ModelLoadError) as caught:
        load(tiny_classifier.dynamic, backend="tensorrt", device="cuda", engine=EngineOptions(engine_path=record.path))
    assert caught.value.reason == "engine_model_mismatch"
    assert "cd" * 32 in str(caught.value) and sha256_file(tiny_classifier.dynamic / "model.onnx") in str(caught.value)


def test_calibration_table_is_per_model_size_and_tensorrt_version_and_round_trips(tmp_path: Path) -> None:
    path = calibration_cache_path(tmp_path, model_sha256="ab" * 32, input_size=128, runtime_version=TRT_VERSION)
    assert path.name == f"abababababab-s128-trt{TRT_VERSION}.calib"
    assert path != calibration_cache_path(tmp_path, model_sha256="ab" * 32, input_size=128, runtime_version="10.0.1.6")
    assert read_calibration_cache(path) is None, "no table yet: calibration runs"
    write_calibration_cache(path, b"TRT-1013-EntropyCalibration2\n")
    assert read_calibration_cache(path) == b"TRT-1013-EntropyCalibration2\n"
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize(
    ("settings", "error", "mentions"),
    [
        ({"device": "cpu"}, ConfigurationError, "cuda"),
        ({"batch_size": 64, "engine": EngineOptions(max_batch=32)}, ConfigurationError, "max_batch"),
        ({"engine": EngineOptions(precision="int4")}, ConfigurationError, "precision"),  # type: ignore[arg-type]
        ({"engine": EngineOptions(precision="int8")}, ConfigurationError, "calibration_dir"),
        ({}, MissingDependencyError, "shelftally\\[tensorrt\\]"),
    ],
    ids=["cpu device", "batch above the profile", "unknown precision", "int8 without crops", "no TensorRT"],
)
def test_tensorrt_settings_are_checked(
    tiny_classifier: TinyClassifier, settings: dict[str, object], error: type[Exception], mentions: str
) -> None:
    if error is MissingDependencyError and tensorrt_installed():
        pytest.skip("TensorRT is installed here, so its absence cannot be reported")
    kwargs: dict[str, object] = {"device": "cuda", **settings}
    with pytest.raises(error, match=mentions):
        load(tiny_classifier.dynamic, backend="tensorrt", **kwargs)  # type: ignore[arg-type]


# --- accuracy gate --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wrong_fraction", "max_top1_drop"),
    [(0.0, 0.01), (0.25, 0.5)],
    ids=["identical predictions", "drop within a wide margin"],
)
def test_gate_accepts_a_fake_int8_engine_within_the_margin_and_keeps_it(
    tiny_classifier: TinyClassifier, tmp_path: Path, val_items: list[DatasetItem],
    wrong_fraction: float, max_top1_drop: float,
) -> None:
    calibration = tmp_path / "calibration"
    _write_crops(calibration, 16, seed=30)
    runtime = FakeInt8Runtime(wrong_fraction=wrong_fraction)
    report = compile_classifier(tiny_classifier.dynamic, precision="int8", calibration_dir=calibration,
                                val_items=val_items, max_top1_drop=max_top1_drop, runtime=runtime,
                                batch_size=64, cache_dir=tmp_path / "engines", calibration_batch=8)
    reference = top1_accuracy(load(tiny_classifier.dynamic, backend="onnx", threads=1), val_items)
    assert report.reference_top1 == pytest.approx(reference)
    assert report.reference_top1 > 0.6, "the toy model is good enough for the gate to mean something"
    assert report.top1_drop <= max_top1_drop and report.items == 40
    if wrong_fraction == 0.0:
        assert report.compiled_top1 == report.reference_top1
    assert report.engine_record.path.is_file(), "an accepted engine stays in the cache"
    assert EngineCache(tmp_path / "engines").find(report.engine_record.key) is not None


def test_gate_rejects_a_fake_int8_engine_that_drops_too_much_and_removes_it(
    tiny_classifier: TinyClassifier, tmp_path: Path, val_items: list[DatasetItem],
) -> None:
    calibration = tmp_path / "calibration"
    _write_crops(calibration, 16, seed=30)
    runtime = FakeInt8Runtime(wrong_fraction=0.25)
    with pytest.raises(AccuracyGateError) as caught:
        compile_classifier(tiny_classifier.dynamic, precision="int8", calibration_dir=calibration,
                           val_items=val_items, runtime=runtime, batch_size=64, cache_dir=tmp_path / "engines",
                           calibration_batch=8)
    error = caught.value
    assert error.reason == "accuracy_gate_failed" and error.items == 40
    assert error.reference_top1 - error.compiled_top1 > 0.01
    assert f"{error.compiled_top1:.4f}" in str(error) and f"{error.reference_top1:.4f}" in str(error)
    assert not list((tmp_path / "engines").glob("*.engine")), "the rejected engine is not kept"
    assert not list((tmp_path / "engines").glob("*.json"))
    assert list((tmp_path / "engines").glob("*.calib")), "the calibration table is kept for a rebuild"
    # a later load does not find a cached engine that failed the gate: it builds again
    fresh = FakeTensorRTRuntime()
    ClassifierBackend(read_model_dir(tiny_classifier.dynamic),
                    BackendConfig(device="cuda", batch_size=64,
                                  engine=EngineOptions(precision="int8", cache_dir=tmp_path / "engines",
                                                       calibration_dir=calibration, calibration_batch=8)),
                    "tensorrt", tensorrt_runtime=fresh, fallback=False)
    assert len(fresh.builds) == 1


def test_gate_refuses_an_empty_validation_set(tiny_classifier: TinyClassifier, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="validation"):
        compile_classifier(tiny_classifier.dynamic, precision="fp16", calibration_dir=None, val_items=[],
                           runtime=FakeInt8Runtime(), cache_dir=tmp_path)


# --- real TensorRT (skipped where it cannot be installed) -----------------------------------------


def _real_tensorrt_or_skip() -> None:
    if not tensorrt_installed():
        pytest.skip("TensorRT is not installed (it needs NVIDIA's package index; tensorrt-stubs alone does not count)")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT is installed but no CUDA device is visible")


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_real_engine_passes_the_gate_and_is_cached(
    tiny_classifier: TinyClassifier, tmp_path: Path, val_items: list[DatasetItem], precision: str
) -> None:
    _real_tensorrt_or_skip()
    import tensorrt

    calibration = tmp_path / "calibration"
    _write_crops(calibration, 64, seed=40)
    report = compile_classifier(tiny_classifier.dynamic, precision=precision,  # type: ignore[arg-type]
                                calibration_dir=calibration if precision == "int8" else None,
                                val_items=val_items, max_top1_drop=0.05, cache_dir=tmp_path / "engines")
    assert report.engine_record.key.runtime_version == tensorrt.__version__
    if precision == "int8":
        assert list((tmp_path / "engines").glob("*.calib")), "INT8 calibration table written"
    options = EngineOptions(precision=precision, cache_dir=tmp_path / "engines",  # type: ignore[arg-type]
                            calibration_dir=calibration)
    backend = load(tiny_classifier.dynamic, backend="tensorrt", device="cuda", engine=options)
    assert backend.name == "tensorrt" and backend.engine_record.path == report.engine_record.path
    crops, _ = toy_crops(np.random.default_rng(1), 37)  # dynamic batch: 32 + 5
    assert backend.classify(crops).class_id.shape == (37,)
