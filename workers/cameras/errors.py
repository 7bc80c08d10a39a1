"""The one error a camera grab raises: :class:`CameraError`, with a machine-readable ``reason``."""

from __future__ import annotations

from typing import Final

from shelftally.errors import ShelfTallyError

CAMERA_UNREACHABLE: Final = "camera_unreachable"
CAMERA_TIMEOUT: Final = "camera_timeout"
HTTP_ERROR: Final = "http_error"
BAD_PAYLOAD: Final = "bad_payload"
NO_FRAME: Final = "no_frame"
BLANK_FRAME: Final = "blank_frame"
MISSING_SECRET: Final = "missing_secret"

REASONS: Final[frozenset[str]] = frozenset(
    {CAMERA_UNREACHABLE, CAMERA_TIMEOUT, HTTP_ERROR, BAD_PAYLOAD, NO_FRAME, BLANK_FRAME, MISSING_SECRET}
)


class CameraError(ShelfTallyError):
    """A camera gave no usable picture; ``reason`` says why (messages show URLs only masked).

    Reasons:

    * ``camera_unreachable``: connection refused, unknown host (DNS), no route, connection
      reset before an answer, or (RTSP) the stream could not be opened before its time limit.
    * ``camera_timeout``: opening the connection or reading an answer or frame took longer than
      its limit (including the overall deadline of a grab).
    * ``http_error``: an HTTP status other than 2xx; the message and ``status_code`` carry it.
    * ``bad_payload``: a 2xx answer that is not a picture: an HTML login page, a Content-Type
      that is not ``image/*``, bytes that do not decode, a body larger than ``max_bytes``, or a
      body cut short.
    * ``no_frame``: the stream opened but gave no frame (it ended, or the decoder failed).
    * ``blank_frame``: the picture is uniform (lens covered, black or grey frame): the grey
      thumbnail's standard deviation is below :data:`workers.cameras.change.BLANK_STD`.
    * ``missing_secret``: the camera's credentials (``env:NAME`` / ``file:/path``) cannot be read.

    Args:
        message: Human-readable explanation (URLs masked with :func:`shelftally.redact.mask_url`).
        reason: One of the reasons above.
        status_code: The HTTP status for ``http_error``; None otherwise.

    Raises:
        ValueError: ``reason`` is not one of the reasons above.
    """

    reason = CAMERA_UNREACHABLE

    def __init__(self, message: str, *, reason: str, status_code: int | None = None) -> None:
        if reason not in REASONS:
            raise ValueError(f"reason: expected one of {sorted(REASONS)}, received {reason!r}")
        super().__init__(message, reason=reason)
        self.status_code = status_code
