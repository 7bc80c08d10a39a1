"""What every model kind's loaded model shares: a model directory, its settings and its session.

:class:`LoadedModel` is the base of :class:`detector.backends.DetectorBackend` and
:class:`classifier.backends.ClassifierBackend`. It resolves the backend name, opens the session
(with the TensorRT fallback), warms it up and logs the load; a model kind adds only its spec
(:meth:`LoadedModel._spec`), its output check (:meth:`LoadedModel.warmup`) and its pre- and
post-processing. A third model kind (text reading, embeddings) is one more subclass.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Protocol

from shelftally.runtimes.base import Closable, RuntimeOptions, Session, SessionSpec
from shelftally.runtimes.registry import open_session, resolve_runtime, session_class

__all__ = ["LoadedModel", "ModelDirectory"]

logger = logging.getLogger(__name__)


class ModelDirectory(Protocol):
    """What the layer reads of a model kind's model directory object."""

    @property
    def path(self) -> Path:
        """The directory."""
        ...

    @property
    def labels(self) -> list[str]:
        """Class names (SKU codes for the classifier); index = ``class_id``."""
        ...

    @property
    def version(self) -> str:
        """Short content hash of the weights."""
        ...


class LoadedModel(Closable, ABC):
    """A model directory loaded into one runtime session.

    Args:
        model_dir: the model kind's model directory.
        config: runtime settings (the kind's subclass of :class:`RuntimeOptions`).
        backend: a name of :data:`shelftally.runtimes.RUNTIMES` or of the kind's :attr:`aliases`.
        int8_candidate: OpenVINO only: load this INT8 IR (relative to the directory) as it is,
            bypassing the accuracy gate (quantisation scores its staged model so).
        tensorrt_runtime: TensorRT only: the runtime to build and run engines on instead of
            opening one on ``config.device`` (tests pass fakes).
        fallback: let a refused TensorRT engine fall back to ONNX Runtime
            (:func:`shelftally.runtimes.open_session`); False raises instead.

    Attributes:
        session: the runtime session.

    Raises:
        ConfigurationError: unknown backend (reason ``unknown_backend``), invalid settings or
            an unavailable device.
        spec.errors.load / missing / incompatible: see :func:`shelftally.runtimes.open_session`.
    """

    what: ClassVar[str] = "model"
    """The model kind, for messages and logs."""

    aliases: ClassVar[Mapping[str, str]] = {}
    """Backend names of the kind's own, and the runtime each means."""

    def __init__(self, model_dir: Any, config: RuntimeOptions, backend: str = "onnx", *,
                 int8_candidate: str | None = None, tensorrt_runtime: Any = None, fallback: bool = True) -> None:
        runtime = resolve_runtime(backend, what=self.what, aliases=self.aliases)
        self.model_dir = model_dir
        self.config = config
        started = time.perf_counter()
        spec = self._spec(int8_candidate=int8_candidate, tensorrt_runtime=tensorrt_runtime)
        self.session: Session = (
            open_session(runtime, spec) if fallback else session_class(runtime, what=self.what)(spec)
        )
        self._opened()
        if config.warmup:
            self.warmup()
        logger.info(
            "loaded %s %s with %s backend on %s (batch %s) in %.0f ms",
            self.what, self.version, self.name, config.device, self.fixed_batch or f"<= {config.batch_size}",
            (time.perf_counter() - started) * 1000,
        )

    @abstractmethod
    def _spec(self, *, int8_candidate: str | None, tensorrt_runtime: Any) -> SessionSpec:
        """The session spec of this model directory."""

    def _opened(self) -> None:
        """Called once the session is open, before the warm-up (the default does nothing)."""

    @abstractmethod
    def warmup(self) -> None:
        """Run one blank batch and check the outputs against the model directory."""

    @property
    def name(self) -> str:
        """The runtime that runs it (``"onnx"``, ``"openvino"``, ``"torch"``, ``"tensorrt"``)."""
        return self.session.runtime

    @property
    def labels(self) -> list[str]:
        """Class names; index = ``class_id``."""
        return list(self.model_dir.labels)

    @property
    def preprocess(self) -> Any:
        """Input preparation of the model (the kind's ``preprocess.json``)."""
        return self.model_dir.preprocess

    @property
    def precision(self) -> str:
        """What runs: ``"fp32"``, or ``"int8"`` when OpenVINO loaded the INT8 model."""
        return self.session.precision

    @property
    def version(self) -> str:
        """Short content hash of the weights, ``-int8`` appended when the INT8 model runs."""
        return str(self.model_dir.version) + ("-int8" if self.precision == "int8" else "")

    @property
    def fixed_batch(self) -> int | None:
        """The model's static batch dimension, or None when it is dynamic."""
        return self.session.fixed_batch

    @property
    def chunk_size(self) -> int:
        """Inputs per network call: the model's fixed batch, else ``config.batch_size``."""
        return self.session.chunk_size

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

    def close(self) -> None:
        """Release the runtime session."""
        self.session.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(version={self.version!r}, backend={self.name!r}, device={self.config.device!r})"
