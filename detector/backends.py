"""The detector's model on any runtime: letterbox in, YOLO decoding out.

Running the network belongs to the runtime layer (:mod:`shelftally.runtimes`: ONNX Runtime,
OpenVINO, torch and TensorRT sessions, threads, warm-up, engine cache, INT8 variants). What is
the detector's own is here, so every runtime decodes identically:

1. split the pictures into chunks of ``batch_size`` (or of the model's fixed batch dimension,
   padding the last chunk);
2. letterbox each chunk into a (B, 3, S, S) float32 batch (:func:`detector.preprocess.letterbox`);
3. run it on the session (:meth:`shelftally.runtimes.Session.run`);
4. decode the (B, 4 + C, A) output with confidence threshold, class-aware NMS and ``max_det``
   (:func:`detector.postprocess.decode`).

=============== ===================================== ===========================
backend         runtime                               pip extra
=============== ===================================== ===========================
``onnx``        ONNX Runtime (CPU; CUDA when asked)   ``shelftally[onnx]``
``openvino``    OpenVINO                              ``shelftally[openvino]``
``torch``       ultralytics checkpoint, torch forward ``shelftally[train]``
``ultralytics`` same as ``torch``                     ``shelftally[train]``
``tensorrt``    TensorRT engine from ``model.onnx``   ``shelftally[tensorrt]``
=============== ===================================== ===========================

The torch backend loads ``model.pt`` through ultralytics (``YOLO(path)``, which rebuilds the
``DetectionModel``), fuses Conv+BatchNorm pairs as ultralytics' own predictor does, and calls
the module's forward on *our* letterboxed batch; its first output is the same (B, 4 + C, A)
tensor the ONNX export produces (ultralytics' ``predict`` letterboxes to a minimal rectangle and
runs its own NMS with a time limit, which is why it is not used).

Usage::

    from detector.backends import load
    detector = load("models/detector", backend="openvino", threads=4)
    detections = detector.predict([image])[0]
"""

from __future__ import annotations

import logging
import pickle
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import cv2
import numpy as np
import numpy.typing as npt

from detector.errors import DetectorError, EngineIncompatibleError, ModelLoadError
from detector.model_dir import (
    OPENVINO_SOURCE,
    OPENVINO_XML,
    WEIGHTS_ONNX,
    WEIGHTS_PT,
    ModelDir,
    Preprocess,
    read_model_dir,
)
from detector.postprocess import DEFAULT_MAX_DET, check_thresholds, decode
from detector.preprocess import letterbox
from detector.types import Detections
from shelftally.runtimes import (
    RUNTIMES,
    EngineOptions,
    ErrorKinds,
    RuntimeOptions,
    Session,
    SessionSpec,
    open_session,
    resolve_runtime,
    session_class,
    threads_per_process,
)
from shelftally.runtimes.devices import parse_cuda_device

__all__ = [
    "BACKENDS",
    "BackendConfig",
    "DetectorBackend",
    "EngineOptions",
    "calibration_batches",
    "load",
    "parse_cuda_device",
    "threads_per_process",
]

logger = logging.getLogger(__name__)

ALIASES: dict[str, str] = {"ultralytics": "torch"}
"""Backend names of the detector's own, besides the runtimes' names."""

BACKENDS: dict[str, str] = {**{name: name for name in RUNTIMES}, **ALIASES}
"""Backend names a detector takes (every :data:`shelftally.runtimes.RUNTIMES` entry, and
:data:`ALIASES`), and the runtime each runs on."""

ERRORS = ErrorKinds(load=ModelLoadError, incompatible=EngineIncompatibleError, failure=DetectorError)


@dataclass(frozen=True)
class BackendConfig(RuntimeOptions):
    """How a detector runs (:func:`load` builds it): the runtime options, and decoding.

    Attributes:
        conf: confidence threshold; candidates with best class score ``> conf`` are kept.
        iou: NMS IoU threshold.
        max_det: most detections per picture (the most confident are kept; ``truncated`` set).

    The rest (device, threads, batch_size, warmup, openvino_precision, int8_max_drop_points,
    engine) are :class:`shelftally.runtimes.RuntimeOptions`; ``batch_size`` is pictures per
    network call (default 8).

    Raises:
        ConfigurationError: an invalid value (reason ``invalid_backend_config``).
    """

    conf: float = 0.25
    iou: float = 0.45
    max_det: int = DEFAULT_MAX_DET

    def problems(self) -> list[str]:
        """What is wrong with these settings (the thresholds first, then the runtime options)."""
        try:
            check_thresholds(self.conf, self.iou, self.max_det)
        except ValueError as error:
            return [str(error), *super().problems()]
        return super().problems()


def _read_picture(path: Path) -> npt.NDArray[np.uint8] | None:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return None if bgr is None else np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), dtype=np.uint8)


def calibration_batches(
    folder: Path, preprocess: Preprocess, *, batch_size: int, limit: int
) -> Iterator[npt.NDArray[np.float32]]:
    """TensorRT INT8 calibration batches from a folder of pictures, letterboxed as at inference.

    See :func:`shelftally.runtimes.tensorrt.calibration_batches` (pictures in name order, a last
    incomplete batch dropped).

    Yields:
        (batch_size, 3, S, S) float32 batches.

    Raises:
        ConfigurationError: the folder is missing or holds fewer than ``batch_size`` readable
            pictures (reason ``invalid_calibration``).
    """
    from shelftally.runtimes.tensorrt import calibration_batches as batches

    def prepare(pictures: list[npt.NDArray[np.uint8]]) -> npt.NDArray[np.float32]:
        return letterbox(pictures, preprocess)[0]

    return batches(folder, prepare, _read_picture, batch_size=batch_size, limit=limit)


def _ultralytics_module(path: Path) -> Any:
    """The fused ``DetectionModel`` of an ultralytics checkpoint (what the torch runtime runs).

    Raises:
        ModelLoadError: ``model.pt`` is not an ultralytics detection checkpoint (reason ``model_file_unreadable``).
    """
    from detector._offline import configure_offline

    configure_offline()
    from ultralytics.models.yolo.model import YOLO

    try:
        yolo = YOLO(str(path), task="detect")
        yolo.fuse()
    except (RuntimeError, OSError, ValueError, TypeError, KeyError, AttributeError, EOFError,
            pickle.UnpicklingError) as error:
        raise ModelLoadError(f"ultralytics cannot load {path}: {error}", reason="model_file_unreadable") from error
    return yolo.model


class DetectorBackend:
    """A detector model directory loaded into one runtime session.

    Args:
        model_dir: the model directory (:func:`detector.model_dir.read_model_dir`).
        config: runtime and decoding settings.
        backend: a name in :data:`BACKENDS`.
        int8_candidate: OpenVINO only: load this INT8 IR (relative to the directory) as it is,
            bypassing the accuracy gate (quantisation scores its staged model so).
        tensorrt_runtime: TensorRT only: the runtime to build and run engines on instead of
            opening one on ``config.device`` (tests pass fakes).
        fallback: let a refused TensorRT engine fall back to ONNX Runtime
            (:func:`shelftally.runtimes.open_session`); False raises instead.

    Attributes:
        session: the runtime session (:class:`shelftally.runtimes.Session`).

    Raises:
        ModelLoadError: a file the runtime needs is missing or unreadable, or the network's
            output does not match ``labels.json`` (reason ``model_output_mismatch``).
        EngineIncompatibleError: TensorRT with ``fallback=False`` only: the engine was built for
            another TensorRT version or GPU.
        MissingDependencyError: the runtime is not installed (the message names the pip extra).
        ConfigurationError: unknown backend (reason ``unknown_backend``), invalid settings or an
            unavailable device.
    """

    def __init__(self, model_dir: ModelDir, config: BackendConfig, backend: str = "onnx", *,
                 int8_candidate: str | None = None, tensorrt_runtime: Any = None, fallback: bool = True) -> None:
        runtime = resolve_runtime(backend, what="detector", aliases=ALIASES)
        self.model_dir = model_dir
        self.config = config
        started = time.perf_counter()
        spec = SessionSpec(
            root=model_dir.path, what="detector", input_size=model_dir.preprocess.input_size, options=config,
            errors=ERRORS, onnx_file=WEIGHTS_ONNX, openvino_xml=OPENVINO_XML, openvino_source=OPENVINO_SOURCE,
            torch_file=WEIGHTS_PT, torch_module=lambda: _ultralytics_module(model_dir.file(WEIGHTS_PT)),
            torch_requires=("ultralytics",),
            calibration=lambda folder, batch, limit: calibration_batches(
                folder, model_dir.preprocess, batch_size=batch, limit=limit),
            int8_candidate=int8_candidate, tensorrt_runtime=tensorrt_runtime,
        )
        self.session: Session = (
            open_session(runtime, spec) if fallback else session_class(runtime, what="detector")(spec)
        )
        if config.warmup:
            self.warmup()
        logger.info(
            "loaded detector %s with %s backend on %s in %.0f ms",
            self.version, self.name, config.device, (time.perf_counter() - started) * 1000,
        )

    @property
    def name(self) -> str:
        """The runtime that runs it (``"onnx"``, ``"openvino"``, ``"torch"``, ``"tensorrt"``)."""
        return self.session.runtime

    @property
    def labels(self) -> list[str]:
        """Class names; index = ``class_id``."""
        return self.model_dir.labels

    @property
    def preprocess(self) -> Preprocess:
        """Input preparation of the model."""
        return self.model_dir.preprocess

    @property
    def precision(self) -> str:
        """What runs: ``"fp32"``, or ``"int8"`` when OpenVINO loaded the INT8 model."""
        return self.session.precision

    @property
    def fixed_batch(self) -> int | None:
        """The model's static batch dimension, or None when it is dynamic."""
        return self.session.fixed_batch

    @property
    def providers(self) -> list[str]:
        """ONNX Runtime's execution providers, in order (empty on other runtimes)."""
        return list(getattr(self.session, "providers", []))

    @property
    def engine_record(self) -> Any:
        """TensorRT only: the engine cache entry the engine came from (None on other runtimes)."""
        return getattr(self.session, "engine_record", None)

    @property
    def version(self) -> str:
        """Short content hash of the weights (:attr:`detector.model_dir.ModelDir.version`)."""
        return self.model_dir.version + ("-int8" if self.precision == "int8" else "")

    @property
    def chunk_size(self) -> int:
        """Pictures per network call: the model's fixed batch, else ``config.batch_size``."""
        return self.session.chunk_size

    def _infer(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Run the network: (B, 3, S, S) float32 -> (B, 4 + C, A) float32 raw head output."""
        return self.session.run(batch)[0]

    def warmup(self) -> None:
        """Run one blank batch (the padding colour) and check the output's shape.

        Raises:
            ModelLoadError: the output is not (B, 4 + len(labels), A) (reason ``model_output_mismatch``).
        """
        (raw,) = self.session.warmup(self.preprocess.pad_value * self.preprocess.scale)
        expected = 4 + len(self.labels)
        if raw.ndim != 3 or raw.shape[0] != self.chunk_size or raw.shape[1] != expected:
            raise ModelLoadError(
                f"{self.name} backend: network output expected shape ({self.chunk_size}, {expected}, A) for "
                f"{len(self.labels)} labels, received {raw.shape} (an end-to-end/NMS-free export, or labels.json "
                "of another model?)",
                reason="model_output_mismatch",
            )

    def predict(self, images: Sequence[npt.NDArray[np.uint8]]) -> list[Detections]:
        """Detect objects in pictures.

        Args:
            images: pictures, each (H, W, 3) uint8 RGB, upright, any size (a list; a single
                picture goes in a list of one).

        Returns:
            One :class:`~detector.types.Detections` per picture, in order: xyxy (N, 4) float32
            in pixels of that picture, clipped to it, most confident first.

        Raises:
            ValueError: a picture is not (H, W, 3) uint8.
        """
        if isinstance(images, np.ndarray):
            raise ValueError(
                f"images: expected a list of (H, W, 3) pictures, received one array of shape {images.shape}; "
                "wrap a single picture in a list"
            )
        if images is None or isinstance(images, (str, bytes)) or not hasattr(images, "__iter__"):
            raise ValueError(f"images: expected a list of (H, W, 3) pictures, received {type(images).__name__}")
        images = list(images)
        results: list[Detections] = []
        step = self.chunk_size
        for start in range(0, len(images), step):
            chunk = images[start : start + step]
            batch, boxes = letterbox(chunk, self.preprocess, batch_size=self.fixed_batch or len(chunk))
            raw = self._infer(batch)
            results.extend(
                decode(raw, boxes, conf=self.config.conf, iou=self.config.iou, max_det=self.config.max_det)
            )
        return results

    def close(self) -> None:
        """Release the runtime session."""
        self.session.close()

    def __enter__(self) -> DetectorBackend:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(version={self.version!r}, backend={self.name!r}, device={self.config.device!r})"


def load(
    model_dir: str | Path | ModelDir,
    *,
    backend: str = "onnx",
    device: str = "cpu",
    threads: int | None = None,
    conf: float | None = None,
    iou: float = 0.45,
    max_det: int | None = None,
    batch_size: int = 8,
    warmup: bool = True,
    openvino_precision: Literal["auto", "f32", "int8"] = "auto",
    int8_max_drop_points: float = 1.0,
    engine: EngineOptions | None = None,
) -> DetectorBackend:
    """Load a detector model directory into a runtime.

    Args:
        model_dir: the model directory (or one already read).
        backend: a name in :data:`BACKENDS`.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` (OpenVINO: also ``"gpu"``, ``"auto"``).
        threads: intra-op threads per process (None: the runtime's default). With several
            worker processes on one machine, pass ``cores // processes``
            (:func:`threads_per_process`).
        conf: confidence threshold in [0, 1]; None: the model directory's recommended one
            (``inference.json``, :attr:`~detector.model_dir.ModelDir.confidence`), else 0.25.
        iou: NMS IoU threshold in [0, 1].
        max_det: most detections per picture (``Detections.truncated`` tells when it bit); None:
            the model directory's (``inference.json``), else :data:`DEFAULT_MAX_DET`.
        batch_size: pictures per network call.
        warmup: run one batch at load.
        openvino_precision: ``"auto"`` (bf16 where the CPU has it), ``"f32"``, or ``"int8"``
            (the directory's INT8 model when its recorded accuracy loss is within
            ``int8_max_drop_points``, else FP32 with a warning); OpenVINO only.
        int8_max_drop_points: accuracy margin of INT8 in percentage points
            (:func:`shelftally.runtimes.int8.choose_int8`).
        engine: TensorRT engine options (precision, cache, calibration).

    Returns:
        The loaded backend. For ``"tensorrt"``, when the engine is refused as built for
        another TensorRT version or GPU (:class:`~detector.errors.EngineIncompatibleError`), a
        warning is logged and it runs on ONNX Runtime instead.

    Raises:
        ConfigurationError: unknown backend name or invalid settings.
        ModelLoadError: the directory or a file the backend needs is missing or unreadable.
        MissingDependencyError: the runtime is not installed; the message names the pip extra.
    """
    resolve_runtime(backend, what="detector", aliases=ALIASES)
    directory = model_dir if isinstance(model_dir, ModelDir) else read_model_dir(model_dir)
    config = BackendConfig(
        device=device, threads=threads, conf=directory.confidence if conf is None else conf, iou=iou,
        max_det=(directory.max_det or DEFAULT_MAX_DET) if max_det is None else max_det, batch_size=batch_size,
        warmup=warmup, openvino_precision=openvino_precision,
        int8_max_drop_points=int8_max_drop_points, engine=engine or EngineOptions(),
    )
    return DetectorBackend(directory, config, backend)
