"""Shared fixtures: real SQLite and real PostgreSQL databases, created and dropped per test.

PostgreSQL is the server on 127.0.0.1:5432 (trust auth, database ``test``), overridable with
``SHELFTALLY_TEST_POSTGRES_URL``. Each test gets its own schema (``search_path`` set on every
connection), dropped afterwards. SQLite tests get a fresh file in ``tmp_path``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from inventory.db import create_engine, session_factory
from inventory.models import Base, FacingRule, Location, LocationLevel, Sku, StockLevel

POSTGRES_URL = os.environ.get(
    "SHELFTALLY_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)

BACKENDS = ["sqlite", "postgresql"]


def _postgres_schema_url(schema: str) -> str:
    separator = "&" if "?" in POSTGRES_URL else "?"
    return f"{POSTGRES_URL}{separator}options=-csearch_path%3D{schema}"


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a new, empty database on each backend (SQLite file, PostgreSQL schema)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/shelftally.db"  # type: ignore[operator]
        return
    schema = f"t_{uuid.uuid4().hex[:16]}"
    admin = create_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        yield _postgres_schema_url(schema)
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """An engine on a fresh database with the models' tables created."""
    eng = create_engine(db_url)
    Base.metadata.create_all(eng)
    try:
        yield eng
    finally:
        eng.dispose()


@pytest.fixture
def factory(engine: Engine) -> sessionmaker[Session]:
    """Session factory on :func:`engine`."""
    return session_factory(engine)


@pytest.fixture
def backend(engine: Engine) -> str:
    """``"sqlite"`` or ``"postgresql"``."""
    return engine.dialect.name


def at(minute: int, second: int = 0) -> datetime:
    """An aware UTC instant on a fixed day: ``2026-11-29 10:<minute>:<second>``."""
    return datetime(2026, 11, 29, 10, minute, second, tzinfo=UTC)


def seed_shelf(
    session: Session,
    *,
    book: dict[str, int | None],
    location_code: str = "WH1-A01-B01-S1",
    facing_rule: FacingRule = FacingRule.VISIBLE_UNITS,
    units_per_facing: int = 1,
) -> Location:
    """Create a warehouse > shelf pair and SKUs; ``book`` maps sku_code to its book quantity
    at the shelf (``None``: the SKU exists but is not stocked there)."""
    warehouse = Location(location_code="WH1", level=LocationLevel.WAREHOUSE, name="Warehouse 1")
    session.add(warehouse)
    session.flush()
    shelf = Location(
        location_code=location_code,
        level=LocationLevel.SHELF,
        parent_id=warehouse.id,
        facing_rule=facing_rule,
        units_per_facing=units_per_facing,
    )
    session.add(shelf)
    session.flush()
    for code, quantity in book.items():
        sku = Sku(sku_code=code, name=f"Product {code}")
        session.add(sku)
        session.flush()
        if quantity is not None:
            session.add(StockLevel(location_id=shelf.id, sku_id=sku.id, quantity=quantity, source="test"))
    session.flush()
    return shelf


def count_rows(session: Session, model: type[Base]) -> int:
    """Number of rows of a model's table."""
    return int(session.scalar(sa.select(sa.func.count()).select_from(model)) or 0)
