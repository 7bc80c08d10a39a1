"""Snapshot grabs over HTTP(S): :func:`grab_http`, with a hard overall deadline."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Final

import httpx

from shelftally.errors import InvalidImageError
from shelftally.redact import mask_url
from workers.cameras.errors import BAD_PAYLOAD, CAMERA_TIMEOUT, CAMERA_UNREACHABLE, HTTP_ERROR, CameraError
from workers.cameras.frame import Clock, Frame, frame_from_pixels, utc_now
from workers.ingest import decode_image

logger = logging.getLogger(__name__)

DEFAULT_HTTP_MAX_BYTES: Final[int] = 30_000_000
"""Largest snapshot body accepted, bytes (a 4K JPEG is 1-5 MB)."""

DEADLINE_MARGIN_S: Final[float] = 0.5
"""Seconds past ``timeout_s`` the caller may wait at most while an abandoned request unwinds."""

_CHUNK = 64 * 1024


@dataclass
class _Outcome:
    body: bytes | None = None
    error: CameraError | None = None


def grab_http(
    url: str,
    *,
    timeout_s: float = 5.0,
    max_bytes: int = DEFAULT_HTTP_MAX_BYTES,
    clock: Clock | None = None,
) -> Frame:
    """GET one snapshot from a camera's HTTP(S) URL and check it is a picture.

    The request (DNS, connect, headers and the whole body) runs in a daemon thread under
    httpx's connect/read/write timeouts of ``timeout_s`` each and an overall deadline of
    ``timeout_s``: a server that accepts and never answers, or trickles its body, makes this
    return ``camera_timeout`` after at most ``timeout_s + 0.5`` s (the thread is abandoned and
    ends by itself within one more socket timeout). Redirects are not followed (a 3xx is an
    ``http_error``), proxies from the environment are not used, and credentials in the URL
    (``http://user:pw@host/...``) are sent as HTTP Basic auth.

    Args:
        url: ``http://`` or ``https://`` snapshot URL; shown only through ``mask_url``.
        timeout_s: Limit for the whole grab, seconds (> 0).
        max_bytes: Largest body accepted, bytes (>= 1); the body is streamed and the grab stops
            as soon as it is exceeded.
        clock: Stamps ``captured_at`` (aware UTC) when the body has arrived; default the wall clock.

    Returns:
        The frame: ``data`` is the body exactly as received.

    Raises:
        CameraError: ``camera_unreachable``, ``camera_timeout``, ``http_error`` (non-2xx,
            ``status_code`` set), ``bad_payload`` (Content-Type not ``image/*``, body larger than
            ``max_bytes`` or cut short, bytes that do not decode) or ``blank_frame``.
        ValueError: ``timeout_s`` <= 0, ``max_bytes`` < 1, or ``url`` is not an http(s) URL.
    """
    if not timeout_s > 0:
        raise ValueError(f"timeout_s: expected > 0, received {timeout_s}")
    if max_bytes < 1:
        raise ValueError(f"max_bytes: expected >= 1, received {max_bytes}")
    try:
        scheme = httpx.URL(url).scheme
    except httpx.InvalidURL as exc:
        raise ValueError(f"url: not a valid URL: {mask_url(url)}") from exc
    if scheme not in ("http", "https"):
        raise ValueError(f"url: expected an http:// or https:// URL, received {mask_url(url)}")

    outcome = _Outcome()
    cancelled = threading.Event()
    worker = threading.Thread(
        target=_fetch, args=(url, timeout_s, max_bytes, outcome, cancelled), name="grab-http", daemon=True
    )
    worker.start()
    worker.join(timeout_s + DEADLINE_MARGIN_S)
    if worker.is_alive():
        cancelled.set()
        raise CameraError(f"{mask_url(url)}: no complete answer within {timeout_s:g} s", reason=CAMERA_TIMEOUT)
    if outcome.error is not None:
        raise outcome.error
    if outcome.body is None:  # pragma: no cover - _fetch always sets one of them
        raise CameraError(f"{mask_url(url)}: no answer", reason=CAMERA_UNREACHABLE)
    captured_at = (clock or utc_now)()
    body = outcome.body
    try:
        decoded = decode_image(body)
    except InvalidImageError as exc:
        raise CameraError(
            f"{mask_url(url)}: the answer is no readable picture ({exc.reason}): {exc}", reason=BAD_PAYLOAD
        ) from exc
    return frame_from_pixels(body, decoded.pixels, captured_at=captured_at, url=url)


def _fetch(url: str, timeout_s: float, max_bytes: int, outcome: _Outcome, cancelled: threading.Event) -> None:
    """Runs in the grab's thread: fills ``outcome.body`` or ``outcome.error``."""
    shown = mask_url(url)
    deadline = time.monotonic() + timeout_s
    answered = False
    try:
        with (
            httpx.Client(timeout=httpx.Timeout(timeout_s), follow_redirects=False, trust_env=False) as client,
            client.stream("GET", url, headers={"Accept": "image/*"}) as response,
        ):
            answered = True
            if not response.is_success:
                raise CameraError(
                    f"{shown}: HTTP {response.status_code} {response.reason_phrase}",
                    reason=HTTP_ERROR,
                    status_code=response.status_code,
                )
            content_type = response.headers.get("content-type", "")
            if not content_type.strip().lower().startswith("image/"):
                raise CameraError(
                    f"{shown}: the answer is {content_type or 'without a Content-Type'}, not image/* "
                    "(a login page or an error page?)",
                    reason=BAD_PAYLOAD,
                )
            declared = response.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                raise CameraError(
                    f"{shown}: the answer declares {declared} bytes, above {max_bytes}", reason=BAD_PAYLOAD
                )
            chunks: list[bytes] = []
            received = 0
            for chunk in response.iter_bytes(_CHUNK):
                received += len(chunk)
                if received > max_bytes:
                    raise CameraError(f"{shown}: the answer is larger than {max_bytes} bytes", reason=BAD_PAYLOAD)
                if cancelled.is_set() or time.monotonic() > deadline:
                    raise CameraError(
                        f"{shown}: the answer did not arrive within {timeout_s:g} s", reason=CAMERA_TIMEOUT
                    )
                chunks.append(chunk)
            outcome.body = b"".join(chunks)
    except CameraError as exc:
        outcome.error = exc
    except httpx.TimeoutException as exc:
        outcome.error = CameraError(f"{shown}: timed out ({type(exc).__name__})", reason=CAMERA_TIMEOUT)
    except httpx.ConnectError as exc:
        outcome.error = CameraError(f"{shown}: cannot connect: {_scrub(exc, url)}", reason=CAMERA_UNREACHABLE)
    except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
        if answered:
            outcome.error = CameraError(f"{shown}: the answer was cut short: {_scrub(exc, url)}", reason=BAD_PAYLOAD)
        else:
            outcome.error = CameraError(f"{shown}: no answer: {_scrub(exc, url)}", reason=CAMERA_UNREACHABLE)
    except httpx.HTTPError as exc:
        outcome.error = CameraError(f"{shown}: {type(exc).__name__}: {_scrub(exc, url)}", reason=CAMERA_UNREACHABLE)
    except OSError as exc:  # a socket error httpx did not wrap
        outcome.error = CameraError(f"{shown}: {type(exc).__name__}: {_scrub(exc, url)}", reason=CAMERA_UNREACHABLE)
    if outcome.error is not None:
        logger.debug("grab_http %s failed: %s", shown, outcome.error.reason)


def _scrub(exc: BaseException, url: str) -> str:
    """The exception's message with the raw URL (and its credentials) masked."""
    return str(exc).replace(url, mask_url(url)) or type(exc).__name__
