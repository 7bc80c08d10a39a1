"""Engines, sessions and transactions that behave the same on SQLite and PostgreSQL.

* :class:`UTCDateTime` stores instants as UTC and always returns aware UTC ``datetime`` objects,
  on SQLite (which has no time zone type) as on PostgreSQL (``timestamptz``).
* :func:`create_engine` configures SQLite for concurrent writers: WAL journal, a busy timeout,
  foreign keys on, and ``BEGIN IMMEDIATE`` so that a transaction takes the write lock when it
  starts instead of failing with ``SQLITE_BUSY`` when it first writes (SQLite's documented
  deadlock rule for deferred transactions, https://www.sqlite.org/lang_transaction.html).
* :func:`run_in_transaction` runs a unit of work in one transaction and retries it, a bounded
  number of times with capped exponential backoff, when the database reports a transient
  conflict (SQLite "database is locked", PostgreSQL serialization failure or deadlock).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from inventory.errors import NaiveDatetimeError
from shelftally.errors import ConfigurationError, MissingDependencyError
from shelftally.redact import mask_url

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: How long a SQLite connection waits for the write lock before it reports "database is locked".
SQLITE_BUSY_TIMEOUT_MS = 30_000


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """A timestamp column that only accepts and only returns aware UTC datetimes.

    PostgreSQL stores ``timestamp with time zone``; SQLite stores the UTC wall time as text
    (``YYYY-MM-DD HH:MM:SS.ffffff``, which sorts chronologically).

    Raises:
        NaiveDatetimeError: when a naive ``datetime`` is bound (its instant would be ambiguous).
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
            raise NaiveDatetimeError(f"naive datetime {value.isoformat()} given; attach a UTC offset")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def utcnow() -> datetime:
    """Return the current instant as an aware UTC datetime."""
    return datetime.now(UTC)


def create_engine(url: str, *, echo: bool = False, pool_size: int = 10) -> Engine:
    """Create an engine for a SQLite or PostgreSQL URL.

    Args:
        url: SQLAlchemy URL, e.g. ``sqlite:///shelftally.db`` or
            ``postgresql+psycopg://user@127.0.0.1:5432/db``. A bare ``postgresql://`` URL is
            given the psycopg 3 driver.
        echo: log every statement.
        pool_size: connections kept per process (PostgreSQL only).

    Returns:
        An engine; on SQLite with WAL, a busy timeout of :data:`SQLITE_BUSY_TIMEOUT_MS`,
        foreign keys enforced and ``BEGIN IMMEDIATE`` transactions.

    Raises:
        ConfigurationError: the URL cannot be parsed or names another database.
        MissingDependencyError: its driver is not installed.
    """
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    try:
        if url.startswith("sqlite"):
            engine = sa.create_engine(
                url,
                echo=echo,
                connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
            )
            _configure_sqlite(engine)
            return engine
        if not url.startswith("postgresql"):
            raise ConfigurationError(
                f"unsupported database URL {mask_url(url)!r}: use sqlite:///PATH or postgresql+psycopg://...",
                reason="invalid_database_url",
            )
        return sa.create_engine(url, echo=echo, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
    except sa.exc.ArgumentError as error:
        raise ConfigurationError(f"invalid database URL {mask_url(url)!r}: {error}",
                                 reason="invalid_database_url") from error
    except ModuleNotFoundError as error:
        raise MissingDependencyError(f"the driver for {mask_url(url)!r} is not installed ({error.name})") from error


def _configure_sqlite(engine: Engine) -> None:
    in_memory = engine.url.database in (None, "", ":memory:")

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below decide how transactions start.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        if not in_memory:
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def dialect_insert(session: Session, model: type[Any]) -> postgresql.Insert | sqlite.Insert:
    """``INSERT`` for ``model`` in the session's dialect, so callers can add
    ``ON CONFLICT DO NOTHING / DO UPDATE`` (supported alike by PostgreSQL and SQLite >= 3.24).

    Raises:
        NotImplementedError: the session is bound to another database.
    """
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert(model)
    if name == "sqlite":
        return sqlite.insert(model)
    raise NotImplementedError(f"dialect {name!r} is not supported (SQLite and PostgreSQL are)")


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Return the session factory used everywhere (``expire_on_commit=False``)."""
    return sessionmaker(engine, expire_on_commit=False)


def is_transient(error: BaseException) -> bool:
    """Whether a database error is a conflict that succeeds when the transaction is run again.

    SQLite: "database is locked" / "database is busy". PostgreSQL: SQLSTATE 40001
    (serialization_failure), 40P01 (deadlock_detected) and 55P03 (lock_not_available).
    """
    if isinstance(error, OperationalError):
        text = str(error.orig).lower()
        if "database is locked" in text or "database is busy" in text:
            return True
    if isinstance(error, DBAPIError):
        sqlstate = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)
        return sqlstate in {"40001", "40P01", "55P03"}
    return False


def run_in_transaction(
    factory: sessionmaker[Session],
    work: Callable[[Session], T],
    *,
    attempts: int = 8,
    backoff_s: float = 0.05,
    backoff_cap_s: float = 2.0,
) -> T:
    """Run ``work(session)`` in one transaction, committing on success.

    The whole unit of work is re-run (in a fresh session) when the database reports a transient
    conflict (:func:`is_transient`), with full-jitter exponential backoff capped at
    ``backoff_cap_s`` (AWS Architecture Blog, "Exponential Backoff and Jitter", 2015).

    Args:
        factory: session factory from :func:`session_factory`.
        work: the unit of work; it must not commit and must be safe to run again.
        attempts: how many times to try before the last error is raised.
        backoff_s: base delay in seconds.
        backoff_cap_s: largest delay in seconds.

    Returns:
        What ``work`` returned.

    Raises:
        sqlalchemy.exc.DBAPIError: the last transient error after ``attempts`` tries, or at once
            any non-transient one. Errors raised by ``work`` itself propagate unchanged after a
            rollback.
    """
    for attempt in range(1, attempts + 1):
        session = factory()
        try:
            with session.begin():
                result = work(session)
            return result
        except DBAPIError as error:
            if attempt == attempts or not is_transient(error):
                raise
            delay = random.uniform(0, min(backoff_cap_s, backoff_s * 2**attempt))
            logger.info("transient database conflict (attempt %s/%s), retrying in %.3fs: %s",
                        attempt, attempts, delay, error.orig)
            time.sleep(delay)
        finally:
            session.close()
    raise AssertionError("unreachable")  # pragma: no cover
