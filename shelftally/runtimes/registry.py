"""The table of runtimes, and opening a session on one by name (see :mod:`shelftally.runtimes`)."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping

from shelftally.errors import ConfigurationError, EngineIncompatibleError
from shelftally.runtimes.base import Session, SessionSpec

__all__ = ["FALLBACK", "RUNTIMES", "open_session", "resolve_runtime", "session_class"]

logger = logging.getLogger("shelftally.runtimes")

RUNTIMES: dict[str, str] = {
    "onnx": "shelftally.runtimes.onnx:OnnxSession",
    "openvino": "shelftally.runtimes.openvino:OpenVinoSession",
    "torch": "shelftally.runtimes.torch:TorchSession",
    "tensorrt": "shelftally.runtimes.tensorrt:TensorRTSession",
}

FALLBACK: dict[str, str] = {"tensorrt": "onnx"}
"""Where a load goes when the engine it needs was built for another TensorRT version or GPU."""


def resolve_runtime(name: str, *, what: str = "model", aliases: Mapping[str, str] | None = None) -> str:
    """The :data:`RUNTIMES` entry a backend name runs on (a model kind may add aliases).

    Args:
        name: a key of :data:`RUNTIMES` or of ``aliases``.
        what: the model kind, for the message.
        aliases: other names the kind takes (the detector's ``"ultralytics"`` is ``"torch"``).

    Raises:
        ConfigurationError: unknown name (reason ``unknown_backend``); the message lists the valid names.
    """
    aliases = aliases or {}
    runtime = aliases.get(name, name)
    if runtime not in RUNTIMES:
        valid = sorted({*RUNTIMES, *aliases})
        raise ConfigurationError(f"unknown {what} backend {name!r}; valid names: {', '.join(valid)}",
                                 reason="unknown_backend")
    return runtime


def session_class(name: str, *, what: str = "model") -> type[Session]:
    """The session class registered under ``name`` (its module is imported now; its runtime is not).

    Args:
        name: a key of :data:`RUNTIMES`.
        what: the model kind, for the message.

    Raises:
        ConfigurationError: unknown name (reason ``unknown_backend``); the message lists the valid names.
    """
    target = RUNTIMES.get(name)
    if target is None:
        raise ConfigurationError(
            f"unknown {what} backend {name!r}; valid names: {', '.join(sorted(RUNTIMES))}", reason="unknown_backend"
        )
    module_name, class_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, Session)):
        raise ConfigurationError(f"{target} is not a Session", reason="unknown_backend")
    return cls


def open_session(name: str, spec: SessionSpec) -> Session:
    """Open ``spec``'s network on the runtime ``name``.

    Returns:
        The session. For ``"tensorrt"``, when the engine is refused as built for another
        TensorRT version or GPU (:class:`shelftally.errors.EngineIncompatibleError`), a warning
        naming expected and actual values is logged and an ONNX Runtime session (:data:`FALLBACK`)
        is returned instead.

    Raises:
        ConfigurationError: unknown runtime name, invalid settings or an unavailable device.
        spec.errors.load: a file the runtime needs is missing or unreadable, or the graph does
            not fit the spec.
        spec.errors.missing: the runtime is not installed; the message names the pip extra.
    """
    cls = session_class(name, what=spec.what)
    try:
        return cls(spec)
    except EngineIncompatibleError as error:
        fallback = FALLBACK.get(name)
        if fallback is None:
            raise
        logger.warning("TensorRT engine refused, falling back to ONNX Runtime for %s: %s", spec.root, error)
        return session_class(fallback, what=spec.what)(spec)
