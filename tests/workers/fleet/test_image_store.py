"""The image store: content-addressed, atomic, and it never hands out bytes that changed."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from workers.fleet.image_store import ImageStoreError, LocalImageStore, image_key

PICTURE = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 40


def test_put_get_round_trip_and_key_is_the_content_address(tmp_path: Path) -> None:
    store = LocalImageStore(tmp_path / "store")
    key = store.put(PICTURE)
    digest = hashlib.sha256(PICTURE).hexdigest()
    assert key == image_key(PICTURE) == f"sha256/{digest[:2]}/{digest}"
    assert store.get(key) == PICTURE and store.exists(key)
    assert store.path(key) == tmp_path / "store" / key


def test_the_same_picture_is_stored_once(tmp_path: Path) -> None:
    store = LocalImageStore(tmp_path)
    keys = {store.put(PICTURE) for _ in range(3)}
    assert len(keys) == 1
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == [store.path(keys.pop())]


def test_concurrent_puts_leave_one_whole_file_and_no_temporaries(tmp_path: Path) -> None:
    store = LocalImageStore(tmp_path)
    threads = [threading.Thread(target=store.put, args=(PICTURE,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == 1 and files[0].read_bytes() == PICTURE


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("", "invalid_key"),
        ("../etc/passwd", "invalid_key"),
        ("sha256/zz/" + "0" * 64, "invalid_key"),
        ("sha256/ab/" + "0" * 64, "invalid_key"),  # the folder must be the digest's first 2 hex
        ("sha256/00/" + "0" * 64, "image_missing"),
    ],
)
def test_bad_keys_are_refused_with_a_reason(tmp_path: Path, key: str, reason: str) -> None:
    with pytest.raises(ImageStoreError) as caught:
        LocalImageStore(tmp_path).get(key)
    assert caught.value.reason == reason


def test_bytes_that_changed_on_disk_are_refused(tmp_path: Path) -> None:
    store = LocalImageStore(tmp_path)
    key = store.put(PICTURE)
    store.path(key).write_bytes(PICTURE[:100])  # truncated by a crash or a full disk
    with pytest.raises(ImageStoreError) as caught:
        store.get(key)
    assert caught.value.reason == "image_corrupt"
    assert store.put(PICTURE) == key and store.get(key) == PICTURE  # a new put repairs it


def test_delete(tmp_path: Path) -> None:
    store = LocalImageStore(tmp_path)
    key = store.put(PICTURE)
    assert store.delete(key) and not store.exists(key) and not store.delete(key)


def test_an_unwritable_store_says_so(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ImageStoreError) as caught:
        LocalImageStore(blocker / "store").put(PICTURE)
    assert caught.value.reason == "store_unavailable"


def test_prune_deletes_pictures_stored_before_the_retention_and_a_new_put_renews_one(tmp_path: Path) -> None:
    import os
    import time
    from datetime import timedelta

    store = LocalImageStore(tmp_path)
    old, renewed, young = store.put(PICTURE), store.put(PICTURE + b"1"), store.put(PICTURE + b"2")
    ten_days_ago = time.time() - 10 * 86400
    for key in (old, renewed):
        os.utime(store.path(key), (ten_days_ago, ten_days_ago))
    assert store.put(PICTURE + b"1") == renewed  # enqueued again today

    files, size = store.prune(timedelta(days=7))

    assert (files, size) == (1, len(PICTURE))
    assert not store.exists(old) and store.exists(renewed) and store.exists(young)
    assert store.prune(timedelta(days=7)) == (0, 0)
    assert LocalImageStore(tmp_path / "never-written").prune(timedelta(days=1)) == (0, 0)
    with pytest.raises(ValueError):
        store.prune(timedelta(0))
