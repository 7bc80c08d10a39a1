"""The interface every classifier runtime implements, with the work they share.

A backend turns crops into :class:`~classifier.types.Classifications`. Everything except running
the network is shared here, so all runtimes answer identically:

1. check every crop ((h, w, 3) uint8 RGB) before running anything;
2. split the crops into chunks of the model's batch limit: the batch dimension of the model's
   input when it is fixed (a graph exported with ``batch=1`` takes one crop per call), else
   ``batch_size``; the last chunk of a fixed-batch model is padded with zeros and the padding's
   outputs are dropped, so results always come back one per crop, in input order;
3. resize and normalise each chunk (:func:`classifier.preprocess.prepare_batch`);
4. run the network (:meth:`ClassifierBackend._infer`, the only runtime-specific step);
5. softmax the logits (confidence = best class's probability), re-normalise the embeddings and,
   when ``min_confidence`` is set, name crops below it unknown (``class_id`` -1).

Threads: ``threads`` is the runtime's intra-op thread count (None: the runtime's default, about
one per core); give each of several worker processes on one machine ``cores // processes``.
"""

from __future__ import annotations

import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Literal

import numpy as np
import numpy.typing as npt

from classifier.errors import ModelLoadError
from classifier.model_dir import ModelDir, Preprocess
from classifier.preprocess import check_crops, prepare_batch
from classifier.types import UNKNOWN_CLASS_ID, Classifications
from shelftally.devices import parse_cuda_device
from shelftally.errors import ConfigurationError

__all__ = ["BackendConfig", "ClassifierBackend", "EngineOptions", "Precision", "parse_cuda_device", "softmax"]

logger = logging.getLogger(__name__)


def softmax(logits: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Row-wise softmax, computed in float64 after subtracting each row's maximum.

    Args:
        logits: (N, C) float32.

    Returns:
        (N, C) float32 probabilities; each row sums to 1.
    """
    shifted = np.asarray(logits, dtype=np.float64)
    shifted = shifted - shifted.max(axis=1, keepdims=True) if shifted.size else shifted
    exp = np.exp(shifted)
    probabilities: npt.NDArray[np.float32] = (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)
    return probabilities


Precision = Literal["fp32", "fp16", "int8"]


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
        max_batch: largest batch of the optimisation profile; default the backend's ``batch_size``.
        calibration_dir: folder of crops (PNG/JPEG, (h, w, 3) RGB after decoding) for INT8
            entropy calibration, prepared exactly as at inference.
        calibration_images: at most this many calibration crops are used.
        calibration_batch: crops per calibration batch.
        workspace_mib: builder workspace memory limit in MiB.
    """

    precision: Precision = "fp16"
    cache_dir: Path | None = None
    build_missing: bool = True
    engine_path: Path | None = None
    max_batch: int | None = None
    calibration_dir: Path | None = None
    calibration_images: int = 1024
    calibration_batch: int = 32
    workspace_mib: int = 2048


@dataclass(frozen=True)
class BackendConfig:
    """Settings shared by all backends (:func:`classifier.backends.load` builds it).

    Attributes:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``; OpenVINO also takes its device names
            (``"gpu"``, ``"npu"``, ``"auto"``).
        threads: intra-op threads (None: the runtime's default).
        batch_size: crops per network call when the model's batch is dynamic.
        min_confidence: crops whose best probability is below this are unknown (``class_id``
            -1, ``sku_code`` None); 0 names every crop. A plain threshold: calibrated open-set
            rejection comes with the gallery.
        warmup: run one batch at load (allocations, kernel selection) and check the outputs.
        openvino_precision: OpenVINO on the CPU: ``"auto"`` lets OpenVINO pick (bfloat16 on
            CPUs with native bf16), ``"f32"`` forces float32 (closest to the other backends).
            ``"int8"``: the directory's NNCF INT8 model (``openvino-int8/``, made by ``quantize``)
            when its recorded top-1 loss is within ``int8_max_drop_points``, else FP32
            (``"auto"``) with a warning (:func:`shelftally.int8.choose_int8`).
        int8_max_drop_points: the most top-1 accuracy, in percentage points on the recorded
            evaluation set, an INT8 model may have lost against FP32 to be used.
        engine: TensorRT engine options (precision, cache, calibration).
    """

    device: str = "cpu"
    threads: int | None = None
    batch_size: int = 32
    min_confidence: float = 0.0
    warmup: bool = True
    openvino_precision: Literal["auto", "f32", "int8"] = "auto"
    int8_max_drop_points: float = 1.0
    engine: EngineOptions = field(default_factory=EngineOptions)

    def __post_init__(self) -> None:
        problems = []
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            problems.append(f"batch_size: expected a positive integer, received {self.batch_size!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            problems.append(f"threads: expected a positive integer or None, received {self.threads!r}")
        if not 0.0 <= float(self.min_confidence) <= 1.0:
            problems.append(f"min_confidence: expected a probability in [0, 1], received {self.min_confidence!r}")
        if self.openvino_precision not in ("auto", "f32", "int8"):
            problems.append(
                f"openvino_precision: expected 'auto', 'f32' or 'int8', received {self.openvino_precision!r}"
            )
        if not math.isfinite(self.int8_max_drop_points) or self.int8_max_drop_points < 0:
            problems.append(f"int8_max_drop_points: expected >= 0, received {self.int8_max_drop_points}")
        if problems:
            raise ConfigurationError("; ".join(problems), reason="invalid_backend_config")


class ClassifierBackend(ABC):
    """A classifier model loaded into one runtime.

    Subclasses implement :meth:`_open` (load the runtime and the weights; set
    :attr:`fixed_batch` when the model's batch dimension is static and :attr:`embedding_dim`
    when the graph tells it) and :meth:`_infer`.

    Args:
        model_dir: the model directory (:func:`classifier.model_dir.read_model_dir`).
        config: shared settings.

    Raises:
        ModelLoadError: a file the backend needs is missing or unreadable, the graph's input is
            not (B, 3, S, S) with S from ``preprocess.json``, or the network's outputs disagree
            with ``labels.json`` (reason ``model_output_mismatch``).
        MissingDependencyError: the runtime is not installed (the message names the pip extra).
        ConfigurationError: the device is not one the runtime offers.
    """

    name: ClassVar[str] = "base"

    def __init__(self, model_dir: ModelDir, config: BackendConfig) -> None:
        self.model_dir = model_dir
        self.config = config
        self.fixed_batch: int | None = None
        self.embedding_dim: int | None = None
        started = time.perf_counter()
        self._open()
        if config.warmup:
            self.warmup()
        logger.info(
            "loaded classifier %s with %s backend on %s (batch %s) in %.0f ms",
            self.version, self.name, config.device, self.fixed_batch or f"<= {config.batch_size}",
            (time.perf_counter() - started) * 1000,
        )

    @abstractmethod
    def _open(self) -> None:
        """Load the runtime and the weights."""

    @abstractmethod
    def _infer(self, batch: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Run the network.

        Args:
            batch: (B, 3, S, S) float32, C-contiguous (:func:`classifier.preprocess.prepare_batch`).

        Returns:
            ``(logits, embedding)``: (B, C) and (B, D) float32 as the network gives them.
        """

    @property
    def labels(self) -> list[str]:
        """SKU codes; index = ``class_id``."""
        return self.model_dir.labels

    @property
    def preprocess(self) -> Preprocess:
        """Input preparation of the model."""
        return self.model_dir.preprocess

    precision: str = "fp32"
    """What runs: ``"fp32"``, or ``"int8"`` when the OpenVINO backend loaded the INT8 model."""

    @property
    def version(self) -> str:
        """Short content hash of the weights (:attr:`classifier.model_dir.ModelDir.version`, hashed once)."""
        return self.model_dir.version + ("-int8" if self.precision == "int8" else "")

    @property
    def chunk_size(self) -> int:
        """Crops per network call: the model's fixed batch, else ``config.batch_size``."""
        return self.fixed_batch or self.config.batch_size

    def _run(self, batch: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        logits, embedding = self._infer(batch)
        b, c = batch.shape[0], len(self.labels)
        d = self.embedding_dim
        wrong_embedding = embedding.ndim != 2 or embedding.shape[0] != b or d not in (None, embedding.shape[1])
        if logits.shape != (b, c) or wrong_embedding:
            raise ModelLoadError(
                f"{self.name} backend: network outputs expected logits ({b}, {c}) for {c} labels and embedding "
                f"({b}, {d if d is not None else 'D'}), received {logits.shape} and {embedding.shape} "
                "(labels.json of another model?)",
                reason="model_output_mismatch",
            )
        self.embedding_dim = int(embedding.shape[1])
        return logits, embedding

    def warmup(self) -> None:
        """Run one blank batch of :attr:`chunk_size` and check the outputs' shapes.

        Raises:
            ModelLoadError: the outputs are not logits (B, len(labels)) and embedding (B, D)
                (reason ``model_output_mismatch``).
        """
        size = self.preprocess.input_size
        self._run(np.zeros((self.chunk_size, 3, size, size), np.float32))

    def outputs(
        self, crops: Sequence[npt.NDArray[np.uint8]]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """The network's raw outputs for crops, batched by :attr:`chunk_size`.

        Args:
            crops: each (h, w, 3) uint8 RGB, h, w >= 1 (a list; one crop goes in a list of one).

        Returns:
            ``(logits, embedding)``: (N, C) float32 logits and (N, D) float32 embeddings
            (re-normalised to unit L2 norm), row i for ``crops[i]``.

        Raises:
            ValueError: a crop is not (h, w, 3) uint8 with h, w >= 1 (the message names its
                index), or ``crops`` is one array instead of a sequence.
        """
        checked = check_crops(crops)
        logit_rows: list[npt.NDArray[np.float32]] = []
        embedding_rows: list[npt.NDArray[np.float32]] = []
        step = self.chunk_size
        for start in range(0, len(checked), step):
            chunk = checked[start : start + step]
            batch = prepare_batch(chunk, self.preprocess, batch_size=self.fixed_batch or len(chunk))
            logits, embedding = self._run(batch)
            logit_rows.append(logits[: len(chunk)])
            embedding_rows.append(embedding[: len(chunk)])
        dim = self.embedding_dim or 0
        logits_all = np.concatenate(logit_rows) if logit_rows else np.zeros((0, len(self.labels)), np.float32)
        embedding_all = np.concatenate(embedding_rows) if embedding_rows else np.zeros((0, dim), np.float32)
        norms = np.linalg.norm(embedding_all, axis=1, keepdims=True)
        embedding_all = embedding_all / np.maximum(norms, np.float32(1e-12))
        return logits_all.astype(np.float32, copy=False), embedding_all.astype(np.float32, copy=False)

    def classify(self, crops: Sequence[npt.NDArray[np.uint8]]) -> Classifications:
        """Name the SKU of each crop.

        Args:
            crops: each (h, w, 3) uint8 RGB, h, w >= 1, any size (a list; one crop goes in a
                list of one). Any number: they are split into chunks of the model's batch limit.

        Returns:
            One entry per crop, in input order: ``class_id`` (-1 below ``min_confidence``),
            ``sku_code``, ``confidence`` (softmax probability of the best class) and the unit
            ``embedding``. No crops: an empty result with embedding (0, D).

        Raises:
            ValueError: a crop is not (h, w, 3) uint8 with h, w >= 1 (the message names its
                index), or ``crops`` is one array instead of a sequence.
        """
        logits, embedding = self.outputs(crops)
        probabilities = softmax(logits)
        best = probabilities.argmax(axis=1).astype(np.int64) if len(logits) else np.zeros(0, np.int64)
        confidence = probabilities[np.arange(len(best)), best] if len(best) else np.zeros(0, np.float32)
        class_id = np.where(confidence >= self.config.min_confidence, best, UNKNOWN_CLASS_ID).astype(np.int64)
        codes = [self.labels[i] if i != UNKNOWN_CLASS_ID else None for i in class_id.tolist()]
        return Classifications(class_id, codes, np.clip(confidence, 0.0, 1.0), embedding)

    def close(self) -> None:  # noqa: B027  (an optional hook, not abstract)
        """Release the runtime's resources (the default does nothing)."""

    def __enter__(self) -> ClassifierBackend:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(version={self.version!r}, device={self.config.device!r})"
