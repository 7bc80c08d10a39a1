"""RTSP cameras through OpenCV's FFmpeg backend: one-shot :func:`grab_rtsp` and the long-lived :class:`RtspReader`.

Both force RTSP over TCP (interleaved), which passes NATs and firewalls and loses no packets:
this OpenCV build (5.0, FFmpeg backend) reads the FFmpeg options of every open from the
``OPENCV_FFMPEG_CAPTURE_OPTIONS`` environment variable (``key;value`` pairs joined by ``|``) and
has no per-call equivalent, so :func:`_force_tcp` adds ``rtsp_transport;tcp`` to it, once, keeping
any options already there. Without the variable OpenCV only sets ``rtsp_flags;prefer_tcp``.

OpenCV honours ``CAP_PROP_OPEN_TIMEOUT_MSEC`` and ``CAP_PROP_READ_TIMEOUT_MSEC`` through
FFmpeg's interrupt callback (measured: a TCP listener that never answers fails the open after
5.01 s for a 5 s limit). Every blocking OpenCV call still runs in a daemon thread joined with a
deadline, so that a build or stream that ignores them cannot block the caller past its limit.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Final

import cv2
import numpy as np
import numpy.typing as npt

from shelftally.redact import mask_url
from workers.cameras.errors import CAMERA_TIMEOUT, CAMERA_UNREACHABLE, NO_FRAME, CameraError
from workers.cameras.frame import Clock, Frame, frame_from_bgr, utc_now
from workers.cameras.state import CameraState

logger = logging.getLogger(__name__)

DEADLINE_MARGIN_S: Final[float] = 1.0
"""Seconds past open + read limits that :func:`grab_rtsp` waits for OpenCV before giving up on it."""

_OPTIONS_VAR: Final = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
_options_lock = threading.Lock()

Bgr = npt.NDArray[np.uint8]


def _force_tcp() -> None:
    """Make OpenCV's FFmpeg backend use RTSP over TCP (see the module docstring)."""
    with _options_lock:
        current = os.environ.get(_OPTIONS_VAR, "")
        if "rtsp_transport" in current:
            return
        os.environ[_OPTIONS_VAR] = f"{current}|rtsp_transport;tcp" if current else "rtsp_transport;tcp"


def _open(url: str, open_timeout_s: float, read_timeout_s: float) -> cv2.VideoCapture:
    _force_tcp()
    return cv2.VideoCapture(
        url,
        cv2.CAP_FFMPEG,
        [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            max(1, round(open_timeout_s * 1000)),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            max(1, round(read_timeout_s * 1000)),
        ],
    )


def _check_limits(open_timeout_s: float, read_timeout_s: float) -> None:
    if not open_timeout_s > 0:
        raise ValueError(f"open_timeout_s: expected > 0, received {open_timeout_s}")
    if not read_timeout_s > 0:
        raise ValueError(f"read_timeout_s: expected > 0, received {read_timeout_s}")


def _open_error(url: str, elapsed_s: float, open_timeout_s: float) -> CameraError:
    shown = mask_url(url)
    if elapsed_s >= 0.9 * open_timeout_s:
        return CameraError(f"{shown}: the stream did not open within {open_timeout_s:g} s", reason=CAMERA_TIMEOUT)
    return CameraError(
        f"{shown}: the stream cannot be opened (refused, unknown host, wrong path or credentials)",
        reason=CAMERA_UNREACHABLE,
    )


def _read_error(url: str, elapsed_s: float, read_timeout_s: float) -> CameraError:
    shown = mask_url(url)
    if elapsed_s >= 0.9 * read_timeout_s:
        return CameraError(f"{shown}: no frame within {read_timeout_s:g} s", reason=CAMERA_TIMEOUT)
    return CameraError(f"{shown}: the stream opened but gave no frame", reason=NO_FRAME)


@dataclass
class _GrabOutcome:
    bgr: Bgr | None = None
    error: CameraError | None = None
    read_at: float = 0.0


def grab_rtsp(
    url: str,
    *,
    open_timeout_s: float = 5.0,
    read_timeout_s: float = 5.0,
    clock: Clock | None = None,
) -> Frame:
    """Open an RTSP stream, read one frame, close it, and return the frame as JPEG.

    Opening costs about 2 s with a 10 fps MJPEG stream (FFmpeg probes the stream); for a camera
    polled more often than every few seconds use :class:`RtspReader`.

    Args:
        url: ``rtsp://[user:pw@]host[:port]/path``; shown only through ``mask_url``.
        open_timeout_s: Limit for connecting and opening the stream, seconds (> 0).
        read_timeout_s: Limit for the first frame once opened, seconds (> 0).
        clock: Stamps ``captured_at`` (aware UTC) when the frame is read; default the wall clock.

    Returns:
        The frame: ``data`` is a JPEG (quality 95) of the first frame decoded.

    Raises:
        CameraError: ``camera_unreachable`` (open failed before its limit), ``camera_timeout``
            (open or read reached its limit, or the whole grab passed ``open_timeout_s +
            read_timeout_s + 1`` s: then the OpenCV call is abandoned in its daemon thread),
            ``no_frame`` (opened, but the stream ended or could not be decoded) or ``blank_frame``.
        ValueError: a limit <= 0.
    """
    _check_limits(open_timeout_s, read_timeout_s)
    now = clock or utc_now
    outcome = _GrabOutcome()

    def run() -> None:
        started = time.monotonic()
        capture = _open(url, open_timeout_s, read_timeout_s)
        try:
            if not capture.isOpened():
                outcome.error = _open_error(url, time.monotonic() - started, open_timeout_s)
                return
            read_started = time.monotonic()
            ok, bgr = capture.read()
            if not ok or bgr is None:
                outcome.error = _read_error(url, time.monotonic() - read_started, read_timeout_s)
                return
            outcome.bgr = np.asarray(bgr, dtype=np.uint8)
        finally:
            capture.release()

    worker = threading.Thread(target=run, name="grab-rtsp", daemon=True)
    worker.start()
    limit = open_timeout_s + read_timeout_s + DEADLINE_MARGIN_S
    worker.join(limit)
    if worker.is_alive():
        raise CameraError(f"{mask_url(url)}: no frame within {limit:g} s (abandoned)", reason=CAMERA_TIMEOUT)
    if outcome.error is not None:
        raise outcome.error
    if outcome.bgr is None:  # pragma: no cover - run() always sets one of them
        raise CameraError(f"{mask_url(url)}: no frame", reason=NO_FRAME)
    return frame_from_bgr(outcome.bgr, captured_at=now(), url=url)


class RtspReader:
    """A long-lived RTSP reader that keeps only the newest frame of a camera.

    A background daemon thread opens the stream, reads frames as fast as the camera sends them
    and keeps only the newest one (raw pixels; JPEG-encoded lazily by :meth:`latest`), so a slow
    consumer never sees a backlog of old frames. After an open or read failure it reconnects
    after a capped exponential backoff (``backoff_initial_s``, doubled per failure up to
    ``backoff_max_s``, reset by the next frame). All public members are thread-safe.

    Args:
        url: ``rtsp://`` URL; shown only through ``mask_url``.
        open_timeout_s: Limit for each open, seconds (> 0).
        read_timeout_s: Limit for each frame, seconds (> 0); with no frame for this long the
            reader is OFFLINE even if OpenCV is still blocked.
        backoff_initial_s: First wait before reconnecting, seconds (> 0).
        backoff_max_s: Longest wait before reconnecting, seconds (>= ``backoff_initial_s``).
        clock: Stamps ``captured_at`` (aware UTC) of each frame; default the wall clock. Ages
            and timeouts use ``time.monotonic``.
        start: Start the thread now (default); otherwise call :meth:`start`.

    Attributes:
        frames_read: Frames read from the stream since construction.
        frames_dropped: Frames overwritten by a newer one before :meth:`latest` took them.
        reconnects: Opens attempted after the first.

    Raises:
        ValueError: a limit <= 0 or ``backoff_max_s < backoff_initial_s``.
    """

    def __init__(
        self,
        url: str,
        *,
        open_timeout_s: float = 5.0,
        read_timeout_s: float = 5.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 10.0,
        clock: Clock | None = None,
        start: bool = True,
    ) -> None:
        _check_limits(open_timeout_s, read_timeout_s)
        if not backoff_initial_s > 0:
            raise ValueError(f"backoff_initial_s: expected > 0, received {backoff_initial_s}")
        if backoff_max_s < backoff_initial_s:
            raise ValueError(
                f"backoff_max_s: expected >= backoff_initial_s {backoff_initial_s}, received {backoff_max_s}"
            )
        self.url = url
        self.open_timeout_s = open_timeout_s
        self.read_timeout_s = read_timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._clock: Clock = clock or utc_now
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._bgr: Bgr | None = None
        self._bgr_at = 0.0  # monotonic
        self._bgr_captured_at = utc_now()
        self._bgr_taken = True
        self._encoded: Frame | None = None
        self._connected = False
        self._last_error: CameraError | None = None
        self.frames_read = 0
        self.frames_dropped = 0
        self.reconnects = 0
        self._thread = threading.Thread(target=self._run, name=f"rtsp-reader {mask_url(url)}", daemon=True)
        if start:
            self.start()

    def start(self) -> None:
        """Start the background thread (once; later calls do nothing)."""
        with self._lock:
            if not self._thread.is_alive() and not self._closed.is_set() and self._thread.ident is None:
                self._thread.start()

    @property
    def state(self) -> CameraState:
        """ONLINE while frames arrive; OFFLINE before the first frame, after an open or read
        failure, or when no frame came for ``read_timeout_s``. Never STALE (see :mod:`workers.cameras.state`)."""
        with self._lock:
            if not self._connected or self._bgr is None:
                return CameraState.OFFLINE
            if time.monotonic() - self._bgr_at > self.read_timeout_s:
                return CameraState.OFFLINE
            return CameraState.ONLINE

    @property
    def last_error(self) -> CameraError | None:
        """The latest open or read failure (kept after recovery), or a timeout the reader noticed; None if none yet."""
        with self._lock:
            if self._connected and self._bgr is not None and time.monotonic() - self._bgr_at > self.read_timeout_s:
                return CameraError(
                    f"{mask_url(self.url)}: no frame for {self.read_timeout_s:g} s", reason=CAMERA_TIMEOUT
                )
            return self._last_error

    def latest(self, max_age_s: float) -> Frame | None:
        """The newest frame if it was read at most ``max_age_s`` seconds ago, else None.

        The same raw frame always gives the same :class:`Frame` object (encoded once, JPEG 95).

        Args:
            max_age_s: Oldest acceptable frame, seconds (>= 0).

        Raises:
            CameraError: ``blank_frame`` when the newest frame is uniform.
            ValueError: ``max_age_s`` < 0.
        """
        if max_age_s < 0:
            raise ValueError(f"max_age_s: expected >= 0, received {max_age_s}")
        with self._lock:
            if self._bgr is None or time.monotonic() - self._bgr_at > max_age_s:
                return None
            if self._encoded is not None:
                return self._encoded
            bgr, captured_at = self._bgr, self._bgr_captured_at
            self._bgr_taken = True
        frame = frame_from_bgr(bgr, captured_at=captured_at, url=self.url)  # outside the lock: ~ms
        with self._lock:
            if self._bgr is bgr:
                self._encoded = frame
        return frame

    def close(self, timeout_s: float | None = None) -> None:
        """Stop the thread and release the stream; waits at most ``timeout_s`` (default the read limit + 1 s).

        A thread stuck in OpenCV is left to finish on its own (it is a daemon).
        """
        self._closed.set()
        if self._thread.ident is not None:
            self._thread.join(self.read_timeout_s + 1.0 if timeout_s is None else timeout_s)

    def __enter__(self) -> RtspReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fail(self, error: CameraError) -> None:
        with self._lock:
            self._connected = False
            self._last_error = error
        logger.info("rtsp %s: %s (%s)", mask_url(self.url), error.reason, error)

    def _run(self) -> None:
        backoff = self.backoff_initial_s
        attempts = 0
        while not self._closed.is_set():
            if attempts:
                self.reconnects += 1
            attempts += 1
            started = time.monotonic()
            capture = _open(self.url, self.open_timeout_s, self.read_timeout_s)
            try:
                if not capture.isOpened():
                    self._fail(_open_error(self.url, time.monotonic() - started, self.open_timeout_s))
                else:
                    if self._read_until_failure(capture):
                        backoff = self.backoff_initial_s
            finally:
                capture.release()
            if self._closed.wait(backoff):
                break
            backoff = min(backoff * 2.0, self.backoff_max_s)

    def _read_until_failure(self, capture: cv2.VideoCapture) -> bool:
        """Read frames until the stream fails or the reader closes; True if any frame came."""
        got_any = False
        with self._lock:
            self._connected = True
        while not self._closed.is_set():
            read_started = time.monotonic()
            ok, bgr = capture.read()
            if not ok or bgr is None:
                if not self._closed.is_set():
                    self._fail(_read_error(self.url, time.monotonic() - read_started, self.read_timeout_s))
                return got_any
            got_any = True
            captured_at = self._clock()
            with self._lock:
                if not self._bgr_taken:
                    self.frames_dropped += 1
                self._bgr = np.asarray(bgr, dtype=np.uint8)
                self._bgr_at = time.monotonic()
                self._bgr_captured_at = captured_at
                self._bgr_taken = False
                self._encoded = None
                self._connected = True
                self.frames_read += 1
        return got_any

