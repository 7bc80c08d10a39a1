"""What every command module of the CLI shares: the per-invocation context, options, error handling.

The root callback (:mod:`workers.cli`) builds one :class:`Context` from :class:`Settings` and
every command reaches it with :func:`get_context`. ShelfTally errors, a database that cannot be
reached and (for the fleet commands) a broker that cannot be reached all end the same way: one
line with the machine-readable reason on stderr (the error object on stdout with ``--json``) and
exit status 1.
"""

from __future__ import annotations

import getpass
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker

import migrations
from inventory.cycle_counts import parse_time
from inventory.db import create_engine, run_in_transaction, session_factory
from inventory.errors import DatabaseNotInitialisedError, DatabaseUnavailableError
from inventory.sinks import AlertSink, DeliveryReport, LogSink, WebhookSink, deliver_pending
from shelftally.errors import MissingDependencyError, ShelfTallyError
from shelftally.redact import mask_url
from workers.console import print_error
from workers.settings import Settings

__all__ = [
    "ActorOption",
    "BrokerUnavailableError",
    "Context",
    "JsonOption",
    "default_actor",
    "fail",
    "get_context",
    "get_settings",
    "handle_broker_errors",
    "handle_errors",
    "parse_time_option",
    "run_in_db",
    "sqlite_path",
]

T = TypeVar("T")

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
ActorOption = Annotated[str, typer.Option("--actor", help="Who is acting (recorded in the ledger).")]


def default_actor() -> str:
    """The login name of this process's user, else ``"unknown"`` (the default ``--actor``)."""
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
            path = sqlite_path(url)
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


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///PATH`` URL (``None`` for other databases and in-memory SQLite)."""
    if not url.startswith("sqlite"):
        return None
    database = url.split("///", 1)[1].split("?", 1)[0] if "///" in url else ""
    return Path(database) if database and database != ":memory:" else None


def get_context(typer_ctx: typer.Context) -> Context:
    """The :class:`Context` the root callback stored on the invocation."""
    obj = typer_ctx.find_root().obj
    if not isinstance(obj, Context):  # pragma: no cover - set by the app callback
        raise typer.Exit(2)
    return obj


def fail(error: ShelfTallyError, as_json: bool = False) -> None:
    """Report ``error`` the CLI's one way (:func:`workers.console.print_error`)."""
    print_error(error, as_json=as_json)


FLEET_PACKAGES = frozenset({"celery", "kombu", "redis", "billiard", "vine", "amqp"})
"""What the ``fleet`` extra installs: a command missing one of them says so instead of a traceback."""


@contextmanager
def handle_errors(as_json: bool = False) -> Iterator[None]:
    """Turn ShelfTally errors, a database that cannot be reached, and the fleet's packages
    missing (the ``fleet`` extra not installed: reason ``missing_dependency``) into exit status 1."""
    try:
        yield
    except ShelfTallyError as error:
        fail(error, as_json)
        raise typer.Exit(1) from error
    except ModuleNotFoundError as error:
        package = (error.name or "").split(".", 1)[0]
        if package not in FLEET_PACKAGES:
            raise
        fail(MissingDependencyError(f"this command needs {package}: pip install 'shelftally[fleet]'"), as_json)
        raise typer.Exit(1) from error
    except (sa_exc.OperationalError, sa_exc.InterfaceError) as error:
        message = str(error.orig).strip().splitlines()[0] if error.orig is not None else str(error)
        fail(DatabaseUnavailableError(f"cannot use the database: {message}"), as_json)
        raise typer.Exit(1) from error


def run_in_db(typer_ctx: typer.Context, work: Callable[[Session], T], as_json: bool = False) -> T:
    """Run one unit of work in a transaction; errors exit with status 1 and their reason."""
    with handle_errors(as_json):
        return run_in_transaction(get_context(typer_ctx).factory, work)
    raise AssertionError("unreachable")  # pragma: no cover


def parse_time_option(value: str | None, option: str) -> datetime | None:
    """An ISO 8601 time option (with offset) as an aware datetime; ``None`` stays ``None``.

    Raises:
        typer.BadParameter: not such a time (usage error, exit status 2).
    """
    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint=option) from error


@contextmanager
def handle_broker_errors(as_json: bool = False) -> Iterator[None]:
    """:func:`handle_errors`, plus a broker that cannot be reached as one line with reason
    ``broker_unavailable`` (exit status 1) instead of a traceback."""
    with handle_errors(as_json):
        from kombu.exceptions import OperationalError
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError
    try:
        with handle_errors(as_json):
            yield
    except (OperationalError, RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError) as error:
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        fail(BrokerUnavailableError(f"cannot reach the broker: {detail}"), as_json)
        raise typer.Exit(1) from error


class BrokerUnavailableError(ShelfTallyError):
    """The Celery broker (Redis) cannot be reached."""

    reason = "broker_unavailable"


def get_settings(typer_ctx: typer.Context) -> Settings:
    """The settings of this invocation (built by the root callback)."""
    return get_context(typer_ctx).settings
