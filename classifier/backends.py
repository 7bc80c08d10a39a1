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
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Unpack

import numpy as np
import numpy.typing as npt

from classifier import model_dir as layout
from classifier.errors import ClassifierError, DatasetError, EngineIncompatibleError, ModelLoadError
from classifier.model_dir import ModelDir, Preprocess, read_model_dir
from classifier.preprocess import check_crops, prepare_batch
from classifier.types import UNKNOWN_CLASS_ID, Classifications
from shelftally.runtimes import RUNTIMES, ErrorKinds, LoadedModel, RuntimeArgs, RuntimeOptions, SessionSpec
from shelftally.runtimes import EngineOptions as RuntimeEngineOptions
from shelftally.runtimes.base import split_engine
from shelftally.runtimes.registry import resolve_runtime

__all__ = [
    "BACKENDS",
    "BackendConfig",
    "ClassifierBackend",
    "EngineOptions",
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
    """A calibration crop (:func:`classifier.dataset.load_image`), or None when it cannot be read."""
    from classifier.dataset import load_image

    try:
        return load_image(path)
    except DatasetError as error:
        logger.warning("calibration: %s", error)
        return None


class ClassifierBackend(LoadedModel):
    """A classifier model directory loaded into one runtime session (:class:`shelftally.runtimes.LoadedModel`).

    Takes a :func:`classifier.model_dir.read_model_dir` directory, a :class:`BackendConfig` and
    a name of :data:`BACKENDS` (the other arguments: :class:`shelftally.runtimes.LoadedModel`).

    Attributes:
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

    what = "classifier"
    aliases = ALIASES
    model_dir: ModelDir
    config: BackendConfig
    embedding_dim: int | None = None

    def _spec(self, *, int8_candidate: str | None, tensorrt_runtime: Any) -> SessionSpec:
        model_dir = self.model_dir

        def torch_module() -> Any:
            from classifier.backbones import load_model_dir

            return load_model_dir(model_dir)

        return SessionSpec(
            root=model_dir.path, what=self.what, input_size=model_dir.preprocess.input_size, options=self.config,
            outputs=layout.ONNX_OUTPUTS, errors=ERRORS, onnx_file=layout.WEIGHTS_ONNX,
            openvino_xml=layout.OPENVINO_XML,
            torch_file=layout.WEIGHTS_PT, torch_module=torch_module, torch_requires=("torchvision",),
            prepare=lambda crops: prepare_batch(crops, model_dir.preprocess), read=_read_crop, unit="crops",
            int8_candidate=int8_candidate, tensorrt_runtime=tensorrt_runtime,
        )

    def _opened(self) -> None:
        module = getattr(self.session, "module", None)
        widths = self.session.output_widths
        self.embedding_dim = getattr(module, "embedding_dim", None) or (widths[1] if len(widths) > 1 else None)

    @property
    def preprocess(self) -> Preprocess:
        """Input preparation of the model."""
        return self.model_dir.preprocess

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


def load(
    model_dir: str | Path | ModelDir, *, backend: str = "onnx", min_confidence: float = 0.0,
    **runtime: Unpack[RuntimeArgs],
) -> ClassifierBackend:
    """Load a classifier model directory into a runtime.

    Args:
        model_dir: the model directory (or one already read).
        backend: a name in :data:`BACKENDS`.
        min_confidence: best-class probability below which a crop is unknown (0: never).
        runtime: how it runs (:class:`shelftally.runtimes.RuntimeArgs`: device, threads,
            batch_size (crops per call when the model's batch is dynamic, default 32; a model
            exported with a fixed batch uses that), warmup, openvino_precision,
            int8_max_drop_points, engine (the classifier's :class:`EngineOptions` defaults)).

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
    options, engine = split_engine(runtime)
    config = BackendConfig(min_confidence=min_confidence, **options)
    if engine is not None:
        config = replace(config, engine=engine)
    directory = model_dir if isinstance(model_dir, ModelDir) else read_model_dir(model_dir)
    return ClassifierBackend(directory, config, backend)
