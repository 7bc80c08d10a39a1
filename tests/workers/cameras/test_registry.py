"""The camera registry and polling registered cameras against real servers on 127.0.0.1, on
SQLite and PostgreSQL (``db_url``); pictures worth scanning go to a recording ``submit``."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from inventory.db import run_in_transaction
from inventory.errors import InvalidInputError, NotFoundError, UnknownLocationError
from inventory.models import Camera, CameraKind, CameraState
from tests.conftest import seed_shelf
from tests.workers.cameras.conftest import (
    Reply,
    RtspServer,
    SnapshotServer,
    jpeg,
    shelf,
    without_one_product,
)
from workers.cameras.registry import CameraPoller, add_camera, close_readers, due_cameras, list_cameras, remove_camera

SHELF = "WH1-A01-B01-S1"

pytestmark = pytest.mark.timeout(120)


class Recorder:
    """A ``submit`` that keeps what it was given."""

    def __init__(self) -> None:
        self.pictures: list[dict[str, Any]] = []

    def __call__(self, data: bytes, **kwargs: Any) -> None:
        self.pictures.append({"data": data, **kwargs})


@pytest.fixture
def registry(factory: sessionmaker[Session]) -> sessionmaker[Session]:
    with factory.begin() as session:
        seed_shelf(session, book={"SKU-RED": 3}, location_code=SHELF)
    return factory


def register(factory: sessionmaker[Session], code: str, kind: CameraKind, url: str, **kwargs: Any) -> None:
    run_in_transaction(factory, lambda session: add_camera(
        session, camera_code=code, kind=kind, url=url, location_code=SHELF, **kwargs))


def camera(factory: sessionmaker[Session], code: str) -> Camera:
    with factory() as session:
        return session.scalars(sa.select(Camera).where(Camera.camera_code == code)).one()


def test_the_registry_refuses_passwords_in_urls_and_shows_urls_masked(registry: sessionmaker[Session]) -> None:
    with pytest.raises(InvalidInputError) as inline:
        register(registry, "CAM-1", CameraKind.RTSP, "rtsp://admin:hunter2@10.0.0.7:554/stream1")
    assert inline.value.reason == "inline_credentials"
    assert "hunter2" not in str(inline.value)
    with pytest.raises(InvalidInputError) as wrong_kind:
        register(registry, "CAM-1", CameraKind.HTTP, "rtsp://10.0.0.7/stream1")
    assert wrong_kind.value.reason == "invalid_camera_url"
    with pytest.raises(InvalidInputError) as bad_secret:
        register(registry, "CAM-1", CameraKind.RTSP, "rtsp://admin@10.0.0.7/s", secret_ref="hunter2")
    assert bad_secret.value.reason == "invalid_secret_ref"
    with pytest.raises(UnknownLocationError):
        run_in_transaction(registry, lambda session: add_camera(
            session, camera_code="CAM-1", kind=CameraKind.HTTP, url="http://10.0.0.7/snap.jpg", location_code="NOPE"))

    for url in ("http://10.0.0.7/snap.jpg?user=admin&pwd=hunter2", "rtsp://10.0.0.7/s?token=hunter2"):
        with pytest.raises(InvalidInputError) as in_query:
            register(registry, "CAM-1", CameraKind.HTTP if url.startswith("http") else CameraKind.RTSP, url)
        assert in_query.value.reason == "inline_credentials"
        assert "hunter2" not in str(in_query.value)
    with pytest.raises(InvalidInputError) as pasted:  # the password typed where its reference belongs
        register(registry, "CAM-1", CameraKind.RTSP, "rtsp://admin@10.0.0.7/s", secret_ref="hunter2")
    assert "hunter2" not in str(pasted.value)

    register(registry, "CAM-1", CameraKind.RTSP, "rtsp://admin@10.0.0.7:554/stream1?channel=1",
             secret_ref="env:CAM1_PASSWORD")
    with pytest.raises(InvalidInputError) as duplicate:
        register(registry, "CAM-1", CameraKind.HTTP, "http://10.0.0.7/snap.jpg")
    assert duplicate.value.reason == "duplicate_camera"

    with registry() as session:
        row, = list_cameras(session)
    assert row["url"] == "rtsp://***:***@10.0.0.7:554/stream1?***"
    assert row["secret"] == "env:***"
    assert row["state"] == "offline" and row["location_code"] == SHELF

    run_in_transaction(registry, lambda session: remove_camera(session, "CAM-1"))
    with pytest.raises(NotFoundError):
        run_in_transaction(registry, lambda session: remove_camera(session, "CAM-1"))


def test_an_http_snapshot_sequence_gives_exactly_the_scans_the_rules_imply(
    registry: sessionmaker[Session], snapshot_server: SnapshotServer
) -> None:
    first = jpeg(shelf(3), quality=95)
    snapshot_server.replies = [
        Reply(body=first),                                   # a new picture: scanned
        Reply(body=first),                                   # the same bytes: not scanned
        Reply(body=jpeg(shelf(3), quality=60)),              # re-encoded, same scene: not scanned
        Reply(content_type="text/html", body=b"<html><form>Login</form></html>"),  # bad payload: OFFLINE
        Reply(body=jpeg(without_one_product(3), quality=95)),  # a product gone: scanned
    ]
    register(registry, "SNAP", CameraKind.HTTP, snapshot_server.url, timeout_s=3)
    submitted = Recorder()
    poller = CameraPoller(registry, submitted)

    reports = [poller.poll("SNAP") for _ in range(5)]

    assert [r.decision for r in reports] == ["scan", "unchanged", "unchanged", "error", "scan"]
    assert [r.state for r in reports] == [CameraState.ONLINE] * 3 + [CameraState.OFFLINE, CameraState.ONLINE]
    assert reports[3].reason == "bad_payload"
    assert len(submitted.pictures) == 2
    assert submitted.pictures[0]["data"] == first
    assert {p["location_code"] for p in submitted.pictures} == {SHELF}
    assert {p["camera_code"] for p in submitted.pictures} == {"SNAP"}
    assert camera(registry, "SNAP").last_error is None


def test_a_frozen_feed_goes_stale_and_is_never_scanned(
    registry: sessionmaker[Session], snapshot_server: SnapshotServer
) -> None:
    snapshot_server.replies = [Reply(body=jpeg(shelf(5)))]
    register(registry, "FROZEN", CameraKind.HTTP, snapshot_server.url, timeout_s=3, stale_after_s=60)
    now = [datetime(2026, 11, 29, 10, 0, tzinfo=UTC)]
    submitted = Recorder()
    poller = CameraPoller(registry, submitted, clock=lambda: now[0])

    first = poller.poll("FROZEN")
    now[0] += timedelta(seconds=30)
    second = poller.poll("FROZEN")
    now[0] += timedelta(seconds=31)
    third = poller.poll("FROZEN")

    assert (first.state, first.decision) == (CameraState.ONLINE, "scan")
    assert (second.state, second.decision) == (CameraState.ONLINE, "unchanged")
    assert (third.state, third.decision) == (CameraState.STALE, "skip")
    assert len(submitted.pictures) == 1


def test_a_camera_whose_secret_cannot_be_read_is_offline(registry: sessionmaker[Session]) -> None:
    register(registry, "LOCKED", CameraKind.HTTP, "http://admin@127.0.0.1:9/snap.jpg",
             secret_ref="env:SHELFTALLY_TEST_NO_SUCH_VARIABLE")

    report = CameraPoller(registry, Recorder()).poll("LOCKED")

    assert (report.state, report.reason) == (CameraState.OFFLINE, "missing_secret")


@pytest.mark.parametrize("kind", [CameraKind.HTTP, CameraKind.RTSP])
def test_a_listener_that_never_answers_does_not_block_a_poll_past_its_timeout(
    registry: sessionmaker[Session], silent_listener: int, kind: CameraKind
) -> None:
    url = f"{kind.value}://127.0.0.1:{silent_listener}/stream"
    register(registry, "SILENT", kind, url, timeout_s=2)
    try:
        started = time.monotonic()
        report = CameraPoller(registry, Recorder()).poll("SILENT")
        elapsed = time.monotonic() - started
    finally:
        close_readers()

    assert report.state is CameraState.OFFLINE
    assert report.reason in ("camera_timeout", "camera_unreachable")
    assert elapsed < 2 + 3.0


def test_an_rtsp_camera_goes_offline_when_its_stream_stops_and_online_when_it_restarts(
    registry: sessionmaker[Session], rtsp_server: RtspServer
) -> None:
    register(registry, "RTSP", CameraKind.RTSP, rtsp_server.url, timeout_s=4, interval_s=1)
    submitted = Recorder()
    poller = CameraPoller(registry, submitted)
    try:
        up = poller.poll("RTSP")
        assert (up.state, up.decision) == (CameraState.ONLINE, "scan")

        rtsp_server.kill()
        started = time.monotonic()
        down = poller.poll("RTSP")
        while down.state is not CameraState.OFFLINE and time.monotonic() - started < 4 + 3:
            time.sleep(0.2)
            down = poller.poll("RTSP")
        assert down.state is CameraState.OFFLINE
        assert time.monotonic() - started < 4 + 3  # within its timeout, with a margin for the poll itself

        rtsp_server.start(foreground="0xffff0000")  # a red ball: a different scene
        deadline = time.monotonic() + 30
        back = poller.poll("RTSP")
        while back.state is not CameraState.ONLINE and time.monotonic() < deadline:
            time.sleep(0.5)
            back = poller.poll("RTSP")
        assert back.state is CameraState.ONLINE
        assert back.decision == "scan"  # frames resumed, and they show something new
        assert len(submitted.pictures) == 2
        assert submitted.pictures[0]["data"] != submitted.pictures[1]["data"]
    finally:
        close_readers()


def test_a_folder_camera_submits_each_completed_file_once(registry: sessionmaker[Session], tmp_path: Path) -> None:
    import os

    folder = tmp_path / "drop"
    folder.mkdir()
    register(registry, "DROP", CameraKind.FOLDER, str(folder))
    old = time.time() - 30
    for name, seed in (("a.jpg", 1), ("b.jpg", 2)):
        (folder / name).write_bytes(jpeg(shelf(seed)))
        os.utime(folder / name, (old, old))
    (folder / "c.jpg.part").write_bytes(b"half")
    submitted = Recorder()
    # Files count as complete once neither their mtime nor their ctime changed for settle_s (2 s).
    poller = CameraPoller(registry, submitted, clock=lambda: datetime.now(UTC) + timedelta(seconds=5))

    first = poller.poll("DROP")
    second = poller.poll("DROP")

    assert (first.state, first.submitted, second.submitted) == (CameraState.ONLINE, 2, 0)
    assert [Path(p["source"]).name for p in submitted.pictures] == ["a.jpg", "b.jpg"]
    assert all(p["fallback_time"] is not None for p in submitted.pictures)


def test_due_cameras_claims_each_camera_once_per_interval(registry: sessionmaker[Session]) -> None:
    register(registry, "A", CameraKind.HTTP, "http://127.0.0.1/a.jpg", interval_s=60)
    register(registry, "B", CameraKind.HTTP, "http://127.0.0.1/b.jpg", interval_s=5)
    now = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)

    def claim(at: datetime) -> list[str]:
        return run_in_transaction(registry, lambda session: due_cameras(session, at))

    assert claim(now) == ["A", "B"]
    assert claim(now + timedelta(seconds=1)) == []
    assert claim(now + timedelta(seconds=6)) == ["B"]
    assert claim(now + timedelta(seconds=61)) == ["A", "B"]
