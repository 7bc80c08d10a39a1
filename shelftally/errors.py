"""The root of ShelfTally's error tree.

Every error a caller can act on derives from :class:`ShelfTallyError` and carries a
machine-readable ``reason`` (a short snake_case string that never changes between releases),
so that CLIs, tasks and the HTTP API can report it without parsing messages.
"""

from __future__ import annotations


class ShelfTallyError(Exception):
    """Base class of all ShelfTally errors.

    Args:
        message: Human-readable explanation.
        reason: Machine-readable reason; defaults to the class attribute ``reason``.
    """

    reason: str = "error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason

    def to_dict(self) -> dict[str, str]:
        """Return ``{"error": <class name>, "reason": ..., "message": ...}`` for JSON output."""
        return {"error": type(self).__name__, "reason": self.reason, "message": str(self)}


class ConfigurationError(ShelfTallyError):
    """Settings are invalid or inconsistent (raised at start-up, before any work)."""

    reason = "invalid_configuration"


class ModelLoadError(ShelfTallyError):
    """A model file is missing, or a runtime cannot use it (:mod:`shelftally.runtimes` raises it).

    ``detector.errors.ModelLoadError`` and ``classifier.errors.ModelLoadError`` derive from it, so
    ``except shelftally.errors.ModelLoadError`` catches a load failure of any model kind.
    """

    reason = "model_load_failed"


class MissingDependencyError(ShelfTallyError):
    """An optional runtime is not installed; the message names the pip extra that provides it."""

    reason = "missing_dependency"


class EngineIncompatibleError(ShelfTallyError):
    """A compiled inference engine (TensorRT) was built for another runtime version or GPU.

    The message names the expected and the actual values; callers rebuild the engine or fall
    back to a portable runtime (ONNX Runtime).
    """

    reason = "engine_incompatible"


class EngineCacheError(ShelfTallyError):
    """An engine cache entry cannot be used: its file or metadata is missing, unreadable or corrupt."""

    reason = "engine_cache_corrupt"


class QuantizationError(ShelfTallyError):
    """INT8 quantisation could not be done (no calibration pictures, the runtime refused the model, ...)."""

    reason = "quantization_failed"


class InvalidImageError(ShelfTallyError):
    """A picture cannot be turned into pixels; ``reason`` says why (the bytes are at fault, not the caller).

    Reasons (the decoder, ``workers.ingest``, uses exactly these):

    * ``empty_file``: the file or upload has no bytes.
    * ``file_too_large``: the upload has more bytes than the caller allows (``max_bytes``).
    * ``not_an_image``: the content is no picture format the decoder knows (text, an HTML page,
      random bytes), whatever the file name says.
    * ``corrupt_image``: the content starts like a known picture format but is damaged or
      truncated (a JPEG cut short, a PNG with a damaged chunk or checksum).
    * ``image_too_large``: the header declares more pixels than the limit; nothing was decoded.
    * ``unsupported_image``: a real picture of a kind that has no defined 8-bit RGB reading here
      (32-bit float samples, 32-bit integer samples beyond 16 bits, a mode Pillow cannot convert).
    * ``invalid_image``: the default, for anything else.
    """

    reason = "invalid_image"
