"""The runtime layer (``shelftally.runtimes``): its table, lazy imports, errors and one new runtime in one file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shelftally.errors import ConfigurationError, ShelfTallyError
from shelftally.runtimes import (
    RUNTIMES,
    ErrorKinds,
    ModelLoadError,
    RuntimeOptions,
    Session,
    SessionSpec,
    open_session,
    resolve_runtime,
    session_class,
)
from shelftally.runtimes.base import Batch, Outputs

ROOT = Path(__file__).resolve().parents[1]


class EchoSession(Session):
    """A runtime in one class: its 'network' returns the mean of each picture, and the picture's width."""

    runtime = "echo"

    def _open(self) -> None:
        self.spec.file(self.spec.onnx_file)
        self.output_widths = (1,)

    def _run(self, batch: Batch) -> Outputs:
        return (batch.mean(axis=(1, 2, 3)).reshape(-1, 1).astype(np.float32),)


class KindError(ShelfTallyError):
    reason = "kind_error"


def test_every_row_of_the_table_is_a_session_of_that_name() -> None:
    assert set(RUNTIMES) == {"onnx", "openvino", "torch", "tensorrt"}
    for name in RUNTIMES:
        cls = session_class(name)
        assert issubclass(cls, Session) and cls.runtime == name


def test_an_unknown_runtime_names_the_valid_ones_and_the_aliases() -> None:
    with pytest.raises(ConfigurationError) as caught:
        resolve_runtime("tflite", what="detector", aliases={"ultralytics": "torch"})
    assert caught.value.reason == "unknown_backend"
    for name in (*RUNTIMES, "ultralytics", "detector"):
        assert name in str(caught.value)
    assert resolve_runtime("ultralytics", aliases={"ultralytics": "torch"}) == "torch"


def test_importing_the_layer_and_both_model_kinds_imports_no_runtime() -> None:
    code = (
        "import sys; import shelftally.runtimes.onnx, shelftally.runtimes.openvino, shelftally.runtimes.torch, "
        "shelftally.runtimes.tensorrt, detector.backends, classifier.backends; "
        "print(sorted(m for m in ('onnxruntime', 'openvino', 'torch', 'tensorrt', 'ultralytics') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_a_missing_file_is_the_model_kinds_own_error(tmp_path: Path) -> None:
    spec = SessionSpec(root=tmp_path, what="widget", input_size=8, errors=ErrorKinds(load=KindError))
    with pytest.raises(KindError) as caught:
        open_session("onnx", spec)
    assert caught.value.reason == "model_file_missing" and "model.onnx" in str(caught.value)
    with pytest.raises(ModelLoadError):  # the default kind of error
        open_session("onnx", SessionSpec(root=tmp_path, what="widget", input_size=8))


def test_a_new_runtime_is_one_class_and_one_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  tiny_detector: Path) -> None:
    from detector.backends import BackendConfig, DetectorBackend
    from detector.model_dir import read_model_dir

    monkeypatch.setitem(RUNTIMES, "echo", f"{__name__}:EchoSession")
    (tmp_path / "model.onnx").write_bytes(b"")
    session = open_session("echo", SessionSpec(root=tmp_path, what="widget", input_size=4,
                                               options=RuntimeOptions(batch_size=3)))
    (means,) = session.warmup(0.5)
    assert session.runtime == "echo" and session.chunk_size == 3 and means.tolist() == [[0.5]] * 3
    # a model kind takes it by name without any change of its own: the detector loads, then finds
    # its network's output the wrong shape (the echo is no detector), as it should
    with pytest.raises(ShelfTallyError) as caught:
        DetectorBackend(read_model_dir(tiny_detector), BackendConfig(), "echo")
    assert caught.value.reason == "model_output_mismatch"


def test_runtime_options_name_every_problem_at_once() -> None:
    with pytest.raises(ConfigurationError) as caught:
        RuntimeOptions(batch_size=0, threads=0, openvino_precision="int4", int8_max_drop_points=-1)  # type: ignore[arg-type]
    message = str(caught.value)
    assert caught.value.reason == "invalid_backend_config"
    for field in ("batch_size", "threads", "openvino_precision", "int8_max_drop_points"):
        assert field in message


def test_load_takes_the_runtime_options_and_engine_none_means_the_kinds_default() -> None:
    from classifier.backends import EngineOptions as ClassifierEngineOptions
    from classifier.backends import load as load_classifier
    from detector.backends import load as load_detector
    from shelftally.runtimes import EngineOptions

    models = ROOT / "models"
    with load_detector(models / "product-agnostic", engine=None, threads=1, batch_size=2, warmup=False) as detector:
        assert detector.config.engine == EngineOptions() and detector.chunk_size == 2
    with load_classifier(models / "classifier-grocery", engine=None, threads=1, warmup=False) as classifier:
        assert classifier.config.engine == ClassifierEngineOptions() and classifier.config.batch_size == 32
        assert classifier.config.engine.calibration_batch == 32 and classifier.embedding_dim
    chosen = EngineOptions(precision="fp32")
    with load_classifier(models / "classifier-grocery", engine=chosen, threads=1, warmup=False) as classifier:
        assert classifier.config.engine is chosen


def test_an_openvino_device_this_machine_lacks_is_a_device_error_not_a_broken_model(tiny_detector: Path) -> None:
    pytest.importorskip("openvino")
    from detector.backends import load

    with pytest.raises(ConfigurationError) as caught:
        load(tiny_detector, backend="openvino", device="tpu", warmup=False)
    assert caught.value.reason == "invalid_device" and "available" in str(caught.value)
    with load(tiny_detector, backend="openvino", device="auto", threads=1, warmup=False) as detector:
        assert detector.name == "openvino"


def test_a_missing_openvino_ir_names_the_command_that_makes_it(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    import shutil

    from classifier.backends import load
    from shelftally.errors import ModelLoadError as AnyModelLoadError

    folder = tmp_path / "classifier"
    shutil.copytree(ROOT / "models" / "classifier-grocery", folder)
    with pytest.raises(AnyModelLoadError) as caught:  # the shared base catches every kind's load error
        load(folder, backend="openvino")
    assert caught.value.reason == "model_file_missing"
    assert f"shelftally classifier export {folder} --format openvino" in str(caught.value)
