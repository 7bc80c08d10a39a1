"""``shelftally worker``, ``beat``, ``ingest``, ``tasks`` and ``status``: the Celery side of the CLI.

Without a broker (``SHELFTALLY_BROKER_URL`` unset) ``ingest`` scans in-process like ``scan``;
the other commands need one and say so (reason ``no_broker``).
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from shelftally.errors import ConfigurationError
from shelftally.redact import mask_url
from workers.console import console, print_json

if TYPE_CHECKING:
    from workers.settings import Settings

__all__ = ["tasks_app"]

tasks_app = typer.Typer(no_args_is_help=True, help="Dead-letter list of the Celery fleet.")

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _cli() -> Any:
    from workers import cli  # imported late: workers.cli imports this module

    return cli


def _settings(typer_ctx: typer.Context) -> Settings:
    settings: Settings = _cli()._ctx(typer_ctx).settings
    return settings


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
        "--metrics-port", help="Serve Prometheus metrics here (default SHELFTALLY_FLEET__METRICS_PORT).",
    )] = None,
    include: Annotated[list[str] | None, typer.Option(
        "--include", help="Extra module to import in the worker (plugins, tests' fault injection).",
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
        if serves_vision and settings.models.threads is None:
            # Children share the cores: one runtime per child with all cores each would oversubscribe.
            cores = os.cpu_count() or 1
            settings.models.threads = max(1, cores // (concurrency if pool == "prefork" else 1))
        port = metrics_port if metrics_port is not None else settings.fleet.metrics_port
        if port is not None and pool == "prefork" and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # Before prometheus_client is first imported, in this process and so in every child.
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="shelftally-metrics-")
        from workers.fleet.app import configure

        app = configure(settings, serves_vision=serves_vision)
        cli._ctx(typer_ctx).factory  # noqa: B018  (fails early when the schema is not at head)
        if port is not None:
            from workers.fleet.metrics import serve

            serve(port)
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
    path = schedule_file or Path(tempfile.mkdtemp(prefix="shelftally-beat-")) / "schedule"
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
    from workers.cli_scan import collect_pictures

    cli = _cli()
    settings = _settings(typer_ctx)
    pictures, missing = collect_pictures(paths)
    if missing:
        raise typer.BadParameter(f"no such file or folder (and no glob match): {', '.join(missing)}",
                                 param_hint="PATHS")
    if not pictures:
        raise typer.BadParameter("no pictures in the given folders", param_hint="PATHS")
    if not settings.broker_url:
        cli.scan_cmd(typer_ctx, paths=pictures, location=location, captured_at=None, detector=None,
                     classifier=None, evidence_dir=None, as_json=as_json)
        return
    with cli._errors(as_json):
        from workers.fleet.app import configure
        from workers.fleet.tasks import enqueue_path

        configure(settings, serves_vision=False)
        cli._ctx(typer_ctx).factory  # noqa: B018  (the schema must be at head before anything is sent)
        sent = [{"path": str(path), "task_id": enqueue_path(path, location_code=location)} for path in pictures]
    if as_json:
        print_json({"enqueued": sent})
    else:
        console.print(f"enqueued {len(sent)} picture(s) on {mask_url(settings.broker_url)}", highlight=False)


@tasks_app.command("failed")
def tasks_failed(typer_ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List the dead-letter list: messages that kept killing their worker or failed for good."""
    from dataclasses import asdict

    with _cli()._errors(as_json):
        letters = _dead_letters(typer_ctx).list()
    if as_json:
        print_json({"failed": [asdict(letter) for letter in letters]})
        return
    table = Table("id", "task", "reason", "deliveries", "failed at", "error", title=f"{len(letters)} dead letter(s)")
    for letter in letters:
        table.add_row(letter.id, letter.task, letter.reason, str(letter.deliveries), letter.failed_at,
                      letter.error[:80])
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
    with _cli()._errors(as_json):
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
