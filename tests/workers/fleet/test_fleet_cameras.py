"""Cameras on a real fleet: polls run as tasks in ``shelftally worker`` processes, beat schedules them."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.workers.cameras.conftest import Reply, SnapshotServer, free_port, jpeg, shelf, without_one_product
from tests.workers.conftest import SHELF
from tests.workers.fleet.conftest import SHELFTALLY, Fleet
from tests.workers.fleet.test_fleet import write_pictures

pytestmark = pytest.mark.timeout(600)


def add_camera(fleet: Fleet, code: str, *args: str) -> None:
    result = fleet.run("cameras", "add", code, "--location", SHELF, *args)
    assert result.returncode == 0, result.stderr + result.stdout


def cameras(fleet: Fleet) -> dict[str, dict[str, object]]:
    result = fleet.run("cameras", "list", "--json")
    assert result.returncode == 0, result.stderr
    return {row["camera_code"]: row for row in json.loads(result.stdout)["cameras"]}


def poll_and_wait(fleet: Fleet, code: str, timeout: float = 60) -> dict[str, object]:
    before = cameras(fleet)[code]["last_polled_at"]
    result = fleet.run("cameras", "poll", code)
    assert result.returncode == 0, result.stderr
    fleet.wait_until(lambda: cameras(fleet)[code]["last_polled_at"] != before, timeout, f"a poll of {code}")
    return cameras(fleet)[code]


def test_an_http_snapshot_sequence_through_the_fleet_gives_exactly_two_scans(
    fleet: Fleet, snapshot_server: SnapshotServer
) -> None:
    first = jpeg(shelf(3), quality=95)
    snapshot_server.replies = [
        Reply(body=first),
        Reply(body=first),
        Reply(body=jpeg(shelf(3), quality=60)),
        Reply(content_type="text/html", body=b"<html><form>Login</form></html>"),
        Reply(body=jpeg(without_one_product(3), quality=95)),
    ]
    add_camera(fleet, "SNAP", "--kind", "http", "--url", snapshot_server.url, "--timeout", "3")
    fleet.start_worker("--concurrency", "1")

    states = [poll_and_wait(fleet, "SNAP")["state"] for _ in range(5)]

    assert states == ["online", "online", "online", "offline", "online"]
    fleet.wait_until(lambda: len(fleet.scan_rows()) == 2 and not any(fleet.pending().values()), 120,
                     "the two scans")
    assert [row.status for row in fleet.scan_rows()] == ["processed", "processed"]
    assert snapshot_server.served == 5


def test_a_camera_that_never_answers_does_not_block_the_worker(
    fleet: Fleet, silent_listener: int, tmp_path: Path
) -> None:
    add_camera(fleet, "SILENT", "--kind", "rtsp", "--url", f"rtsp://127.0.0.1:{silent_listener}/live",
               "--timeout", "2")
    write_pictures(tmp_path / "pictures", range(1))
    fleet.start_worker("--concurrency", "1")

    state = poll_and_wait(fleet, "SILENT", timeout=30)
    sent = fleet.run("ingest", str(tmp_path / "pictures"), "--location", SHELF)

    assert sent.returncode == 0, sent.stderr
    assert state["state"] == "offline"
    # The worker's own account of the poll task: within the grab's 2 s limit plus a margin.
    took = re.search(r"shelftally\.poll_camera\[[^]]+\] succeeded in ([\d.]+)s", fleet.logs())
    assert took is not None, fleet.logs()
    assert float(took.group(1)) < 2 + 3
    fleet.wait_until(lambda: len(fleet.scan_rows()) == 1, 60, "the picture after the silent camera")


def test_beat_polls_cameras_on_schedule_and_an_unchanged_feed_is_scanned_once(
    fleet: Fleet, snapshot_server: SnapshotServer
) -> None:
    snapshot_server.replies = [Reply(body=jpeg(shelf(4)))]
    add_camera(fleet, "STEADY", "--kind", "http", "--url", snapshot_server.url, "--interval", "1", "--timeout", "3")
    port = free_port()
    fleet.start_worker("--concurrency", "1", "--metrics-port", str(port))
    beat = subprocess.Popen([SHELFTALLY, "beat", "--tick", "0.5"], env=fleet.env, cwd=fleet.home,
                            stdout=(fleet.home / "worker-beat.log").open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    fleet.workers.append(beat)

    fleet.wait_until(lambda: snapshot_server.served >= 4, 60, "four scheduled polls")

    fleet.wait_until(lambda: len(fleet.scan_rows()) == 1 and not any(fleet.pending().values()), 60, "the scan")
    assert cameras(fleet)["STEADY"]["state"] == "online"
    assert len(fleet.scan_rows()) == 1  # the same picture, polled again and again, is scanned once
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert 'shelftally_camera_state{camera="STEADY",state="online"} 1.0' in metrics
    assert 'shelftally_frames_unchanged_total{camera="STEADY"}' in metrics
    assert 'shelftally_tasks_total{outcome="succeeded",task="shelftally.persist"} 1.0' in metrics
    assert "shelftally_stage_seconds_bucket" in metrics

    status = fleet.run("status", "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["queues"].keys() == {"ingest", "vision", "db"}
    assert len(report["workers"]) == 1 and report["dead_letters"] == 0
    assert report["cameras"][0]["camera_code"] == "STEADY"
