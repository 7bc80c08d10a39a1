"""``shelftally worker``, ``beat``, ``ingest``, ``tasks`` and ``status``: the Celery side of the CLI.

Without a broker (``SHELFTALLY_BROKER_URL`` unset) ``ingest`` scans in-process like ``scan``;
the other commands need one and say so (reason ``no_broker``).
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from shelftally.errors import ConfigurationError, ShelfTallyError
from shelftally.redact import mask_url
from workers.console import console, print_json

if TYPE_CHECKING:
    from workers.settings import Settings

__all__ = ["cameras_app", "images_app", "tasks_app"]

tasks_app = typer.Typer(no_args_is_help=True, help="Dead-letter list of the Celery fleet.")
images_app = typer.Typer(no_args_is_help=True, help="The picture store that tasks refer to.")

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _cli() -> Any:
    from workers import cli  # imported late: workers.cli imports this module

    return cli


@contextmanager
def _broker(as_json: bool = False) -> Iterator[None]:
    """The CLI's error handling, plus a broker that cannot be reached as one line with reason
    ``broker_unavailable`` (exit status 1) instead of a traceback."""
    from kombu.exceptions import OperationalError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    cli = _cli()
    try:
        with cli._errors(as_json):
            yield
    except (OperationalError, RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError) as error:
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        cli._fail(BrokerUnavailableError(f"cannot reach the broker: {detail}"), as_json)
        raise typer.Exit(1) from error


class BrokerUnavailableError(ShelfTallyError):
    """The Celery broker (Redis) cannot be reached."""

    reason = "broker_unavailable"


def _settings(typer_ctx: typer.Context) -> Settings:
    settings: Settings = _cli()._ctx(typer_ctx).settings
    return settings


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
    chosen = _queues(queues)
    settings = _settings(typer_ctx)
    serves_vision = "vision" in chosen
    cli = _cli()
    with cli._errors():
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
        cli._ctx(typer_ctx).factory  # noqa: B018  (fails early when the schema is not at head)
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
    cli = _cli()
    with cli._errors():
        from workers.fleet.app import configure

        app = configure(_settings(typer_ctx), serves_vision=False)
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
    from workers.cli_scan import pictures_or_refuse

    cli = _cli()
    settings = _settings(typer_ctx)
    pictures = pictures_or_refuse(paths)
    if not settings.broker_url:
        cli.scan_cmd(typer_ctx, paths=pictures, location=location, captured_at=None, detector=None,
                     classifier=None, evidence_dir=None, as_json=as_json)
        return
    with _broker(as_json):
        from workers.fleet.app import configure
        from workers.fleet.tasks import enqueue_path

        configure(settings, serves_vision=False)
        factory = cli._ctx(typer_ctx).factory  # the schema must be at head before anything is sent
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

    with _broker(as_json):
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
    with _broker(as_json):
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

    settings = _settings(typer_ctx)
    configure(settings, serves_vision=False)
    return DeadLetters(Redis.from_url(str(settings.broker_url), socket_timeout=10, socket_connect_timeout=5),
                       settings.fleet.key_prefix)


cameras_app = typer.Typer(no_args_is_help=True, help="The camera registry: RTSP streams, snapshot URLs, folders.")


@cameras_app.command("add")
def cameras_add(
    typer_ctx: typer.Context,
    camera_code: Annotated[str, typer.Argument(help="Unique camera name.")],
    kind: Annotated[str, typer.Option("--kind", help="rtsp, http or folder.")],
    url: Annotated[str, typer.Option("--url", help="Stream URL, snapshot URL or folder path; no password in it.")],
    location: Annotated[str | None, typer.Option(
        "--location", help="Location it shows; omit it to read location labels in each picture.",
    )] = None,
    interval: Annotated[float, typer.Option("--interval", min=0.1, help="Seconds between polls.")] = 60.0,
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, help="Limit of one grab, seconds.")] = 10.0,
    stale_after: Annotated[float, typer.Option(
        "--stale-after", min=1, help="Identical frames for this long: a frozen feed (STALE).",
    )] = 300.0,
    secret: Annotated[str | None, typer.Option(
        "--secret", help="Where the password is: env:NAME or file:/path (never the password itself).",
    )] = None,
    as_json: JsonOption = False,
) -> None:
    """Register a camera."""
    from inventory.models import CameraKind
    from workers.camera_registry import add_camera, list_cameras

    try:
        camera_kind = CameraKind(kind)
    except ValueError as error:
        raise typer.BadParameter("rtsp, http or folder", param_hint="--kind") from error

    def work(session: Any) -> dict[str, Any]:
        add_camera(session, camera_code=camera_code, kind=camera_kind, url=url, location_code=location,
                   interval_s=interval, timeout_s=timeout, stale_after_s=stale_after, secret_ref=secret)
        session.flush()
        return next(row for row in list_cameras(session) if row["camera_code"] == camera_code)

    row = _cli()._run(typer_ctx, work, as_json)
    if as_json:
        print_json(row)
    else:
        console.print(f"camera {row['camera_code']} ({row['kind']}) {row['url']} added", highlight=False)


@cameras_app.command("list")
def cameras_list(typer_ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List cameras with their state (URLs masked, secrets never shown)."""
    from workers.camera_registry import list_cameras

    rows = _cli()._run(typer_ctx, list_cameras, as_json)
    if as_json:
        print_json({"cameras": rows})
        return
    console.print(_camera_table(rows))


@cameras_app.command("remove")
def cameras_remove(
    typer_ctx: typer.Context, camera_code: Annotated[str, typer.Argument(help="Camera name.")],
) -> None:
    """Remove a camera from the registry (its scans stay)."""
    from workers.camera_registry import remove_camera

    _cli()._run(typer_ctx, lambda session: remove_camera(session, camera_code))
    console.print(f"camera {camera_code} removed", highlight=False)


@cameras_app.command("poll")
def cameras_poll(
    typer_ctx: typer.Context,
    camera_codes: Annotated[list[str] | None, typer.Argument(help="Cameras to poll now (default: those due).")] = None,
    forever: Annotated[bool, typer.Option("--forever", help="Keep polling cameras as they fall due.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Poll cameras now. With a broker, polls are enqueued for the workers; without one, each
    poll runs here and pictures worth it are scanned in-process."""
    import time
    from dataclasses import asdict
    from datetime import UTC, datetime

    from inventory.db import run_in_transaction
    from workers.camera_registry import CameraPoller, due_cameras

    cli = _cli()
    ctx = cli._ctx(typer_ctx)
    settings = ctx.settings
    reports: list[dict[str, Any]] = []
    with _broker(as_json):
        factory = ctx.factory
        if settings.broker_url:
            from workers.fleet.app import configure
            from workers.fleet.tasks import poll_camera

            configure(settings, serves_vision=False)
        else:
            from workers.cli_scan import build_pipeline

            pipeline = build_pipeline(settings, factory)

            def scan_here(data: bytes, **kwargs: Any) -> None:
                kwargs.pop("camera_code", None)
                pipeline.scan(data, **kwargs)

            poller = CameraPoller(factory, scan_here)
        try:
            while True:
                codes = list(camera_codes or []) or run_in_transaction(
                    factory, lambda session: due_cameras(session, datetime.now(UTC)))
                for code in codes:
                    if settings.broker_url:
                        poll_camera.apply_async(args=[code])
                        reports.append({"camera_code": code, "enqueued": True})
                    else:
                        reports.append(asdict(poller.poll(code)))
                    if forever and not as_json:
                        console.print(" ".join(f"{k}={v}" for k, v in reports[-1].items()), highlight=False)
                if not forever:
                    break
                time.sleep(1.0)
        except KeyboardInterrupt:
            pass
        finally:
            from workers.camera_registry import close_readers

            close_readers()  # stream threads are stopped before the interpreter exits
    if as_json:
        print_json({"polls": reports})
    elif not forever:
        for report in reports:
            console.print(" ".join(f"{k}={v}" for k, v in report.items()), highlight=False)


def _camera_table(rows: list[dict[str, Any]]) -> Table:
    table = Table("camera", "kind", "url", "location", "state", "since", "last error", title=f"{len(rows)} camera(s)")
    colours = {"online": "green", "offline": "red", "stale": "yellow"}
    for row in rows:
        table.add_row(row["camera_code"], row["kind"], row["url"], row["location_code"] or "(label)",
                      f"[{colours[row['state']]}]{row['state']}[/]", row["state_since"][:19], row["last_error"] or "")
    return table


def status_cmd(typer_ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Show the fleet: workers and what they run, queue depths, dead letters, and cameras."""
    from workers.camera_registry import list_cameras

    cli = _cli()
    settings = _settings(typer_ctx)
    data: dict[str, Any] = {"broker": mask_url(settings.broker_url) if settings.broker_url else None}
    with _broker(as_json):
        data["cameras"] = cli._run(typer_ctx, list_cameras, as_json)
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
    console.print(_camera_table(data["cameras"]))


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

    from workers.image_store import LocalImageStore

    settings = _settings(typer_ctx)
    with _cli()._errors(as_json):
        files, size = LocalImageStore(settings.fleet.image_store_dir).prune(timedelta(days=older_than_days))
    if as_json:
        print_json({"deleted_files": files, "deleted_bytes": size, "store": str(settings.fleet.image_store_dir)})
    else:
        console.print(f"deleted {files} picture(s), {size / 2**20:.1f} MiB, from {settings.fleet.image_store_dir}",
                      highlight=False)
