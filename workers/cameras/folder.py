"""A watched folder (FTP/SMB upload target of a camera or scanner): take each picture once it is complete.

A file is *ready* when nothing has touched it for ``settle_s`` (its newer of mtime and ctime is
older than that: ``cp -p`` and rsync set an old mtime only after writing, and every write or
rename moves the ctime) and its bytes decode. Files are taken in ``(ctime_ns, name)`` order
after a cursor, ctime rather than mtime so that files copied with their old mtimes are still
taken. The returned files are always a prefix of that order: a file that is not ready yet
stops the poll (later files wait), so the cursor never passes a file that was not returned.
A young file that does not decode (still being written, e.g. < 60 s old) waits; an older one
is returned with its ``rejection`` so the caller records it and moves on.

Temporary names are ignored: dotfiles (rsync's ``.name.XXXXXX``), ``~*``, ``*.part``, ``*.tmp``,
``*.crdownload``; so are directories, symlinks and other non-regular files.

A file whose ctime changes after it was taken (``chmod``, ``touch``, rewritten in place) is
returned again; callers are idempotent by ``sha256`` anyway.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, TypedDict

from shelftally.errors import InvalidImageError
from workers.ingest import DEFAULT_MAX_BYTES, decode_image

IGNORED_SUFFIXES: Final[tuple[str, ...]] = (".part", ".tmp", ".crdownload")
DEFAULT_SETTLE_S: Final[float] = 2.0
DEFAULT_REJECT_AFTER_S: Final[float] = 60.0
DEFAULT_MAX_FILES: Final[int] = 100


class FolderCursor(TypedDict):
    """Where the previous poll stopped: the last file returned (JSON-able as it is)."""

    ctime_ns: int
    name: str


@dataclass(frozen=True)
class ReadyFile:
    """A completely written file of the watched folder.

    Attributes:
        path: Its path (the folder joined with its name).
        name: Its name in the folder.
        size: Bytes.
        ctime_ns: Inode change time, ns since the Unix epoch (the order of taking).
        mtime_ns: Modification time, ns since the Unix epoch (may be old for copied files).
        sha256: Lowercase hex SHA-256 of its bytes.
        rejection: None when it decodes; otherwise the :class:`InvalidImageError` reason
            (``corrupt_image``, ``not_an_image``, ``empty_file``, ``file_too_large``, ...) of
            a file older than ``reject_after_s`` that still does not decode.
    """

    path: Path
    name: str
    size: int
    ctime_ns: int
    mtime_ns: int
    sha256: str
    rejection: str | None = None

    @property
    def mtime(self) -> datetime:
        """``mtime_ns`` as an aware UTC datetime."""
        return datetime.fromtimestamp(self.mtime_ns / 1e9, UTC)

    @property
    def ctime(self) -> datetime:
        """``ctime_ns`` as an aware UTC datetime."""
        return datetime.fromtimestamp(self.ctime_ns / 1e9, UTC)


def is_ignored(name: str) -> bool:
    """True for names of files still being written or not meant to be taken (see the module docstring)."""
    return name.startswith((".", "~")) or name.lower().endswith(IGNORED_SUFFIXES)


def ready_files(
    folder: str | os.PathLike[str],
    *,
    cursor: FolderCursor | None,
    settle_s: float = DEFAULT_SETTLE_S,
    now: datetime | None = None,
    max_files: int = DEFAULT_MAX_FILES,
    reject_after_s: float = DEFAULT_REJECT_AFTER_S,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> tuple[list[ReadyFile], FolderCursor | None]:
    """The folder's files that are ready, in ``(ctime_ns, name)`` order after ``cursor``.

    Each candidate is read and decoded (:func:`workers.ingest.decode_image`) to check it.

    Args:
        folder: The watched folder.
        cursor: The cursor the previous call returned; None to start from the oldest file.
        settle_s: Seconds a file must be untouched (mtime and ctime) before it is taken (>= 0).
        now: The current time, aware; default the wall clock.
        max_files: Most files returned by one call (>= 1).
        reject_after_s: Seconds after which an undecodable file is returned as rejected
            rather than waited for (>= ``settle_s``).
        max_bytes: Larger files are rejected (``file_too_large``) without being read.

    Returns:
        (files, cursor): the ready files, and the cursor to pass next time (the last file
        returned, or the given ``cursor`` when none was).

    Raises:
        FileNotFoundError, NotADirectoryError, PermissionError: ``folder`` cannot be listed.
        ValueError: a bad limit, or a naive ``now``.
    """
    if settle_s < 0:
        raise ValueError(f"settle_s: expected >= 0, received {settle_s}")
    if max_files < 1:
        raise ValueError(f"max_files: expected >= 1, received {max_files}")
    if reject_after_s < settle_s:
        raise ValueError(f"reject_after_s: expected >= settle_s {settle_s}, received {reject_after_s}")
    if now is not None and (now.tzinfo is None or now.utcoffset() is None):
        raise ValueError(f"now: expected an aware datetime, received naive {now!r}")
    now_ns = _to_ns(now or datetime.now(UTC))
    after = (-1, "") if cursor is None else (int(cursor["ctime_ns"]), str(cursor["name"]))

    candidates: list[tuple[int, str, os.stat_result]] = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if is_ignored(entry.name):
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:  # removed since the listing
                continue
            if not stat.S_ISREG(info.st_mode):
                continue
            if (info.st_ctime_ns, entry.name) > after:
                candidates.append((info.st_ctime_ns, entry.name, info))
    candidates.sort(key=lambda item: (item[0], item[1]))

    taken: list[ReadyFile] = []
    for ctime_ns, name, info in candidates:
        if len(taken) >= max_files:
            break
        age_s = (now_ns - max(info.st_mtime_ns, ctime_ns)) / 1e9
        if age_s < settle_s:
            break
        path = Path(folder) / name
        ready = _check(path, name, info, max_bytes=max_bytes)
        if ready is None:  # vanished or changed while being read: look again next poll
            break
        if ready.rejection is not None and age_s < reject_after_s and ready.rejection != "file_too_large":
            break  # maybe still being written: wait
        taken.append(ready)
    new_cursor: FolderCursor | None = cursor
    if taken:
        new_cursor = {"ctime_ns": taken[-1].ctime_ns, "name": taken[-1].name}
    return taken, new_cursor


def _check(path: Path, name: str, info: os.stat_result, *, max_bytes: int) -> ReadyFile | None:
    """Read and decode one file; None when it vanished or changed under us."""
    if info.st_size > max_bytes:
        return ReadyFile(path, name, info.st_size, info.st_ctime_ns, info.st_mtime_ns, "", "file_too_large")
    try:
        data = path.read_bytes()
        after = path.stat()
    except FileNotFoundError:
        return None
    if (after.st_ctime_ns, after.st_size) != (info.st_ctime_ns, info.st_size):
        return None
    rejection: str | None = None
    try:
        decode_image(data)
    except InvalidImageError as exc:
        rejection = exc.reason
    return ReadyFile(
        path, name, len(data), info.st_ctime_ns, info.st_mtime_ns, hashlib.sha256(data).hexdigest(), rejection
    )


def _to_ns(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000_000)


class FolderWatcher:
    """A watched folder and its cursor: :meth:`poll` returns the files that became ready.

    Args:
        folder: The watched folder.
        cursor: A cursor a previous watcher returned (:attr:`cursor`), to resume; None: from the oldest file.
        settle_s, max_files, reject_after_s, max_bytes: As :func:`ready_files`.

    Attributes:
        cursor: The cursor after the latest poll; persist it (JSON-able) to resume after a restart.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        cursor: FolderCursor | None = None,
        settle_s: float = DEFAULT_SETTLE_S,
        max_files: int = DEFAULT_MAX_FILES,
        reject_after_s: float = DEFAULT_REJECT_AFTER_S,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.folder = Path(folder)
        self.cursor = cursor
        self.settle_s = settle_s
        self.max_files = max_files
        self.reject_after_s = reject_after_s
        self.max_bytes = max_bytes

    def poll(self, *, now: datetime | None = None) -> list[ReadyFile]:
        """The files that are ready since the previous poll; advances :attr:`cursor`.

        Raises:
            As :func:`ready_files`.
        """
        files, self.cursor = ready_files(
            self.folder, cursor=self.cursor, settle_s=self.settle_s, now=now, max_files=self.max_files,
            reject_after_s=self.reject_after_s, max_bytes=self.max_bytes,
        )
        return files
