"""Prometheus metrics of workers and cameras, and the HTTP endpoint that serves them.

A prefork worker has one process per child: with ``PROMETHEUS_MULTIPROC_DIR`` set before
``prometheus_client`` is first imported (``shelftally worker --metrics-port`` does it), each
child writes its samples to that folder and the parent's endpoint adds them up
(prometheus_client's multiprocess mode). Without it (the solo pool, in-process use) the
process's own registry is served.

Metric names follow the Prometheus naming guide: ``shelftally_`` prefix, base units (seconds),
``_total`` for counters.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client import multiprocess as _multiprocess

# The camera metrics live with the camera poller that records them; listed (and served) here with the rest.
from workers.cameras.metrics import CAMERA_STATE, FRAMES_DROPPED, FRAMES_UNCHANGED

__all__ = [
    "CAMERA_STATE",
    "FRAMES_DROPPED",
    "FRAMES_UNCHANGED",
    "PICTURES_REJECTED",
    "SCANS",
    "STAGE_SECONDS",
    "TASKS",
    "mark_process_dead",
    "serve",
]

#: Stage latency buckets, seconds: from a 5 ms decode to a 2 min picture on a slow CPU.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

TASKS = Counter("shelftally_tasks_total", "Task deliveries by task name and outcome "
                "(succeeded, retried, failed, dead_lettered)", ["task", "outcome"])
STAGE_SECONDS = Histogram("shelftally_stage_seconds", "Time per scan stage (decode, locate, detect, crop, "
                          "classify, persist, reconcile, evidence) and per task", ["stage"], buckets=_BUCKETS)
SCANS = Counter("shelftally_scans_total", "Pictures finished, by status (processed, duplicate, rejected)",
                ["status"])
PICTURES_REJECTED = Counter("shelftally_pictures_rejected_total", "Pictures rejected, by machine-readable reason",
                            ["reason"])


def serve(port: int, address: str = "127.0.0.1") -> None:
    """Serve ``/metrics`` on ``address:port`` from a daemon thread of this process.

    In multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set) the samples of every process writing
    to that folder are served.

    Raises:
        OSError: the port cannot be bound.
    """
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        start_http_server(port, addr=address, registry=registry)
    else:
        start_http_server(port, addr=address)


def mark_process_dead(pid: int) -> None:
    """Drop a finished child's live gauges (multiprocess mode only; otherwise nothing)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        _multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
