"""The Celery application: delivery rules, queues, and the per-process context of a worker.

Delivery rules (set by :func:`configure` from :class:`workers.settings.FleetSettings`):

- ``task_acks_late``: a message is acknowledged after its task returns, so a worker that dies
  mid-task loses nothing; ``task_reject_on_worker_lost`` requeues the message of a child killed
  by a signal or the OOM killer at once.
- ``worker_prefetch_multiplier = 1``: a worker child reserves one message at a time, so a slow
  picture never holds others hostage.
- Hard and soft time limits below Redis' ``visibility_timeout`` (checked at start-up by
  :meth:`FleetSettings.check`): Redis redelivers any message unacknowledged for that long, so a
  longer task would run twice at once.
- ``task_acks_on_failure_or_timeout = False``: a task killed by its hard time limit is not
  acknowledged; Redis delivers it again after the visibility timeout, and the delivery counter
  (:mod:`workers.fleet.deadletter`) parks it after ``max_deliveries``.
- Transient errors (database or Redis unreachable, a picture store that cannot be read, a soft
  time limit) are retried with exponential backoff capped at ``retry_backoff_max_s``; every
  other error is permanent: the message is parked in the dead-letter list at once. A corrupt
  picture is not an error at all: it is a recorded rejection (:class:`workers.scan.pipeline.ScanResult`).

Process model: the parent process of a prefork worker never loads a model nor opens a database
connection (ENVIRONMENT.md: a Celery parent that ran torch before forking can deadlock its
children). Each child builds its context (database engine, picture store, Redis client, and the
models when it serves the ``vision`` queue) in ``worker_process_init``; the solo pool, which
sends no such signal, builds it on first use.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celery import Celery
from celery.signals import worker_process_init, worker_process_shutdown

from shelftally.errors import ConfigurationError

if TYPE_CHECKING:
    from redis import Redis
    from sqlalchemy.orm import Session, sessionmaker

    from workers.fleet.deadletter import DeadLetters
    from workers.fleet.image_store import LocalImageStore
    from workers.scan.pipeline import ScanPipeline
    from workers.settings import Settings

__all__ = ["QUEUES", "ROUTES", "TASK_MODULES", "WorkerContext", "app", "configure", "context", "settings"]

logger = logging.getLogger(__name__)

#: Queues of the scan chain: every worker may serve any subset (``shelftally worker --queues``).
QUEUES = ("ingest", "vision", "db")

#: Fixed task names and their queues.
ROUTES: dict[str, dict[str, str]] = {
    "shelftally.ingest": {"queue": "ingest"},
    "shelftally.vision": {"queue": "vision"},
    "shelftally.persist": {"queue": "db"},
    "shelftally.poll_camera": {"queue": "ingest"},
    "shelftally.poll_cameras": {"queue": "ingest"},
}

#: Modules that define the app's tasks. Celery imports them (``include``) when a worker starts and
#: :func:`configure` imports them for producers; this module never imports them itself, so the
#: task modules can import the app without an import cycle.
TASK_MODULES = ("workers.fleet.tasks",)

app = Celery("shelftally", set_as_current=False, include=list(TASK_MODULES))
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    task_acks_on_failure_or_timeout=False,
    worker_prefetch_multiplier=1,
    task_routes=ROUTES,
    task_default_queue="ingest",
    broker_connection_retry_on_startup=True,
    # A producer facing a broker that is down fails in seconds with broker_unavailable, not after a minute.
    task_publish_retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1},
    enable_utc=True,
)

_SETTINGS: Settings | None = None
_SERVES_VISION = True
_CONTEXT: WorkerContext | None = None


def configure(settings: Settings, *, serves_vision: bool = True) -> Celery:
    """Configure :data:`app` from the settings (producers and workers both call it).

    Args:
        settings: the process settings; ``broker_url`` must be set.
        serves_vision: whether this worker consumes the ``vision`` queue (its children then load
            the models in ``worker_process_init``).

    Returns:
        The configured app, its tasks registered.

    Raises:
        ConfigurationError: no broker (reason ``no_broker``), or time limits not below the
            visibility timeout (reason ``time_limit_exceeds_visibility_timeout``).
    """
    global _SETTINGS, _SERVES_VISION
    if not settings.broker_url:
        raise ConfigurationError(
            "no broker configured: set SHELFTALLY_BROKER_URL (e.g. redis://127.0.0.1:6379/0), "
            "or scan in-process with shelftally scan",
            reason="no_broker",
        )
    fleet = settings.fleet
    fleet.check()
    if _SETTINGS is not None and (_SETTINGS.broker_url, _SETTINGS.fleet) != (settings.broker_url, fleet):
        # Another broker or key prefix in this process (tests, benchmarks): connections made for the
        # old one must not be reused, so Kombu's connection and producer pools start over.
        from kombu import pools

        pools.reset()  # type: ignore[no-untyped-call]
        app._pool = None
        app.amqp._producer_pool = None
    app.conf.update(
        broker_url=settings.broker_url,
        broker_transport_options={
            "visibility_timeout": fleet.visibility_timeout_s,
            "global_keyprefix": fleet.key_prefix,
            "unacked_restore_interval": fleet.restore_interval_s,
            "unacked_restore_throttle": 1,
            "socket_timeout": 30,
            "socket_connect_timeout": 10,
        },
        task_time_limit=fleet.task_time_limit_s,
        task_soft_time_limit=fleet.task_soft_time_limit_s,
    )
    global _CONTEXT
    if _SETTINGS is not settings:
        _CONTEXT = None  # built for other settings
    _SETTINGS = settings
    _SERVES_VISION = serves_vision
    app.loader.import_default_modules()  # TASK_MODULES: registers the tasks on app

    return app


def settings() -> Settings:
    """The settings :func:`configure` was given.

    Raises:
        ConfigurationError: :func:`configure` was not called in this process (reason
            ``fleet_not_configured``).
    """
    if _SETTINGS is None:
        raise ConfigurationError("the Celery app is not configured (workers.fleet.app.configure)",
                                 reason="fleet_not_configured")
    return _SETTINGS


@dataclass
class WorkerContext:
    """What a worker process needs, built once per process id (never inherited across a fork).

    Attributes:
        settings: the process settings.
        factory: session factory on this process's own engine.
        store: the picture store.
        redis: a Redis client on the broker (dead letters, locks).
        dead: the dead-letter list.
        pipeline: the scan pipeline (with models only in processes that asked for them).
    """

    settings: Settings
    factory: sessionmaker[Session]
    store: LocalImageStore
    redis: Redis
    dead: DeadLetters
    pipeline: ScanPipeline
    pid: int


def context(*, with_models: bool = False) -> WorkerContext:
    """This process's context, built on first use (or in ``worker_process_init``).

    Args:
        with_models: the pipeline must have its models (vision tasks).

    Raises:
        ConfigurationError: not configured, or models not configured (``models_not_configured``).
        ModelLoadError, MissingDependencyError: a model cannot be loaded.
    """
    global _CONTEXT
    pid = os.getpid()
    found = _CONTEXT if _CONTEXT is not None and _CONTEXT.pid == pid else None
    if found is not None and (found.pipeline.detector is not None or not with_models):
        return found
    from redis import Redis

    from inventory.db import create_engine, session_factory
    from workers.fleet.deadletter import DeadLetters
    from workers.fleet.image_store import LocalImageStore
    from workers.scan.run import build_pipeline

    current = settings()
    if found is not None:  # the same process, now needing its models: keep its connections
        factory, redis = found.factory, found.redis
    else:  # engines and clients are never inherited across a fork
        factory = session_factory(create_engine(current.database_url))
        redis = Redis.from_url(str(current.broker_url), socket_timeout=30, socket_connect_timeout=10)
    _CONTEXT = WorkerContext(
        settings=current, factory=factory, store=LocalImageStore(current.fleet.image_store_dir), redis=redis,
        dead=DeadLetters(redis, current.fleet.key_prefix),
        pipeline=build_pipeline(current, factory, with_models=with_models), pid=pid,
    )
    return _CONTEXT


@worker_process_init.connect
def _child_started(**_: Any) -> None:
    """A prefork child: build its context, loading the models when it serves the vision queue."""
    if _SETTINGS is None:  # a worker of some other app in this interpreter
        return
    context(with_models=_SERVES_VISION)
    logger.info("worker child %s ready (models: %s)", os.getpid(), _SERVES_VISION)


@worker_process_shutdown.connect
def _child_stopped(pid: int | None = None, **_: Any) -> None:
    from workers.fleet.metrics import mark_process_dead

    mark_process_dead(pid or os.getpid())
