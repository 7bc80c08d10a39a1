"""Camera sources: grab pictures from HTTP snapshot URLs, RTSP streams and watched folders.

Pure: no database, no Celery, no torch (this package is imported in the Celery parent process,
which must not initialise torch before forking). Every grab has a hard deadline and raises
:class:`CameraError` with a machine-readable ``reason``; URLs appear in messages and logs only
through :func:`shelftally.redact.mask_url`.

Two modules of this package are not imported here: :mod:`workers.cameras.registry`, the camera
registry in the database and the poller that grabs, decides and submits pictures, and
:mod:`workers.cameras.metrics`, the cameras' Prometheus metrics.

* :func:`grab_http`, :func:`grab_rtsp` -> :class:`Frame`; :class:`RtspReader` keeps the newest
  frame of a stream; :func:`ready_files` / :class:`FolderWatcher` take completed files of a folder.
* :func:`next_state` / :func:`advance` track ONLINE / OFFLINE / STALE; :func:`decide` says
  whether a frame is worth a scan (:func:`scene_changed` on :func:`thumbnail`).
"""

from __future__ import annotations

from workers.cameras.change import (
    AREA_FRACTION,
    BLANK_STD,
    PIXEL_DELTA,
    THUMBNAIL_HW,
    changed_fraction,
    pack_thumbnail,
    scene_changed,
    thumbnail,
    unpack_thumbnail,
)
from workers.cameras.errors import CameraError
from workers.cameras.folder import FolderCursor, FolderWatcher, ReadyFile, ready_files
from workers.cameras.frame import Frame
from workers.cameras.http import grab_http
from workers.cameras.rtsp import RtspReader, grab_rtsp
from workers.cameras.state import CameraState, Decision, PollRecord, advance, decide, next_state

__all__ = [
    "AREA_FRACTION",
    "BLANK_STD",
    "PIXEL_DELTA",
    "THUMBNAIL_HW",
    "CameraError",
    "CameraState",
    "Decision",
    "FolderCursor",
    "FolderWatcher",
    "Frame",
    "PollRecord",
    "ReadyFile",
    "RtspReader",
    "advance",
    "changed_fraction",
    "decide",
    "grab_http",
    "grab_rtsp",
    "next_state",
    "pack_thumbnail",
    "ready_files",
    "scene_changed",
    "thumbnail",
    "unpack_thumbnail",
]
