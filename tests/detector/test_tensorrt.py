"""TensorRT backend and the shared engine cache.

TensorRT cannot be installed on these machines (NVIDIA's index is unreachable and there is no
GPU), so the cache keys, the refusal of engines built for another TensorRT or GPU, and the
fallback to ONNX Runtime are tested with ``FakeTensorRTRuntime``: a stand-in for
:class:`shelftally.runtimes.tensorrt.CudaTensorRTRuntime` whose "engines" run ``model.onnx``
through ONNX Runtime. The tests that build and run real engines skip when ``import tensorrt``
fails.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import pytest

import shelftally.runtimes.tensorrt as trt_backend
from detector.backends import BackendConfig, DetectorBackend, EngineOptions, load
from detector.errors import EngineIncompatibleError, MissingDependencyError, ModelLoadError
from detector.model_dir import Preprocess, read_model_dir
from detector.preprocess import letterbox
from shelftally.errors import ConfigurationError, EngineCacheError
from shelftally.errors import EngineIncompatibleError as SharedEngineIncompatibleError
from shelftally.files import sha256_file
from shelftally.runtimes.engine_cache import EngineCache, EngineKey, check_compatible, read_record
from shelftally.runtimes.tensorrt import BuildSpec, tensorrt_installed
from tests.detector.conftest import toy_picture
from tests.detector.test_backends import assert_same_detections

FAKE_MAGIC = b"FAKE-TENSORRT-ENGINE\n"


class FakeTensorRTEngine:
    """Stands in for a deserialised engine: runs the ONNX file named in the fake plan on the CPU."""

    def __init__(self, onnx_path: str) -> None:
        import onnxruntime as ort

        self._session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        self.closed = False

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray]:
        return (np.asarray(self._session.run(None, {"images": batch})[0], dtype=np.float32),)

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeTensorRTRuntime:
    """Stands in for TensorRT on a GPU (none here): records builds, 'serialises' the ONNX path."""

    version: str = "10.13.0.35"
    compute_capability: str = "9.0"
    device_name: str = "Fake H200"
    builds: list[BuildSpec] = field(default_factory=list)
    refuse_plans: bool = False

    def build(self, spec: BuildSpec) -> bytes:
        self.builds.append(spec)
        if spec.precision == "int8":
            assert spec.calibration is not None and spec.calibration_cache is not None
            batches = sum(1 for _ in spec.calibration())
            spec.calibration_cache.parent.mkdir(parents=True, exist_ok=True)
            spec.calibration_cache.write_bytes(f"fake calibration table, {batches} batches".encode())
        return FAKE_MAGIC + f"{self.version}|{self.compute_capability}|{spec.onnx_path}".encode()

    def deserialize(self, engine: bytes, outputs: object = None) -> FakeTensorRTEngine:
        if self.refuse_plans or not engine.startswith(FAKE_MAGIC):
            raise EngineIncompatibleError(f"fake TensorRT {self.version} cannot deserialise this plan")
        version, capability, onnx_path = engine[len(FAKE_MAGIC):].decode().split("|")
        if (version, capability) != (self.version, self.compute_capability):
            raise EngineIncompatibleError(f"plan for TensorRT {version} / sm {capability}")
        return FakeTensorRTEngine(onnx_path)


@pytest.fixture
def fake_runtime(monkeypatch: pytest.MonkeyPatch) -> FakeTensorRTRuntime:
    """Replaces shelftally.runtimes.tensorrt.open_runtime with a FakeTensorRTRuntime (H200, TensorRT 10.13)."""
    runtime = FakeTensorRTRuntime()
    monkeypatch.setattr(trt_backend, "open_runtime", lambda device, **_: runtime)
    return runtime


def _key(**changes: str) -> EngineKey:
    base = EngineKey(model_sha256="ab" * 32, runtime_version="10.13.0.35", compute_capability="9.0",
                     precision="fp16", profile="1x3x640x640-8x3x640x640-8x3x640x640")
    return replace(base, **changes)


# --- engine cache (runtime-agnostic) -------------------------------------------------------------


def test_engine_keys_are_stable_and_readable() -> None:
    assert _key() == _key() and _key().digest == _key().digest
    stem = _key().stem
    assert stem.startswith("abababababab-fp16-sm90-trt10.13.0.35-")
    assert len(stem.rsplit("-", 1)[1]) == 16


@pytest.mark.parametrize(
    "changes",
    [
        {"model_sha256": "cd" * 32},
        {"runtime_version": "10.12.0.36"},
        {"compute_capability": "8.6"},
        {"precision": "int8"},
        {"profile": "1x3x640x640-4x3x640x640-4x3x640x640"},
    ],
    ids=["model", "TensorRT version", "compute capability", "precision", "profile"],
)
def test_every_key_field_changes_the_cache_entry(changes: dict[str, str], tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    assert _key(**changes).digest != _key().digest
    assert cache.path_for(_key(**changes)) != cache.path_for(_key())


def test_an_empty_key_field_is_refused() -> None:
    with pytest.raises(ValueError, match="runtime_version"):
        _key(runtime_version="")


def test_store_writes_the_engine_and_its_metadata_beside_it(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path / "engines")
    record = cache.store(_key(), b"plan bytes", {"device_name": "H200", "max_batch": 8})
    assert record.path.read_bytes() == b"plan bytes"
    meta = json.loads(record.path.with_suffix(".json").read_text())
    assert meta["key"]["runtime_version"] == "10.13.0.35"
    assert meta["key"]["compute_capability"] == "9.0"
    assert meta["engine_bytes"] == len(b"plan bytes")
    assert meta["details"] == {"device_name": "H200", "max_batch": 8}
    found = cache.find(_key())
    assert found is not None and found.read_engine() == b"plan bytes"
    assert cache.find(_key(precision="int8")) is None
    assert not list((tmp_path / "engines").glob("*.tmp")), "temporary files are cleaned up"


def test_a_corrupt_engine_is_detected(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    record = cache.store(_key(), b"plan bytes")
    record.path.write_bytes(b"plan bytez")
    with pytest.raises(EngineCacheError, match="corrupt"):
        cache.find(_key()).read_engine()  # type: ignore[union-attr]


def test_an_engine_renamed_to_another_key_is_not_found(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    record = cache.store(_key(runtime_version="10.0.1.6"), b"old plan")
    target = cache.path_for(_key())
    record.path.rename(target)
    record.metadata_path.rename(target.with_suffix(".json"))
    assert cache.find(_key()) is None


def test_metadata_missing_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "x.engine").write_bytes(b"plan")
    with pytest.raises(EngineCacheError, match="metadata"):
        read_record(tmp_path / "x.engine")


@pytest.mark.parametrize(
    ("recorded", "expected_words"),
    [
        ({"runtime_version": "10.0.1.6"}, ["runtime version expected 10.13.0.35, actual 10.0.1.6"]),
        ({"compute_capability": "8.6"}, ["compute capability expected 9.0, actual 8.6"]),
        ({"runtime_version": "8.6.1", "compute_capability": "7.5"},
         ["expected 10.13.0.35, actual 8.6.1", "expected 9.0, actual 7.5"]),
    ],
    ids=["TensorRT version", "GPU", "both"],
)
def test_an_engine_for_another_runtime_or_gpu_is_refused_naming_both(
    tmp_path: Path, recorded: dict[str, str], expected_words: list[str]
) -> None:
    record = EngineCache(tmp_path).store(_key(**recorded), b"plan")
    with pytest.raises(SharedEngineIncompatibleError) as caught:
        check_compatible(record, runtime_version="10.13.0.35", compute_capability="9.0")
    for words in expected_words:
        assert words in str(caught.value)
    check_compatible(EngineCache(tmp_path).store(_key(), b"plan"), runtime_version="10.13.0.35",
                     compute_capability="9.0")


def test_others_lists_engines_of_the_same_model_for_other_runtimes(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    cache.store(_key(runtime_version="10.0.1.6"), b"a")
    cache.store(_key(compute_capability="8.6"), b"b")
    cache.store(_key(model_sha256="cd" * 32, runtime_version="10.0.1.6"), b"c")
    cache.store(_key(precision="int8", runtime_version="10.0.1.6"), b"d")
    others = cache.others(_key())
    assert sorted(r.read_engine() for r in others) == [b"a", b"b"]


# --- TensorRT backend with FakeTensorRTRuntime --------------------------------------------------


def test_fake_runtime_first_load_builds_and_caches_then_reuses(
    tiny_detector: Path, tmp_path: Path, fake_runtime: FakeTensorRTRuntime
) -> None:
    options = EngineOptions(cache_dir=tmp_path / "engines", precision="fp16")
    first = load(tiny_detector, backend="tensorrt", device="cuda", batch_size=4, engine=options)
    assert first.name == "tensorrt"
    assert len(fake_runtime.builds) == 1
    spec = fake_runtime.builds[0]
    assert (spec.min_batch, spec.opt_batch, spec.max_batch, spec.input_size) == (1, 4, 4, 128)
    record = first.engine_record
    assert record.key.model_sha256 == sha256_file(tiny_detector / "model.onnx")
    assert (record.key.runtime_version, record.key.compute_capability, record.key.precision) == (
        "10.13.0.35", "9.0", "fp16")
    assert record.details["device_name"] == "Fake H200"
    assert record.path.parent == tmp_path / "engines" and record.metadata_path.is_file()
    second = load(tiny_detector, backend="tensorrt", device="cuda:0", batch_size=4, engine=options)
    assert second.name == "tensorrt"
    assert len(fake_runtime.builds) == 1, "the cached engine was reused"
    assert second.engine_record.path == record.path


def test_fake_engine_runs_through_the_shared_pre_and_postprocessing(
    tiny_detector: Path, tmp_path: Path, fake_runtime: FakeTensorRTRuntime
) -> None:
    rng = np.random.default_rng(9)
    pictures = [toy_picture(rng)[0] for _ in range(5)]
    backend = load(tiny_detector, backend="tensorrt", device="cuda", batch_size=2,
                   engine=EngineOptions(cache_dir=tmp_path))
    reference = load(tiny_detector, backend="onnx", batch_size=2, threads=1)
    for ours, theirs in zip(backend.predict(pictures), reference.predict(pictures), strict=True):
        assert_same_detections(ours, theirs, min_iou=0.999, label="fake TensorRT vs ONNX")
    backend.close()


def _stale_engine(cache_dir: Path, tiny_detector: Path, **recorded: str) -> None:
    """Builds an engine with a FakeTensorRTRuntime of another TensorRT version / GPU into cache_dir."""
    other = FakeTensorRTRuntime(**recorded)  # type: ignore[arg-type]
    spec = BuildSpec(onnx_path=tiny_detector / "model.onnx", precision="fp16", input_size=128, min_batch=1,
                     opt_batch=8, max_batch=8, workspace_bytes=1 << 30)
    key = EngineKey(sha256_file(spec.onnx_path), other.version, other.compute_capability, "fp16", spec.profile)
    EngineCache(cache_dir).store(key, other.build(spec), {"device_name": "Fake A10"})


@pytest.mark.parametrize(
    ("recorded", "expected_words"),
    [
        ({"version": "10.0.1.6"}, "runtime version expected 10.13.0.35, actual 10.0.1.6"),
        ({"compute_capability": "8.6"}, "compute capability expected 9.0, actual 8.6"),
    ],
    ids=["older TensorRT", "other GPU"],
)
def test_fake_runtime_refuses_a_stale_engine_and_load_falls_back_to_onnx(
    tiny_detector: Path, tmp_path: Path, fake_runtime: FakeTensorRTRuntime, caplog: pytest.LogCaptureFixture,
    recorded: dict[str, str], expected_words: str,
) -> None:
    _stale_engine(tmp_path, tiny_detector, **recorded)
    options = EngineOptions(cache_dir=tmp_path, build_missing=False)
    config = BackendConfig(device="cuda", engine=options)
    with pytest.raises(EngineIncompatibleError) as caught:
        DetectorBackend(read_model_dir(tiny_detector), config, "tensorrt", fallback=False)
    assert expected_words in str(caught.value)
    assert isinstance(caught.value, SharedEngineIncompatibleError)

    with caplog.at_level(logging.WARNING, logger="detector.backends"):
        backend = load(tiny_detector, backend="tensorrt", device="cuda", engine=options)
    assert backend.name == "onnx"
    assert "falling back to ONNX Runtime" in caplog.text and expected_words in caplog.text
    assert fake_runtime.builds == [], "nothing was built"
    rng = np.random.default_rng(4)
    assert len(backend.predict([toy_picture(rng)[0]])) == 1


def test_fake_runtime_rebuilds_over_a_stale_engine_when_allowed(
    tiny_detector: Path, tmp_path: Path, fake_runtime: FakeTensorRTRuntime
) -> None:
    _stale_engine(tmp_path, tiny_detector, version="10.0.1.6")
    backend = load(tiny_detector, backend="tensorrt", device="cuda", engine=EngineOptions(cache_dir=tmp_path))
    assert backend.name == "tensorrt"
    assert len(fake_runtime.builds) == 1
    assert len(EngineCache(tmp_path).records()) == 2


def test_fake_runtime_refuses_a_prebuilt_engine_path_for_another_gpu(
    tiny_detector: Path, tmp_path: Path, fake_runtime: FakeTensorRTRuntime, caplog: pytest.LogCaptureFixture
) -> None:
    _stale_engine(tmp_path, tiny_detector, compute_capability="8.9")
    (engine_path,) = tmp_path.glob("*.engine")
    backend = load(tiny_detector, backend="tensorrt", device="cuda", engine=EngineOptions(engine_path=engine_path))
    assert backend.name == "onnx"
    assert "compute capability expected 9.0, actual 8.9" in caplog.text
    assert fake_runtime.builds == []


def test_fake_runtime_that_cannot_deserialise_falls_back_to_onnx(
    tiny_detector: Path, tmp_path: Path, fake_runtime: FakeTensorRTRuntime
) -> None:
    fake_runtime.refuse_plans = True
    backend = load(tiny_detector, backend="tensorrt", device="cuda", engine=EngineOptions(cache_dir=tmp_path))
    assert backend.name == "onnx"


def test_no_engine_and_building_off_is_a_load_error_not_a_fallback(
    tiny_detector: Path, tmp_path: Path, fake_runtime: FakeTensorRTRuntime
) -> None:
    with pytest.raises(ModelLoadError) as caught:
        load(tiny_detector, backend="tensorrt", device="cuda",
             engine=EngineOptions(cache_dir=tmp_path, build_missing=False))
    assert caught.value.reason == "engine_missing"


def test_fake_runtime_int8_build_gets_letterboxed_calibration_batches(
    tiny_detector: Path, tmp_path: Path, fake_runtime: FakeTensorRTRuntime
) -> None:
    pictures = tmp_path / "calibration"
    pictures.mkdir()
    rng = np.random.default_rng(3)
    for i in range(10):
        cv2.imwrite(str(pictures / f"{i:02d}.png"), toy_picture(rng)[0])
    (pictures / "notes.txt").write_text("not a picture")
    options = EngineOptions(cache_dir=tmp_path / "engines", precision="int8", calibration_dir=pictures,
                            calibration_batch=4)
    backend = load(tiny_detector, backend="tensorrt", device="cuda", batch_size=4, engine=options)
    assert backend.name == "tensorrt"
    (spec,) = fake_runtime.builds
    assert spec.precision == "int8" and spec.calibration_batch == 4
    assert spec.calibration is not None
    batches = list(spec.calibration())
    assert [b.shape for b in batches] == [(4, 3, 128, 128)] * 2  # 10 pictures: two full batches
    assert spec.calibration_cache is not None and spec.calibration_cache.parent == tmp_path / "engines"
    assert backend.engine_record.details["calibration_cache"] == spec.calibration_cache.name


def test_calibration_needs_enough_pictures(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "one.png"), np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(ConfigurationError, match="at least 8"):
        list(trt_backend.calibration_batches(tmp_path, lambda p: letterbox(p, Preprocess(input_size=64))[0],
                                             trt_backend.read_picture, batch_size=8, limit=100))


def test_type_stubs_alone_do_not_count_as_tensorrt(tiny_detector: Path) -> None:
    if tensorrt_installed():
        pytest.skip("the real TensorRT is installed here")
    with pytest.raises(MissingDependencyError, match=r"shelftally\[tensorrt\]"):
        load(tiny_detector, backend="tensorrt", device="cuda")


@pytest.mark.parametrize(
    ("settings", "error", "mentions"),
    [
        ({"device": "cpu"}, ConfigurationError, "cuda"),
        ({"batch_size": 8, "engine": EngineOptions(max_batch=4)}, ConfigurationError, "max_batch"),
        ({"engine": EngineOptions(precision="int4")}, ConfigurationError, "precision"),  # type: ignore[arg-type]
    ],
    ids=["cpu device", "batch above the profile", "unknown precision"],
)
def test_tensorrt_settings_are_checked(
    tiny_detector: Path, settings: dict[str, object], error: type[Exception], mentions: str
) -> None:
    kwargs: dict[str, object] = {"device": "cuda", **settings}
    with pytest.raises(error, match=mentions):
        load(tiny_detector, backend="tensorrt", **kwargs)  # type: ignore[arg-type]


# --- real TensorRT (skipped where it cannot be installed) ---------------------------------------


def _real_tensorrt_or_skip() -> None:
    if not tensorrt_installed():
        pytest.skip("TensorRT is not installed (it needs NVIDIA's package index; tensorrt-stubs alone does not count)")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT is installed but no CUDA device is visible")


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_real_engine_agrees_with_onnx_and_is_cached(tiny_detector: Path, tmp_path: Path, precision: str) -> None:
    _real_tensorrt_or_skip()
    import tensorrt

    rng = np.random.default_rng(11)
    pictures = [toy_picture(rng)[0] for _ in range(8)]
    calibration = tmp_path / "calibration"
    calibration.mkdir()
    for i in range(32):
        cv2.imwrite(str(calibration / f"{i:02d}.png"), toy_picture(rng)[0])
    options = EngineOptions(cache_dir=tmp_path / "engines", precision=precision,  # type: ignore[arg-type]
                            calibration_dir=calibration if precision == "int8" else None)
    backend = load(tiny_detector, backend="tensorrt", device="cuda", batch_size=8, engine=options)
    assert backend.name == "tensorrt"
    assert backend.engine_record.key.runtime_version == tensorrt.__version__
    reference = load(tiny_detector, backend="onnx", threads=2).predict(pictures)
    found = backend.predict(pictures)
    if precision == "fp16":
        for ours, theirs in zip(found, reference, strict=True):
            assert_same_detections(ours, theirs, min_iou=0.95, label="TensorRT fp16 vs ONNX")
    else:
        assert sum(len(f) for f in found) >= 0.8 * sum(len(r) for r in reference)
        assert list((tmp_path / "engines").glob("*.calib")), "INT8 calibration cache written"
    again = load(tiny_detector, backend="tensorrt", device="cuda", batch_size=8, engine=options)
    assert again.name == "tensorrt" and again.engine_record.path == backend.engine_record.path
