"""The ``shelftally`` command line (typer + rich).

Every query takes ``--json`` and then prints one JSON document on stdout and nothing else.
Errors print the machine-readable reason and exit with status 1 (2 for usage errors).
"""

from __future__ import annotations

import getpass
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker

import migrations
from inventory import adjustments, queries
from inventory.cycle_counts import parse_time, record_cycle_counts
from inventory.db import create_engine, run_in_transaction, session_factory
from inventory.errors import DatabaseNotInitialisedError, DatabaseUnavailableError
from inventory.imports import ImportResult, import_locations, import_skus, import_stock
from inventory.models import DiscrepancyKind, DiscrepancyStatus
from inventory.reconcile import ReconcileOutcome
from inventory.sinks import AlertSink, DeliveryReport, LogSink, WebhookSink, deliver_pending
from shelftally import __version__
from shelftally.errors import ConfigurationError, ShelfTallyError
from shelftally.redact import mask_url
from workers.cli_classifier import classifier_app, sku_app
from workers.cli_detector import detector_app
from workers.cli_fleet import beat_cmd, cameras_app, images_app, ingest_cmd, status_cmd, tasks_app, worker_cmd
from workers.cli_scan import evaluate_app
from workers.console import console, err_console, print_error, print_json
from workers.report import print_counts, print_discrepancies
from workers.settings import Settings

T = TypeVar("T")

app = typer.Typer(no_args_is_help=True, add_completion=False, help="ShelfTally: stock counts from pictures.")
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
import_app = typer.Typer(no_args_is_help=True, help="Import WMS files (CSV). Nothing of a bad file is applied.")
discrepancies_app = typer.Typer(help="List and review discrepancies.")
adjust_app = typer.Typer(no_args_is_help=True, help="Stock adjustments.")
alerts_app = typer.Typer(no_args_is_help=True, help="Alert delivery.")
app.add_typer(db_app, name="db")
app.add_typer(import_app, name="import")
app.add_typer(discrepancies_app, name="discrepancies")
app.add_typer(adjust_app, name="adjust")
app.add_typer(alerts_app, name="alerts")
app.add_typer(detector_app, name="detector")
app.add_typer(classifier_app, name="classifier")
app.add_typer(sku_app, name="sku")
app.add_typer(evaluate_app, name="evaluate")
app.add_typer(tasks_app, name="tasks")
app.add_typer(cameras_app, name="cameras")
app.add_typer(images_app, name="images")
app.command("status")(status_cmd)
app.command("worker")(worker_cmd)
app.command("beat")(beat_cmd)
app.command("ingest")(ingest_cmd)


JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
ActorOption = Annotated[str, typer.Option("--actor", help="Who is acting (recorded in the ledger).")]


def _default_actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


class Context:
    """What every command needs, built once from :class:`Settings` in the entry point."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._factory: sessionmaker[Session] | None = None

    @property
    def factory(self) -> sessionmaker[Session]:
        """Session factory on the configured database, at the schema revision this version needs.

        Raises:
            DatabaseNotInitialisedError: no database there, or not at the head revision (a
                missing SQLite file is reported, never created, by commands other than
                ``db upgrade``).
            ConfigurationError, MissingDependencyError: a bad URL or a missing driver.
        """
        if self._factory is None:
            url = self.settings.database_url
            path = _sqlite_path(url)
            if path is not None and not path.exists():
                raise DatabaseNotInitialisedError(
                    f"there is no database at {path}; create it with `shelftally db upgrade`"
                )
            at, head = migrations.current(url), migrations.head()
            if at != head:
                raise DatabaseNotInitialisedError(
                    f"the database {mask_url(url)} is at schema revision {at or 'none'}, this version needs "
                    f"{head}; run `shelftally db upgrade`"
                )
            self._factory = session_factory(create_engine(url))
        return self._factory

    def sinks(self) -> list[AlertSink]:
        """Alert sinks for the configured channels."""
        alerts = self.settings.alerts
        sinks: list[AlertSink] = []
        for channel in alerts.channels:
            if channel == "log":
                sinks.append(LogSink())
            elif channel == "webhook" and alerts.webhook_url is not None:
                sinks.append(
                    WebhookSink(
                        alerts.webhook_url.get_secret_value(),
                        secret=alerts.webhook_secret,
                        timeout_s=alerts.webhook_timeout_s,
                    )
                )
        return sinks

    def deliver_alerts(self) -> DeliveryReport:
        """Deliver pending alerts on every configured channel."""
        alerts = self.settings.alerts
        return deliver_pending(
            self.factory,
            self.sinks(),
            max_attempts=alerts.max_attempts,
            backoff_s=alerts.backoff_s,
            backoff_cap_s=alerts.backoff_cap_s,
        )


def _sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///PATH`` URL (``None`` for other databases and in-memory SQLite)."""
    if not url.startswith("sqlite"):
        return None
    database = url.split("///", 1)[1].split("?", 1)[0] if "///" in url else ""
    return Path(database) if database and database != ":memory:" else None


def _ctx(typer_ctx: typer.Context) -> Context:
    obj = typer_ctx.find_root().obj
    if not isinstance(obj, Context):  # pragma: no cover - set by the app callback
        raise typer.Exit(2)
    return obj


def _fail(error: ShelfTallyError, as_json: bool = False) -> None:
    print_error(error, as_json=as_json)


@contextmanager
def _errors(as_json: bool = False) -> Iterator[None]:
    """Turn ShelfTally errors, and a database that cannot be reached, into exit status 1."""
    try:
        yield
    except ShelfTallyError as error:
        _fail(error, as_json)
        raise typer.Exit(1) from error
    except (sa_exc.OperationalError, sa_exc.InterfaceError) as error:
        message = str(error.orig).strip().splitlines()[0] if error.orig is not None else str(error)
        _fail(DatabaseUnavailableError(f"cannot use the database: {message}"), as_json)
        raise typer.Exit(1) from error


def _run(typer_ctx: typer.Context, work: Callable[[Session], T], as_json: bool = False) -> T:
    """Run one unit of work in a transaction; errors exit with status 1 and their reason."""
    with _errors(as_json):
        return run_in_transaction(_ctx(typer_ctx).factory, work)
    raise AssertionError("unreachable")  # pragma: no cover


def _time(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint=option) from error


@app.callback()
def main(
    typer_ctx: typer.Context,
    database_url: Annotated[
        str | None, typer.Option("--database-url", help="Overrides SHELFTALLY_DATABASE_URL.", show_default=False)
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at INFO.")] = False,
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", callback=_version, is_eager=True)
    ] = False,
) -> None:
    """Settings come from SHELFTALLY_* environment variables and ./.env (see workers/settings.py)."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # httpx logs every request line, query string (tokens) included, at INFO.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        overrides: dict[str, Any] = {} if database_url is None else {"database_url": database_url}
        settings = Settings.from_environment(**overrides)
    except ShelfTallyError as error:
        _fail(error)
        raise typer.Exit(2) from error
    typer_ctx.obj = Context(settings)


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"shelftally {__version__}\n")
        raise typer.Exit(0)


# ------------------------------------------------------------------------------------------ db


@db_app.command("upgrade")
def db_upgrade(
    typer_ctx: typer.Context,
    revision: Annotated[str, typer.Option(help="Target revision id, or head.")] = "head",
) -> None:
    """Create the schema, or migrate it forward to --revision (default: the newest)."""
    url = _ctx(typer_ctx).settings.database_url
    with _errors():
        path = _sqlite_path(url)
        if path is not None and not path.parent.is_dir():
            raise DatabaseUnavailableError(f"cannot create a database in {path.parent}: no such directory")
        migrations.upgrade(url, revision)
        console.print(f"database {mask_url(url)} at revision {migrations.current(url)}", highlight=False)


@db_app.command("downgrade")
def db_downgrade(
    typer_ctx: typer.Context,
    revision: Annotated[str, typer.Argument(help="Target revision id, or base (drops every table).")],
    yes: Annotated[bool, typer.Option("--yes", help="Confirm: later revisions' tables and rows are dropped.")] = False,
) -> None:
    """Migrate the schema back to REVISION; what later revisions added is dropped, rows included."""
    url = _ctx(typer_ctx).settings.database_url
    if not yes:
        err_console.print("refusing to drop data without --yes", highlight=False)
        raise typer.Exit(2)
    with _errors():
        migrations.downgrade(url, revision)
        console.print(f"database {mask_url(url)} at revision {migrations.current(url)}", highlight=False)


@db_app.command("current")
def db_current(typer_ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Show the schema revision of the database and the newest one this version knows."""
    url = _ctx(typer_ctx).settings.database_url
    with _errors(as_json):
        path = _sqlite_path(url)
        at = None if path is not None and not path.exists() else migrations.current(url)
        data = {"database_url": mask_url(url), "current": at, "head": migrations.head()}
    if as_json:
        print_json(data)
    else:
        state = "up to date" if at == data["head"] else "run `shelftally db upgrade`"
        console.print(f"{data['database_url']}: revision {at or 'none'} (newest {data['head']}; {state})",
                      highlight=False)


# -------------------------------------------------------------------------------------- import


def _import(
    typer_ctx: typer.Context,
    importer: Callable[..., ImportResult],
    file: Path,
    actor: str,
    as_json: bool,
) -> None:
    result = _run(typer_ctx, lambda s: importer(s, file=file, actor=actor), as_json)
    data = {
        "file": result.file_name,
        "rows_read": result.rows_read,
        "inserted": result.inserted,
        "updated": result.updated,
        "unchanged": result.unchanged,
    }
    if as_json:
        print_json(data)
    else:
        console.print(
            f"{result.file_name}: {result.rows_read} rows, {result.inserted} inserted, "
            f"{result.updated} updated, {result.unchanged} unchanged",
            highlight=False,
        )


FileArgument = Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)]


@import_app.command("skus")
def import_skus_cmd(
    typer_ctx: typer.Context, file: FileArgument, actor: ActorOption = "wms_import", as_json: JsonOption = False
) -> None:
    """Upsert SKUs from a CSV (sku_code,name[,description,gtin])."""
    _import(typer_ctx, import_skus, file, actor, as_json)


@import_app.command("locations")
def import_locations_cmd(
    typer_ctx: typer.Context, file: FileArgument, actor: ActorOption = "wms_import", as_json: JsonOption = False
) -> None:
    """Upsert locations from a CSV (location_code,level,parent_code[,name,facing_rule,units_per_facing])."""
    _import(typer_ctx, import_locations, file, actor, as_json)


@import_app.command("stock")
def import_stock_cmd(
    typer_ctx: typer.Context, file: FileArgument, actor: ActorOption = "wms_import", as_json: JsonOption = False
) -> None:
    """Set book quantities from a CSV (location_code,sku_code,quantity); changes are audited."""
    _import(typer_ctx, import_stock, file, actor, as_json)


@import_app.command("counts")
def import_counts_cmd(
    typer_ctx: typer.Context, file: FileArgument, as_json: JsonOption = False
) -> None:
    """Record and reconcile a cycle count file (location_code,captured_at,sku_code,facings[,unknown_facings])."""
    ctx = _ctx(typer_ctx)
    policy = ctx.settings.reconcile.policy()
    channels = tuple(ctx.settings.alerts.channels)

    def work(session: Session) -> list[ReconcileOutcome]:
        with file.open(encoding="utf-8", newline="") as handle:
            return record_cycle_counts(
                session, file=handle, source=f"cycle-count:{file.name}", policy=policy, channels=channels
            )

    outcomes = _run(typer_ctx, work, as_json)
    with _errors(as_json):
        report = ctx.deliver_alerts()
    data = {
        "scans": len(outcomes),
        "stale": sum(o.stale for o in outcomes),
        "already_recorded": sum(o.already_reconciled for o in outcomes),
        "discrepancies_opened": sum(len(o.opened) for o in outcomes),
        "discrepancies_resolved": sum(len(o.resolved) for o in outcomes),
        "alerts_delivered": report.delivered,
        "alerts_failed": report.failed,
    }
    if as_json:
        print_json(data)
    else:
        console.print(", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in data.items()), highlight=False)
    if report.failed:
        err_console.print(f"the counts were recorded, but {report.failed} alert(s) could not be delivered; "
                          "see `shelftally alerts deliver`", highlight=False)
        raise typer.Exit(1)


# ------------------------------------------------------------------------------------- queries


@app.command("counts")
def counts_cmd(
    typer_ctx: typer.Context,
    location: Annotated[str | None, typer.Option("--location", help="Location code prefix.")] = None,
    sku: Annotated[str | None, typer.Option("--sku", help="SKU code.")] = None,
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="Only scans captured at or before this ISO 8601 time (with offset).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Book vs last observed quantity per location and SKU (by capture time)."""
    when = _time(as_of, "--as-of")
    rows = _run(typer_ctx, lambda s: queries.counts(s, location_prefix=location, sku_code=sku, as_of=when), as_json)
    if as_json:
        print_json([r.to_dict() for r in rows])
        return
    print_counts(rows, console, when)


def _parse_enums(values: Sequence[str] | None, enum: type[Any], option: str) -> list[Any]:
    out = []
    for value in values or ():
        for part in value.split(","):
            try:
                out.append(enum(part.strip()))
            except ValueError as error:
                valid = ", ".join(m.value for m in enum)
                raise typer.BadParameter(f"{part!r} is not one of {valid}", param_hint=option) from error
    return out


@discrepancies_app.callback(invoke_without_command=True)
def discrepancies_cmd(
    typer_ctx: typer.Context,
    status: Annotated[
        list[str] | None, typer.Option("--status", help="open, acknowledged, resolved (repeat or comma-separate).")
    ] = None,
    kind: Annotated[list[str] | None, typer.Option("--kind", help="Only these kinds.")] = None,
    location: Annotated[str | None, typer.Option("--location", help="Location code prefix.")] = None,
    as_json: JsonOption = False,
) -> None:
    """List discrepancies (default: open and acknowledged), newest first."""
    if typer_ctx.invoked_subcommand is not None:
        return
    statuses = _parse_enums(status, DiscrepancyStatus, "--status") or [
        DiscrepancyStatus.OPEN,
        DiscrepancyStatus.ACKNOWLEDGED,
    ]
    kinds = _parse_enums(kind, DiscrepancyKind, "--kind")
    k = _ctx(typer_ctx).settings.reconcile.confirm_after_scans
    rows = _run(
        typer_ctx,
        lambda s: queries.discrepancies(
            s, statuses=statuses, kinds=kinds, location_prefix=location, confirm_after_scans=k
        ),
        as_json,
    )
    if as_json:
        print_json(rows)
    else:
        print_discrepancies(rows, console, f"Discrepancies ({', '.join(s.value for s in statuses)})")


DiscrepancyId = Annotated[int, typer.Argument(min=1, max=2**31 - 1, help="Discrepancy id.")]


def _review(typer_ctx: typer.Context, action: Callable[[Session], Any], discrepancy_id: int, as_json: bool,
            verb: str) -> None:
    ctx = _ctx(typer_ctx)
    _run(typer_ctx, action, as_json)
    with _errors(as_json):
        ctx.deliver_alerts()
    (row,) = _run(
        typer_ctx,
        lambda s: queries.discrepancies(s, statuses=list(DiscrepancyStatus), ids=[discrepancy_id]),
        as_json,
    )
    if as_json:
        print_json(row)
    else:
        console.print(f"discrepancy {discrepancy_id} {verb}", highlight=False)


@discrepancies_app.command("ack")
def discrepancies_ack(
    typer_ctx: typer.Context, discrepancy_id: DiscrepancyId, actor: ActorOption = "", as_json: JsonOption = False
) -> None:
    """Acknowledge an open discrepancy (it stays tracked)."""
    who = actor or _default_actor()
    _review(typer_ctx, lambda s: adjustments.acknowledge(s, discrepancy_id=discrepancy_id, actor=who),
            discrepancy_id, as_json, "acknowledged")


@discrepancies_app.command("resolve")
def discrepancies_resolve(
    typer_ctx: typer.Context, discrepancy_id: DiscrepancyId, actor: ActorOption = "", as_json: JsonOption = False
) -> None:
    """Resolve a discrepancy without changing the book."""
    who = actor or _default_actor()
    channels = tuple(_ctx(typer_ctx).settings.alerts.channels)
    _review(
        typer_ctx,
        lambda s: adjustments.resolve(s, discrepancy_id=discrepancy_id, actor=who, channels=channels),
        discrepancy_id,
        as_json,
        "resolved",
    )


@adjust_app.command("approve")
def adjust_approve(
    typer_ctx: typer.Context,
    discrepancy_id: DiscrepancyId,
    actor: ActorOption = "",
    reason: Annotated[str | None, typer.Option(help="Recorded in the ledger.")] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Approve even if the book changed since the discrepancy was measured.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Set the book to the observed quantity of a discrepancy and resolve it, audited, in one transaction.

    Refused (reason book_changed) when the book no longer holds the quantity the discrepancy was
    measured against, unless --force.
    """
    ctx = _ctx(typer_ctx)
    who = actor or _default_actor()
    channels = tuple(ctx.settings.alerts.channels)

    def work(session: Session) -> dict[str, Any] | None:
        entry = adjustments.approve(session, discrepancy_id=discrepancy_id, actor=who, reason=reason,
                                    channels=channels, force=force)
        if entry is None:
            return None
        return {
            "adjustment_id": entry.id,
            "discrepancy_id": discrepancy_id,
            "from_quantity": entry.from_quantity,
            "to_quantity": entry.to_quantity,
            "actor": entry.actor,
            "reason": entry.reason,
            "created_at": entry.created_at.isoformat(),
        }

    data = _run(typer_ctx, work, as_json)
    with _errors(as_json):
        ctx.deliver_alerts()
    if as_json:
        print_json(data or {"discrepancy_id": discrepancy_id, "adjustment_id": None})
    elif data is None:
        console.print(f"discrepancy {discrepancy_id} resolved; the book already held the observed quantity")
    else:
        console.print(
            f"adjustment {data['adjustment_id']}: book {data['from_quantity']} -> {data['to_quantity']}, "
            f"discrepancy {discrepancy_id} resolved",
            highlight=False,
        )


@alerts_app.command("deliver")
def alerts_deliver(typer_ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Deliver pending alerts on the configured channels (retries with capped backoff)."""
    with _errors(as_json):
        report = _ctx(typer_ctx).deliver_alerts()
    data = {"delivered": report.delivered_ids, "failed": report.failed_ids}
    if as_json:
        print_json(data)
    else:
        console.print(f"{report.delivered} delivered, {report.failed} failed", highlight=False)
    if report.failed:
        raise typer.Exit(1)


@app.command("scan")
def scan_cmd(
    typer_ctx: typer.Context,
    paths: Annotated[list[Path], typer.Argument(help="Picture files, folders or quoted glob patterns.")],
    location: Annotated[str | None, typer.Option(
        "--location", help="Location code; omit it to read each picture's location label (QR code / barcode).",
    )] = None,
    captured_at: Annotated[str | None, typer.Option(
        "--captured-at", help="Capture time (ISO 8601 with offset); default: EXIF, else the file's time.",
    )] = None,
    detector: Annotated[Path | None, typer.Option(
        "--detector", help="Detector model directory (default SHELFTALLY_MODELS__DETECTOR_DIR).",
        exists=True, file_okay=False,
    )] = None,
    classifier: Annotated[Path | None, typer.Option(
        "--classifier", help="Classifier model directory (default SHELFTALLY_MODELS__CLASSIFIER_DIR).",
        exists=True, file_okay=False,
    )] = None,
    evidence_dir: Annotated[Path | None, typer.Option(
        "--evidence-dir", help="Where evidence images go (default SHELFTALLY_SCAN__EVIDENCE_DIR, ./evidence).",
    )] = None,
    as_json: JsonOption = False,
) -> None:
    """Count the stock in pictures, reconcile it against the book, write evidence images.

    Pictures that fail are reported with their reason (and recorded as rejected scans); the rest
    are still scanned. Exit status 1 when any picture failed.
    """
    from workers.cli_scan import build_pipeline, pictures_or_refuse, print_run, result_dict, run_scan

    ctx = _ctx(typer_ctx)
    when = _time(captured_at, "--captured-at")
    pictures = pictures_or_refuse(paths)
    with _errors(as_json):
        pipeline = build_pipeline(ctx.settings, ctx.factory, detector=detector, classifier=classifier,
                                  evidence_dir=evidence_dir)
        run = run_scan(pipeline, pictures, location_code=location, captured_at=when, show_progress=not as_json)
        report = ctx.deliver_alerts()
    if as_json:
        print_json({"pictures": [result_dict(r) for r in run.results], "alerts_delivered": report.delivered,
                    "alerts_failed": report.failed})
    else:
        print_run(run, ctx.factory, confirm_after_scans=ctx.settings.reconcile.confirm_after_scans)
    if run.failed:
        if not as_json:
            err_console.print(f"{len(run.failed)} picture(s) could not be scanned (see the reasons above)",
                              highlight=False)
        raise typer.Exit(1)


@app.command("demo")
def demo_cmd(
    typer_ctx: typer.Context,
    workdir: Annotated[
        Path, typer.Option(help="Folder of the demo: database, photos, evidence, models (models are reused).")
    ] = Path("shelftally-demo"),
    counts_only: Annotated[bool, typer.Option(
        "--counts-only", help="Only the inventory half: reconcile the shipped cycle-count file (no models, < 1 s).",
    )] = False,
    classifier_backbone: Annotated[str, typer.Option(
        "--classifier-backbone", help=(
            "auto: a linear probe on ImageNet EfficientNet-Lite0 when the pretrained extra is installed, else "
            "mobilenet_v3_small from random weights; or a backbone name (NAME.TAG: pretrained, probed)."),
    )] = "auto",
    detector: Annotated[str, typer.Option(
        "--detector", help="shipped: the committed models/product-agnostic; train: a YOLOv8n trained on the demo's "
        "own shelves (a few minutes more)."),
    ] = "shipped",
) -> None:
    """Count a small demo warehouse from shelf photos: train the demo models, scan, report.

    The demo always uses its own SQLite database in --workdir (not --database-url), so it never
    touches a real one. The first run trains the demo models (a few minutes); later runs reuse them.
    """
    with _errors():
        if workdir.exists() and not workdir.is_dir():
            raise ConfigurationError(f"--workdir {workdir} exists and is not a folder", reason="invalid_workdir")
        settings = _ctx(typer_ctx).settings
        if counts_only:
            from workers.demo import run_demo

            run_demo(workdir, console=console, settings=settings)
        else:
            from workers.demo_vision import DemoSize, run_vision_demo

            if detector not in ("shipped", "train"):
                raise typer.BadParameter(f"expected shipped or train, received {detector!r}", param_hint="--detector")
            run_vision_demo(workdir, console=console, settings=settings,
                            size=DemoSize(classifier_backbone=classifier_backbone,
                                          detector="shipped" if detector == "shipped" else "train"))
