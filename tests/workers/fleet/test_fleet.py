"""Acceptance of the Celery fleet with real Redis, PostgreSQL and ``shelftally worker`` processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.workers.conftest import SHELF, encode, toy_scene
from tests.workers.fleet.conftest import Fleet

pytestmark = pytest.mark.timeout(600)


def write_pictures(folder: Path, seeds: range) -> list[Path]:
    """Distinct toy shelf pictures (PNG), one per seed."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in seeds:
        image, _ = toy_scene(seed)
        path = folder / f"shelf-{seed:04d}.png"
        path.write_bytes(encode(image))
        paths.append(path)
    return paths


def ingest(fleet: Fleet, folder: Path) -> list[dict[str, str]]:
    result = fleet.run("ingest", str(folder), "--location", SHELF, "--json")
    assert result.returncode == 0, result.stderr + result.stdout
    sent: list[dict[str, str]] = json.loads(result.stdout)["enqueued"]
    return sent


def duplicate_observations(fleet: Fleet) -> list[tuple[int, int, int]]:
    with fleet.factory() as session:
        return [tuple(row) for row in session.execute(sa.text(
            "SELECT scan_id, sku_id, count(*) FROM observation GROUP BY scan_id, sku_id HAVING count(*) > 1"
        )).all()]


def test_200_pictures_through_2_worker_processes_are_scanned_exactly_once(fleet: Fleet, tmp_path: Path) -> None:
    write_pictures(tmp_path / "pictures", range(200))
    fleet.start_worker("--concurrency", "1")
    fleet.start_worker("--concurrency", "1")

    sent = ingest(fleet, tmp_path / "pictures")

    assert len(sent) == 200
    fleet.wait_until(lambda: len(fleet.scan_rows()) >= 200 and not any(fleet.pending().values()), 400,
                     "200 scans and empty queues")
    rows = fleet.scan_rows()
    assert len(rows) == 200
    assert {row.status for row in rows} == {"processed"}
    assert len({row.image_sha256 for row in rows}) == 200
    assert duplicate_observations(fleet) == []
    assert fleet.dead_letters() == []
    # Both worker processes took a share of the work.
    logs = [path.read_text(errors="replace") for path in sorted(fleet.home.glob("worker-*.log"))]
    assert all("shelftally.persist" in text and "succeeded" in text for text in logs), fleet.logs()


def test_a_worker_killed_mid_task_gets_the_task_again_and_it_completes_once(fleet: Fleet, tmp_path: Path) -> None:
    write_pictures(tmp_path / "pictures", range(1))
    fleet.fault("shelftally.vision", "kill-once")
    fleet.start_worker("--concurrency", "1")

    ingest(fleet, tmp_path / "pictures")

    fleet.wait_until(lambda: len(fleet.scan_rows()) == 1 and not any(fleet.pending().values()), 120,
                     "the scan after the worker child was killed")
    assert [row.status for row in fleet.scan_rows()] == ["processed"]
    assert sorted(fleet.deliveries()) == [1, 1, 2]  # ingest, persist once; vision twice
    assert "WorkerLostError" in fleet.logs() or "SIGKILL" in fleet.logs()
    assert fleet.dead_letters() == []


def test_a_task_that_kills_its_worker_every_time_ends_in_the_dead_letter_list(fleet: Fleet, tmp_path: Path) -> None:
    write_pictures(tmp_path / "pictures", range(1))
    fleet.fault("shelftally.vision", "kill-always")
    fleet.start_worker("--concurrency", "1")

    ingest(fleet, tmp_path / "pictures")

    fleet.wait_until(lambda: len(fleet.dead_letters()) == 1 and not any(fleet.pending().values()), 180,
                     "the message in the dead-letter list and nothing pending")
    letter, = fleet.dead_letters()
    assert letter["task"] == "shelftally.vision"
    assert letter["reason"] == "max_deliveries_exceeded"
    assert letter["deliveries"] == 4  # 3 deliveries killed the worker; the 4th was parked, not run
    assert fleet.scan_rows() == []

    fleet.fault("shelftally.vision", None)  # the cause is fixed: replay it
    retried = fleet.run("tasks", "retry", letter["id"], "--json")

    assert retried.returncode == 0, retried.stderr
    fleet.wait_until(lambda: len(fleet.scan_rows()) == 1 and not any(fleet.pending().values()), 120,
                     "the replayed picture's scan")
    assert [row.status for row in fleet.scan_rows()] == ["processed"]
    assert fleet.dead_letters() == []
    assert fleet.run("tasks", "retry", letter["id"]).returncode == 1  # gone from the list


def test_a_redelivery_while_the_first_copy_runs_does_not_double_count(fleet: Fleet, tmp_path: Path) -> None:
    write_pictures(tmp_path / "pictures", range(1))
    short = {
        "SHELFTALLY_FLEET__VISIBILITY_TIMEOUT_S": "2",
        "SHELFTALLY_FLEET__TASK_TIME_LIMIT_S": "60",
        "SHELFTALLY_FLEET__TASK_SOFT_TIME_LIMIT_S": "50",
        "SHELFTALLY_FLEET__ALLOW_REDELIVERY_WHILE_RUNNING": "true",
    }
    fleet.fault("shelftally.persist", "sleep-once:8")
    fleet.start_worker("--concurrency", "1", env=short)
    fleet.start_worker("--concurrency", "1", env=short)

    ingest(fleet, tmp_path / "pictures")

    fleet.wait_until(lambda: len(fleet.scan_rows()) == 1, 120, "the scan")
    fleet.wait_until(lambda: max(fleet.deliveries()) >= 2 and not any(fleet.pending().values()),
                     60, "the redelivered persist task")
    import time

    time.sleep(9)  # the first, sleeping copy finishes too
    rows = fleet.scan_rows()
    assert [row.status for row in rows] == ["processed"]
    assert duplicate_observations(fleet) == []
    logs = fleet.logs()
    assert logs.count("shelftally.persist") >= 2
    assert fleet.dead_letters() == []


def test_the_worker_refuses_a_time_limit_that_is_not_below_the_visibility_timeout(fleet: Fleet) -> None:
    result = fleet.run("worker", env={"SHELFTALLY_FLEET__VISIBILITY_TIMEOUT_S": "60",
                                      "SHELFTALLY_FLEET__TASK_TIME_LIMIT_S": "120",
                                      "SHELFTALLY_FLEET__TASK_SOFT_TIME_LIMIT_S": "100"}, timeout=60)

    assert result.returncode == 1
    assert "time_limit_exceeds_visibility_timeout" in result.stderr + result.stdout


def test_transient_errors_are_retried_and_permanent_ones_parked_at_once(fleet: Fleet, tmp_path: Path) -> None:
    write_pictures(tmp_path / "first", range(1))
    write_pictures(tmp_path / "second", range(1, 2))
    fleet.start_worker("--concurrency", "1")

    fleet.fault("shelftally.persist", "transient-once")
    ingest(fleet, tmp_path / "first")
    fleet.wait_until(lambda: len(fleet.scan_rows()) == 1 and not any(fleet.pending().values()), 120,
                     "the scan after one retry")
    assert [row.status for row in fleet.scan_rows()] == ["processed"]
    assert "transient failure (retry 1/5" in fleet.logs()

    fleet.fault("shelftally.persist", "permanent")
    ingest(fleet, tmp_path / "second")
    fleet.wait_until(lambda: len(fleet.dead_letters()) == 1 and not any(fleet.pending().values()), 120,
                     "the failing message parked")
    letter, = fleet.dead_letters()
    assert (letter["task"], letter["reason"], letter["deliveries"]) == ("shelftally.persist", "ValueError", 1)
    assert "injected: a bug" in letter["error"]
    assert len(fleet.scan_rows()) == 1


def test_a_corrupt_picture_is_recorded_as_rejected_and_never_retried(fleet: Fleet, tmp_path: Path) -> None:
    folder = tmp_path / "pictures"
    write_pictures(folder, range(1))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 200)  # a JPEG header, then nothing
    fleet.start_worker("--concurrency", "1")

    ingest(fleet, folder)

    fleet.wait_until(lambda: len(fleet.scan_rows()) == 2 and not any(fleet.pending().values()), 120, "both pictures")
    rows = fleet.scan_rows()
    assert sorted((row.status, row.reject_reason) for row in rows) == [
        ("processed", None), ("rejected", "corrupt_image")]
    assert fleet.dead_letters() == []
    assert "transient failure" not in fleet.logs()
