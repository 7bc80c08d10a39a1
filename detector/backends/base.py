"""The interface every detector runtime implements, with the work they share.

A backend turns pictures into :class:`~detector.types.Detections`. Everything except running
the network is shared here, so all runtimes decode identically:

1. split the pictures into chunks of ``batch_size`` (or of the model's fixed batch dimension,
   padding the last chunk);
2. letterbox each chunk into a (B, 3, S, S) float32 batch (:func:`detector.preprocess.letterbox`);
3. run the network (:meth:`DetectorBackend._infer`, the only runtime-specific step);
4. decode the (B, 4 + C, A) output with confidence threshold, class-aware NMS and ``max_det``
   (:func:`detector.postprocess.decode`).

Threads: ``threads`` is the runtime's intra-op thread count (None: the runtime's default, about
one per core). When several worker processes share a machine, give each ``cores // processes``
(:func:`threads_per_process`); otherwise they oversubscribe the cores and all slow down.
"""

from __future__ import annotations

import logging
import math
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Literal

import numpy as np
import numpy.typing as npt

from detector.errors import ModelLoadError
from detector.model_dir import ModelDir, Preprocess
from detector.postprocess import DEFAULT_MAX_DET, check_thresholds, decode
from detector.preprocess import letterbox
from detector.types import Detections
from shelftally.devices import parse_cuda_device
from shelftally.errors import ConfigurationError

__all__ = [
    "BackendConfig",
    "DetectorBackend",
    "EngineOptions",
    "Precision",
    "parse_cuda_device",
    "threads_per_process",
]

logger = logging.getLogger(__name__)

Precision = Literal["fp32", "fp16", "int8"]


def threads_per_process(processes: int) -> int:
    """Intra-op threads for each of ``processes`` worker processes sharing this machine's cores.

    Returns:
        ``max(1, usable_cores // processes)``, where usable cores are this process's CPU
        affinity (``os.sched_getaffinity``) where available, else ``os.cpu_count()``.

    Raises:
        ValueError: ``processes < 1``.
    """
    if processes < 1:
        raise ValueError(f"processes: expected a positive integer, received {processes}")
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // processes)


@dataclass(frozen=True)
class EngineOptions:
    """How the TensorRT backend finds or builds its engine (ignored by the other backends).

    Attributes:
        precision: ``"fp16"`` (default), ``"int8"`` (needs ``calibration_dir``) or ``"fp32"``.
        cache_dir: the engine cache; default ``<model dir>/engines``.
        build_missing: build (and cache) an engine when none matches this GPU and TensorRT
            version; when False, only cached engines are used.
        engine_path: a prebuilt engine file (with its metadata JSON beside it) to use instead
            of the cache; it is checked, never rebuilt.
        max_batch: largest batch of the optimisation profile; default the backend's
            ``batch_size``.
        calibration_dir: folder of pictures (PNG/JPEG) for INT8 entropy calibration.
        calibration_images: at most this many calibration pictures are used.
        calibration_batch: pictures per calibration batch.
        workspace_mib: builder workspace memory limit in MiB.
    """

    precision: Precision = "fp16"
    cache_dir: Path | None = None
    build_missing: bool = True
    engine_path: Path | None = None
    max_batch: int | None = None
    calibration_dir: Path | None = None
    calibration_images: int = 512
    calibration_batch: int = 8
    workspace_mib: int = 4096


@dataclass(frozen=True)
class BackendConfig:
    """Settings shared by all backends (:func:`detector.backends.load` builds it).

    Attributes:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``; OpenVINO also takes its device names
            (``"gpu"``, ``"npu"``, ``"auto"``).
        threads: intra-op threads (None: the runtime's default). See :func:`threads_per_process`.
        conf: confidence threshold; candidates with best class score ``> conf`` are kept.
        iou: NMS IoU threshold.
        max_det: most detections per picture (the most confident are kept; ``truncated`` set).
        batch_size: pictures per network call.
        warmup: run one batch at load, so the first real call is not slow.
        openvino_precision: OpenVINO on the CPU: ``"auto"`` lets OpenVINO pick (bfloat16 on CPUs
            with native bf16, AMX / AVX-512 BF16: about twice as fast as fp32 on this project's
            machines, boxes within IoU 0.99 of fp32); ``"f32"`` forces fp32.
            ``"int8"``: the directory's NNCF INT8 model (``openvino-int8/``, made by ``quantize``)
            when its recorded accuracy loss is within ``int8_max_drop_points``, else FP32 (``"auto"``)
            with a warning (:func:`shelftally.int8.choose_int8`).
        int8_max_drop_points: the most accuracy (percentage points of mAP50 / top-1 on the recorded
            evaluation sets) an INT8 model may have lost against FP32 to be used.
        engine: TensorRT engine options.
    """

    device: str = "cpu"
    threads: int | None = None
    conf: float = 0.25
    iou: float = 0.45
    max_det: int = DEFAULT_MAX_DET
    batch_size: int = 8
    warmup: bool = True
    openvino_precision: Literal["auto", "f32", "int8"] = "auto"
    int8_max_drop_points: float = 1.0
    engine: EngineOptions = field(default_factory=EngineOptions)

    def __post_init__(self) -> None:
        try:
            check_thresholds(self.conf, self.iou, self.max_det)
        except ValueError as error:
            raise ConfigurationError(str(error), reason="invalid_backend_config") from error
        if self.batch_size < 1:
            raise ConfigurationError(
                f"batch_size: expected a positive integer, received {self.batch_size}", reason="invalid_backend_config"
            )
        if self.openvino_precision not in ("auto", "f32", "int8"):
            raise ConfigurationError(
                f"openvino_precision: expected 'auto', 'f32' or 'int8', received {self.openvino_precision!r}",
                reason="invalid_backend_config",
            )
        if not math.isfinite(self.int8_max_drop_points) or self.int8_max_drop_points < 0:
            raise ConfigurationError(
                f"int8_max_drop_points: expected >= 0, received {self.int8_max_drop_points}",
                reason="invalid_backend_config",
            )
        if self.threads is not None and self.threads < 1:
            raise ConfigurationError(
                f"threads: expected a positive integer or None, received {self.threads}",
                reason="invalid_backend_config",
            )


class DetectorBackend(ABC):
    """A detector model loaded into one runtime.

    Subclasses implement :meth:`_open` (load the runtime and the weights, set
    :attr:`fixed_batch` when the model's batch dimension is static) and :meth:`_infer`.

    Args:
        model_dir: the model directory (:func:`detector.model_dir.read_model_dir`).
        config: shared settings.

    Raises:
        ModelLoadError: a file the backend needs is missing or unreadable, or the network's
            output does not match ``labels.json``.
        MissingDependencyError: the runtime is not installed (the message names the pip extra).
    """

    name: ClassVar[str] = "base"

    def __init__(self, model_dir: ModelDir, config: BackendConfig) -> None:
        self.model_dir = model_dir
        self.config = config
        self.fixed_batch: int | None = None
        started = time.perf_counter()
        self._open()
        if config.warmup:
            self.warmup()
        logger.info(
            "loaded detector %s with %s backend on %s in %.0f ms",
            self.version, self.name, config.device, (time.perf_counter() - started) * 1000,
        )

    @abstractmethod
    def _open(self) -> None:
        """Load the runtime and the weights."""

    @abstractmethod
    def _infer(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Run the network.

        Args:
            batch: (B, 3, S, S) float32, C-contiguous (see :func:`detector.preprocess.letterbox`).

        Returns:
            (B, 4 + C, A) float32 raw head output (see :func:`detector.postprocess.decode`).
        """

    @property
    def labels(self) -> list[str]:
        """Class names; index = ``class_id``."""
        return self.model_dir.labels

    @property
    def preprocess(self) -> Preprocess:
        """Input preparation of the model."""
        return self.model_dir.preprocess

    precision: str = "fp32"
    """What runs: ``"fp32"``, or ``"int8"`` when the OpenVINO backend loaded the INT8 model."""

    @property
    def version(self) -> str:
        """Short content hash of the weights (:attr:`detector.model_dir.ModelDir.version`)."""
        return self.model_dir.version + ("-int8" if self.precision == "int8" else "")

    @property
    def chunk_size(self) -> int:
        """Pictures per network call: the model's fixed batch, else ``config.batch_size``."""
        return self.fixed_batch or self.config.batch_size

    def warmup(self) -> None:
        """Run one blank batch (allocations, kernel selection) and check the output's shape.

        Raises:
            ModelLoadError: the output is not (B, 4 + len(labels), A).
        """
        size = self.preprocess.input_size
        blank = np.full((self.chunk_size, 3, size, size), self.preprocess.pad_value * self.preprocess.scale, np.float32)
        raw = self._infer(blank)
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

    def close(self) -> None:  # noqa: B027  (an optional hook, not abstract)
        """Release the runtime's resources (the default does nothing)."""

    def __enter__(self) -> DetectorBackend:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(version={self.version!r}, device={self.config.device!r})"
