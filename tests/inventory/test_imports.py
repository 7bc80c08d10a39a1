"""WMS imports (inventory.imports) on real SQLite and real PostgreSQL (the ``factory`` fixture)."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from inventory.db import run_in_transaction
from inventory.errors import ImportFileError
from inventory.imports import ImportResult, import_locations, import_skus, import_stock
from inventory.models import FacingRule, Location, LocationLevel, Sku, StockAdjustment, StockLevel
from tests.conftest import count_rows

Importer = Callable[..., ImportResult]

SAMPLE_DATA = Path(__file__).resolve().parents[2] / "workers" / "sample_data"


def stream(text: str, name: str = "upload.csv") -> io.StringIO:
    """A named text stream, as an open file would be."""
    buffer = io.StringIO(text)
    buffer.name = name
    return buffer


def run_import(
    factory: sessionmaker[Session], importer: Importer, text: str, *, name: str = "upload.csv",
    actor: str = "tester",
) -> ImportResult:
    """Import ``text`` in one committed transaction (the stream is made inside the retried work)."""
    return run_in_transaction(factory, lambda s: importer(s, file=stream(text, name), actor=actor))


def import_error(factory: sessionmaker[Session], importer: Importer, text: str) -> ImportFileError:
    with pytest.raises(ImportFileError) as info:
        run_import(factory, importer, text)
    return info.value


def seed(factory: sessionmaker[Session]) -> None:
    """WH1 (warehouse) > WH1-A (zone) > WH1-A01 (aisle) > WH1-A01-B01-S1 (shelf); SKU-A and SKU-B."""
    with factory.begin() as s:
        parent_id: int | None = None
        for code, level in [("WH1", LocationLevel.WAREHOUSE), ("WH1-A", LocationLevel.ZONE),
                            ("WH1-A01", LocationLevel.AISLE), ("WH1-A01-B01-S1", LocationLevel.SHELF)]:
            location = Location(location_code=code, level=level, parent_id=parent_id)
            s.add(location)
            s.flush()
            parent_id = location.id
        s.add_all([Sku(sku_code="SKU-A", name="Product A"), Sku(sku_code="SKU-B", name="Product B")])


def book(factory: sessionmaker[Session]) -> dict[tuple[str, str], tuple[int, str]]:
    """(location_code, sku_code) -> (quantity, source) of every stock level."""
    with factory() as s:
        rows = s.execute(
            sa.select(Location.location_code, Sku.sku_code, StockLevel.quantity, StockLevel.source)
            .join(Location, StockLevel.location_id == Location.id)
            .join(Sku, StockLevel.sku_id == Sku.id)
        )
        return {(loc, sku): (quantity, source) for loc, sku, quantity, source in rows}


def ledger(factory: sessionmaker[Session]) -> list[tuple[str, str, int | None, int, str, str]]:
    """Every stock adjustment as (location_code, sku_code, from, to, reason, actor), oldest first."""
    with factory() as s:
        rows = s.execute(
            sa.select(Location.location_code, Sku.sku_code, StockAdjustment.from_quantity,
                      StockAdjustment.to_quantity, StockAdjustment.reason, StockAdjustment.actor)
            .join(Location, StockAdjustment.location_id == Location.id)
            .join(Sku, StockAdjustment.sku_id == Sku.id)
            .order_by(StockAdjustment.id)
        )
        return list(rows)


def updated_at(factory: sessionmaker[Session], model: type[Sku] | type[Location]) -> dict[int, datetime]:
    with factory() as s:
        return dict(s.execute(sa.select(model.id, model.updated_at)).all())


def counts(result: ImportResult) -> tuple[int, int, int, int]:
    return result.rows_read, result.inserted, result.updated, result.unchanged


# ------------------------------------------------------------------------------------ happy paths


SKUS = """sku_code,name,description,gtin
SKU-1,"Spaghetti No. 5, 500 g",Durum wheat,2000000010014
SKU-2,Penne Rigate 500 g,,
SKU-3,Chopped Tomatoes 400 g,,2000000010038
"""


def test_import_skus_inserts_then_reimport_changes_nothing(factory: sessionmaker[Session]) -> None:
    first = run_import(factory, import_skus, SKUS, name="skus.csv")
    stamps = updated_at(factory, Sku)
    second = run_import(factory, import_skus, SKUS, name="skus.csv")

    assert first == ImportResult("skus.csv", rows_read=3, inserted=3, updated=0, unchanged=0)
    assert counts(second) == (3, 0, 0, 3)
    assert updated_at(factory, Sku) == stamps
    with factory() as s:
        skus = {sku.sku_code: (sku.name, sku.description, sku.gtin) for sku in s.scalars(sa.select(Sku))}
    assert skus == {
        "SKU-1": ("Spaghetti No. 5, 500 g", "Durum wheat", "2000000010014"),
        "SKU-2": ("Penne Rigate 500 g", None, None),
        "SKU-3": ("Chopped Tomatoes 400 g", None, "2000000010038"),
    }


def test_import_skus_updates_changed_rows_and_leaves_absent_columns_alone(
    factory: sessionmaker[Session],
) -> None:
    run_import(factory, import_skus, SKUS)
    before = updated_at(factory, Sku)

    result = run_import(factory, import_skus, "sku_code,name\nSKU-1,Spaghetti 500 g\nSKU-2,Penne Rigate 500 g\n"
                                              "SKU-4,Basmati Rice 1 kg\n")

    assert counts(result) == (3, 1, 1, 1)
    after = updated_at(factory, Sku)
    with factory() as s:
        spaghetti = s.scalars(sa.select(Sku).where(Sku.sku_code == "SKU-1")).one()
        penne_id = s.scalars(sa.select(Sku.id).where(Sku.sku_code == "SKU-2")).one()
    assert (spaghetti.name, spaghetti.description, spaghetti.gtin) == ("Spaghetti 500 g", "Durum wheat",
                                                                       "2000000010014")
    assert after[spaghetti.id] > before[spaghetti.id]
    assert after[penne_id] == before[penne_id]


def test_import_locations_with_parents_later_in_the_file_and_in_the_database(
    factory: sessionmaker[Session],
) -> None:
    seed(factory)
    text = (
        "location_code,level,parent_code,name,facing_rule,units_per_facing\n"
        "WH2-A01-B01-S1,shelf,WH2-A01-B01,Cans,units_per_facing,4\n"
        "WH2-A01-B01,bay,WH2-A01,,,\n"
        "WH2-A01,aisle,WH2-A,,,\n"
        "WH2-A,zone,WH2,,,\n"
        "WH2,warehouse,,Second warehouse,,\n"
        "WH1-A02,aisle,WH1-A,Aisle 2,VISIBLE_UNITS,\n"
    )

    first = run_import(factory, import_locations, text)
    second = run_import(factory, import_locations, text)

    assert counts(first) == (6, 6, 0, 0)
    assert counts(second) == (6, 0, 0, 6)
    with factory() as s:
        locations = {loc.location_code: loc for loc in s.scalars(sa.select(Location))}
        parent = {code: (loc.parent.location_code if loc.parent else None) for code, loc in locations.items()}
    assert parent["WH2-A01-B01-S1"] == "WH2-A01-B01"
    assert parent["WH2-A01-B01"] == "WH2-A01"
    assert parent["WH2-A"] == "WH2"
    assert parent["WH2"] is None
    assert parent["WH1-A02"] == "WH1-A"
    shelf = locations["WH2-A01-B01-S1"]
    assert (shelf.level, shelf.facing_rule, shelf.units_per_facing, shelf.name) == (
        LocationLevel.SHELF, FacingRule.UNITS_PER_FACING, 4, "Cans")
    assert shelf.facings_to_units(3) == 12
    assert (locations["WH2"].name, locations["WH2"].facing_rule) == ("Second warehouse", FacingRule.VISIBLE_UNITS)


def test_import_locations_moves_a_location_and_keeps_absent_columns(factory: sessionmaker[Session]) -> None:
    seed(factory)
    run_import(factory, import_locations, "location_code,level,parent_code,name,units_per_facing\n"
                                          "WH1-A02,aisle,WH1-A,Aisle 2,1\nWH1-A02-S9,shelf,WH1-A01,Shelf 9,6\n")

    result = run_import(factory, import_locations, "location_code,level,parent_code\n"
                                                    "WH1-A02-S9,shelf,WH1-A02\nWH1-A02,aisle,WH1-A\n")

    assert counts(result) == (2, 0, 1, 1)
    with factory() as s:
        moved = s.scalars(sa.select(Location).where(Location.location_code == "WH1-A02-S9")).one()
        assert moved.parent is not None
        assert (moved.parent.location_code, moved.name, moved.units_per_facing) == ("WH1-A02", "Shelf 9", 6)


STOCK = """location_code,sku_code,quantity
WH1-A01-B01-S1,SKU-A,12
WH1-A01-B01-S1,SKU-B,0
WH1-A01,SKU-A,40
"""


def test_import_stock_creates_levels_with_one_ledger_row_each(factory: sessionmaker[Session]) -> None:
    seed(factory)

    result = run_import(factory, import_stock, STOCK, name="stock-2026-11-29.csv", actor="wms-sync")

    assert counts(result) == (3, 3, 0, 0)
    assert book(factory) == {
        ("WH1-A01-B01-S1", "SKU-A"): (12, "wms_import"),
        ("WH1-A01-B01-S1", "SKU-B"): (0, "wms_import"),
        ("WH1-A01", "SKU-A"): (40, "wms_import"),
    }
    assert sorted(ledger(factory)) == sorted([
        ("WH1-A01-B01-S1", "SKU-A", None, 12, "wms_import: stock-2026-11-29.csv", "wms-sync"),
        ("WH1-A01-B01-S1", "SKU-B", None, 0, "wms_import: stock-2026-11-29.csv", "wms-sync"),
        ("WH1-A01", "SKU-A", None, 40, "wms_import: stock-2026-11-29.csv", "wms-sync"),
    ])


def test_reimporting_stock_changes_nothing_and_writes_no_ledger_rows(factory: sessionmaker[Session]) -> None:
    seed(factory)
    run_import(factory, import_stock, STOCK)
    with factory() as s:
        stamps = dict(s.execute(sa.select(StockLevel.id, StockLevel.updated_at)).all())

    result = run_import(factory, import_stock, STOCK)

    assert counts(result) == (3, 0, 0, 3)
    assert len(ledger(factory)) == 3
    with factory() as s:
        assert dict(s.execute(sa.select(StockLevel.id, StockLevel.updated_at)).all()) == stamps


def test_changed_quantity_updates_the_book_and_writes_exactly_one_ledger_row(
    factory: sessionmaker[Session],
) -> None:
    seed(factory)
    with factory.begin() as s:  # a book quantity set by someone else
        shelf_id = s.scalars(sa.select(Location.id).where(Location.location_code == "WH1-A01-B01-S1")).one()
        sku_ids = dict(s.execute(sa.select(Sku.sku_code, Sku.id)).all())
        s.add(StockLevel(location_id=shelf_id, sku_id=sku_ids["SKU-A"], quantity=12, source="manual"))
        s.add(StockLevel(location_id=shelf_id, sku_id=sku_ids["SKU-B"], quantity=5, source="manual"))

    result = run_import(factory, import_stock, "location_code,sku_code,quantity\n"
                                               "WH1-A01-B01-S1,SKU-A,7\nWH1-A01-B01-S1,SKU-B,5\n",
                        name="stock.csv", actor="alice")

    assert counts(result) == (2, 0, 1, 1)
    assert book(factory) == {("WH1-A01-B01-S1", "SKU-A"): (7, "wms_import"),
                             ("WH1-A01-B01-S1", "SKU-B"): (5, "manual")}
    assert ledger(factory) == [("WH1-A01-B01-S1", "SKU-A", 12, 7, "wms_import: stock.csv", "alice")]


def test_stock_import_refreshes_objects_already_loaded_in_the_session(factory: sessionmaker[Session]) -> None:
    seed(factory)
    run_import(factory, import_stock, STOCK)
    with factory.begin() as s:
        level = s.scalars(sa.select(StockLevel).where(StockLevel.quantity == 12)).one()
        import_stock(s, file=stream(STOCK.replace(",12\n", ",11\n")), actor="tester")
        assert level.quantity == 11


def test_stock_import_of_many_rows_uses_a_bounded_number_of_statements(
    factory: sessionmaker[Session], engine: sa.Engine
) -> None:
    seed(factory)
    n = 2_400  # several IN chunks
    skus = "sku_code,name\n" + "".join(f"BULK-{i:05d},Bulk product {i}\n" for i in range(n))
    run_import(factory, import_skus, skus)
    stock = "location_code,sku_code,quantity\n" + "".join(
        f"WH1-A01-B01-S1,BULK-{i:05d},{i % 7}\n" for i in range(n))
    run_import(factory, import_stock, stock)
    changed = "location_code,sku_code,quantity\n" + "".join(
        f"WH1-A01-B01-S1,BULK-{i:05d},{i % 7 + (i % 2)}\n" for i in range(n))
    statements: list[str] = []

    def count(*args: object) -> None:
        statements.append(str(args[2]))

    event.listen(engine, "before_cursor_execute", count)
    try:
        result = run_import(factory, import_stock, changed)
    finally:
        event.remove(engine, "before_cursor_execute", count)

    assert counts(result) == (n, 0, n // 2, n // 2)
    assert len(ledger(factory)) == n + n // 2
    assert len(statements) < 40, f"{len(statements)} statements for {n} rows"


def test_an_import_racing_an_uncommitted_insert_of_the_same_stock_writes_the_ledger_once(
    factory: sessionmaker[Session], engine: sa.Engine, backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    seed(factory)
    first = factory()
    first.begin()
    first_result = import_stock(first, file=stream(STOCK), actor="first")  # inserted, not committed
    with ThreadPoolExecutor(max_workers=1) as pool, caplog.at_level(logging.INFO, logger="inventory.imports"):
        second = pool.submit(run_import, factory, import_stock, STOCK, actor="second")
        _wait_until_blocked(first, engine, backend)  # PostgreSQL: on the INSERT; SQLite: on BEGIN IMMEDIATE
        first.commit()
        first.close()
        second_result = second.result(timeout=60)

    assert counts(first_result) == (3, 3, 0, 0)
    assert counts(second_result) == (3, 0, 0, 3)
    assert [row[5] for row in ledger(factory)] == ["first"] * 3
    if backend == "postgresql":  # the second saw no rows, inserted nothing, then compared under lock
        assert "3 stock levels were inserted concurrently" in caplog.text


def _wait_until_blocked(holder: Session, engine: sa.Engine, backend: str) -> None:
    """Return once another connection waits for a lock ``holder`` holds (SQLite: after a pause)."""
    if backend != "postgresql":
        time.sleep(0.5)
        return
    holder_pid = holder.scalar(sa.text("SELECT pg_backend_pid()"))
    deadline = time.monotonic() + 10
    with engine.connect() as conn:
        while time.monotonic() < deadline:
            waiting = conn.scalar(
                sa.text("SELECT count(*) FROM pg_stat_activity WHERE :pid = ANY(pg_blocking_pids(pid))"),
                {"pid": holder_pid},
            )
            conn.rollback()
            if waiting:
                return
            time.sleep(0.02)
    raise AssertionError("the second import never waited for the first one's lock")


# ---------------------------------------------------------------------------------- bad files


def test_two_bad_rows_among_good_ones_are_both_reported_and_nothing_is_applied(
    factory: sessionmaker[Session],
) -> None:
    seed(factory)
    run_import(factory, import_stock, "location_code,sku_code,quantity\nWH1-A01-B01-S1,SKU-A,3\n")
    book_before, ledger_before = book(factory), ledger(factory)
    text = (
        "location_code,sku_code,quantity\n"
        "WH1-A01-B01-S1,SKU-A,9\n"  # a good change
        "WH1-A01-B01-S1,SKU-B,4\n"  # a good insert
        "WH1-A01,SKU-B,-2\n"
        "WH1-A01,SKU-NOPE,5\n"
        "WH1-A01,SKU-A,6\n"
    )

    error = import_error(factory, import_stock, text)

    assert error.reason == "invalid_import_file"
    assert error.row_errors == [(4, "quantity -2 is negative"), (5, "unknown sku_code 'SKU-NOPE'")]
    assert "line 4" in str(error) and "line 5" in str(error)
    assert book(factory) == book_before
    assert ledger(factory) == ledger_before


def test_bad_skus_among_good_ones_insert_nothing(factory: sessionmaker[Session]) -> None:
    error = import_error(factory, import_skus, "sku_code,name\nSKU-1,One\n,Nameless\nSKU-3,\nSKU-4,Four\n")

    assert error.row_errors == [(3, "sku_code is empty"), (4, "name is empty")]
    with factory() as s:
        assert count_rows(s, Sku) == 0


LOCATION_HEADER = "location_code,level,parent_code,name,facing_rule,units_per_facing\n"
STOCK_HEADER = "location_code,sku_code,quantity\n"

# (importer, file text, expected line, expected reason substring); the database holds seed().
VALIDATION_CASES = [
    pytest.param(import_skus, "", 1, "no header", id="empty-file"),
    pytest.param(import_skus, "\n  \n", 1, "no header", id="blank-file"),
    pytest.param(import_skus, "sku_code,name,colour\nS,N,red\n", 1, "unknown column(s): colour",
                 id="unknown-column"),
    pytest.param(import_skus, "sku_code\nS\n", 1, "missing required column(s): name", id="missing-column"),
    pytest.param(import_skus, "sku_code,name,NAME\nS,N,M\n", 1, "duplicate column(s): name",
                 id="duplicate-column"),
    pytest.param(import_skus, "sku_code,name,\nS,N,\n", 1, "empty column name", id="empty-column-name"),
    pytest.param(import_skus, "sku_code,name\n,Name\n", 2, "sku_code is empty", id="empty-key"),
    pytest.param(import_skus, "sku_code,name\nS,  \n", 2, "name is empty", id="empty-required-field"),
    pytest.param(import_skus, "sku_code,name\nS,N,extra\n", 2, "expected 2 fields", id="too-many-fields"),
    pytest.param(import_skus, "sku_code,name\nS\n", 2, "expected 2 fields", id="too-few-fields"),
    pytest.param(import_skus, "sku_code,name\nS,N\nT,M\nS,N2\n", 4, "duplicate sku_code 'S' (first on line 2)",
                 id="duplicate-sku"),
    pytest.param(import_skus, f"sku_code,name\n{'X' * 65},N\n", 2, "longer than 64", id="code-too-long"),
    pytest.param(import_skus, "sku_code,name,gtin\nS,N,2000000010015\n", 2, "wrong check digit",
                 id="gtin-check-digit"),
    pytest.param(import_skus, "sku_code,name,gtin\nS,N,20000-01\n", 2, "is not a GTIN", id="gtin-not-digits"),
    pytest.param(import_skus, 'sku_code,name\nS,"N"x\n', 2, "malformed CSV", id="malformed-quote"),
    pytest.param(import_locations, LOCATION_HEADER + "X,room,WH1,,,\n", 2, "'room' is not one of",
                 id="bad-level"),
    pytest.param(import_locations, LOCATION_HEADER + "WH9,warehouse,WH1,,,\n", 2, "a warehouse has no parent",
                 id="warehouse-with-parent"),
    pytest.param(import_locations, LOCATION_HEADER + "Z9,zone,,,,\n", 2, "parent_code is empty",
                 id="zone-without-parent"),
    pytest.param(import_locations, LOCATION_HEADER + "Z9,zone,NOPE,,,\n", 2, "unknown parent_code 'NOPE'",
                 id="unknown-parent"),
    pytest.param(import_locations, LOCATION_HEADER + "Z1,zone,Z2,,,\nZ2,zone,Z1,,,\n", 3,
                 "parent cycle: Z2 -> Z1 -> Z2", id="parent-cycle"),
    pytest.param(import_locations, LOCATION_HEADER + "Z1,zone,Z1,,,\n", 2, "parent cycle: Z1 -> Z1",
                 id="own-parent"),
    pytest.param(import_locations, LOCATION_HEADER + "Z1,zone,Z2,,,\nZ2,zone,Z3,,,\nZ3,zone,Z2,,,\n", 3,
                 "parent cycle: Z2 -> Z3 -> Z2", id="chain-into-a-cycle"),
    pytest.param(import_locations, LOCATION_HEADER + "X,,WH1,,,\n", 2, "level is empty", id="empty-level"),
    pytest.param(import_locations, LOCATION_HEADER + "WH1-A,zone,WH1-A01,,,\n", 2,
                 "parent cycle: WH1-A -> WH1-A01 -> WH1-A", id="cycle-through-database"),
    pytest.param(import_locations, LOCATION_HEADER + "A9,aisle,WH1,,,\nB9,zone,A9,,,\n", 3,
                 "level zone must be deeper than the level of parent 'A9' (aisle)", id="level-order-in-file"),
    pytest.param(import_locations, LOCATION_HEADER + "Z9,zone,WH1-A,,,\n", 2,
                 "must be deeper than the level of parent 'WH1-A' (zone)", id="level-order-database-parent"),
    pytest.param(import_locations, LOCATION_HEADER + "WH1-A,bin,WH1,,,\n", 2,
                 "existing child 'WH1-A01' (aisle) would not be deeper than level bin", id="level-above-child"),
    pytest.param(import_locations, LOCATION_HEADER + "S9,shelf,WH1-A01,,per_case,\n", 2,
                 "'per_case' is not one of units_per_facing, visible_units", id="bad-facing-rule"),
    pytest.param(import_locations, LOCATION_HEADER + "S9,shelf,WH1-A01,,units_per_facing,0\n", 2,
                 "units_per_facing 0 is below 1", id="units-per-facing-zero"),
    pytest.param(import_locations, LOCATION_HEADER + "S9,shelf,WH1-A01,,units_per_facing,two\n", 2,
                 "units_per_facing 'two' is not an integer", id="units-per-facing-text"),
    pytest.param(import_locations, LOCATION_HEADER + "S9,shelf,WH1-A01,,,\nS9,bin,WH1-A01,,,\n", 3,
                 "duplicate location_code 'S9' (first on line 2)", id="duplicate-location"),
    pytest.param(import_stock, STOCK_HEADER + "WH1-A01-B01-S1,SKU-A,abc\n", 2, "quantity 'abc' is not an integer",
                 id="quantity-text"),
    pytest.param(import_stock, STOCK_HEADER + "WH1-A01-B01-S1,SKU-A,1.5\n", 2, "quantity '1.5' is not an integer",
                 id="quantity-decimal"),
    pytest.param(import_stock, STOCK_HEADER + "WH1-A01-B01-S1,SKU-A,-3\n", 2, "quantity -3 is negative",
                 id="quantity-negative"),
    pytest.param(import_stock, STOCK_HEADER + "WH1-A01-B01-S1,SKU-A,\n", 2, "quantity is empty",
                 id="quantity-empty"),
    pytest.param(import_stock, STOCK_HEADER + f"WH1-A01-B01-S1,SKU-A,{2**63}\n", 2, "too large",
                 id="quantity-too-large"),
    pytest.param(import_stock, STOCK_HEADER + "WH1-NOPE,SKU-A,1\n", 2, "unknown location_code 'WH1-NOPE'",
                 id="unknown-location"),
    pytest.param(import_stock, STOCK_HEADER + "WH1-A01-B01-S1,SKU-NOPE,1\n", 2, "unknown sku_code 'SKU-NOPE'",
                 id="unknown-sku"),
    pytest.param(import_stock, STOCK_HEADER + "WH1-A01,SKU-A,1\nWH1-A01,SKU-B,1\nWH1-A01,SKU-A,2\n", 4,
                 "duplicate location_code/sku_code pair 'WH1-A01'/'SKU-A' (first on line 2)", id="duplicate-pair"),
    pytest.param(import_stock, "location_code,sku,quantity\nWH1-A01,SKU-A,1\n", 1,
                 "missing required column(s): sku_code", id="stock-missing-column"),
    pytest.param(import_skus, 'sku_code,name\nS,N\nT,"M\nU,O\n', 3,
                 "malformed CSV: unexpected end of data (a quoted field starting on this line is never closed)",
                 id="unterminated-quote"),
    pytest.param(import_skus, "sku_code,name\nS,N\x00\n", 2, "name contains a control character (U+0000",
                 id="nul-in-sku"),
    pytest.param(import_skus, 'sku_code,name,description\nS,N,"a\tb\x07"\n', 2,
                 "description contains a control character (U+0007 at character 4)", id="bell-after-tab"),
    pytest.param(import_locations, LOCATION_HEADER + "S9\x00,shelf,WH1-A01,,,\n", 2,
                 "location_code contains a control character (U+0000", id="nul-in-location"),
    pytest.param(import_stock, STOCK_HEADER + "WH1-A01,SKU-A,1\x00\n", 2, "quantity contains a control character",
                 id="nul-in-stock"),
    pytest.param(import_stock, STOCK_HEADER + "WH1-A01,SKU-A,\u0661\u0662\n", 2,
                 "quantity '\u0661\u0662' is not an integer (write plain digits 0-9", id="quantity-arabic-indic"),
    pytest.param(import_stock, STOCK_HEADER + "WH1-A01,SKU-A,1_000\n", 2, "quantity '1_000' is not an integer",
                 id="quantity-underscore"),
    pytest.param(import_stock, STOCK_HEADER + f"WH1-A01,SKU-A,{'9' * 5000}\n", 2, "(5000 characters) is too large",
                 id="quantity-5000-digits"),
    pytest.param(import_stock, STOCK_HEADER + f"WH1-A01,SKU-A,-{'9' * 5000}\n", 2, "is negative",
                 id="quantity-5000-digits-negative"),
    pytest.param(import_locations, LOCATION_HEADER + f"S9,shelf,WH1-A01,,units_per_facing,{2**31}\n", 2,
                 "units_per_facing 2147483648 is too large (at most 2147483647)", id="units-per-facing-too-large"),
]


@pytest.mark.parametrize(("importer", "text", "line", "reason"), VALIDATION_CASES)
def test_validation_rejects_the_file_naming_line_and_reason(
    factory: sessionmaker[Session], importer: Importer, text: str, line: int, reason: str
) -> None:
    seed(factory)
    with factory() as s:
        before = (count_rows(s, Sku), count_rows(s, Location), count_rows(s, StockLevel))

    error = import_error(factory, importer, text)

    assert any(l == line and reason in r for l, r in error.row_errors), error.row_errors  # noqa: E741
    with factory() as s:
        assert (count_rows(s, Sku), count_rows(s, Location), count_rows(s, StockLevel)) == before


def test_bom_blank_lines_whitespace_and_crlf_are_accepted(factory: sessionmaker[Session], tmp_path: Path) -> None:
    seed(factory)
    path = tmp_path / "stock.csv"
    path.write_bytes(
        "\ufeff\r\n Location_Code , SKU_CODE ,quantity \r\n\r\n WH1-A01-B01-S1 , SKU-A , 5 \r\n"
        "   \r\n,,\r\nWH1-A01,SKU-B,7\r\n\r\n".encode()
    )

    result = run_in_transaction(factory, lambda s: import_stock(s, file=path, actor="tester"))

    assert result == ImportResult("stock.csv", rows_read=2, inserted=2, updated=0, unchanged=0)
    assert book(factory) == {("WH1-A01-B01-S1", "SKU-A"): (5, "wms_import"),
                             ("WH1-A01", "SKU-B"): (7, "wms_import")}
    assert ledger(factory)[0][4] == "wms_import: stock.csv"


def test_line_numbers_count_blank_lines_and_a_bom(factory: sessionmaker[Session], tmp_path: Path) -> None:
    seed(factory)
    path = tmp_path / "stock.csv"
    path.write_text("\ufeff\nlocation_code,sku_code,quantity\n\nWH1-A01,SKU-A,1\n\nWH1-A01,SKU-B,x\n",
                    encoding="utf-8")

    with pytest.raises(ImportFileError) as info:
        run_in_transaction(factory, lambda s: import_stock(s, file=path))

    assert info.value.row_errors == [(6, "quantity 'x' is not an integer")]


def test_quoted_field_with_newlines_keeps_the_line_numbers_after_it(factory: sessionmaker[Session]) -> None:
    text = (
        "sku_code,name,description\n"
        'SKU-1,Oats,"Rolled oats.\nStore dry,\n""keep closed"""\n'  # lines 2-4
        "SKU-2,,\n"  # line 5
        'SKU-3,"Tea,\n80 bags",\n'  # lines 6-7
        "SKU-4,Coffee,\n"  # line 8
        "SKU-3,Tea again,\n"  # line 9
    )

    error = import_error(factory, import_skus, text)

    assert error.row_errors == [(5, "name is empty"), (9, "duplicate sku_code 'SKU-3' (first on line 6)")]


def test_quoted_newline_values_are_stored_intact(factory: sessionmaker[Session]) -> None:
    run_import(factory, import_skus, 'sku_code,name,description\nSKU-1,Oats,"Rolled oats.\n""Keep dry"""\n')

    with factory() as s:
        assert s.scalars(sa.select(Sku.description)).one() == 'Rolled oats.\n"Keep dry"'


def test_tabs_and_quoted_line_breaks_are_the_control_characters_allowed(factory: sessionmaker[Session]) -> None:
    run_import(factory, import_skus, 'sku_code,name,description\nSKU-1,Oats,"Rolled\toats.\r\nKeep dry"\n')

    with factory() as s:
        assert s.scalars(sa.select(Sku.description)).one() == "Rolled\toats.\r\nKeep dry"


def test_a_stream_that_is_not_utf8_is_rejected_with_its_line(
    factory: sessionmaker[Session], tmp_path: Path
) -> None:
    path = tmp_path / "skus.csv"
    good = b"sku_code,name\nSKU-1,Cafe\nSKU-2,Caf"
    path.write_bytes(good + "\xe9\n".encode("latin-1"))

    def work(s: Session) -> ImportResult:
        with path.open(encoding="utf-8", newline="") as handle:  # as the CLI opens files
            return import_skus(s, file=handle)

    with pytest.raises(ImportFileError, match=r"^skus\.csv: not a UTF-8 file") as info:
        run_in_transaction(factory, work)

    assert info.value.row_errors == [(3, f"invalid UTF-8 at byte offset {len(good)}")]
    with factory() as s:
        assert count_rows(s, Sku) == 0


def test_a_file_that_is_not_utf8_is_rejected_with_its_line(factory: sessionmaker[Session], tmp_path: Path) -> None:
    path = tmp_path / "skus.csv"
    path.write_bytes("sku_code,name\nSKU-1,Cafe\nSKU-2,Caf\xe9\n".encode("latin-1"))

    with pytest.raises(ImportFileError) as info:
        run_in_transaction(factory, lambda s: import_skus(s, file=path))

    assert info.value.row_errors[0][0] == 3
    assert "invalid UTF-8" in info.value.row_errors[0][1]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rows_read": 2, "inserted": 1, "updated": 0, "unchanged": 0}, "expected 2, received 1"),
        ({"rows_read": 0, "inserted": -1, "updated": 1, "unchanged": 0}, "must be >= 0"),
        ({"rows_read": 0, "inserted": 0, "updated": 0, "unchanged": 0}, None),
    ],
)
def test_import_result_checks_its_counts(kwargs: dict[str, int], message: str | None) -> None:
    if message is None:
        assert ImportResult("f.csv", **kwargs).rows_read == 0
        return
    with pytest.raises(ValueError, match=message):
        ImportResult("f.csv", **kwargs)


def test_an_empty_actor_is_refused(factory: sessionmaker[Session]) -> None:
    with pytest.raises(ValueError, match="actor"), factory.begin() as s:
        import_stock(s, file=stream(STOCK_HEADER), actor="")


# ---------------------------------------------------------------------------------- sample data


def test_sample_files_import_cleanly_in_order_and_again_unchanged(factory: sessionmaker[Session]) -> None:
    def import_all(s: Session) -> list[tuple[int, int, int, int]]:
        return [
            counts(import_skus(s, file=SAMPLE_DATA / "skus.csv", actor="demo")),
            counts(import_locations(s, file=SAMPLE_DATA / "locations.csv", actor="demo")),
            counts(import_stock(s, file=SAMPLE_DATA / "stock.csv", actor="demo")),
        ]

    first = run_in_transaction(factory, import_all)
    second = run_in_transaction(factory, import_all)

    assert first == [(12, 12, 0, 0), (11, 11, 0, 0), (11, 11, 0, 0)]
    assert second == [(12, 0, 0, 12), (11, 0, 0, 11), (11, 0, 0, 11)]
    with factory() as s:
        shelves = s.scalars(sa.select(Location).where(Location.level == LocationLevel.SHELF)).all()
        assert len(shelves) == 6
        for shelf in shelves:  # every shelf sits in WH1 > WH1-A > WH1-A01 > a bay
            chain = [shelf.location_code]
            node = shelf.parent
            while node is not None:
                chain.append(node.location_code)
                node = node.parent
            assert chain[2:] == ["WH1-A01", "WH1-A", "WH1"]
        canned = s.scalars(sa.select(Location).where(Location.location_code == "WH1-A01-B01-S2")).one()
        stocked = s.execute(
            sa.select(StockLevel.quantity).where(StockLevel.location_id == canned.id)
        ).scalars().all()
        assert canned.facing_rule is FacingRule.UNITS_PER_FACING
        assert all(q % canned.units_per_facing == 0 for q in stocked)  # whole facings
        assert count_rows(s, StockAdjustment) == 11
