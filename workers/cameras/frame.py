"""One picture grabbed from a camera: :class:`Frame`, and how grabbers build it."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import cv2
import numpy as np
import numpy.typing as npt

from shelftally.redact import mask_url
from workers.cameras.change import THUMBNAIL_HW, is_blank, thumbnail
from workers.cameras.errors import BAD_PAYLOAD, BLANK_FRAME, CameraError

Clock = Callable[[], datetime]
"""Returns the current time, aware (UTC); grabbers stamp ``captured_at`` with it."""

JPEG_QUALITY = 95
"""JPEG quality frames decoded from a video stream are encoded at."""


def utc_now() -> datetime:
    """The current time, aware UTC (the default :data:`Clock`)."""
    return datetime.now(UTC)


@dataclass(frozen=True, eq=False)
class Frame:
    """One picture from a camera, encoded, with its identity and change thumbnail.

    Attributes:
        data: The encoded picture: the HTTP body as received, a JPEG (quality 95) encoded from a
            video frame, or a file's bytes.
        sha256: Lowercase hex SHA-256 of ``data`` (64 characters).
        captured_at: When it was grabbed, aware, converted to UTC.
        width: Width of the picture, pixels (>= 1).
        height: Height of the picture, pixels (>= 1).
        thumbnail: (120, 160) uint8 grey, read-only (:func:`workers.cameras.change.thumbnail`).

    Instances compare by identity (``thumbnail`` is an array); compare ``sha256``.

    Raises:
        ValueError: on construction, when ``sha256`` is not the hash of ``data``,
            ``captured_at`` is naive, a size is < 1 or ``thumbnail`` is not (120, 160) uint8;
            the message says expected and received.
    """

    data: bytes
    sha256: str
    captured_at: datetime
    width: int
    height: int
    thumbnail: npt.NDArray[np.uint8] = field(repr=False)

    def __post_init__(self) -> None:
        digest = hashlib.sha256(self.data).hexdigest()
        if self.sha256 != digest:
            raise ValueError(f"sha256: expected the hash of data {digest}, received {self.sha256!r}")
        if self.captured_at.tzinfo is None or self.captured_at.utcoffset() is None:
            raise ValueError(f"captured_at: expected an aware datetime, received naive {self.captured_at!r}")
        if self.width < 1 or self.height < 1:
            raise ValueError(f"width, height: expected >= 1, received {self.width}, {self.height}")
        thumb = np.asarray(self.thumbnail)
        if thumb.dtype != np.uint8 or thumb.shape != THUMBNAIL_HW:
            raise ValueError(f"thumbnail: expected {THUMBNAIL_HW} uint8, received {thumb.shape} {thumb.dtype}")
        view = np.ascontiguousarray(thumb).view()
        view.flags.writeable = False
        object.__setattr__(self, "thumbnail", view)
        object.__setattr__(self, "captured_at", self.captured_at.astimezone(UTC))

    @property
    def resolution_wh(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return (self.width, self.height)


def frame_from_pixels(
    data: bytes, pixels: npt.NDArray[np.uint8], *, captured_at: datetime, url: str
) -> Frame:
    """Build a :class:`Frame` from encoded bytes and their decoded pixels, refusing blank pictures.

    Args:
        data: The encoded picture.
        pixels: (H, W, 3) uint8 RGB or (H, W) uint8 grey, decoded from ``data``.
        captured_at: When it was grabbed, aware.
        url: The camera's URL, for the error message (shown masked).

    Raises:
        CameraError: ``blank_frame`` when the picture is uniform.
    """
    thumb = thumbnail(pixels)
    if is_blank(thumb):
        raise CameraError(
            f"{mask_url(url)}: blank frame (grey std {float(np.std(thumb)):.2f}): lens covered or no signal",
            reason=BLANK_FRAME,
        )
    height, width = int(pixels.shape[0]), int(pixels.shape[1])
    return Frame(data, hashlib.sha256(data).hexdigest(), captured_at, width, height, thumb)


def frame_from_bgr(bgr: npt.NDArray[np.uint8], *, captured_at: datetime, url: str) -> Frame:
    """Encode a decoded video frame as JPEG (quality 95) and build its :class:`Frame`.

    Args:
        bgr: (H, W, 3) uint8 BGR, as OpenCV returns it.
        captured_at: When it was read, aware.
        url: The camera's URL, for error messages (shown masked).

    Raises:
        CameraError: ``blank_frame`` for a uniform frame; ``bad_payload`` when it cannot be encoded.
    """
    ok, buffer = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise CameraError(f"{mask_url(url)}: the frame cannot be encoded as JPEG", reason=BAD_PAYLOAD)
    grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    return frame_from_pixels(buffer.tobytes(), np.asarray(grey, dtype=np.uint8), captured_at=captured_at, url=url)
