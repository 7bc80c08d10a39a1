"""next_state / advance / decide: ONLINE, OFFLINE, STALE and which frames are scanned."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest

from tests.workers.cameras.conftest import jpeg, shelf, without_one_product
from workers.cameras import CameraError, CameraState, Decision, Frame, advance, decide, next_state, thumbnail
from workers.ingest import decode_image

T0 = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)


def frame(data: bytes, at: datetime = T0) -> Frame:
    return Frame(data, hashlib.sha256(data).hexdigest(), at, 512, 512, thumbnail(decode_image(data).pixels))


TIMEOUT = CameraError("rtsp://***:***@cam/1: no frame", reason="camera_timeout")
A = frame(jpeg(shelf(3)))
A_REENCODED = frame(jpeg(shelf(3), 60))
B = frame(jpeg(without_one_product(3)))


@pytest.mark.parametrize(
    ("outcome", "previous", "failures", "unchanged_for_s", "offline_after", "expected"),
    [
        (A, None, 0, 0.0, 1, CameraState.ONLINE),
        (A, CameraState.OFFLINE, 0, 0.0, 1, CameraState.ONLINE),
        (A, CameraState.ONLINE, 0, 299.0, 1, CameraState.ONLINE),
        (A, CameraState.ONLINE, 0, 300.0, 1, CameraState.STALE),
        (A, CameraState.STALE, 0, 0.0, 1, CameraState.ONLINE),
        (TIMEOUT, CameraState.ONLINE, 1, 0.0, 1, CameraState.OFFLINE),
        (TIMEOUT, CameraState.ONLINE, 1, 0.0, 3, CameraState.ONLINE),
        (TIMEOUT, CameraState.STALE, 2, 0.0, 3, CameraState.STALE),
        (TIMEOUT, CameraState.ONLINE, 3, 0.0, 3, CameraState.OFFLINE),
        (TIMEOUT, None, 1, 0.0, 3, CameraState.OFFLINE),
    ],
)
def test_next_state(
    outcome: Frame | CameraError,
    previous: CameraState | None,
    failures: int,
    unchanged_for_s: float,
    offline_after: int,
    expected: CameraState,
) -> None:
    state = next_state(
        outcome, previous=previous, failures_in_row=failures, unchanged_for_s=unchanged_for_s,
        stale_after_s=300.0, offline_after_failures=offline_after,
    )
    assert state is expected


@pytest.mark.parametrize(
    ("outcome", "failures", "match"),
    [(TIMEOUT, 0, "failures_in_row"), (A, 1, "failures_in_row")],
)
def test_next_state_refuses_inconsistent_counts(outcome: Frame | CameraError, failures: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        next_state(outcome, previous=None, failures_in_row=failures, unchanged_for_s=0.0)


def test_advance_frozen_feed_goes_stale_failure_offline_and_new_bytes_online() -> None:
    record = advance(None, A, now=T0, stale_after_s=60)
    assert (record.state, record.failures_in_row, record.bytes_changed_at) == (CameraState.ONLINE, 0, T0)
    record = advance(record, A, now=T0 + timedelta(seconds=30), stale_after_s=60)
    assert record.state is CameraState.ONLINE and record.bytes_changed_at == T0
    record = advance(record, A, now=T0 + timedelta(seconds=61), stale_after_s=60)
    assert record.state is CameraState.STALE
    record = advance(record, TIMEOUT, now=T0 + timedelta(seconds=70), stale_after_s=60)
    assert (record.state, record.failures_in_row) == (CameraState.OFFLINE, 1)
    assert record.last_error_reason == "camera_timeout"
    record = advance(record, A, now=T0 + timedelta(seconds=80), stale_after_s=60)
    assert record.state is CameraState.STALE  # back with the same frozen picture
    record = advance(record, B, now=T0 + timedelta(seconds=90), stale_after_s=60)
    assert (record.state, record.sha256) == (CameraState.ONLINE, B.sha256)
    assert record.bytes_changed_at == T0 + timedelta(seconds=90)


@pytest.mark.parametrize(
    ("new", "previous", "state", "expected"),
    [
        (A, None, CameraState.ONLINE, Decision.SCAN),
        (A, A, CameraState.ONLINE, Decision.UNCHANGED),
        (A_REENCODED, A, CameraState.ONLINE, Decision.UNCHANGED),
        (B, A, CameraState.ONLINE, Decision.SCAN),
        (B, A, CameraState.STALE, Decision.SKIP),
        (B, A, CameraState.OFFLINE, Decision.SKIP),
    ],
)
def test_decide(new: Frame, previous: Frame | None, state: CameraState, expected: Decision) -> None:
    decision = decide(
        new,
        previous_sha256=None if previous is None else previous.sha256,
        previous_thumbnail=None if previous is None else previous.thumbnail,
        state=state,
    )
    assert decision is expected


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sha256": "0" * 64}, "sha256"),
        ({"captured_at": datetime(2026, 1, 1)}, "captured_at"),
        ({"width": 0}, "width"),
    ],
)
def test_frame_validates(kwargs: dict[str, object], match: str) -> None:
    fields: dict[str, object] = {
        "data": A.data, "sha256": A.sha256, "captured_at": T0, "width": 512, "height": 512, "thumbnail": A.thumbnail,
    }
    fields.update(kwargs)
    with pytest.raises(ValueError, match=match):
        Frame(**fields)  # type: ignore[arg-type]


def test_camera_error_refuses_unknown_reasons_and_reports_json() -> None:
    assert TIMEOUT.to_dict()["reason"] == "camera_timeout"
    with pytest.raises(ValueError, match="reason"):
        CameraError("x", reason="nope")
