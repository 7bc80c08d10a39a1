"""Stock adjustments and discrepancy review on real SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from inventory import adjustments
from inventory.db import run_in_transaction
from inventory.errors import (
    InvalidInputError,
    InvalidStateError,
    NotFoundError,
    UnknownLocationError,
    UnknownSkuError,
)
from inventory.models import (
    Alert,
    Discrepancy,
    DiscrepancyKind,
    DiscrepancyStatus,
    Resolution,
    StockAdjustment,
    StockLevel,
)
from tests.conftest import count_rows, seed_shelf
from tests.inventory.test_reconcile import SHELF, alerts_by_change, run_concurrently, scan_and_reconcile


@pytest.fixture
def shelf(factory: sessionmaker[Session]) -> None:
    with factory.begin() as session:
        seed_shelf(session, book={"A": 10, "B": 4, "C": None})


def book(session: Session, sku_code: str) -> int | None:
    from inventory.models import Sku

    return session.scalar(sa.select(StockLevel.quantity).join(Sku).where(Sku.sku_code == sku_code))


@pytest.mark.usefixtures("shelf")
def test_hundred_concurrent_plus_one_adjustments(factory: sessionmaker[Session]) -> None:
    def plus_one(i: int) -> StockAdjustment:
        return run_in_transaction(
            factory,
            lambda s: adjustments.adjust_stock(
                s, location_code=SHELF, sku_code="A", delta=1, actor=f"picker-{i}", reason="found"
            ),
        )

    ledger = run_concurrently(100, plus_one)
    with factory() as session:
        assert book(session, "A") == 110
        rows = session.scalars(sa.select(StockAdjustment).order_by(StockAdjustment.to_quantity)).all()
        assert len(rows) == 100
        # every ledger row is one step: from n to n+1, each value exactly once
        assert [(r.from_quantity, r.to_quantity) for r in rows] == [(10 + i, 11 + i) for i in range(100)]
        assert {r.actor for r in rows} == {f"picker-{i}" for i in range(100)}
    assert sorted(a.to_quantity for a in ledger) == list(range(11, 111))


@pytest.mark.usefixtures("shelf")
def test_adjust_creates_stock_level_when_not_stocked(factory: sessionmaker[Session]) -> None:
    entry = run_in_transaction(
        factory,
        lambda s: adjustments.adjust_stock(s, location_code=SHELF, sku_code="C", delta=3, actor="u", reason="r"),
    )
    assert (entry.from_quantity, entry.to_quantity) == (0, 3)
    with factory() as session:
        assert book(session, "C") == 3


@pytest.mark.usefixtures("shelf")
@pytest.mark.parametrize(
    ("location_code", "sku_code", "delta", "error"),
    [
        ("NOWHERE", "A", 1, UnknownLocationError),
        (SHELF, "NOPE", 1, UnknownSkuError),
        (SHELF, "A", -11, IntegrityError),  # would go below zero
    ],
)
def test_adjust_refuses(
    factory: sessionmaker[Session], location_code: str, sku_code: str, delta: int, error: type[Exception]
) -> None:
    with pytest.raises(error):
        run_in_transaction(
            factory,
            lambda s: adjustments.adjust_stock(
                s, location_code=location_code, sku_code=sku_code, delta=delta, actor="u", reason="r"
            ),
        )
    with factory() as session:
        assert book(session, "A") == 10
        assert count_rows(session, StockAdjustment) == 0


@pytest.mark.usefixtures("shelf")
@pytest.mark.parametrize("quantity", [0, 1, 2**53 + 1, 2**62])
def test_quantities_round_trip_exactly(factory: sessionmaker[Session], quantity: int) -> None:
    with factory.begin() as session:
        level = session.scalars(sa.select(StockLevel)).first()
        assert level is not None
        adjustments.set_stock(session, location_id=level.location_id, sku_id=level.sku_id, quantity=quantity,
                              actor="u", reason="r", source="test")
    with factory() as session:
        level = session.scalars(sa.select(StockLevel).where(StockLevel.quantity == quantity)).one()
        assert level.quantity == quantity
        assert type(level.quantity) is int


def _confirmed_shortage(factory: sessionmaker[Session]) -> int:
    scan_and_reconcile(factory, 0, {"A": 6, "B": 4})
    scan_and_reconcile(factory, 1, {"A": 6, "B": 4})
    with factory() as session:
        return session.scalars(sa.select(Discrepancy.id)).one()


@pytest.mark.usefixtures("shelf")
def test_approve_sets_book_audits_and_resolves_in_one_transaction(factory: sessionmaker[Session]) -> None:
    discrepancy_id = _confirmed_shortage(factory)
    entry = run_in_transaction(
        factory,
        lambda s: adjustments.approve(s, discrepancy_id=discrepancy_id, actor="alice", channels=("log",)),
    )
    assert entry is not None
    assert (entry.from_quantity, entry.to_quantity) == (10, 6)
    assert (entry.actor, entry.discrepancy_id) == ("alice", discrepancy_id)
    with factory() as session:
        assert book(session, "A") == 6
        d = session.get(Discrepancy, discrepancy_id)
        assert d is not None
        assert (d.status, d.resolution, d.resolved_by) == (DiscrepancyStatus.RESOLVED, Resolution.ADJUSTED, "alice")
        assert alerts_by_change(session) == [("shortage", "opened"), ("shortage", "resolved")]
    # the next scan agrees with the new book: nothing reopens
    scan_and_reconcile(factory, 2, {"A": 6, "B": 4})
    with factory() as session:
        assert session.scalars(sa.select(Discrepancy).where(Discrepancy.status != "resolved")).all() == []


@pytest.mark.usefixtures("shelf")
def test_approve_refuses_when_the_book_changed_since(factory: sessionmaker[Session]) -> None:
    discrepancy_id = _confirmed_shortage(factory)  # measured against a book of 10, observed 6
    run_in_transaction(factory, lambda s: adjustments.adjust_stock(
        s, location_code=SHELF, sku_code="A", delta=30, actor="receiving", reason="delivery"))
    with pytest.raises(InvalidStateError) as info:
        run_in_transaction(factory, lambda s: adjustments.approve(s, discrepancy_id=discrepancy_id, actor="alice"))
    assert info.value.reason == "book_changed"
    with factory() as session:
        assert book(session, "A") == 40  # the delivery is not lost
    entry = run_in_transaction(
        factory, lambda s: adjustments.approve(s, discrepancy_id=discrepancy_id, actor="alice", force=True)
    )
    assert entry is not None and (entry.from_quantity, entry.to_quantity) == (40, 6)


@pytest.mark.usefixtures("shelf")
@pytest.mark.parametrize(
    ("actor", "reason", "expected"),
    [("", None, "invalid_actor"), ("x" * 129, None, "invalid_actor"), ("al\x00ice", None, "invalid_actor"),
     ("alice", "r" * 256, "invalid_reason")],
)
def test_approve_refuses_text_the_ledger_cannot_store(
    factory: sessionmaker[Session], actor: str, reason: str | None, expected: str
) -> None:
    discrepancy_id = _confirmed_shortage(factory)
    with pytest.raises(InvalidInputError) as info:
        run_in_transaction(
            factory, lambda s: adjustments.approve(s, discrepancy_id=discrepancy_id, actor=actor, reason=reason)
        )
    assert info.value.reason == expected


@pytest.mark.usefixtures("shelf")
def test_approve_misplaced_stocks_the_sku(factory: sessionmaker[Session]) -> None:
    scan_and_reconcile(factory, 0, {"A": 10, "B": 4, "C": 2})
    with factory() as session:
        discrepancy_id = session.scalars(sa.select(Discrepancy.id)).one()
    entry = run_in_transaction(factory, lambda s: adjustments.approve(s, discrepancy_id=discrepancy_id, actor="bob"))
    assert entry is not None
    assert (entry.from_quantity, entry.to_quantity) == (None, 2)
    with factory() as session:
        assert book(session, "C") == 2
        # never announced (one scan), so resolving it announces nothing
        assert count_rows(session, Alert) == 0


@pytest.mark.usefixtures("shelf")
def test_approve_failure_changes_nothing(factory: sessionmaker[Session]) -> None:
    scan_and_reconcile(factory, 0, {"A": 10, "B": 4}, unknown=3)
    with factory() as session:
        discrepancy_id = session.scalars(sa.select(Discrepancy.id)).one()
    with pytest.raises(InvalidStateError) as info:
        run_in_transaction(factory, lambda s: adjustments.approve(s, discrepancy_id=discrepancy_id, actor="bob"))
    assert info.value.reason == "no_sku_to_adjust"
    with factory() as session:
        assert count_rows(session, StockAdjustment) == 0
        d = session.get(Discrepancy, discrepancy_id)
        assert d is not None and d.status is DiscrepancyStatus.OPEN


@pytest.mark.usefixtures("shelf")
def test_ack_then_resolve_lifecycle(factory: sessionmaker[Session]) -> None:
    discrepancy_id = _confirmed_shortage(factory)
    run_in_transaction(factory, lambda s: adjustments.acknowledge(s, discrepancy_id=discrepancy_id, actor="al"))
    with pytest.raises(InvalidStateError):
        run_in_transaction(factory, lambda s: adjustments.acknowledge(s, discrepancy_id=discrepancy_id, actor="al"))
    # an acknowledged discrepancy is still tracked by reconciliation
    scan_and_reconcile(factory, 2, {"A": 5, "B": 4})
    with factory() as session:
        d = session.get(Discrepancy, discrepancy_id)
        assert d is not None
        assert (d.status, d.consecutive_scans, d.observed_quantity) == (DiscrepancyStatus.ACKNOWLEDGED, 3, 5)
    run_in_transaction(factory, lambda s: adjustments.resolve(s, discrepancy_id=discrepancy_id, actor="al"))
    with pytest.raises(InvalidStateError):
        run_in_transaction(factory, lambda s: adjustments.resolve(s, discrepancy_id=discrepancy_id, actor="al"))
    with pytest.raises(NotFoundError):
        run_in_transaction(factory, lambda s: adjustments.resolve(s, discrepancy_id=999, actor="al"))
    # resolved by hand without changing the book: the next disagreeing scan opens a new one
    scan_and_reconcile(factory, 3, {"A": 5, "B": 4})
    with factory() as session:
        kinds = session.execute(sa.select(Discrepancy.id, Discrepancy.status).order_by(Discrepancy.id)).all()
        assert [(status.value) for _, status in kinds] == ["resolved", "open"]
        assert book(session, "A") == 10
        new = session.get(Discrepancy, kinds[1][0])
        assert new is not None and new.kind is DiscrepancyKind.SHORTAGE and new.consecutive_scans == 1
