"""Prometheus metrics of the cameras: frames dropped, frames not worth a scan, camera state.

Defined here so that the camera poller (:mod:`workers.cameras.registry`) records them without
importing the fleet; :mod:`workers.fleet.metrics` lists them with the task metrics and serves
them all (in prometheus_client's multiprocess mode too). Imported lazily by the poller, so that
``PROMETHEUS_MULTIPROC_DIR`` can still be set before ``prometheus_client`` is first imported.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

__all__ = ["CAMERA_STATE", "FRAMES_DROPPED", "FRAMES_UNCHANGED"]

FRAMES_DROPPED = Counter("shelftally_frames_dropped_total", "Camera frames overwritten before any poll took them",
                         ["camera"])
FRAMES_UNCHANGED = Counter("shelftally_frames_unchanged_total", "Camera frames not scanned: same picture as the "
                           "last scanned one (same bytes, or no scene change)", ["camera"])
CAMERA_STATE = Gauge("shelftally_camera_state", "1 for the camera's current state (online, offline, stale), "
                     "0 for the others", ["camera", "state"], multiprocess_mode="mostrecent")
