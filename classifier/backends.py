"""The classifier's model on any runtime: crops in, SKU codes, confidences and embeddings out.

Running the network belongs to the runtime layer (:mod:`shelftally.runtimes`: ONNX Runtime,
OpenVINO, torch and TensorRT sessions, threads, warm-up, engine cache, INT8 variants). What is
the classifier's own is here, so every runtime answers identically:

1. check every crop ((h, w, 3) uint8 RGB) before running anything;
2. split the crops into chunks of the model's batch limit: the batch dimension of the model's
   input when it is fixed (a graph exported with ``batch=1`` takes one crop per call), else
   ``batch_size``; the last chunk of a fixed-batch model is padded with zeros and the padding's
   outputs are dropped, so results always come back one per crop, in input order;
3. resize and normalise each chunk (:func:`classifier.preprocess.prepare_batch`);
4. run it on the session, which returns the graph's ``logits`` and ``embedding`` outputs
   (:data:`classifier.model_dir.ONNX_OUTPUTS`);
5. softmax the logits (confidence = best class's probability), re-normalise the embeddings and,
   when ``min_confidence`` is set, name crops below it unknown (``class_id`` -1).

========== ========================================= ========================
backend    runtime                                   pip extra
========== ========================================= ========================
``onnx``   ONNX Runtime on ``model.onnx``            ``shelftally[onnx]``
``openvino`` OpenVINO on ``openvino/model.xml``      ``shelftally[openvino]``
``torch``  ``model.pt`` rebuilt from architecture    ``shelftally[train]``
``tensorrt`` TensorRT engine from ``model.onnx``     ``shelftally[tensorrt]``
========== ========================================= ========================

Usage::

    from classifier.backends import load
    classifier = load("models/classifier", backend="onnx", threads=2)
    result = classifier.classify(crops)          # crops: list of (h, w, 3) uint8 RGB
    result.sku_code, result.confidence, result.embedding
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from classifier.errors import ClassifierError, DatasetError, EngineIncompatibleError, ModelLoadError
from classifier.model_dir import (
    ONNX_OUTPUTS,
    OPENVINO_XML,
    WEIGHTS_ONNX,
    WEIGHTS_PT,
    ModelDir,
    Preprocess,
    read_model_dir,
)
from classifier.preprocess import check_crops, prepare_batch
from classifier.types import UNKNOWN_CLASS_ID, Classifications
from shelftally.runtimes import (
    RUNTIMES,
    ErrorKinds,
    RuntimeOptions,
    Session,
    SessionSpec,
    open_session,
    resolve_runtime,
    session_class,
)
from shelftally.runtimes import EngineOptions as RuntimeEngineOptions

__all__ = [
    "BACKENDS",
    "BackendConfig",
    "ClassifierBackend",
    "EngineOptions",
    "calibration_batches",
    "load",
    "softmax",
]

logger = logging.getLogger(__name__)

ALIASES: dict[str, str] = {}
"""Backend names of the classifier's own, besides the runtimes' names (none)."""

BACKENDS: dict[str, str] = {**{name: name for name in RUNTIMES}, **ALIASES}
"""Backend names a classifier takes (every :data:`shelftally.runtimes.RUNTIMES` entry), and the
runtime each runs on."""

ERRORS = ErrorKinds(load=ModelLoadError, incompatible=EngineIncompatibleError, failure=ClassifierError)


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


@dataclass(frozen=True)
class EngineOptions(RuntimeEngineOptions):
    """TensorRT engine options (:class:`shelftally.runtimes.EngineOptions`) with the classifier's defaults.

    Crops are small: calibration takes up to 1024 of them in batches of 32, and the builder
    workspace is 2 GiB.
    """

    calibration_images: int = 1024
    calibration_batch: int = 32
    workspace_mib: int = 2048


@dataclass(frozen=True)
class BackendConfig(RuntimeOptions):
    """How a classifier runs (:func:`load` builds it): the runtime options, and open-set naming.

    Attributes:
        batch_size: crops per network call when the model's batch is dynamic (default 32).
        min_confidence: crops whose best probability is below this are unknown (``class_id``
            -1, ``sku_code`` None); 0 names every crop. A plain threshold: calibrated open-set
            rejection comes with the gallery.
        engine: TensorRT engine options (the classifier's :class:`EngineOptions` defaults).

    The rest (device, threads, warmup, openvino_precision, int8_max_drop_points) are
    :class:`shelftally.runtimes.RuntimeOptions`.

    Raises:
        ConfigurationError: an invalid value (reason ``invalid_backend_config``).
    """

    batch_size: int = 32
    min_confidence: float = 0.0
    engine: RuntimeEngineOptions = EngineOptions()

    def problems(self) -> list[str]:
        """What is wrong with these settings."""
        problems = super().problems()
        if not 0.0 <= float(self.min_confidence) <= 1.0:
            problems.append(f"min_confidence: expected a probability in [0, 1], received {self.min_confidence!r}")
        return problems


def _read_crop(path: Path) -> npt.NDArray[np.uint8] | None:
    from classifier.dataset import load_image

    try:
        return load_image(path)
    except DatasetError as error:
        logger.warning("calibration: %s", error)
        return None


def calibration_batches(
    folder: Path, preprocess: Preprocess, *, batch_size: int, limit: int
) -> Iterator[npt.NDArray[np.float32]]:
    """TensorRT INT8 calibration batches from a folder of crops, prepared exactly as at inference.

    See :func:`shelftally.runtimes.tensorrt.calibration_batches` (crops in name order, a last
    incomplete batch dropped).

    Yields:
        (batch_size, 3, S, S) float32 batches (:func:`classifier.preprocess.prepare_batch`).

    Raises:
        ConfigurationError: the folder is missing or holds fewer than ``batch_size`` readable
            crops (reason ``invalid_calibration``).
    """
    from shelftally.runtimes.tensorrt import calibration_batches as batches

    def prepare(crops: list[npt.NDArray[np.uint8]]) -> npt.NDArray[np.float32]:
        return prepare_batch(crops, preprocess)

    return batches(folder, prepare, _read_crop, batch_size=batch_size, limit=limit, unit="crops")


class ClassifierBackend:
    """A classifier model directory loaded into one runtime session.

    Args:
        model_dir: the model directory (:func:`classifier.model_dir.read_model_dir`).
        config: runtime and naming settings.
        backend: a name in :data:`BACKENDS`.
        int8_candidate: OpenVINO only: load this INT8 IR (relative to the directory) as it is,
            bypassing the accuracy gate (quantisation scores its staged model so).
        tensorrt_runtime: TensorRT only: the runtime to build and run engines on instead of
            opening one on ``config.device`` (tests pass fakes).
        fallback: let a refused TensorRT engine fall back to ONNX Runtime
            (:func:`shelftally.runtimes.open_session`); False raises instead.

    Attributes:
        session: the runtime session (:class:`shelftally.runtimes.Session`).
        embedding_dim: the embedding's width D, once the graph or a run told it.

    Raises:
        ModelLoadError: a file the runtime needs is missing or unreadable, the graph's input is
            not (B, 3, S, S) with S from ``preprocess.json``, or the network's outputs disagree
            with ``labels.json`` (reason ``model_output_mismatch``).
        EngineIncompatibleError: TensorRT with ``fallback=False`` only.
        MissingDependencyError: the runtime is not installed (the message names the pip extra).
        ConfigurationError: unknown backend (reason ``unknown_backend``), or a device the
            runtime does not offer.
    """

    def __init__(self, model_dir: ModelDir, config: BackendConfig, backend: str = "onnx", *,
                 int8_candidate: str | None = None, tensorrt_runtime: Any = None, fallback: bool = True) -> None:
        runtime = resolve_runtime(backend, what="classifier", aliases=ALIASES)
        self.model_dir = model_dir
        self.config = config
        started = time.perf_counter()

        def torch_module() -> Any:
            from classifier.backbones import load_model_dir

            return load_model_dir(model_dir)

        spec = SessionSpec(
            root=model_dir.path, what="classifier", input_size=model_dir.preprocess.input_size, options=config,
            outputs=ONNX_OUTPUTS, errors=ERRORS, onnx_file=WEIGHTS_ONNX, openvino_xml=OPENVINO_XML,
            torch_file=WEIGHTS_PT, torch_module=torch_module, torch_requires=("torchvision",),
            calibration=lambda folder, batch, limit: calibration_batches(
                folder, model_dir.preprocess, batch_size=batch, limit=limit),
            int8_candidate=int8_candidate, tensorrt_runtime=tensorrt_runtime,
        )
        self.session: Session = (
            open_session(runtime, spec) if fallback else session_class(runtime, what="classifier")(spec)
        )
        module = getattr(self.session, "module", None)
        width = self.session.output_widths[1] if len(self.session.output_widths) > 1 else None
        self.embedding_dim: int | None = getattr(module, "embedding_dim", None) or width
        if config.warmup:
            self.warmup()
        logger.info(
            "loaded classifier %s with %s backend on %s (batch %s) in %.0f ms",
            self.version, self.name, config.device, self.fixed_batch or f"<= {config.batch_size}",
            (time.perf_counter() - started) * 1000,
        )

    @property
    def name(self) -> str:
        """The runtime that runs it (``"onnx"``, ``"openvino"``, ``"torch"``, ``"tensorrt"``)."""
        return self.session.runtime

    @property
    def labels(self) -> list[str]:
        """SKU codes; index = ``class_id``."""
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
    def cache(self) -> Any:
        """TensorRT only: the engine cache (None on other runtimes)."""
        return getattr(self.session, "cache", None)

    @property
    def version(self) -> str:
        """Short content hash of the weights (:attr:`classifier.model_dir.ModelDir.version`, hashed once)."""
        return self.model_dir.version + ("-int8" if self.precision == "int8" else "")

    @property
    def chunk_size(self) -> int:
        """Crops per network call: the model's fixed batch, else ``config.batch_size``."""
        return self.session.chunk_size

    def _infer(self, batch: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Run the network: (B, 3, S, S) float32 -> ``(logits (B, C), embedding (B, D))`` float32."""
        logits, embedding = self.session.run(batch)
        return logits, embedding

    def _checked(
        self, batch_rows: int, logits: npt.NDArray[np.float32], embedding: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        b, c = batch_rows, len(self.labels)
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

    def _run(self, batch: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        logits, embedding = self._infer(batch)
        return self._checked(batch.shape[0], logits, embedding)

    def warmup(self) -> None:
        """Run one blank batch of :attr:`chunk_size` and check the outputs' shapes.

        Raises:
            ModelLoadError: the outputs are not logits (B, len(labels)) and embedding (B, D)
                (reason ``model_output_mismatch``).
        """
        logits, embedding = self.session.warmup(0.0)
        self._checked(self.chunk_size, logits, embedding)

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

    def close(self) -> None:
        """Release the runtime session."""
        self.session.close()

    def __enter__(self) -> ClassifierBackend:
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
    batch_size: int = 32,
    min_confidence: float = 0.0,
    warmup: bool = True,
    openvino_precision: Literal["auto", "f32", "int8"] = "auto",
    int8_max_drop_points: float = 1.0,
    engine: RuntimeEngineOptions | None = None,
) -> ClassifierBackend:
    """Load a classifier model directory into a runtime.

    Args:
        model_dir: the model directory (or one already read).
        backend: a name in :data:`BACKENDS`.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` (OpenVINO: also ``"gpu"``, ``"npu"``, ``"auto"``).
        threads: intra-op threads per process (None: the runtime's default). With several
            worker processes on one machine, pass ``cores // processes``.
        batch_size: crops per network call when the model's batch is dynamic; a model exported
            with a fixed batch uses that batch instead.
        min_confidence: best-class probability below which a crop is unknown (0: never).
        warmup: run one batch at load and check the outputs against ``labels.json``.
        openvino_precision: ``"auto"`` (bf16 where the CPU has it), ``"f32"``, or ``"int8"``
            (the directory's INT8 model when its recorded accuracy loss is within
            ``int8_max_drop_points``, else FP32 with a warning); OpenVINO only.
        int8_max_drop_points: accuracy margin of INT8 in percentage points
            (:func:`shelftally.runtimes.int8.choose_int8`).
        engine: TensorRT engine options (precision, cache, calibration); TensorRT only.

    Returns:
        The loaded backend; call :meth:`ClassifierBackend.classify`. For ``"tensorrt"``, when
        the engine is refused as built for another TensorRT version or GPU
        (:class:`~classifier.errors.EngineIncompatibleError`), a warning naming expected and
        actual values is logged and it runs on ONNX Runtime instead.

    Raises:
        ConfigurationError: unknown backend name (the message lists the valid names), an
            invalid setting or an unavailable device.
        ModelLoadError: the directory or a file the backend needs is missing or unreadable, or
            the network does not match ``labels.json`` / ``preprocess.json``.
        MissingDependencyError: the runtime is not installed; the message names the pip extra.
    """
    resolve_runtime(backend, what="classifier", aliases=ALIASES)
    config = BackendConfig(
        device=device, threads=threads, batch_size=batch_size, min_confidence=min_confidence, warmup=warmup,
        openvino_precision=openvino_precision,
        int8_max_drop_points=int8_max_drop_points, engine=engine or EngineOptions(),
    )
    directory = model_dir if isinstance(model_dir, ModelDir) else read_model_dir(model_dir)
    return ClassifierBackend(directory, config, backend)
