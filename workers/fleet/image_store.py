"""Where pictures wait between tasks: tasks carry a key into an image store, never pixels.

:class:`ImageStore` is the interface (``put`` bytes -> key, ``get`` key -> bytes, ``delete``,
``exists``); :class:`LocalImageStore` implements it on a local (or shared network) directory and
an object store (S3, GCS, MinIO) can implement it the same way.

Keys are content addresses: ``sha256/<first 2 hex>/<64 hex>`` of the picture's bytes, so storing
the same picture twice stores it once, a redelivered task finds the bytes it was given, and a
key can be checked against the bytes it names (``get`` refuses bytes that no longer hash to the
key: a corrupted or truncated file is an :class:`ImageStoreError`, never silently scanned).
Writes are atomic (a temporary file in the same folder, fsync, ``os.replace``), so a reader
never sees half a picture.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from abc import ABC, abstractmethod
from datetime import UTC, datetime, timedelta
from pathlib import Path

from shelftally.errors import ShelfTallyError

__all__ = ["ImageStore", "ImageStoreError", "LocalImageStore", "image_key"]

_KEY = re.compile(r"^sha256/([0-9a-f]{2})/([0-9a-f]{64})$")


class ImageStoreError(ShelfTallyError):
    """An image store cannot serve a key.

    Reasons: ``invalid_key`` (not a key this store makes), ``image_missing`` (nothing stored under
    the key, e.g. deleted after processing), ``image_corrupt`` (the stored bytes no longer hash to
    the key), ``store_unavailable`` (the store's folder cannot be read or written).
    """

    reason = "image_store_error"


def image_key(data: bytes) -> str:
    """The content address of a picture's bytes: ``sha256/<2 hex>/<64 hex>``."""
    digest = hashlib.sha256(data).hexdigest()
    return f"sha256/{digest[:2]}/{digest}"


def _check_key(key: str) -> str:
    match = _KEY.match(key)
    if match is None or match.group(2)[:2] != match.group(1):
        raise ImageStoreError(f"{key!r} is not an image store key (sha256/<2 hex>/<64 hex>)", reason="invalid_key")
    return match.group(2)


class ImageStore(ABC):
    """Pictures by content address (see the module docstring)."""

    @abstractmethod
    def put(self, data: bytes) -> str:
        """Store a picture's bytes (once, whatever the number of calls); returns its key.

        Raises:
            ImageStoreError: the store cannot be written (reason ``store_unavailable``).
        """

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The bytes stored under ``key``.

        Raises:
            ImageStoreError: ``invalid_key``, ``image_missing``, ``image_corrupt`` or ``store_unavailable``.
        """

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether something is stored under ``key``.

        Raises:
            ImageStoreError: ``invalid_key``.
        """

    @abstractmethod
    def delete(self, key: str) -> bool:
        """Remove the picture; returns whether there was one.

        Raises:
            ImageStoreError: ``invalid_key`` or ``store_unavailable``.
        """


class LocalImageStore(ImageStore):
    """An :class:`ImageStore` in a directory (created on first write).

    Args:
        root: the store's folder; files live at ``root/<key>``.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        """The file of ``key`` (it may not exist).

        Raises:
            ImageStoreError: ``invalid_key``.
        """
        _check_key(key)
        return self.root / key

    def put(self, data: bytes) -> str:
        key = image_key(data)
        target = self.root / key
        if target.is_file() and target.stat().st_size == len(data):
            try:  # stored again: young again, so that prune() keeps it while it is queued
                os.utime(target)
            except OSError as error:
                raise ImageStoreError(f"cannot touch {target}: {error}", reason="store_unavailable") from error
            return key
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
            try:
                with os.fdopen(handle, "wb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(temporary, target)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
        except OSError as error:
            raise ImageStoreError(f"cannot write {target}: {error}", reason="store_unavailable") from error
        return key

    def get(self, key: str) -> bytes:
        digest = _check_key(key)
        target = self.root / key
        try:
            data = target.read_bytes()
        except FileNotFoundError as error:
            raise ImageStoreError(f"no picture stored under {key}", reason="image_missing") from error
        except OSError as error:
            raise ImageStoreError(f"cannot read {target}: {error}", reason="store_unavailable") from error
        if hashlib.sha256(data).hexdigest() != digest:
            raise ImageStoreError(
                f"{target} no longer holds the picture of {key} ({len(data)} bytes that hash otherwise)",
                reason="image_corrupt",
            )
        return data

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> bool:
        target = self.path(key)
        try:
            target.unlink()
        except FileNotFoundError:
            return False
        except OSError as error:
            raise ImageStoreError(f"cannot delete {target}: {error}", reason="store_unavailable") from error
        return True

    def prune(self, older_than: timedelta, *, now: datetime | None = None) -> tuple[int, int]:
        """Delete the pictures last stored more than ``older_than`` ago (retention).

        A picture stored again (:meth:`put` of the same bytes) counts from then. Pick a retention
        well above the longest a picture may wait in a queue plus the broker's visibility
        timeout: a task whose picture was pruned fails for good (``image_missing``, dead letter).

        Args:
            older_than: retention, a positive duration.
            now: the current aware time (default: now).

        Returns:
            ``(files, bytes)`` deleted (interrupted temporary files included).

        Raises:
            ValueError: ``older_than`` is not positive.
            ImageStoreError: the store cannot be read or a file cannot be deleted
                (``store_unavailable``).
        """
        if older_than <= timedelta(0):
            raise ValueError(f"older_than must be positive, got {older_than}")
        cutoff = ((now or datetime.now(UTC)) - older_than).timestamp()
        files = size = 0
        folder = self.root / "sha256"
        if not folder.is_dir():
            return 0, 0
        try:
            for path in folder.glob("*/*"):
                info = path.stat()
                if info.st_mtime < cutoff:
                    path.unlink(missing_ok=True)
                    files += 1
                    size += info.st_size
        except OSError as error:
            raise ImageStoreError(f"cannot prune {folder}: {error}", reason="store_unavailable") from error
        return files, size
