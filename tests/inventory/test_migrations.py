"""Alembic migrations on real SQLite and PostgreSQL: upgrade, downgrade, drift, transactions.

Every test runs on both backends through the ``db_url`` fixture (a fresh SQLite file, or a
PostgreSQL schema of its own reached through ``search_path``).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.orm import Session

import migrations
from inventory.db import create_engine, session_factory
from inventory.models import (
    Alert,
    AlertStateChange,
    Base,
    Camera,
    CameraKind,
    Detection,
    Discrepancy,
    DiscrepancyKind,
    FacingRule,
    Location,
    LocationLevel,
    Observation,
    Scan,
    ScanStatus,
    Sku,
    StockAdjustment,
    StockLevel,
)
from tests.conftest import at

BOOK_TABLES = ("sku", "location", "stock_level")
LATER_TABLES = ("scan", "detection", "observation", "discrepancy", "alert", "stock_adjustment")
REGISTRY_TABLES = ("camera",)
LATER_MODELS: tuple[type[Base], ...] = (Scan, Detection, Observation, Discrepancy, Alert, StockAdjustment)


@contextmanager
def connect(url: str) -> Iterator[sa.Connection]:
    """A connection on a new engine, disposed afterwards (no pooled connection outlives a migration)."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


@contextmanager
def session_on(url: str) -> Iterator[Session]:
    """A session in one transaction, committed when the block ends."""
    engine = create_engine(url)
    try:
        with session_factory(engine).begin() as session:
            yield session
    finally:
        engine.dispose()


def table_names(url: str) -> set[str]:
    with connect(url) as connection:
        return set(sa.inspect(connection).get_table_names())


def book_rows(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of sku, location and stock_level, in the columns revision 0001 creates."""
    rows: dict[str, list[tuple[Any, ...]]] = {}
    with connect(url) as connection:
        for name in BOOK_TABLES:
            table = Base.metadata.tables[name]
            columns = [column for column in table.c if column.name != "reconciled_through"]
            result = connection.execute(sa.select(*columns).order_by(table.c.id))
            rows[name] = [tuple(row) for row in result]
    return rows


def later_table_counts(url: str) -> dict[str, int]:
    with session_on(url) as session:
        return {
            model.__tablename__: int(session.scalar(sa.select(sa.func.count()).select_from(model)) or 0)
            for model in LATER_MODELS
        }


def seed_book(session: Session) -> Location:
    """A SKU, a warehouse with a shelf below it, and the shelf's book quantity of the SKU."""
    sku = Sku(sku_code="4006381333931", name="Highlighter yellow", gtin="4006381333931")
    warehouse = Location(location_code="WH1", level=LocationLevel.WAREHOUSE, name="Warehouse 1")
    shelf = Location(
        location_code="WH1-A01-B01-S1",
        level=LocationLevel.SHELF,
        parent=warehouse,
        facing_rule=FacingRule.UNITS_PER_FACING,
        units_per_facing=6,
        reconciled_through=at(5),
    )
    session.add_all([sku, warehouse, shelf, StockLevel(location=shelf, sku=sku, quantity=24, source="wms")])
    session.flush()
    return shelf


def seed_scan_to_adjustment(session: Session, *, captured_at: datetime) -> None:
    """A scan of the shelf with one detection and observation, then discrepancy, alert, adjustment."""
    shelf = session.scalars(sa.select(Location).where(Location.location_code == "WH1-A01-B01-S1")).one()
    sku = session.scalars(sa.select(Sku).where(Sku.sku_code == "4006381333931")).one()
    scan = Scan(
        location=shelf,
        captured_at=captured_at,
        image_sha256=captured_at.strftime("%M%S").ljust(64, "a"),
        image_size_bytes=482_113,
        width_px=4032,
        height_px=3024,
        source="camera:aisle-1",
        status=ScanStatus.PROCESSED,
    )
    session.add(scan)
    session.flush()
    session.add(
        Detection(
            scan_id=scan.id,
            x1=10.0,
            y1=20.0,
            x2=110.0,
            y2=220.0,
            confidence=0.91,
            class_id=0,
            sku_id=sku.id,
            sku_confidence=0.88,
        )
    )
    session.add(Observation(scan=scan, sku=sku, facings=3, quantity=18, confidence=0.88))
    discrepancy = Discrepancy(
        location=shelf,
        sku=sku,
        kind=DiscrepancyKind.SHORTAGE,
        expected_quantity=24,
        observed_quantity=18,
        first_seen_at=captured_at,
        last_seen_at=captured_at,
        evidence_scan_id=scan.id,
    )
    session.add(discrepancy)
    session.flush()
    session.add(
        Alert(
            discrepancy=discrepancy,
            channel="log",
            state_change=AlertStateChange.OPENED,
            payload={"sku_code": "4006381333931", "observed_quantity": 18},
        )
    )
    session.add(
        StockAdjustment(
            location_id=shelf.id,
            sku_id=sku.id,
            from_quantity=24,
            to_quantity=18,
            reason="vision cycle count",
            actor="alice",
            discrepancy_id=discrepancy.id,
        )
    )


def test_current_is_none_before_and_head_after_upgrade(db_url: str) -> None:
    assert migrations.current(db_url) is None
    assert migrations.head() == "0004"

    migrations.upgrade(db_url)

    assert migrations.current(db_url) == migrations.head()
    assert table_names(db_url) == {"alembic_version", *BOOK_TABLES, *LATER_TABLES, *REGISTRY_TABLES}
    with connect(db_url) as connection:
        if connection.dialect.name == "postgresql":
            # search_path puts the version table (and every other table) in the test's own schema.
            schema = connection.exec_driver_sql("SELECT current_schema()").scalar()
            version_table_schema = connection.exec_driver_sql(
                "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE c.oid = to_regclass('alembic_version')"
            ).scalar()
            assert schema != "public"
            assert version_table_schema == schema


def test_downgrade_to_0001_keeps_the_book_and_upgrade_restores_the_rest(db_url: str) -> None:
    migrations.upgrade(db_url)
    with session_on(db_url) as session:
        seed_book(session)
        seed_scan_to_adjustment(session, captured_at=at(5))
    book = book_rows(db_url)
    assert [len(book[name]) for name in BOOK_TABLES] == [1, 2, 1]
    assert later_table_counts(db_url) == dict.fromkeys(LATER_TABLES, 1)

    migrations.downgrade(db_url, "0001")

    assert migrations.current(db_url) == "0001"
    assert table_names(db_url) == {"alembic_version", *BOOK_TABLES}
    with connect(db_url) as connection:
        columns = {column["name"] for column in sa.inspect(connection).get_columns("location")}
    assert "reconciled_through" not in columns
    assert book_rows(db_url) == book

    migrations.upgrade(db_url)

    assert migrations.current(db_url) == "0004"
    assert book_rows(db_url) == book
    assert later_table_counts(db_url) == dict.fromkeys(LATER_TABLES, 0)
    with session_on(db_url) as session:
        shelf = session.scalars(sa.select(Location).where(Location.location_code == "WH1-A01-B01-S1")).one()
        assert shelf.parent is not None and shelf.parent.location_code == "WH1"
        assert shelf.reconciled_through is None  # the downgrade dropped it with its column
        seed_scan_to_adjustment(session, captured_at=at(7))
    assert later_table_counts(db_url) == dict.fromkeys(LATER_TABLES, 1)


def test_downgrade_to_base_drops_everything_and_upgrade_starts_over(db_url: str) -> None:
    migrations.upgrade(db_url)
    with session_on(db_url) as session:
        seed_book(session)

    migrations.downgrade(db_url, "base")

    assert migrations.current(db_url) is None
    assert table_names(db_url) == {"alembic_version"}

    migrations.upgrade(db_url)

    assert migrations.current(db_url) == "0004"
    with session_on(db_url) as session:
        seed_book(session)
        seed_scan_to_adjustment(session, captured_at=at(5))
    assert later_table_counts(db_url) == dict.fromkeys(LATER_TABLES, 1)


def autogenerate_diff(connection: sa.Connection, metadata: sa.MetaData) -> list[Any]:
    context = MigrationContext.configure(
        connection,
        opts={"compare_type": True, "render_as_batch": connection.dialect.name == "sqlite"},
    )
    return list(compare_metadata(context, metadata))


def test_migration_head_has_no_autogenerate_diff_from_the_models(db_url: str) -> None:
    migrations.upgrade(db_url)

    with connect(db_url) as connection:
        diff = autogenerate_diff(connection, Base.metadata)

    assert diff == [], f"models differ from the migration head; write a revision for: {diff}"


def _no_change(metadata: sa.MetaData) -> None:
    pass


def _add_column(metadata: sa.MetaData) -> None:
    metadata.tables["sku"].append_column(sa.Column("shelf_life_days", sa.Integer(), nullable=True))


def _widen_column(metadata: sa.MetaData) -> None:
    metadata.tables["sku"].c.name.type = sa.String(512)


def _make_not_null(metadata: sa.MetaData) -> None:
    metadata.tables["sku"].c.gtin.nullable = False


def _add_index(metadata: sa.MetaData) -> None:
    sa.Index("ix_scan_source", metadata.tables["scan"].c.source)


def _add_table(metadata: sa.MetaData) -> None:
    sa.Table("planogram", metadata, sa.Column("id", sa.Integer(), primary_key=True))


def _remove_table(metadata: sa.MetaData) -> None:
    metadata.remove(metadata.tables["alert"])


DRIFTS: list[tuple[Callable[[sa.MetaData], None], list[str]]] = [
    (_no_change, []),
    (_add_column, ["add_column"]),
    (_widen_column, ["modify_type"]),
    (_make_not_null, ["modify_nullable"]),
    (_add_index, ["add_index"]),
    (_add_table, ["add_table"]),
    (_remove_table, ["remove_index", "remove_index", "remove_table"]),
]


def _operation_names(diff: list[Any]) -> list[str]:
    # Column changes come as a list of tuples per column; everything else as one tuple.
    names: list[str] = []
    for entry in diff:
        if isinstance(entry, list):
            names.extend(change[0] for change in entry)
        else:
            names.append(entry[0])
    return sorted(names)


def test_drift_check_reports_model_changes_that_have_no_migration(db_url: str) -> None:
    migrations.upgrade(db_url)

    found: dict[str, list[str]] = {}
    with connect(db_url) as connection:
        for change, _ in DRIFTS:
            metadata = sa.MetaData(naming_convention=Base.metadata.naming_convention)
            for table in Base.metadata.tables.values():
                table.to_metadata(metadata)
            change(metadata)
            found[change.__name__] = _operation_names(autogenerate_diff(connection, metadata))

    assert found == {change.__name__: expected for change, expected in DRIFTS}


def schema_of_models(connection: sa.Connection) -> dict[str, dict[str, Any]]:
    """The reflected schema of the models' tables, order-free, including what autogenerate
    does not compare (CHECK constraints, partial index predicates, foreign key actions)."""
    inspector = sa.inspect(connection)
    dialect = connection.dialect
    schema: dict[str, dict[str, Any]] = {}
    for name in sorted(Base.metadata.tables):
        schema[name] = {
            "columns": sorted(
                (c["name"], c["type"].compile(dialect=dialect), c["nullable"], c.get("default"))
                for c in inspector.get_columns(name)
            ),
            "primary_key": inspector.get_pk_constraint(name),
            "foreign_keys": sorted(
                (
                    fk["name"],
                    fk["constrained_columns"],
                    fk["referred_table"],
                    fk["referred_columns"],
                    sorted(fk["options"].items()),
                )
                for fk in inspector.get_foreign_keys(name)
            ),
            "unique_constraints": sorted(
                (u["name"], u["column_names"]) for u in inspector.get_unique_constraints(name)
            ),
            "indexes": sorted(
                (
                    i["name"],
                    i["column_names"],
                    bool(i["unique"]),
                    sorted((key, str(value)) for key, value in i.get("dialect_options", {}).items()),
                )
                for i in inspector.get_indexes(name)
            ),
            "check_constraints": sorted(
                (c["name"], " ".join(c["sqltext"].split())) for c in inspector.get_check_constraints(name)
            ),
        }
    return schema


def test_migrated_schema_equals_the_models_created_directly(db_url: str) -> None:
    migrations.upgrade(db_url)
    with connect(db_url) as connection:
        fresh = schema_of_models(connection)
    # Through 0001 and back: on SQLite the downgrade copies the location table in batch mode.
    migrations.downgrade(db_url, "0001")
    migrations.upgrade(db_url)
    with connect(db_url) as connection:
        round_trip = schema_of_models(connection)
    migrations.downgrade(db_url, "base")
    engine = create_engine(db_url)
    try:
        Base.metadata.create_all(engine)
        with engine.connect() as connection:
            created = schema_of_models(connection)
    finally:
        engine.dispose()

    checks = [check for table in created.values() for check in table["check_constraints"]]
    assert ("uq_discrepancy_active_location_sku", ["location_id", "sku_id"], True) in [
        index[:3] for index in created["discrepancy"]["indexes"]
    ]
    assert len(checks) == 17  # 11 enum columns, 3 quantity rules, the scan location rule, 2 camera rules
    assert fresh == created
    assert round_trip == created


def test_captured_at_with_an_offset_comes_back_as_the_same_instant_in_utc(db_url: str) -> None:
    migrations.upgrade(db_url)
    india = timezone(timedelta(hours=5, minutes=30))
    captured_at = datetime(2026, 11, 29, 15, 30, 0, 250_000, tzinfo=india)
    with session_on(db_url) as session:
        seed_book(session)
        seed_scan_to_adjustment(session, captured_at=captured_at)

    with session_on(db_url) as session:
        loaded = session.scalars(sa.select(Scan.captured_at)).one()
    with connect(db_url) as connection:
        utc_wall_time = "captured_at" if connection.dialect.name == "sqlite" else "captured_at AT TIME ZONE 'UTC'"
        stored = connection.exec_driver_sql(f"SELECT {utc_wall_time} FROM scan").scalar()

    assert loaded == captured_at
    assert loaded.tzinfo is UTC
    assert (loaded.hour, loaded.minute, loaded.microsecond) == (10, 0, 250_000)
    # Other readers of the database see the UTC wall time too.
    assert str(stored) == "2026-11-29 10:00:00.250000"


def test_failed_upgrade_rolls_back_every_revision_of_the_run(db_url: str) -> None:
    # A table in the way of 0002 makes the run fail after 0001 has created its tables.
    with connect(db_url) as connection:
        connection.exec_driver_sql("CREATE TABLE alert (id INTEGER PRIMARY KEY)")
        connection.commit()

    with pytest.raises(sa.exc.DBAPIError, match="alert"):
        migrations.upgrade(db_url)

    assert migrations.current(db_url) is None
    assert table_names(db_url) == {"alert"}


def test_migrations_run_on_a_passed_in_connection(db_url: str) -> None:
    engine = create_engine(db_url)
    config = migrations.alembic_config(db_url)
    try:
        with engine.connect() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
            with Session(bind=connection) as session:
                seed_book(session)
                session.commit()

            command.downgrade(config, "0001")

            assert MigrationContext.configure(connection).get_current_revision() == "0001"
            assert connection.scalar(sa.select(sa.func.sum(Base.metadata.tables["stock_level"].c.quantity))) == 24
            if connection.dialect.name == "sqlite":
                assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            connection.rollback()
    finally:
        engine.dispose()
    assert migrations.current(db_url) == "0001"


def test_downgrade_inside_the_callers_transaction(db_url: str) -> None:
    """PostgreSQL downgrades inside the caller's transaction. SQLite refuses: its foreign keys
    cannot be switched off inside a transaction, and copying location would delete the book."""
    migrations.upgrade(db_url)
    with session_on(db_url) as session:
        seed_book(session)
    book = book_rows(db_url)
    engine = create_engine(db_url)
    config = migrations.alembic_config(db_url)
    try:
        if engine.dialect.name == "sqlite":
            with pytest.raises(RuntimeError, match="foreign keys are on"), engine.begin() as connection:
                config.attributes["connection"] = connection
                command.downgrade(config, "0001")
            expected_revision = "0004"
        else:
            with engine.begin() as connection:
                config.attributes["connection"] = connection
                command.downgrade(config, "0001")
            expected_revision = "0001"
    finally:
        engine.dispose()

    assert migrations.current(db_url) == expected_revision
    assert book_rows(db_url) == book


@pytest.mark.parametrize(
    ("database_url", "expected"),
    [
        ("sqlite:///never-opened.db", "CREATE UNIQUE INDEX uq_discrepancy_active_location_sku"),
        ("postgresql+psycopg://nobody@unreachable.invalid/none", "CREATE UNIQUE INDEX uq_discrepancy_active"),
    ],
)
def test_offline_mode_writes_the_upgrade_sql_without_a_database(database_url: str, expected: str) -> None:
    config = migrations.alembic_config(database_url)
    config.output_buffer = io.StringIO()

    command.upgrade(config, "head", sql=True)

    sql = config.output_buffer.getvalue()
    # With alembic_version; SQLite alters scan.location_id (0003) by copying into _alembic_tmp_scan.
    copies = sql.count("CREATE TABLE _alembic_tmp_")
    assert copies == (1 if database_url.startswith("sqlite") else 0)
    assert sql.count("CREATE TABLE") - copies == 1 + len(BOOK_TABLES) + len(LATER_TABLES) + len(REGISTRY_TABLES)
    assert "ALTER TABLE location ADD COLUMN reconciled_through" in sql
    assert expected in sql
    assert "WHERE status != 'resolved'" in sql
    assert sql.rstrip().endswith("COMMIT;")


def test_0003_allows_only_rejected_scans_without_a_location_and_downgrade_drops_them(db_url: str) -> None:
    migrations.upgrade(db_url)
    with session_on(db_url) as session:
        seed_book(session)
        seed_scan_to_adjustment(session, captured_at=at(5))
        session.add(Scan(location_id=None, captured_at=at(6), image_sha256="f" * 64, image_size_bytes=3,
                         source="upload", status=ScanStatus.REJECTED, reject_reason="corrupt_image"))
    with pytest.raises(sa.exc.IntegrityError), session_on(db_url) as session:
        session.add(Scan(location_id=None, captured_at=at(6), image_sha256="e" * 64, image_size_bytes=3,
                         source="upload", status=ScanStatus.PROCESSED))
    with connect(db_url) as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM scan")).scalar() == 2

    migrations.downgrade(db_url, "0002")

    assert migrations.current(db_url) == "0002"
    with connect(db_url) as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM scan")).scalar() == 1
        assert connection.execute(sa.text("SELECT count(*) FROM scan WHERE location_id IS NULL")).scalar() == 0
    assert later_table_counts(db_url) == dict.fromkeys(LATER_TABLES, 1)
    migrations.upgrade(db_url)
    assert migrations.current(db_url) == "0004"


def test_0004_adds_the_camera_registry_and_downgrade_drops_only_it(db_url: str) -> None:
    migrations.upgrade(db_url)
    with session_on(db_url) as session:
        seed_book(session)
        shelf = session.scalars(sa.select(Location).where(Location.location_code == "WH1-A01-B01-S1")).one()
        session.add(Camera(camera_code="CAM-1", kind=CameraKind.HTTP, url="http://127.0.0.1/snap.jpg",
                           location_id=shelf.id))
    with pytest.raises(sa.exc.IntegrityError), session_on(db_url) as session:
        session.add(Camera(camera_code="CAM-2", kind=CameraKind.HTTP, url="http://x", interval_s=0))
    book = book_rows(db_url)

    migrations.downgrade(db_url, "0003")

    assert "camera" not in table_names(db_url)
    assert book_rows(db_url) == book
    migrations.upgrade(db_url)
    with session_on(db_url) as session:
        assert session.scalars(sa.select(Camera)).all() == []
