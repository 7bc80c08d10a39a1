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
