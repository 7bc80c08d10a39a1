"""The camera registry (table ``camera``) and polling a registered camera.

A poll grabs what the camera has now (:mod:`workers.cameras`), updates the camera's state
(ONLINE / OFFLINE / STALE) and, when the picture is worth it, hands it to ``submit``: the
in-process scan pipeline, or :func:`workers.fleet.tasks.enqueue_picture` on a fleet.

Rules:

- Only frames of an ONLINE camera are scanned; a frame is scanned when its bytes and its scene
  differ from the last *scanned* frame (:func:`workers.cameras.decide`): a camera looking at an
  unchanged shelf costs one grab per poll, not one scan.
- A watched folder is different: every completed file is a picture of its own (handheld
  photos dropped by an app), so every file is submitted, once, in (ctime, name) order.
- Credentials never live in the registry: ``secret_ref`` (``env:NAME`` or ``file:/path``) names
  where the worker reads the password, joined to the URL's user name only at grab time. URLs are
  shown only through :func:`shelftally.redact.mask_url`.
- An RTSP stream is read by one :class:`workers.cameras.RtspReader` per camera and process,
  which keeps only the newest frame and reconnects with backoff between polls.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from inventory.db import run_in_transaction
from inventory.errors import InvalidInputError, NotFoundError, UnknownLocationError
from inventory.models import Camera, CameraKind, CameraState, Location
from shelftally.redact import mask_url
from workers.cameras import (
    CameraError,
    Decision,
    Frame,
    PollRecord,
    RtspReader,
    advance,
    decide,
    grab_http,
    pack_thumbnail,
    ready_files,
    unpack_thumbnail,
)

__all__ = ["CameraPoller", "PollReport", "Submit", "add_camera", "due_cameras", "list_cameras", "remove_camera"]

logger = logging.getLogger(__name__)

#: Query parameters that carry credentials (``?user=admin&pwd=...``, ``?token=...``).
_CREDENTIAL_KEY = re.compile(r"pass|pwd|token|secret|key|auth|sig|credential", re.IGNORECASE)

#: ``submit(data, source=..., location_code=..., captured_at=..., fallback_time=..., camera_code=...)``
Submit = Callable[..., Any]


def _check_secret_ref(secret_ref: str | None) -> None:
    if secret_ref is None:
        return
    kind, _, target = secret_ref.partition(":")
    if kind not in ("env", "file") or not target:  # the value may be the password itself: never shown
        raise InvalidInputError("the secret must be a reference, env:NAME or file:/path, never the password itself",
                                reason="invalid_secret_ref")


def add_camera(
    session: Session,
    *,
    camera_code: str,
    kind: CameraKind,
    url: str,
    location_code: str | None = None,
    interval_s: float = 60.0,
    timeout_s: float = 10.0,
    stale_after_s: float = 300.0,
    secret_ref: str | None = None,
) -> Camera:
    """Register a camera (does not commit).

    Args:
        session: the caller's session.
        camera_code: unique name (at most 64 characters).
        kind: ``rtsp``, ``http`` or ``folder``.
        url: for ``rtsp``, any stream FFmpeg reads (``rtsp://user@host/stream``, an HTTP MJPEG
            stream, a video file); for ``http``, a snapshot URL; for ``folder``, a folder path. It
            must carry no password.
        location_code: the location it shows; None: read from a location label in each picture.
        interval_s: seconds between polls (> 0).
        timeout_s: limit of one grab, seconds (> 0).
        stale_after_s: byte-identical frames for this long mean a frozen feed.
        secret_ref: where the password is read: ``env:NAME`` or ``file:/path``.

    Raises:
        InvalidInputError: a password in the URL (reason ``inline_credentials``), a URL that does
            not fit the kind (``invalid_camera_url``), a bad secret reference
            (``invalid_secret_ref``), a duplicate code (``duplicate_camera``), bad numbers.
        UnknownLocationError: ``location_code`` is not a location.
    """
    parts = urlsplit(url)
    secret_keys = sorted(key for key, _ in parse_qsl(parts.query, keep_blank_values=True)
                         if _CREDENTIAL_KEY.search(key))
    if secret_keys:
        raise InvalidInputError(
            f"{mask_url(url)}: the query carries credentials ({', '.join(secret_keys)}); cameras that take them in "
            "the query are not supported yet: use a URL with a user name and --secret", reason="inline_credentials")
    if parts.password:
        raise InvalidInputError(
            f"{mask_url(url)}: a camera URL must not carry a password; put it in an environment variable or "
            "a file and pass --secret env:NAME or --secret file:/path", reason="inline_credentials")
    if kind is CameraKind.HTTP and (parts.scheme not in ("http", "https") or not parts.hostname):
        raise InvalidInputError(f"{mask_url(url)}: an http camera needs an http(s) URL", reason="invalid_camera_url")
    if kind is CameraKind.RTSP and not url.strip():
        raise InvalidInputError("an rtsp camera needs a stream URL or a video file", reason="invalid_camera_url")
    if kind is CameraKind.FOLDER and parts.scheme not in ("", "file"):
        raise InvalidInputError(f"{url}: a folder camera needs a folder path", reason="invalid_camera_url")
    for name, value in (("interval_s", interval_s), ("timeout_s", timeout_s), ("stale_after_s", stale_after_s)):
        if not value > 0:
            raise InvalidInputError(f"{name} must be > 0, got {value}", reason="invalid_camera_setting")
    _check_secret_ref(secret_ref)
    if session.scalar(sa.select(Camera.id).where(Camera.camera_code == camera_code)) is not None:
        raise InvalidInputError(f"camera {camera_code} exists", reason="duplicate_camera")
    location_id = None
    if location_code is not None:
        location_id = session.scalar(sa.select(Location.id).where(Location.location_code == location_code))
        if location_id is None:
            raise UnknownLocationError(f"unknown location {location_code}")
    camera = Camera(
        camera_code=camera_code, kind=kind, url=url, secret_ref=secret_ref, location_id=location_id,
        interval_s=interval_s, timeout_s=timeout_s, stale_after_s=stale_after_s, enabled=True,
        state=CameraState.OFFLINE, state_since=datetime.now(UTC), consecutive_failures=0,
    )
    session.add(camera)
    session.flush()
    return camera


def remove_camera(session: Session, camera_code: str) -> None:
    """Remove a camera from the registry (does not commit). Its scans stay.

    Raises:
        NotFoundError: no such camera.
    """
    camera = session.scalars(sa.select(Camera).where(Camera.camera_code == camera_code)).one_or_none()
    if camera is None:
        raise NotFoundError(f"no camera {camera_code}")
    session.delete(camera)


def list_cameras(session: Session) -> list[dict[str, Any]]:
    """Every camera, by code, as display-safe dictionaries (the URL masked, no secret)."""
    rows = session.execute(
        sa.select(Camera, Location.location_code).outerjoin(Location, Location.id == Camera.location_id)
        .order_by(Camera.camera_code)
    ).all()
    return [
        {
            "camera_code": camera.camera_code, "kind": camera.kind.value, "url": mask_url(camera.url),
            "secret": camera.secret_ref.partition(":")[0] + ":***" if camera.secret_ref else None,
            "location_code": location_code, "interval_s": camera.interval_s, "timeout_s": camera.timeout_s,
            "enabled": camera.enabled, "state": camera.state.value, "state_since": camera.state_since.isoformat(),
            "last_error": camera.last_error, "consecutive_failures": camera.consecutive_failures,
            "last_polled_at": camera.last_polled_at.isoformat() if camera.last_polled_at else None,
        }
        for camera, location_code in rows
    ]


def due_cameras(session: Session, now: datetime) -> list[str]:
    """Claim the enabled cameras whose poll is due (does not commit): their ``last_polled_at``
    becomes ``now``, so that the next scheduler tick does not claim them again.

    Returns:
        The claimed camera codes.
    """
    claimed = []
    for camera in session.scalars(sa.select(Camera).where(Camera.enabled.is_(True)).order_by(Camera.camera_code)):
        last = camera.last_polled_at
        if last is None or last + timedelta(seconds=camera.interval_s) <= now:
            camera.last_polled_at = now
            claimed.append(camera.camera_code)
    return claimed


@dataclass(frozen=True)
class PollReport:
    """What one poll of one camera did.

    Attributes:
        camera_code: the camera.
        state: its state after the poll.
        decision: ``scan``, ``unchanged``, ``skip`` (not ONLINE), or ``error`` (nothing grabbed).
        submitted: pictures handed to ``submit`` (0 or 1 for a camera, any number for a folder).
        reason: the grab's error reason, if it failed.
        elapsed_s: seconds the poll took.
    """

    camera_code: str
    state: CameraState
    decision: Literal["scan", "unchanged", "skip", "error"]
    submitted: int = 0
    reason: str | None = None
    elapsed_s: float = 0.0


_READERS: dict[tuple[int, str], RtspReader] = {}
_READERS_LOCK = threading.Lock()


class CameraPoller:
    """Polls registered cameras and hands pictures worth scanning to ``submit``.

    Args:
        factory: session factory of the inventory database.
        submit: called once per picture to scan (see :data:`Submit`).
        clock: returns the current aware time.
    """

    def __init__(self, factory: sessionmaker[Session], submit: Submit,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.factory = factory
        self.submit = submit
        self.clock = clock or (lambda: datetime.now(UTC))

    def poll(self, camera_code: str) -> PollReport:
        """Poll one camera now.

        Raises:
            NotFoundError: no such camera.
        """
        started = time.monotonic()
        with self.factory() as session:
            camera = session.scalars(sa.select(Camera).where(Camera.camera_code == camera_code)).one_or_none()
            if camera is None:
                raise NotFoundError(f"no camera {camera_code}")
            session.expunge(camera)
            location_code = None
            if camera.location_id is not None:
                location_code = session.scalar(
                    sa.select(Location.location_code).where(Location.id == camera.location_id))
        if camera.kind is CameraKind.FOLDER:
            report = self._poll_folder(camera, location_code)
        else:
            report = self._poll_camera(camera, location_code)
        report = PollReport(report.camera_code, report.state, report.decision, report.submitted, report.reason,
                            round(time.monotonic() - started, 3))
        _observe_state(camera_code, report.state)
        return report

    # ------------------------------------------------------------------ cameras

    def _poll_camera(self, camera: Camera, location_code: str | None) -> PollReport:
        now = self.clock()
        outcome: Frame | CameraError
        try:
            outcome = self._grab(camera)
        except CameraError as error:
            outcome = error
        before = PollRecord(
            state=camera.state, failures_in_row=camera.consecutive_failures, sha256=camera.last_frame_sha256,
            bytes_changed_at=camera.frame_changed_at,
        ) if camera.last_polled_at is not None or camera.last_frame_sha256 is not None else None
        record = advance(before, outcome, now=now, stale_after_s=camera.stale_after_s)
        decision: Literal["scan", "unchanged", "skip", "error"] = "error"
        scanned_sha, scanned_thumb = camera.last_scanned_sha256, camera.last_scanned_thumbnail
        if isinstance(outcome, Frame):
            previous = unpack_thumbnail(scanned_thumb) if scanned_thumb is not None else None
            verdict = decide(outcome, previous_sha256=scanned_sha, previous_thumbnail=previous, state=record.state)
            decision = verdict.value
            if verdict is Decision.SCAN:
                self.submit(outcome.data, source=f"camera:{camera.camera_code}", location_code=location_code,
                            captured_at=outcome.captured_at, camera_code=camera.camera_code)
                scanned_sha, scanned_thumb = outcome.sha256, pack_thumbnail(outcome.thumbnail)
            elif verdict is Decision.UNCHANGED:
                _count_unchanged(camera.camera_code)
        else:
            logger.warning("camera %s: %s (%s)", camera.camera_code, outcome, outcome.reason)

        def store(session: Session) -> None:
            row = session.get(Camera, camera.id, with_for_update=True)
            if row is None:  # removed meanwhile
                return
            if row.state is not record.state:
                row.state_since = now
                logger.info("camera %s: %s -> %s", row.camera_code, row.state.value, record.state.value)
            row.state = record.state
            row.consecutive_failures = record.failures_in_row
            row.last_error = None if isinstance(outcome, Frame) else f"{outcome.reason}: {outcome}"[:255]
            row.last_polled_at = now
            row.last_frame_sha256 = record.sha256
            row.frame_changed_at = record.bytes_changed_at
            row.last_scanned_sha256, row.last_scanned_thumbnail = scanned_sha, scanned_thumb

        run_in_transaction(self.factory, store)
        return PollReport(camera.camera_code, record.state, decision, int(decision == "scan"),
                          None if isinstance(outcome, Frame) else outcome.reason)

    def _grab(self, camera: Camera) -> Frame:
        url = _with_secret(camera.url, camera.secret_ref)
        if camera.kind is CameraKind.HTTP:
            return grab_http(url, timeout_s=camera.timeout_s, clock=self.clock)
        reader = _reader(camera, url)
        deadline = time.monotonic() + camera.timeout_s
        while True:  # a reader opened by this poll needs a moment for its first frame
            if reader.state is CameraState.ONLINE:
                frame = reader.latest(max_age_s=camera.timeout_s)
                if frame is not None:
                    _count_dropped(camera.camera_code, reader)
                    return frame
            error = reader.last_error
            if error is not None and reader.state is CameraState.OFFLINE:
                raise error  # the stream failed (and is being reopened with backoff): OFFLINE now
            if time.monotonic() >= deadline:
                raise CameraError(f"{mask_url(camera.url)}: no frame within {camera.timeout_s:g} s",
                                  reason="camera_timeout")
            time.sleep(0.05)

    # ------------------------------------------------------------------ folders

    def _poll_folder(self, camera: Camera, location_code: str | None) -> PollReport:
        now = self.clock()
        folder = Path(camera.url.removeprefix("file://"))
        cursor = json.loads(camera.cursor) if camera.cursor else None
        submitted = 0
        error: str | None = None
        try:
            if not folder.is_dir():
                raise CameraError(f"{folder} is not a folder", reason="camera_unreachable")
            files, cursor = ready_files(folder, cursor=cursor, now=now)
            for ready in files:
                self.submit(ready.path.read_bytes(), source=str(ready.path), location_code=location_code,
                            captured_at=None, fallback_time=ready.mtime, camera_code=None)
                submitted += 1
        except (CameraError, OSError) as failure:
            error = getattr(failure, "reason", "camera_unreachable")
            logger.warning("folder camera %s: %s", camera.camera_code, failure)
        state = CameraState.OFFLINE if error else CameraState.ONLINE

        def store(session: Session) -> None:
            row = session.get(Camera, camera.id, with_for_update=True)
            if row is None:
                return
            if row.state is not state:
                row.state_since = now
            row.state = state
            row.consecutive_failures = row.consecutive_failures + 1 if error else 0
            row.last_error = error
            row.last_polled_at = now
            row.cursor = json.dumps(cursor) if cursor is not None else row.cursor

        run_in_transaction(self.factory, store)
        return PollReport(camera.camera_code, state, "error" if error else "scan", submitted, error)


def _with_secret(url: str, secret_ref: str | None) -> str:
    """The URL with the password from ``secret_ref`` joined to its user name (never logged)."""
    if secret_ref is None:
        return url
    kind, _, target = secret_ref.partition(":")
    try:
        secret = os.environ[target] if kind == "env" else Path(target).read_text().strip()
    except (KeyError, OSError) as error:
        raise CameraError(f"{mask_url(url)}: cannot read the camera's secret {kind}:{target}",
                          reason="missing_secret") from error
    parts = urlsplit(url)
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{quote(user, safe='')}:{quote(secret, safe='')}@{host}"))


_USED: dict[tuple[int, str], tuple[float, float]] = {}
"""Per reader: when a poll last used it (monotonic seconds) and how long it may stay idle."""


def _reader(camera: Camera, url: str) -> RtspReader:
    """This process's reader of the camera's stream. Readers no poll used for three poll
    intervals (at least a minute) are closed: a removed or disabled camera is not dialled forever."""
    key = (os.getpid(), f"{camera.camera_code}|{url}")
    now = time.monotonic()
    idle: list[RtspReader] = []
    with _READERS_LOCK:
        for other, (used, allowed) in list(_USED.items()):
            if other != key and now - used > allowed and other in _READERS:
                idle.append(_READERS.pop(other))
                del _USED[other]
        reader = _READERS.get(key)
        if reader is None:
            reader = RtspReader(url, open_timeout_s=camera.timeout_s, read_timeout_s=camera.timeout_s)
            _READERS[key] = reader
        _USED[key] = (now, max(60.0, 3 * camera.interval_s))
    for stale in idle:
        stale.close(timeout_s=1)
    return reader


def close_readers() -> None:
    """Stop this process's RTSP readers (tests, shutdown)."""
    with _READERS_LOCK:
        readers = list(_READERS.values())
        _READERS.clear()
    for reader in readers:
        reader.close(timeout_s=5)


_DROPPED_SEEN: dict[str, int] = {}


def _count_dropped(camera_code: str, reader: RtspReader) -> None:
    from workers.cameras.metrics import FRAMES_DROPPED

    seen = _DROPPED_SEEN.get(camera_code, 0)
    if reader.frames_dropped > seen:
        FRAMES_DROPPED.labels(camera_code).inc(reader.frames_dropped - seen)
    _DROPPED_SEEN[camera_code] = reader.frames_dropped


def _count_unchanged(camera_code: str) -> None:
    from workers.cameras.metrics import FRAMES_UNCHANGED

    FRAMES_UNCHANGED.labels(camera_code).inc()


def _observe_state(camera_code: str, state: CameraState) -> None:
    from workers.cameras.metrics import CAMERA_STATE

    for each in CameraState:
        CAMERA_STATE.labels(camera_code, each.value).set(1 if each is state else 0)
