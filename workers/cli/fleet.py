"""``shelftally worker``, ``beat``, ``ingest``, ``tasks``, ``status`` and ``images``: the Celery side of the CLI.

Without a broker (``SHELFTALLY_BROKER_URL`` unset) ``ingest`` scans in-process like ``scan``;
the other commands need one and say so (reason ``no_broker``).
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from shelftally.errors import ConfigurationError
from shelftally.redact import mask_url
from workers.cli._common import (
    JsonOption,
    get_context,
    get_settings,
    handle_broker_errors,
    handle_errors,
    run_in_db,
)
from workers.cli.cameras import camera_table
from workers.cli.scan import pictures_or_refuse, scan_cmd
from workers.console import console, print_json

__all__ = ["beat_cmd", "images_app", "ingest_cmd", "status_cmd", "tasks_app", "worker_cmd"]

tasks_app = typer.Typer(no_args_is_help=True, help="Dead-letter list of the Celery fleet.")
images_app = typer.Typer(no_args_is_help=True, help="The picture store that tasks refer to.")


def _temporary_dir(prefix: str) -> str:
    """A temporary folder removed when this process exits."""
    import atexit
    import shutil

    folder = tempfile.mkdtemp(prefix=prefix)
    owner = os.getpid()

    def remove() -> None:
        if os.getpid() == owner:  # never from a forked child that happens to run exit handlers
            shutil.rmtree(folder, ignore_errors=True)

    atexit.register(remove)
    return folder


def _queues(value: str) -> list[str]:
    from workers.fleet.app import QUEUES

    queues = [part.strip() for part in value.split(",") if part.strip()]
    unknown = sorted(set(queues) - set(QUEUES))
    if not queues or unknown:
        raise typer.BadParameter(f"queues are a comma-separated subset of {', '.join(QUEUES)}; "
                                 f"unknown: {', '.join(unknown) or '(none given)'}", param_hint="--queues")
    return queues


def worker_cmd(
    typer_ctx: typer.Context,
    queues: Annotated[str, typer.Option("--queues", "-Q", help="Queues to consume: ingest, vision, db.")] = (
        "ingest,vision,db"
    ),
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1, help="Worker processes.")] = 1,
    pool: Annotated[str, typer.Option("--pool", help="prefork (processes) or solo (this process).")] = "prefork",
    metrics_port: Annotated[int | None, typer.Option(
        "--metrics-port", min=1, max=65535,
        help="Serve Prometheus metrics here (default SHELFTALLY_FLEET__METRICS_PORT).",
    )] = None,
    include: Annotated[list[str] | None, typer.Option(
        "--include", help="Extra module to import in the worker (plugins).",
    )] = None,
    hostname: Annotated[str | None, typer.Option("--hostname", help="Worker node name (default: unique).")] = None,
    loglevel: Annotated[str, typer.Option("--loglevel", help="Celery log level.")] = "INFO",
) -> None:
    """Run a Celery worker: the scan chain on the given queues, models loaded once per child process.

    Refuses to start when a task time limit is not below the broker's visibility timeout, or
    when it serves the vision queue without model directories.
    """
    if pool not in ("prefork", "solo"):
        raise typer.BadParameter("prefork or solo", param_hint="--pool")
    with handle_errors():  # the queue names come from the Celery app: the fleet extra must be there
        import celery  # noqa: F401
    chosen = _queues(queues)
    settings = get_settings(typer_ctx)
    serves_vision = "vision" in chosen
    with handle_errors():
        if serves_vision and (settings.models.detector_dir is None or settings.models.classifier_dir is None):
            raise ConfigurationError(
                "a worker of the vision queue needs SHELFTALLY_MODELS__DETECTOR_DIR and "
                "SHELFTALLY_MODELS__CLASSIFIER_DIR", reason="models_not_configured",
            )
        if serves_vision and settings.models.detector_dir and settings.models.classifier_dir:
            # Metadata only: the parent never loads a runtime (its children do, after the fork).
            from classifier.model_dir import read_model_dir as read_classifier_dir
            from detector.model_dir import read_model_dir as read_detector_dir

            read_detector_dir(settings.models.detector_dir)
            read_classifier_dir(settings.models.classifier_dir)
        if serves_vision and settings.models.threads is None:
            # Children share the cores: one runtime per child with all cores each would oversubscribe.
            cores = os.cpu_count() or 1
            settings.models.threads = max(1, cores // (concurrency if pool == "prefork" else 1))
        port = metrics_port if metrics_port is not None else settings.fleet.metrics_port
        if port is not None and pool == "prefork" and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # Before prometheus_client is first imported, in this process and so in every child.
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = _temporary_dir("shelftally-metrics-")
        from workers.fleet.app import configure

        app = configure(settings, serves_vision=serves_vision)
        get_context(typer_ctx).factory  # noqa: B018  (fails early when the schema is not at head)
        if port is not None:
            from workers.fleet.metrics import serve

            try:
                serve(port)
            except OSError as error:
                raise ConfigurationError(f"cannot serve metrics on port {port}: {error.strerror or error}",
                                         reason="metrics_port_unavailable") from error
    argv = ["worker", "--queues", ",".join(chosen), "--concurrency", str(concurrency), "--pool", pool,
            "--loglevel", loglevel, "--hostname", hostname or f"shelftally-{uuid.uuid4().hex[:8]}@%h",
            "--without-gossip", "--without-mingle"]
    for module in include or []:
        argv += ["--include", module]
    app.worker_main(argv)


def beat_cmd(
    typer_ctx: typer.Context,
    tick: Annotated[float, typer.Option("--tick", min=0.5, help="Seconds between looks for cameras that are due.")] = (
        5.0
    ),
    schedule_file: Annotated[Path | None, typer.Option(
        "--schedule-file", help="Where beat keeps its state (default: a temporary folder).",
    )] = None,
    loglevel: Annotated[str, typer.Option("--loglevel", help="Celery log level.")] = "INFO",
) -> None:
    """Run celery beat: every --tick seconds, enqueue a poll of each camera that is due."""
    with handle_errors():
        from workers.fleet.app import configure

        app = configure(get_settings(typer_ctx), serves_vision=False)
    app.conf.beat_schedule = {"poll-cameras": {"task": "shelftally.poll_cameras", "schedule": tick}}
    path = schedule_file or Path(_temporary_dir("shelftally-beat-")) / "schedule"
    app.start(["beat", "--loglevel", loglevel, "--schedule", str(path)])


def ingest_cmd(
    typer_ctx: typer.Context,
    paths: Annotated[list[Path], typer.Argument(help="Picture files, folders or quoted glob patterns.")],
    location: Annotated[str | None, typer.Option(
        "--location", help="Location code; omit it to read each picture's location label.",
    )] = None,
    as_json: JsonOption = False,
) -> None:
    """Enqueue pictures for the workers (by reference: each goes into the picture store once).

    Without a broker configured, the pictures are scanned in-process instead (as ``scan``).
    """
    settings = get_settings(typer_ctx)
    pictures = pictures_or_refuse(paths)
    if not settings.broker_url:
        scan_cmd(typer_ctx, paths=pictures, location=location, captured_at=None, detector=None,
                     classifier=None, evidence_dir=None, as_json=as_json)
        return
    with handle_broker_errors(as_json):
        from workers.fleet.app import configure
        from workers.fleet.tasks import enqueue_path

        configure(settings, serves_vision=False)
        factory = get_context(typer_ctx).factory  # the schema must be at head before anything is sent
        if location is not None:  # a caller's mistake is refused here, not by every worker later
            from inventory.reconcile import get_location

            with factory() as session:
                get_location(session, location)
        sent = [{"path": str(path), "task_id": enqueue_path(path, location_code=location)} for path in pictures]
    if as_json:
        print_json({"enqueued": sent})
    else:
        console.print(f"enqueued {len(sent)} picture(s) on {mask_url(settings.broker_url)}", highlight=False)


@tasks_app.command("failed")
def tasks_failed(typer_ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List the dead-letter list: messages that kept killing their worker or failed for good."""
    from dataclasses import asdict

    with handle_broker_errors(as_json):
        letters = _dead_letters(typer_ctx).list()
    if as_json:
        print_json({"failed": [asdict(letter) for letter in letters]})
        return
    table = Table("task", "reason", "deliveries", "failed at", "error", title=f"{len(letters)} dead letter(s)")
    for letter in letters:
        table.add_row(letter.task, letter.reason, str(letter.deliveries), letter.failed_at[:19], letter.error[:60])
        table.add_row(f"  id {letter.id}", "", "", "", "")  # whole, to copy into tasks retry
    console.print(table)


@tasks_app.command("retry")
def tasks_retry(
    typer_ctx: typer.Context,
    letter_ids: Annotated[list[str] | None, typer.Argument(help="Dead letter ids (see tasks failed).")] = None,
    retry_all: Annotated[bool, typer.Option("--all", help="Retry every dead letter.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Send dead letters again (as new messages with fresh delivery counts) and remove them from the list."""
    if not letter_ids and not retry_all:
        raise typer.BadParameter("give dead letter ids or --all", param_hint="LETTER_IDS")
    sent: list[dict[str, str]] = []
    with handle_broker_errors(as_json):
        dead = _dead_letters(typer_ctx)
        from workers.fleet.app import app

        ids = [letter.id for letter in dead.list()] if retry_all else list(letter_ids or [])
        for letter_id in ids:
            letter = dead.take(letter_id)
            result = app.send_task(letter.task, args=letter.args, kwargs=letter.kwargs, queue=letter.queue)
            sent.append({"id": letter_id, "task": letter.task, "new_task_id": str(result.id)})
    if as_json:
        print_json({"retried": sent})
    else:
        for row in sent:
            console.print(f"{row['id']} ({row['task']}) sent again as {row['new_task_id']}", highlight=False)


def _dead_letters(typer_ctx: typer.Context) -> Any:
    from redis import Redis

    from workers.fleet.app import configure
    from workers.fleet.deadletter import DeadLetters

    settings = get_settings(typer_ctx)
    configure(settings, serves_vision=False)
    return DeadLetters(Redis.from_url(str(settings.broker_url), socket_timeout=10, socket_connect_timeout=5),
                       settings.fleet.key_prefix)


def status_cmd(typer_ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Show the fleet: workers and what they run, queue depths, dead letters, and cameras."""
    from workers.cameras.registry import list_cameras

    settings = get_settings(typer_ctx)
    data: dict[str, Any] = {"broker": mask_url(settings.broker_url) if settings.broker_url else None}
    with handle_broker_errors(as_json):
        data["cameras"] = run_in_db(typer_ctx, list_cameras, as_json)
        if settings.broker_url:
            from redis import Redis

            from workers.fleet.app import QUEUES, configure

            app = configure(settings, serves_vision=False)
            redis = Redis.from_url(settings.broker_url, socket_timeout=5, socket_connect_timeout=3)
            prefix = settings.fleet.key_prefix
            data["queues"] = {queue: int(redis.llen(f"{prefix}{queue}")) for queue in QUEUES}
            data["unacknowledged"] = int(redis.hlen(f"{prefix}unacked"))
            data["dead_letters"] = int(redis.hlen(f"{prefix}dead-letters"))
            inspect = app.control.inspect(timeout=1.0)
            active = inspect.active() or {}
            stats = inspect.stats() or {}
            data["workers"] = [
                {"name": name, "processes": len((stats.get(name) or {}).get("pool", {}).get("processes", [])),
                 "active": [task.get("name") for task in tasks]}
                for name, tasks in sorted(active.items())
            ]
    if as_json:
        print_json(data)
        return
    if data["broker"] is None:
        console.print("no broker configured: pictures are scanned in-process (shelftally scan / ingest)",
                      highlight=False)
    else:
        console.print(f"broker {data['broker']}", highlight=False)
        workers = Table("worker", "processes", "running", title=f"{len(data['workers'])} worker(s)")
        for worker in data["workers"]:
            workers.add_row(worker["name"], str(worker["processes"]), ", ".join(worker["active"]) or "idle")
        console.print(workers)
        queues = ", ".join(f"{name} {depth}" for name, depth in data["queues"].items())
        console.print(f"queued: {queues}; taken, unacknowledged: {data['unacknowledged']}; "
                      f"dead letters: {data['dead_letters']}", highlight=False)
    console.print(camera_table(data["cameras"]))


@images_app.command("prune")
def images_prune(
    typer_ctx: typer.Context,
    older_than_days: Annotated[float, typer.Option(
        "--older-than-days", min=0.01, help="Delete pictures last stored more than this many days ago.",
    )] = 7.0,
    as_json: JsonOption = False,
) -> None:
    """Delete old pictures from the picture store (SHELFTALLY_FLEET__IMAGE_STORE_DIR).

    Keep the retention well above the longest a picture may wait in a queue plus the broker's
    visibility timeout: a task whose picture was pruned fails for good (image_missing).
    Scans, detections and evidence images are not touched.
    """
    from datetime import timedelta

    from workers.fleet.image_store import LocalImageStore

    settings = get_settings(typer_ctx)
    with handle_errors(as_json):
        files, size = LocalImageStore(settings.fleet.image_store_dir).prune(timedelta(days=older_than_days))
    if as_json:
        print_json({"deleted_files": files, "deleted_bytes": size, "store": str(settings.fleet.image_store_dir)})
    else:
        console.print(f"deleted {files} picture(s), {size / 2**20:.1f} MiB, from {settings.fleet.image_store_dir}",
                      highlight=False)
