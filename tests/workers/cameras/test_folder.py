"""ready_files / FolderWatcher on a real folder: settling, temporary names, ctime order and the cursor."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.workers.cameras.conftest import jpeg, shelf
from workers.cameras import FolderWatcher, ready_files


def later(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


@pytest.mark.timeout(30)
def test_a_file_being_written_is_taken_only_once_complete(tmp_path: Path) -> None:
    data = jpeg(shelf())
    path = tmp_path / "cam1.jpg"
    with path.open("wb") as handle:
        handle.write(data[: len(data) // 2])
        handle.flush()
        assert ready_files(tmp_path, cursor=None, settle_s=0.5) == ([], None)  # young: not settled
        time.sleep(0.7)
        # settled by time, but truncated and young (< 60 s): waits rather than being rejected
        assert ready_files(tmp_path, cursor=None, settle_s=0.5) == ([], None)
        handle.write(data[len(data) // 2 :])
    assert ready_files(tmp_path, cursor=None, settle_s=0.5)[0] == []  # just written: not settled
    files, cursor = ready_files(tmp_path, cursor=None, settle_s=0.5, now=later(1.0))
    assert [(f.name, f.size, f.rejection) for f in files] == [("cam1.jpg", len(data), None)]
    assert cursor is not None and cursor["name"] == "cam1.jpg"


@pytest.mark.timeout(30)
def test_temporary_names_are_ignored_and_a_renamed_part_file_is_taken_once(tmp_path: Path) -> None:
    data = jpeg(shelf())
    for name in (".cam.jpg.Xa12", "cam.jpg.part", "cam.tmp", "cam.jpg.crdownload", "~cam.jpg"):
        (tmp_path / name).write_bytes(data)
    (tmp_path / "sub").mkdir()
    assert ready_files(tmp_path, cursor=None, settle_s=0.0, now=later(5)) == ([], None)
    watcher = FolderWatcher(tmp_path, settle_s=1.0)
    (tmp_path / "cam.jpg.part").rename(tmp_path / "cam.jpg")
    assert [f.name for f in watcher.poll(now=later(2))] == ["cam.jpg"]
    assert watcher.poll(now=later(3)) == []


@pytest.mark.timeout(30)
def test_cursor_round_trips_through_json_and_files_come_in_ctime_order(tmp_path: Path) -> None:
    data = jpeg(shelf())
    for name in ("b.jpg", "a.jpg"):  # b first: ctime order, not name order
        (tmp_path / name).write_bytes(data)
        time.sleep(0.02)
    files, cursor = ready_files(tmp_path, cursor=None, settle_s=1.0, now=later(2))
    assert [f.name for f in files] == ["b.jpg", "a.jpg"]
    restored = json.loads(json.dumps(cursor))
    assert ready_files(tmp_path, cursor=restored, settle_s=1.0, now=later(2)) == ([], restored)
    (tmp_path / "0-new.jpg").write_bytes(data)
    files, _ = ready_files(tmp_path, cursor=restored, settle_s=1.0, now=later(2))
    assert [f.name for f in files] == ["0-new.jpg"]


@pytest.mark.timeout(30)
def test_a_copied_file_with_an_old_mtime_but_a_new_ctime_is_taken(tmp_path: Path) -> None:
    data = jpeg(shelf())
    (tmp_path / "new.jpg").write_bytes(data)
    _, cursor = ready_files(tmp_path, cursor=None, settle_s=1.0, now=later(2))
    old = tmp_path / "copied.jpg"
    old.write_bytes(data)
    year_ago = time.time() - 365 * 86400
    os.utime(old, (year_ago, year_ago))  # what cp -p / rsync -t do after writing
    assert old.stat().st_mtime < year_ago + 1
    files, _ = ready_files(tmp_path, cursor=cursor, settle_s=1.0, now=later(2))
    assert [f.name for f in files] == ["copied.jpg"]
    assert files[0].mtime.year < datetime.now(UTC).year + 1 and files[0].mtime < later(-300 * 86400)


@pytest.mark.timeout(30)
def test_an_old_corrupt_file_is_returned_with_its_rejection_and_a_young_one_blocks(tmp_path: Path) -> None:
    data = jpeg(shelf())
    (tmp_path / "broken.jpg").write_bytes(data[:3000])
    time.sleep(0.02)
    (tmp_path / "good.jpg").write_bytes(data)
    # young and undecodable: waits, and the later good file waits behind it (the cursor never skips it)
    assert ready_files(tmp_path, cursor=None, settle_s=1.0, now=later(5)) == ([], None)
    files, cursor = ready_files(tmp_path, cursor=None, settle_s=1.0, now=later(120))
    assert [(f.name, f.rejection) for f in files] == [("broken.jpg", "corrupt_image"), ("good.jpg", None)]
    assert cursor == {"ctime_ns": files[-1].ctime_ns, "name": "good.jpg"}


@pytest.mark.timeout(30)
def test_max_files_limits_one_poll_and_the_next_poll_continues(tmp_path: Path) -> None:
    data = jpeg(shelf())
    for i in range(5):
        (tmp_path / f"{i}.jpg").write_bytes(data)
    watcher = FolderWatcher(tmp_path, settle_s=0.0, max_files=2)
    names = [f.name for _ in range(4) for f in watcher.poll(now=later(1))]
    assert names == ["0.jpg", "1.jpg", "2.jpg", "3.jpg", "4.jpg"]


def test_an_empty_folder_gives_nothing_and_a_missing_one_raises(tmp_path: Path) -> None:
    assert ready_files(tmp_path, cursor=None) == ([], None)
    with pytest.raises(FileNotFoundError):
        ready_files(tmp_path / "missing", cursor=None)
