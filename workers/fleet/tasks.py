"""The scan chain as Celery tasks, and the producer side that enqueues pictures.

``shelftally.ingest`` -> ``shelftally.vision`` -> ``shelftally.persist`` (see
:mod:`workers.fleet`). Each task sends the next one itself, after its own work succeeded; a
redelivered task may send its successor twice, which is harmless: vision is a pure function of
the picture, and persistence records a picture once (unique scan key, fixed capture time).

Messages are JSON. A picture travels as its key in the picture store; the admitted picture
(:class:`workers.scan.pipeline.AdmittedPicture`) and the observed boxes
(:class:`workers.scan.pipeline.ObservedPicture`) travel as plain dictionaries.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from celery import Task
from celery.exceptions import Retry, SoftTimeLimitExceeded
from sqlalchemy.orm import Session, sessionmaker

from inventory.errors import DatabaseUnavailableError
from inventory.models import Camera, CameraState, DiscrepancyKind
from shelftally.errors import ShelfTallyError
from workers.fleet import metrics
from workers.fleet.app import app, context
from workers.fleet.deadletter import DeadLetter
from workers.fleet.image_store import ImageStoreError
from workers.ingest import decode_image
from workers.scan.pipeline import AdmittedPicture, ObservedPicture, ScanResult

__all__ = [
    "enqueue_path", "enqueue_picture", "ingest", "is_transient", "persist", "poll_camera", "poll_cameras", "vision",
]

logger = logging.getLogger(__name__)

#: Verdicts withheld from pictures of a camera that is not ONLINE when they are recorded.
WITHHELD_WHEN_UNTRUSTED = frozenset({DiscrepancyKind.OUT_OF_STOCK, DiscrepancyKind.SHORTAGE})


def is_transient(error: BaseException) -> bool:
    """Whether a task failing with ``error`` may succeed if run again later.

    Transient: the database or Redis unreachable or conflicting, a picture store that cannot be
    read or written (``store_unavailable``), a soft time limit. Everything else (a missing or
    corrupt stored picture, a bug, a bad message) is permanent.
    """
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
    from sqlalchemy.exc import DBAPIError

    from inventory.db import is_transient as database_conflict

    if isinstance(error, SoftTimeLimitExceeded | DatabaseUnavailableError | RedisConnectionError | RedisTimeoutError):
        return True
    if isinstance(error, ImageStoreError):
        return error.reason == "store_unavailable"
    if isinstance(error, DBAPIError):
        return bool(error.connection_invalidated) or isinstance(error, sa.exc.OperationalError) \
            or database_conflict(error)
    return False


class StageTask(Task):  # type: ignore[misc]
    """Base of the scan tasks: delivery counting, dead letters, transient retries, metrics."""

    acks_late = True
    reject_on_worker_lost = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request
        if request.is_eager or not request.id:
            return self.run(*args, **kwargs)
        ctx = context()
        fleet = ctx.settings.fleet
        deliveries = ctx.dead.count_delivery(request.id, request.retries)
        if deliveries > fleet.max_deliveries:
            self._park(args, kwargs, "max_deliveries_exceeded",
                       f"delivered {deliveries} times without finishing (the worker died each time?)", deliveries)
            return None
        started = time.perf_counter()
        try:
            result = self.run(*args, **kwargs)
        except Retry:
            raise
        except Exception as error:
            transient = is_transient(error)
            if transient and request.retries < fleet.max_retries:
                delay = min(fleet.retry_backoff_max_s, 2.0 ** request.retries)
                logger.warning("%s[%s] transient failure (retry %s/%s in %.0f s): %s", self.name, request.id,
                               request.retries + 1, fleet.max_retries, delay, error)
                metrics.TASKS.labels(self.name, "retried").inc()
                raise self.retry(exc=error, countdown=delay) from error
            reason = "retries_exhausted" if transient else getattr(error, "reason", type(error).__name__)
            logger.exception("%s[%s] failed for good (%s)", self.name, request.id, reason)
            self._park(args, kwargs, str(reason), f"{type(error).__name__}: {error}", deliveries)
            return None
        metrics.TASKS.labels(self.name, "succeeded").inc()
        metrics.STAGE_SECONDS.labels(f"task:{self.name}").observe(time.perf_counter() - started)
        return result

    def _park(self, args: tuple[Any, ...], kwargs: dict[str, Any], reason: str, error: str, deliveries: int) -> None:
        request = self.request
        queue = (request.delivery_info or {}).get("routing_key")
        context().dead.add(DeadLetter(id=request.id, task=self.name, args=list(args), kwargs=dict(kwargs),
                                      queue=queue, reason=reason, error=error[:2000], deliveries=deliveries))
        metrics.TASKS.labels(self.name, "dead_lettered").inc()
        logger.error("%s[%s] parked in the dead-letter list (%s): %s", self.name, request.id, reason, error)


def _finished(result: ScanResult) -> dict[str, Any]:
    """A finished picture: metrics, and the small summary a task returns."""
    metrics.SCANS.labels(result.status).inc()
    if result.reason:
        metrics.PICTURES_REJECTED.labels(result.reason).inc()
    for stage, ms in result.timings_ms.items():
        metrics.STAGE_SECONDS.labels(stage).observe(ms / 1000.0)
    return {"status": result.status, "scan_id": result.scan_id, "reason": result.reason,
            "location_code": result.location_code, "image_sha256": result.image_sha256}


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


@app.task(name="shelftally.ingest", bind=True, base=StageTask)
def ingest(
    self: StageTask,
    image_key: str,
    *,
    source: str,
    location_code: str | None = None,
    captured_at: str | None = None,
    fallback_time: str | None = None,
    camera_code: str | None = None,
) -> dict[str, Any]:
    """Admit a stored picture (decode, location, capture time, duplicate check) and send it to vision.

    Args:
        image_key: the picture's key in the picture store.
        source: where it came from (path, ``camera:<code>``, upload name).
        location_code: the location; None: read from a location label in the picture.
        captured_at: ISO 8601 capture time with offset (None: EXIF, else ``fallback_time``).
        fallback_time: ISO 8601 time used when neither the caller nor EXIF gives one; fixed when
            the picture is enqueued, so that every delivery records the same scan.
        camera_code: the camera that took it, if any.

    Returns:
        ``{"status": "admitted", ...}``, or the final summary of a rejected or duplicate picture.
    """
    ctx = context()
    data = ctx.store.get(image_key)
    admitted = ctx.pipeline.admit(data, source=source, location_code=location_code, captured_at=_time(captured_at),
                                  fallback_time=_time(fallback_time))
    if isinstance(admitted, ScanResult):
        return _finished(admitted)
    picture, _ = admitted
    vision.apply_async(args=[{"picture": picture.to_dict(), "image_key": image_key, "camera_code": camera_code}])
    return {"status": "admitted", "image_sha256": picture.image_sha256, "location_code": picture.location_code}


@app.task(name="shelftally.vision", bind=True, base=StageTask)
def vision(self: StageTask, message: dict[str, Any]) -> dict[str, Any]:
    """Detect, crop and classify an admitted picture, then send the boxes to persistence.

    Args:
        message: ``{"picture": AdmittedPicture.to_dict(), "image_key": ..., "camera_code": ...}``.
    """
    ctx = context(with_models=True)
    picture = AdmittedPicture.from_dict(message["picture"])
    decoded = decode_image(ctx.store.get(message["image_key"]), max_pixels=ctx.pipeline.config.max_pixels)
    observed = ctx.pipeline.observe(picture, decoded)
    persist.apply_async(args=[{"observed": observed.to_dict(), "image_key": message["image_key"],
                               "camera_code": message.get("camera_code")}])
    return {"status": "observed", "boxes": len(observed.boxes), "image_sha256": picture.image_sha256}


@app.task(name="shelftally.persist", bind=True, base=StageTask)
def persist(self: StageTask, message: dict[str, Any]) -> dict[str, Any]:
    """Record and reconcile an observed picture in one transaction (once, however often delivered).

    Pictures of a camera that is not ONLINE when they are recorded are withheld
    ``out_of_stock`` and ``shortage`` verdicts.

    Args:
        message: ``{"observed": ObservedPicture.to_dict(), "image_key": ..., "camera_code": ...}``.
    """
    ctx = context()
    observed = ObservedPicture.from_dict(message["observed"])
    withhold = _withheld(ctx.factory, message.get("camera_code"))
    decoded = None
    if ctx.pipeline.config.evidence_dir is not None:
        try:
            decoded = decode_image(ctx.store.get(message["image_key"]), max_pixels=ctx.pipeline.config.max_pixels)
        except ShelfTallyError as error:  # the counts matter more than the evidence image
            logger.warning("no evidence image for %s: %s", observed.picture.source, error)
    return _finished(ctx.pipeline.record(observed, decoded=decoded, withhold=withhold))


def _withheld(factory: sessionmaker[Session], camera_code: str | None) -> Collection[DiscrepancyKind]:
    if camera_code is None:
        return ()
    with factory() as session:
        state = session.scalar(sa.select(Camera.state).where(Camera.camera_code == camera_code))
    if state is CameraState.ONLINE:
        return ()
    logger.info("camera %s is %s: out_of_stock and shortage withheld", camera_code, state)
    return WITHHELD_WHEN_UNTRUSTED


def enqueue_picture(
    data: bytes,
    *,
    source: str,
    location_code: str | None = None,
    captured_at: datetime | None = None,
    fallback_time: datetime | None = None,
    camera_code: str | None = None,
) -> str:
    """Put a picture in the store and send ``shelftally.ingest`` for it (producer side).

    Args:
        data: the picture file's bytes.
        source: where it came from.
        location_code: the location, or None to read it from a label in the picture.
        captured_at: aware capture time, or None (EXIF, else ``fallback_time``).
        fallback_time: aware time used without caller or EXIF time; None: now. Fixed here, so
            every delivery of the message records the same scan.
        camera_code: the camera that took it.

    Returns:
        The ingest task id.

    Raises:
        ImageStoreError: the store cannot be written.
        ValueError: a naive ``captured_at`` or ``fallback_time``.
    """
    for name, value in (("captured_at", captured_at), ("fallback_time", fallback_time)):
        if value is not None and value.utcoffset() is None:
            raise ValueError(f"{name} {value.isoformat()} has no UTC offset")
    key = context().store.put(data)
    fallback = fallback_time or datetime.now(UTC)
    sent = ingest.apply_async(args=[key], kwargs={
        "source": source, "location_code": location_code,
        "captured_at": captured_at.isoformat() if captured_at else None,
        "fallback_time": fallback.isoformat(), "camera_code": camera_code,
    })
    return str(sent.id)


def enqueue_path(path: Path, *, location_code: str | None = None) -> str:
    """Enqueue a picture file (its modification time is the fallback capture time).

    Raises:
        OSError: the file cannot be read.
        ImageStoreError: the store cannot be written.
    """
    info = path.stat()
    return enqueue_picture(path.read_bytes(), source=str(path), location_code=location_code,
                           fallback_time=datetime.fromtimestamp(info.st_mtime, UTC))


@app.task(name="shelftally.poll_camera", bind=True, base=StageTask)
def poll_camera(self: StageTask, camera_code: str) -> dict[str, Any]:
    """Poll one camera; a picture worth scanning is enqueued (:func:`enqueue_picture`).

    Args:
        camera_code: the camera.

    Returns:
        The poll's report as a dictionary.
    """
    from dataclasses import asdict

    from workers.cameras.registry import CameraPoller

    report = CameraPoller(context().factory, enqueue_picture).poll(camera_code)
    return asdict(report)


@app.task(name="shelftally.poll_cameras", bind=True, base=StageTask)
def poll_cameras(self: StageTask) -> list[str]:
    """Scheduler tick (celery beat): claim the cameras that are due and enqueue a poll of each.

    Returns:
        The camera codes polled.
    """
    from inventory.db import run_in_transaction
    from workers.cameras.registry import due_cameras

    now = datetime.now(UTC)
    codes = run_in_transaction(context().factory, lambda session: due_cameras(session, now))
    for code in codes:
        poll_camera.apply_async(args=[code])
    return codes
