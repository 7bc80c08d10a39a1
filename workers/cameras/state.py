"""What a polled camera is doing (:class:`CameraState`) and whether its new frame is worth a scan.

:class:`CameraState` is the registry's (:mod:`inventory.models`), re-exported here.

Pure functions: the caller (a Celery task, the camera registry) keeps the camera's record
(state, failures in a row, last sha256 and thumbnail, when the bytes last changed) and passes it in.

* A failed poll counts one failure in a row; at ``offline_after_failures`` (default 1) the
  camera is OFFLINE.
* A frame makes it ONLINE, unless its bytes have been identical for ``stale_after_s`` or
  longer: a live sensor never yields byte-identical frames (noise changes every JPEG), so
  identical bytes for that long mean a frozen feed (a camera that serves a cached snapshot, a
  hung encoder): STALE.
* Only frames of an ONLINE camera are scanned, and only when their bytes and their scene
  differ from the previous frame (:func:`decide`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Final

import numpy as np
import numpy.typing as npt

from inventory.models import CameraState as CameraState
from workers.cameras.change import AREA_FRACTION, PIXEL_DELTA, scene_changed
from workers.cameras.errors import CameraError
from workers.cameras.frame import Frame

DEFAULT_STALE_AFTER_S: Final[float] = 300.0
"""Identical frame bytes for this many seconds mean a frozen feed (STALE)."""

DEFAULT_OFFLINE_AFTER_FAILURES: Final[int] = 1
"""Failed polls in a row after which a camera is OFFLINE."""


class Decision(StrEnum):
    """What to do with a polled frame."""

    SCAN = "scan"
    """A new scene: run the detector and classifier on it."""
    UNCHANGED = "unchanged"
    """The same bytes (same sha256) or the same scene as the previous frame: nothing to do."""
    SKIP = "skip"
    """The camera is STALE or OFFLINE: its frames are never scanned."""


def next_state(
    outcome: Frame | CameraError,
    *,
    previous: CameraState | None,
    failures_in_row: int,
    unchanged_for_s: float,
    stale_after_s: float = DEFAULT_STALE_AFTER_S,
    offline_after_failures: int = DEFAULT_OFFLINE_AFTER_FAILURES,
) -> CameraState:
    """The camera's state after a poll.

    Args:
        outcome: The poll's frame, or the :class:`CameraError` it raised.
        previous: The state before this poll; None for a camera never polled.
        failures_in_row: Failed polls in a row, this one included (0 when ``outcome`` is a frame).
        unchanged_for_s: Seconds since the frame bytes last changed (0 when this frame's
            sha256 differs from the previous one); ignored for a failure.
        stale_after_s: Identical bytes for at least this long make the camera STALE (> 0).
        offline_after_failures: Failures in a row that make it OFFLINE (>= 1); with fewer, a
            failure keeps the previous state (OFFLINE for a camera never polled).

    Raises:
        ValueError: ``failures_in_row`` inconsistent with ``outcome`` (< 1 for an error, != 0
            for a frame), ``unchanged_for_s`` < 0, ``stale_after_s`` <= 0 or
            ``offline_after_failures`` < 1.
    """
    if not stale_after_s > 0:
        raise ValueError(f"stale_after_s: expected > 0, received {stale_after_s}")
    if offline_after_failures < 1:
        raise ValueError(f"offline_after_failures: expected >= 1, received {offline_after_failures}")
    if isinstance(outcome, CameraError):
        if failures_in_row < 1:
            raise ValueError(f"failures_in_row: expected >= 1 for a failed poll, received {failures_in_row}")
        if failures_in_row >= offline_after_failures or previous is None:
            return CameraState.OFFLINE
        return previous
    if failures_in_row != 0:
        raise ValueError(f"failures_in_row: expected 0 for a poll that gave a frame, received {failures_in_row}")
    if unchanged_for_s < 0:
        raise ValueError(f"unchanged_for_s: expected >= 0, received {unchanged_for_s}")
    return CameraState.STALE if unchanged_for_s >= stale_after_s else CameraState.ONLINE


@dataclass(frozen=True, eq=False)
class PollRecord:
    """What to remember about a camera between polls (the caller persists it).

    Attributes:
        state: The state after the latest poll.
        failures_in_row: Failed polls in a row (0 after a frame).
        sha256: sha256 of the latest frame's bytes; None before the first frame.
        bytes_changed_at: When a frame with new bytes (sha256) last arrived, aware UTC; None before the first frame.
        thumbnail: (120, 160) uint8 grey thumbnail of the latest frame; None before the first frame.
        last_error_reason: The ``reason`` of the latest failure; None after a frame.
    """

    state: CameraState
    failures_in_row: int = 0
    sha256: str | None = None
    bytes_changed_at: datetime | None = None
    thumbnail: npt.NDArray[np.uint8] | None = field(default=None, repr=False)
    last_error_reason: str | None = None


def advance(
    record: PollRecord | None,
    outcome: Frame | CameraError,
    *,
    now: datetime,
    stale_after_s: float = DEFAULT_STALE_AFTER_S,
    offline_after_failures: int = DEFAULT_OFFLINE_AFTER_FAILURES,
) -> PollRecord:
    """The camera's record after a poll: counts failures and bytes-unchanged time, then :func:`next_state`.

    A failure keeps the previous frame's sha256, thumbnail and ``bytes_changed_at``, so a camera
    that comes back with the same frozen picture is still STALE.

    Args:
        record: The record before this poll; None for a camera never polled.
        outcome: The poll's frame or error.
        now: The poll's time, aware.
        stale_after_s: As :func:`next_state`.
        offline_after_failures: As :func:`next_state`.

    Raises:
        ValueError: ``now`` is naive, or as :func:`next_state`.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"now: expected an aware datetime, received naive {now!r}")
    previous_state = None if record is None else record.state
    if isinstance(outcome, CameraError):
        failures = 1 + (0 if record is None else record.failures_in_row)
        state = next_state(
            outcome, previous=previous_state, failures_in_row=failures, unchanged_for_s=0.0,
            stale_after_s=stale_after_s, offline_after_failures=offline_after_failures,
        )
        if record is None:
            return PollRecord(state, failures, last_error_reason=outcome.reason)
        return PollRecord(
            state, failures, record.sha256, record.bytes_changed_at, record.thumbnail, last_error_reason=outcome.reason
        )
    changed_at = now
    if record is not None and record.sha256 == outcome.sha256 and record.bytes_changed_at is not None:
        changed_at = record.bytes_changed_at
    unchanged_for_s = max(0.0, (now - changed_at).total_seconds())
    state = next_state(
        outcome, previous=previous_state, failures_in_row=0, unchanged_for_s=unchanged_for_s,
        stale_after_s=stale_after_s, offline_after_failures=offline_after_failures,
    )
    return PollRecord(state, 0, outcome.sha256, changed_at, outcome.thumbnail, None)


def decide(
    frame: Frame,
    *,
    previous_sha256: str | None,
    previous_thumbnail: npt.NDArray[np.uint8] | None,
    state: CameraState = CameraState.ONLINE,
    pixel_delta: float = PIXEL_DELTA,
    area_fraction: float = AREA_FRACTION,
) -> Decision:
    """Whether a polled frame should be scanned.

    Args:
        frame: The new frame.
        previous_sha256: sha256 of the previous frame of this camera (None: no previous frame).
        previous_thumbnail: (120, 160) uint8 grey thumbnail of the previous frame (None: none).
        state: The camera's state after this poll (:func:`next_state`); only ONLINE is scanned.
        pixel_delta: As :func:`workers.cameras.change.scene_changed`.
        area_fraction: As :func:`workers.cameras.change.scene_changed`.

    Returns:
        ``SKIP`` for a STALE or OFFLINE camera; ``UNCHANGED`` for the same sha256 or the same
        scene; ``SCAN`` otherwise (also for the first frame).

    Raises:
        ValueError: ``previous_thumbnail`` is not a thumbnail, or a bad threshold.
    """
    if state is not CameraState.ONLINE:
        return Decision.SKIP
    if previous_sha256 is not None and previous_sha256 == frame.sha256:
        return Decision.UNCHANGED
    if previous_thumbnail is None:
        return Decision.SCAN
    changed = scene_changed(
        previous_thumbnail, frame.thumbnail, pixel_delta=pixel_delta, area_fraction=area_fraction
    )
    return Decision.SCAN if changed else Decision.UNCHANGED
