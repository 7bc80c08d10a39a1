"""Timestamps and transactions behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from inventory.db import create_engine, is_transient, run_in_transaction
from inventory.errors import NaiveDatetimeError
from inventory.models import Location, Scan
from tests.conftest import POSTGRES_URL, seed_shelf

IST = timezone(timedelta(hours=5, minutes=30))
PST = timezone(timedelta(hours=-8))


@pytest.mark.parametrize(
    "given",
    [
        datetime(2026, 11, 29, 15, 30, 0, 123456, tzinfo=IST),
        datetime(2026, 11, 28, 23, 59, 59, 999999, tzinfo=PST),
        datetime(2026, 3, 29, 1, 30, tzinfo=UTC),
    ],
)
def test_timestamps_come_back_as_aware_utc_same_instant(factory: sessionmaker[Session], given: datetime) -> None:
    with factory.begin() as session:
        shelf = seed_shelf(session, book={})
        session.add(Scan(location_id=shelf.id, captured_at=given, image_sha256="a" * 64,
                         image_size_bytes=1, source="t"))
    with factory() as session:
        back = session.scalars(sa.select(Scan.captured_at)).one()
    assert back.tzinfo is not None and back.utcoffset() == timedelta(0)
    assert back == given
    assert back.isoformat() == given.astimezone(UTC).isoformat()


def test_naive_timestamps_are_refused(factory: sessionmaker[Session]) -> None:
    with pytest.raises(sa.exc.StatementError) as info, factory.begin() as session:
        shelf = seed_shelf(session, book={})
        session.add(Scan(location_id=shelf.id, captured_at=datetime(2026, 11, 29, 10, 0),
                         image_sha256="a" * 64, image_size_bytes=1, source="t"))
        session.flush()
    assert isinstance(info.value.orig, NaiveDatetimeError)


def test_capture_time_comparison_is_by_instant(factory: sessionmaker[Session]) -> None:
    """10:00+05:30 is before 05:00 UTC: ordering must follow instants, not wall-clock text."""
    with factory.begin() as session:
        shelf = seed_shelf(session, book={})
        for i, when in enumerate([datetime(2026, 11, 29, 10, 0, tzinfo=IST), datetime(2026, 11, 29, 5, 0, tzinfo=UTC)]):
            session.add(Scan(location_id=shelf.id, captured_at=when, image_sha256=str(i) * 64,
                             image_size_bytes=1, source="t"))
    with factory() as session:
        first = session.scalars(sa.select(Scan).order_by(Scan.captured_at)).first()
        assert first is not None and first.image_sha256 == "0" * 64
        cutoff = datetime(2026, 11, 29, 4, 45, tzinfo=UTC)
        assert session.scalar(sa.select(sa.func.count()).select_from(Scan).where(Scan.captured_at <= cutoff)) == 1


def test_run_in_transaction_rolls_back_on_error(factory: sessionmaker[Session]) -> None:
    def work(session: Session) -> None:
        seed_shelf(session, book={"A": 1})
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        run_in_transaction(factory, work)
    with factory() as session:
        assert session.scalars(sa.select(Location)).all() == []


@pytest.mark.parametrize(("sqlstate", "transient"), [("40P01", True), ("40001", True), ("23505", False)])
def test_postgres_errors_classified_by_sqlstate(sqlstate: str, transient: bool) -> None:
    """Errors raised by the real server: deadlock and serialization failure are retryable."""
    engine = create_engine(POSTGRES_URL)
    try:
        with engine.connect() as conn, pytest.raises(sa.exc.DBAPIError) as info:
            conn.execute(sa.text(f"DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = '{sqlstate}'; END $$"))
        assert is_transient(info.value) is transient
    finally:
        engine.dispose()


def test_sqlite_locked_is_transient(tmp_path: Path) -> None:
    """A writer that cannot get SQLite's lock within the busy timeout gets a retryable error."""
    holder = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")
    waiter = sa.create_engine(f"sqlite:///{tmp_path}/x.db", connect_args={"timeout": 0.05})
    try:
        with waiter.connect() as conn, pytest.raises(sa.exc.OperationalError) as info:
            conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        assert is_transient(info.value)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        waiter.dispose()
