"""grab_http against a real http.server on 127.0.0.1: payload checks, errors and hard deadlines."""

from __future__ import annotations

import time

import pytest

from tests.workers.cameras.conftest import Reply, SnapshotServer, jpeg, shelf, without_one_product
from workers.cameras import CameraError, CameraState, Decision, Frame, decide, grab_http

LOGIN_PAGE = b"<!doctype html><html><body><form>Password: <input type=password></form></body></html>"


@pytest.mark.timeout(30)
def test_sequence_of_snapshots_gives_scan_unchanged_unchanged_bad_payload_scan(snapshot_server: SnapshotServer) -> None:
    first = jpeg(shelf(), 95)
    reencoded = jpeg(shelf(), 60)
    changed = jpeg(without_one_product(), 95)
    assert reencoded != first
    snapshot_server.replies = [
        Reply(body=first),
        Reply(body=first),
        Reply(body=reencoded),
        Reply(content_type="text/html; charset=utf-8", body=LOGIN_PAGE),
        Reply(body=changed),
    ]
    previous: Frame | None = None
    outcomes: list[str] = []
    for _ in range(5):
        try:
            frame = grab_http(snapshot_server.url, timeout_s=5.0)
        except CameraError as exc:
            outcomes.append(exc.reason)
            continue
        decision = decide(
            frame,
            previous_sha256=None if previous is None else previous.sha256,
            previous_thumbnail=None if previous is None else previous.thumbnail,
            state=CameraState.ONLINE,
        )
        outcomes.append(decision.value)
        if decision is Decision.SCAN:
            previous = frame  # compare with the last frame scanned
    assert outcomes == ["scan", "unchanged", "unchanged", "bad_payload", "scan"]


@pytest.mark.timeout(30)
def test_frame_carries_the_body_as_received(snapshot_server: SnapshotServer) -> None:
    body = jpeg(shelf())
    snapshot_server.replies = [Reply(body=body)]
    frame = grab_http(snapshot_server.url)
    assert frame.data == body
    assert (frame.width, frame.height) == (512, 512)
    assert frame.captured_at.utcoffset() is not None
    assert frame.thumbnail.shape == (120, 160)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (Reply(status=401, content_type="text/html", body=b"unauthorized"), "http_error"),
        (Reply(status=500, content_type="text/plain", body=b"boom"), "http_error"),
        (Reply(content_type="image/jpeg", body=jpeg(shelf())[:5000]), "bad_payload"),  # truncated JPEG
        (Reply(content_type="application/octet-stream", body=jpeg(shelf())), "bad_payload"),
        (Reply(content_type="image/jpeg", body=b"<html>not a picture</html>"), "bad_payload"),
        (Reply(content_type="image/jpeg", body=jpeg(shelf()) + b"\0" * 60_000), "bad_payload"),  # over max_bytes
        (Reply(content_type="image/jpeg", body=jpeg(shelf()), length=10**9), "bad_payload"),  # declares too much
        (Reply(content_type="image/png", body=b""), "bad_payload"),
    ],
    ids=["401", "500", "truncated", "octet-stream", "html-as-jpeg", "oversize", "declared-oversize", "empty"],
)
def test_bad_answers_raise_camera_error(snapshot_server: SnapshotServer, reply: Reply, reason: str) -> None:
    snapshot_server.replies = [reply]
    max_bytes = len(jpeg(shelf())) + 1000
    with pytest.raises(CameraError) as caught:
        grab_http(snapshot_server.url, timeout_s=5.0, max_bytes=max_bytes)
    assert caught.value.reason == reason
    if reply.status != 200:
        assert caught.value.status_code == reply.status
        assert str(reply.status) in str(caught.value)


@pytest.mark.timeout(30)
def test_blank_frame_is_refused(snapshot_server: SnapshotServer) -> None:
    import numpy as np

    snapshot_server.replies = [Reply(body=jpeg(np.full((240, 320, 3), 3, np.uint8)))]
    with pytest.raises(CameraError) as caught:
        grab_http(snapshot_server.url)
    assert caught.value.reason == "blank_frame"


@pytest.mark.timeout(30)
def test_connection_refused_is_unreachable_and_the_password_is_masked(closed_port: int) -> None:
    started = time.monotonic()
    with pytest.raises(CameraError) as caught:
        grab_http(f"http://admin:hunter2@127.0.0.1:{closed_port}/snap.jpg?token=abc", timeout_s=5.0)
    assert caught.value.reason == "camera_unreachable"
    assert time.monotonic() - started < 2.0
    assert "hunter2" not in str(caught.value) and "abc" not in str(caught.value)
    assert "***:***@127.0.0.1" in str(caught.value)


@pytest.mark.timeout(30)
def test_a_listener_that_never_answers_times_out_in_time(silent_listener: int) -> None:
    started = time.monotonic()
    with pytest.raises(CameraError) as caught:
        grab_http(f"http://127.0.0.1:{silent_listener}/snap.jpg", timeout_s=1.5)
    elapsed = time.monotonic() - started
    assert caught.value.reason == "camera_timeout"
    assert 1.3 < elapsed < 1.5 + 0.8


@pytest.mark.timeout(30)
def test_a_server_that_accepts_the_request_and_never_answers_times_out(snapshot_server: SnapshotServer) -> None:
    snapshot_server.replies = [Reply(silent=True)]
    started = time.monotonic()
    with pytest.raises(CameraError) as caught:
        grab_http(snapshot_server.url, timeout_s=1.5)
    assert caught.value.reason == "camera_timeout"
    assert time.monotonic() - started < 1.5 + 0.8


@pytest.mark.timeout(30)
def test_a_trickling_body_is_cut_at_the_overall_deadline(snapshot_server: SnapshotServer) -> None:
    # one byte every 0.2 s: every socket read succeeds well within the read timeout
    snapshot_server.replies = [Reply(body=jpeg(shelf()), trickle_s=0.2)]
    started = time.monotonic()
    with pytest.raises(CameraError) as caught:
        grab_http(snapshot_server.url, timeout_s=1.5)
    assert caught.value.reason == "camera_timeout"
    assert time.monotonic() - started < 1.5 + 0.8


@pytest.mark.timeout(10)
def test_unknown_host_is_unreachable() -> None:
    with pytest.raises(CameraError) as caught:
        grab_http("http://camera.invalid/snap.jpg", timeout_s=3.0)
    assert caught.value.reason in {"camera_unreachable", "camera_timeout"}


def test_non_http_url_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="http"):
        grab_http("rtsp://127.0.0.1/live")
