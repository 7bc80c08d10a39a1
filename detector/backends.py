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
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Unpack

import numpy as np
import numpy.typing as npt

from detector import model_dir as layout
from detector.errors import DetectorError, EngineIncompatibleError, ModelLoadError
from detector.model_dir import ModelDir, Preprocess, read_model_dir
from detector.postprocess import DEFAULT_MAX_DET, check_thresholds, decode
from detector.preprocess import letterbox
from detector.types import Detections
from shelftally.runtimes import (
    RUNTIMES,
    EngineOptions,
    ErrorKinds,
    LoadedModel,
    RuntimeArgs,
    RuntimeOptions,
    SessionSpec,
    threads_per_process,
)
from shelftally.runtimes.base import split_engine
from shelftally.runtimes.registry import resolve_runtime

__all__ = [
    "BACKENDS",
    "BackendConfig",
    "DetectorBackend",
    "EngineOptions",
    "load",
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


class DetectorBackend(LoadedModel):
    """A detector model directory loaded into one runtime session (:class:`shelftally.runtimes.LoadedModel`).

    Takes a :func:`detector.model_dir.read_model_dir` directory, a :class:`BackendConfig` and a
    name of :data:`BACKENDS` (the other arguments: :class:`shelftally.runtimes.LoadedModel`).

    Raises:
        ModelLoadError: a file the runtime needs is missing or unreadable, or the network's
            output does not match ``labels.json`` (reason ``model_output_mismatch``).
        EngineIncompatibleError: TensorRT with ``fallback=False`` only: the engine was built for
            another TensorRT version or GPU.
        MissingDependencyError: the runtime is not installed (the message names the pip extra).
        ConfigurationError: unknown backend (reason ``unknown_backend``), invalid settings or an
            unavailable device.
    """

    what = "detector"
    aliases = ALIASES
    model_dir: ModelDir
    config: BackendConfig

    def _spec(self, *, int8_candidate: str | None, tensorrt_runtime: Any) -> SessionSpec:
        model_dir = self.model_dir
        return SessionSpec(
            root=model_dir.path, what=self.what, input_size=model_dir.preprocess.input_size, options=self.config,
            errors=ERRORS, onnx_file=layout.WEIGHTS_ONNX, openvino_xml=layout.OPENVINO_XML,
            openvino_source=layout.OPENVINO_SOURCE, torch_file=layout.WEIGHTS_PT,
            torch_module=lambda: _ultralytics_module(model_dir.file(layout.WEIGHTS_PT)),
            torch_requires=("ultralytics",),
            prepare=lambda pictures: letterbox(pictures, model_dir.preprocess)[0],
            int8_candidate=int8_candidate, tensorrt_runtime=tensorrt_runtime,
        )

    @property
    def preprocess(self) -> Preprocess:
        """Input preparation of the model."""
        return self.model_dir.preprocess

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


def load(
    model_dir: str | Path | ModelDir,
    *,
    backend: str = "onnx",
    conf: float | None = None,
    iou: float = 0.45,
    max_det: int | None = None,
    **runtime: Unpack[RuntimeArgs],
) -> DetectorBackend:
    """Load a detector model directory into a runtime.

    Args:
        model_dir: the model directory (or one already read).
        backend: a name in :data:`BACKENDS`.
        conf: confidence threshold in [0, 1]; None: the model directory's recommended one
            (``inference.json``, :attr:`~detector.model_dir.ModelDir.confidence`), else 0.25.
        iou: NMS IoU threshold in [0, 1].
        max_det: most detections per picture (``Detections.truncated`` tells when it bit); None:
            the model directory's (``inference.json``), else :data:`DEFAULT_MAX_DET`.
        runtime: how it runs (:class:`shelftally.runtimes.RuntimeArgs`: device, threads,
            batch_size (pictures per call, default 8), warmup, openvino_precision,
            int8_max_drop_points, engine); the defaults are :class:`BackendConfig`'s.

    Returns:
        The loaded backend. For ``"tensorrt"``, when the engine is refused as built for
        another TensorRT version or GPU (:class:`~detector.errors.EngineIncompatibleError`), a
        warning is logged and it runs on ONNX Runtime instead.

    Raises:
        ConfigurationError: unknown backend name or invalid settings.
        ModelLoadError: the directory or a file the backend needs is missing or unreadable.
        MissingDependencyError: the runtime is not installed; the message names the pip extra.
    """
    resolve_runtime(backend, what="detector", aliases=ALIASES)  # before the directory is read
    directory = model_dir if isinstance(model_dir, ModelDir) else read_model_dir(model_dir)
    options, engine = split_engine(runtime)
    config = BackendConfig(
        conf=directory.confidence if conf is None else conf, iou=iou,
        max_det=(directory.max_det or DEFAULT_MAX_DET) if max_det is None else max_det, **options,
    )
    if engine is not None:
        config = replace(config, engine=engine)
    return DetectorBackend(directory, config, backend)
