"""Reconciliation: the classification table, the discrepancy lifecycle, capture-time order,
and concurrent reconciliations, on real SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from inventory.db import run_in_transaction
from inventory.errors import InvalidInputError, InvalidStateError, UnknownLocationError, UnknownSkuError
from inventory.models import (
    Alert,
    Detection,
    Discrepancy,
    DiscrepancyKind,
    DiscrepancyStatus,
    FacingRule,
    Location,
    LocationLevel,
    Observation,
    Resolution,
    Scan,
    ScanStatus,
    Sku,
    StockLevel,
)
from inventory.reconcile import (
    DetectedItem,
    ObservedCount,
    ReconcileOutcome,
    ReconcilePolicy,
    ScanRecord,
    classify,
    reconcile_scan,
    record_rejected_scan,
    record_scan,
)
from tests.conftest import at, count_rows, seed_shelf

K = DiscrepancyKind
SHELF = "WH1-A01-B01-S1"

# ---------------------------------------------------------------- the classification table

STRICT = ReconcilePolicy()
TEN_PERCENT = ReconcilePolicy(tolerance_fraction=Decimal("0.1"))
TWO_UNITS = ReconcilePolicy(tolerance_units=2)


@pytest.mark.parametrize(
    ("expected", "observed", "policy", "kind"),
    [
        # not stocked here
        (None, 0, STRICT, None),
        (None, 1, STRICT, K.MISPLACED),
        (None, 5, TWO_UNITS, K.MISPLACED),  # tolerance never hides a misplaced SKU
        # empty slot
        (10, 0, STRICT, K.OUT_OF_STOCK),
        (1, 0, TWO_UNITS, K.OUT_OF_STOCK),  # tolerance never hides an empty slot
        (0, 0, STRICT, None),  # stocked at zero and empty: agrees
        # exact
        (10, 10, STRICT, None),
        (10, 9, STRICT, K.SHORTAGE),
        (10, 11, STRICT, K.OVERAGE),
        (0, 1, STRICT, K.OVERAGE),
        # absolute tolerance edges: |diff| <= 2 agrees, 3 does not
        (10, 8, TWO_UNITS, None),
        (10, 7, TWO_UNITS, K.SHORTAGE),
        (10, 12, TWO_UNITS, None),
        (10, 13, TWO_UNITS, K.OVERAGE),
        # fractional tolerance: floor(0.1 * 20) = 2; floor(0.1 * 19) = 1; floor(0.1 * 9) = 0
        (20, 18, TEN_PERCENT, None),
        (20, 17, TEN_PERCENT, K.SHORTAGE),
        (20, 22, TEN_PERCENT, None),
        (20, 23, TEN_PERCENT, K.OVERAGE),
        (19, 18, TEN_PERCENT, None),
        (19, 17, TEN_PERCENT, K.SHORTAGE),
        (9, 8, TEN_PERCENT, K.SHORTAGE),
        # the larger of the two allowances applies: max(2, floor(0.1 * 50) = 5)
        (50, 45, ReconcilePolicy(tolerance_units=2, tolerance_fraction=Decimal("0.1")), None),
        (50, 44, ReconcilePolicy(tolerance_units=2, tolerance_fraction=Decimal("0.1")), K.SHORTAGE),
        (5, 3, ReconcilePolicy(tolerance_units=2, tolerance_fraction=Decimal("0.1")), None),
    ],
)
def test_classify_table(expected: int | None, observed: int, policy: ReconcilePolicy, kind: K | None) -> None:
    assert classify(expected, observed, policy) == kind


@pytest.mark.parametrize(
    ("expected", "observed", "error"),
    [(-1, 0, ValueError), (1, -1, ValueError), (None, -2, ValueError)],
)
def test_classify_rejects_negative(expected: int | None, observed: int, error: type[Exception]) -> None:
    with pytest.raises(error):
        classify(expected, observed, STRICT)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tolerance_units": -1},
        {"tolerance_fraction": Decimal("1")},
        {"tolerance_fraction": Decimal("-0.1")},
        {"confirm_after_scans": 0},
        {"unknown_tolerance_facings": -1},
    ],
)
def test_policy_rejects_bad_values(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ReconcilePolicy(**kwargs)


# ---------------------------------------------------------------- helpers


def scan_and_reconcile(
    factory: sessionmaker[Session],
    minute: int,
    counts: dict[str, int],
    *,
    policy: ReconcilePolicy = STRICT,
    unknown: int = 0,
    channels: tuple[str, ...] = ("log",),
    location_code: str = SHELF,
    tag: str = "",
) -> ReconcileOutcome:
    """Record a scan captured at 10:<minute> with ``counts`` facings per SKU, and reconcile it."""

    def work(session: Session) -> ReconcileOutcome:
        scan_id, _ = record_scan(
            session,
            scan=ScanRecord(
                location_code=location_code,
                captured_at=at(minute),
                image_sha256=hashlib.sha256(f"{location_code}{minute}{counts}{unknown}{tag}".encode()).hexdigest(),
                image_size_bytes=1000,
                source="test",
                observations=[ObservedCount(code, n, 0.9) for code, n in counts.items()],
                unknown_facings=unknown,
            ),
        )
        return reconcile_scan(session, scan_id=scan_id, policy=policy, channels=channels)

    return run_in_transaction(factory, work)


def active(session: Session) -> list[Discrepancy]:
    return list(
        session.scalars(
            sa.select(Discrepancy).where(Discrepancy.status != DiscrepancyStatus.RESOLVED).order_by(Discrepancy.id)
        )
    )


def alerts_by_change(session: Session) -> list[tuple[str, str]]:
    """(kind announced, state change) of every alert, oldest first, from the alert bodies."""
    alerts = session.scalars(sa.select(Alert).order_by(Alert.id))
    return [(a.payload["discrepancy"]["kind"], a.state_change.value) for a in alerts]


@pytest.fixture
def shelf(factory: sessionmaker[Session]) -> None:
    """A shelf stocking A (10 units) and B (4 units); C exists but is not stocked there."""
    with factory.begin() as session:
        seed_shelf(session, book={"A": 10, "B": 4, "C": None})


# ---------------------------------------------------------------- every kind, through the database


@pytest.mark.usefixtures("shelf")
@pytest.mark.parametrize(
    ("counts", "unknown", "expected_kinds"),
    [
        ({"A": 10, "B": 4}, 0, {}),
        ({"A": 7, "B": 4}, 0, {"A": K.SHORTAGE}),
        ({"B": 4}, 0, {"A": K.OUT_OF_STOCK}),
        ({"A": 12, "B": 4}, 0, {"A": K.OVERAGE}),
        ({"A": 10, "B": 4, "C": 2}, 0, {"C": K.MISPLACED}),
        ({"A": 10, "B": 4}, 3, {None: K.UNKNOWN_PRODUCT}),
        ({"A": 0, "C": 1}, 1, {"A": K.OUT_OF_STOCK, "B": K.OUT_OF_STOCK, "C": K.MISPLACED, None: K.UNKNOWN_PRODUCT}),
    ],
)
def test_every_kind_is_recorded(
    factory: sessionmaker[Session], counts: dict[str, int], unknown: int, expected_kinds: dict[str | None, K]
) -> None:
    outcome = scan_and_reconcile(factory, 0, counts, unknown=unknown)
    with factory() as session:
        found = {(d.sku.sku_code if d.sku else None): d.kind for d in active(session)}
        assert found == expected_kinds
        assert len(outcome.opened) == len(expected_kinds)
        for d in active(session):
            assert d.consecutive_scans == 1
            assert d.first_seen_at == d.last_seen_at == at(0)
            assert d.evidence_scan_id == outcome.scan_id
        # one scan is never alert-worthy with K = 2
        assert count_rows(session, Alert) == 0


@pytest.mark.usefixtures("shelf")
def test_expected_and_observed_are_units_by_facing_rule(factory: sessionmaker[Session]) -> None:
    # a lane in the same warehouse holding cases of 6: each facing counts 6 units
    with factory.begin() as session:
        wh = session.scalars(sa.select(Location).where(Location.location_code == "WH1")).one()
        lane = Location(location_code="WH1-LANE-1", level=LocationLevel.BIN, parent_id=wh.id,
                        facing_rule=FacingRule.UNITS_PER_FACING, units_per_facing=6)
        sku = Sku(sku_code="P", name="Case of 6")
        session.add_all([lane, sku])
        session.flush()
        session.add(StockLevel(location_id=lane.id, sku_id=sku.id, quantity=24, source="test"))
    scan_and_reconcile(factory, 0, {"P": 3}, location_code="WH1-LANE-1")
    with factory() as session:
        obs = session.scalars(sa.select(Observation)).one()
        assert (obs.facings, obs.quantity) == (3, 18)
        (d,) = active(session)
        assert (d.kind, d.expected_quantity, d.observed_quantity) == (K.SHORTAGE, 24, 18)
    scan_and_reconcile(factory, 1, {"P": 4}, location_code="WH1-LANE-1")
    with factory() as session:
        assert active(session) == []


# ---------------------------------------------------------------- hysteresis


@pytest.mark.usefixtures("shelf")
def test_hysteresis_alerts_once_after_k_scans_and_resolves(factory: sessionmaker[Session]) -> None:
    scan_and_reconcile(factory, 0, {"A": 7, "B": 4})
    with factory() as session:
        assert alerts_by_change(session) == []
    scan_and_reconcile(factory, 1, {"A": 6, "B": 4})
    with factory() as session:
        (d,) = active(session)
        assert (d.kind, d.consecutive_scans, d.observed_quantity, d.expected_quantity) == (K.SHORTAGE, 2, 6, 10)
        assert (d.first_seen_at, d.last_seen_at) == (at(0), at(1))
        assert alerts_by_change(session) == [("shortage", "opened")]
    # more disagreeing scans of the same kind: no more alerts
    for minute in (2, 3, 4):
        scan_and_reconcile(factory, minute, {"A": 5, "B": 4})
    with factory() as session:
        (d,) = active(session)
        assert d.consecutive_scans == 5
        assert alerts_by_change(session) == [("shortage", "opened")]
    # a scan that agrees resolves it and announces that once
    outcome = scan_and_reconcile(factory, 5, {"A": 10, "B": 4})
    with factory() as session:
        assert active(session) == []
        d = session.get(Discrepancy, outcome.resolved[0])
        assert d is not None
        assert (d.status, d.resolution, d.resolved_at) == (DiscrepancyStatus.RESOLVED, Resolution.AGREED, at(5))
        assert alerts_by_change(session) == [("shortage", "opened"), ("shortage", "resolved")]
    scan_and_reconcile(factory, 6, {"A": 10, "B": 4})
    with factory() as session:
        assert len(alerts_by_change(session)) == 2


@pytest.mark.usefixtures("shelf")
def test_single_disagreeing_scan_never_alerts(factory: sessionmaker[Session]) -> None:
    scan_and_reconcile(factory, 0, {"A": 7, "B": 4})
    scan_and_reconcile(factory, 1, {"A": 10, "B": 4})  # a one-off miscount, then agreement
    with factory() as session:
        assert active(session) == []
        assert alerts_by_change(session) == []
        (d,) = session.scalars(sa.select(Discrepancy)).all()
        assert d.resolution is Resolution.AGREED


@pytest.mark.usefixtures("shelf")
@pytest.mark.parametrize("k", [1, 3])
def test_confirm_after_k_scans_is_configurable(factory: sessionmaker[Session], k: int) -> None:
    policy = ReconcilePolicy(confirm_after_scans=k)
    for minute in range(k):
        with factory() as session:
            assert alerts_by_change(session) == []
        scan_and_reconcile(factory, minute, {"A": 10, "B": 4, "C": 1}, policy=policy)
    with factory() as session:
        assert alerts_by_change(session) == [("misplaced", "opened")]


@pytest.mark.usefixtures("shelf")
def test_kind_change_restarts_count_and_alerts_changed(factory: sessionmaker[Session]) -> None:
    scan_and_reconcile(factory, 0, {"A": 7, "B": 4})
    scan_and_reconcile(factory, 1, {"A": 7, "B": 4})  # shortage confirmed
    scan_and_reconcile(factory, 2, {"B": 4})  # empty now: out_of_stock, count restarts
    with factory() as session:
        (d,) = active(session)
        assert (d.kind, d.consecutive_scans) == (K.OUT_OF_STOCK, 1)
        assert alerts_by_change(session) == [("shortage", "opened")]
    scan_and_reconcile(factory, 3, {"B": 4})
    with factory() as session:
        (d,) = active(session)
        assert alerts_by_change(session) == [("shortage", "opened"), ("out_of_stock", "changed")]
        assert d.first_seen_at == at(0)  # the same discrepancy, escalated


@pytest.mark.usefixtures("shelf")
def test_unknown_product_tolerance(factory: sessionmaker[Session]) -> None:
    policy = ReconcilePolicy(unknown_tolerance_facings=2)
    scan_and_reconcile(factory, 0, {"A": 10, "B": 4}, unknown=2, policy=policy)
    with factory() as session:
        assert active(session) == []
    scan_and_reconcile(factory, 1, {"A": 10, "B": 4}, unknown=3, policy=policy)
    with factory() as session:
        (d,) = active(session)
        assert (d.kind, d.sku_id, d.observed_quantity) == (K.UNKNOWN_PRODUCT, None, 3)


@pytest.mark.usefixtures("shelf")
def test_misplaced_resolves_when_no_longer_seen(factory: sessionmaker[Session]) -> None:
    scan_and_reconcile(factory, 0, {"A": 10, "B": 4, "C": 1})
    scan_and_reconcile(factory, 1, {"A": 10, "B": 4})
    with factory() as session:
        assert active(session) == []


# ---------------------------------------------------------------- capture time decides order


@pytest.mark.usefixtures("shelf")
def test_older_scan_processed_late_never_overrides_newer(factory: sessionmaker[Session]) -> None:
    scan_and_reconcile(factory, 10, {"A": 10, "B": 4})  # newest first: agrees
    late = scan_and_reconcile(factory, 5, {"A": 2, "B": 4})  # captured earlier, processed later
    assert late.stale
    with factory() as session:
        assert active(session) == []
        # the late scan and its observations are kept
        assert count_rows(session, Scan) == 2
        assert count_rows(session, Observation) == 4


@pytest.mark.usefixtures("shelf")
def test_late_scan_cannot_resolve_or_advance(factory: sessionmaker[Session]) -> None:
    scan_and_reconcile(factory, 0, {"A": 7, "B": 4})
    scan_and_reconcile(factory, 2, {"A": 7, "B": 4})
    assert scan_and_reconcile(factory, 1, {"A": 10, "B": 4}).stale  # older agreeing scan
    assert scan_and_reconcile(factory, 1, {"A": 7, "B": 4}, tag="x").stale  # older agreeing-kind scan
    with factory() as session:
        (d,) = active(session)
        assert (d.kind, d.consecutive_scans, d.last_seen_at) == (K.SHORTAGE, 2, at(2))


@pytest.mark.usefixtures("shelf")
def test_reconcile_is_idempotent_per_scan(factory: sessionmaker[Session]) -> None:
    outcome = scan_and_reconcile(factory, 0, {"A": 7, "B": 4})

    def again(session: Session) -> ReconcileOutcome:
        return reconcile_scan(session, scan_id=outcome.scan_id, policy=STRICT, channels=("log",))

    second = run_in_transaction(factory, again)
    assert second.already_reconciled
    with factory() as session:
        (d,) = active(session)
        assert d.consecutive_scans == 1


@pytest.mark.usefixtures("shelf")
def test_same_picture_is_one_scan(factory: sessionmaker[Session]) -> None:
    first = scan_and_reconcile(factory, 0, {"A": 7, "B": 4})
    second = scan_and_reconcile(factory, 0, {"A": 7, "B": 4})
    assert second.scan_id == first.scan_id
    assert second.already_reconciled
    with factory() as session:
        assert count_rows(session, Scan) == 1
        assert count_rows(session, Observation) == 2


@pytest.mark.usefixtures("shelf")
def test_rejected_scan_never_reconciles(factory: sessionmaker[Session]) -> None:
    with factory.begin() as session:
        loc = session.scalars(sa.select(Location).where(Location.location_code == SHELF)).one()
        scan = Scan(location_id=loc.id, captured_at=at(0), image_sha256="0" * 64, image_size_bytes=0,
                    source="test", status=ScanStatus.REJECTED, reject_reason="corrupt_image")
        session.add(scan)
        session.flush()
        scan_id = scan.id
    with factory.begin() as session, pytest.raises(InvalidStateError):
        reconcile_scan(session, scan_id=scan_id, policy=STRICT)


@pytest.mark.usefixtures("shelf")
def test_capture_time_in_the_future_is_refused(factory: sessionmaker[Session]) -> None:
    """A typo'd year (2062 for 2026) would make every real scan of the shelf stale: refused."""
    record = ScanRecord(location_code=SHELF, captured_at=at(0) + timedelta(days=365 * 36), image_sha256="f" * 64,
                        image_size_bytes=1, source="test", observations=[ObservedCount("A", 1)])
    with pytest.raises(InvalidInputError) as info:
        run_in_transaction(factory, lambda s: record_scan(s, scan=record, now=at(0)))
    assert info.value.reason == "captured_in_future"
    within_skew = ScanRecord(location_code=SHELF, captured_at=at(4), image_sha256="e" * 64, image_size_bytes=1,
                             source="test", observations=[ObservedCount("A", 1)])
    run_in_transaction(factory, lambda s: record_scan(s, scan=within_skew, now=at(0)))
    with factory() as session:
        assert count_rows(session, Scan) == 1


@pytest.mark.usefixtures("shelf")
def test_unknown_sku_in_observations_is_refused(factory: sessionmaker[Session]) -> None:
    with pytest.raises(UnknownSkuError, match="NOPE"):
        scan_and_reconcile(factory, 0, {"A": 1, "NOPE": 2})
    with factory() as session:
        assert count_rows(session, Scan) == 0


# ---------------------------------------------------------------- concurrency


def run_concurrently(n: int, work: Callable[[int], Any]) -> list[Any]:
    """Run ``work(i)`` for i in range(n) in n threads released together; re-raise any error."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def target(i: int) -> None:
        try:
            barrier.wait()
            results[i] = work(i)
        except BaseException as error:  # noqa: BLE001 - collected and re-raised below
            errors.append(error)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    if errors:
        raise errors[0]
    return results


@pytest.mark.usefixtures("shelf")
def test_eight_concurrent_first_sightings_make_one_discrepancy(factory: sessionmaker[Session]) -> None:
    """8 scans (different pictures, same capture time) of a misplaced SKU, reconciled at once."""
    outcomes = run_concurrently(
        8, lambda i: scan_and_reconcile(factory, 0, {"A": 10, "B": 4, "C": 3}, tag=str(i))
    )
    assert all(isinstance(o, ReconcileOutcome) for o in outcomes)
    with factory() as session:
        rows = session.scalars(sa.select(Discrepancy)).all()
        assert len(rows) == 1
        assert rows[0].kind is K.MISPLACED
        assert rows[0].consecutive_scans == 8
        assert count_rows(session, Scan) == 8
        assert alerts_by_change(session) == [("misplaced", "opened")]


@pytest.mark.usefixtures("shelf")
def test_eight_concurrent_deliveries_of_one_picture_make_one_scan(factory: sessionmaker[Session]) -> None:
    outcomes = run_concurrently(8, lambda i: scan_and_reconcile(factory, 0, {"A": 10, "B": 4, "C": 3}))
    assert len({o.scan_id for o in outcomes}) == 1
    assert sum(not o.already_reconciled for o in outcomes) == 1
    with factory() as session:
        assert count_rows(session, Scan) == 1
        assert count_rows(session, Observation) == 3
        (d,) = session.scalars(sa.select(Discrepancy)).all()
        assert d.consecutive_scans == 1


@pytest.mark.usefixtures("shelf")
def test_concurrent_out_of_order_scans_end_at_newest(factory: sessionmaker[Session]) -> None:
    """Scans at minutes 0..7 reconciled at once in any order: the state is that of the newest."""
    counts = [{"A": 7, "B": 4}] * 7 + [{"A": 10, "B": 4}]  # minute 7 agrees with the book
    run_concurrently(8, lambda i: scan_and_reconcile(factory, i, counts[i]))
    with factory() as session:
        assert active(session) == []
        loc = session.scalars(sa.select(Location).where(Location.location_code == SHELF)).one()
        assert loc.reconciled_through == at(7)


@pytest.mark.usefixtures("shelf")
def test_detections_are_stored_with_a_new_scan_only(factory: sessionmaker[Session]) -> None:
    record = ScanRecord(
        location_code=SHELF, captured_at=at(0), image_sha256="d" * 64, image_size_bytes=10, source="test",
        observations=[ObservedCount("A", 1, 0.9)], unknown_facings=1,
        detections=[
            DetectedItem((1.0, 2.0, 30.0, 40.0), 0.8, 0, "A", 0.9),
            DetectedItem((50.0, 2.0, 80.0, 40.0), 0.6, 0, None, None),
        ],
    )
    with factory.begin() as session:
        scan_id, created = record_scan(session, scan=record)
    with factory.begin() as session:
        again, created_again = record_scan(session, scan=record)
    assert created and not created_again and again == scan_id
    with factory() as session:
        rows = session.scalars(sa.select(Detection).order_by(Detection.x1)).all()
        a = session.scalars(sa.select(Sku).where(Sku.sku_code == "A")).one()
    stored = [(r.scan_id, r.x1, r.y1, r.x2, r.y2, r.confidence, r.class_id, r.sku_id, r.sku_confidence) for r in rows]
    assert stored == [
        (scan_id, 1.0, 2.0, 30.0, 40.0, pytest.approx(0.8), 0, a.id, pytest.approx(0.9)),
        (scan_id, 50.0, 2.0, 80.0, 40.0, pytest.approx(0.6), 0, None, None),
    ]


@pytest.mark.usefixtures("shelf")
def test_a_detection_of_an_unknown_sku_code_writes_nothing(factory: sessionmaker[Session]) -> None:
    record = ScanRecord(
        location_code=SHELF, captured_at=at(0), image_sha256="d" * 64, image_size_bytes=10, source="test",
        detections=[DetectedItem((1.0, 2.0, 30.0, 40.0), 0.8, 0, "NOPE", 0.9)],
    )
    with pytest.raises(UnknownSkuError, match="NOPE"), factory.begin() as session:
        record_scan(session, scan=record)
    with factory() as session:
        assert count_rows(session, Scan) == 0


@pytest.mark.usefixtures("shelf")
@pytest.mark.parametrize("location_code", [SHELF, None])
def test_rejected_picture_is_recorded_once_with_its_reason(
    factory: sessionmaker[Session], location_code: str | None
) -> None:
    def reject(session: Session) -> tuple[int, bool]:
        return record_rejected_scan(
            session, location_code=location_code, captured_at=at(0), image_sha256="c" * 64,
            image_size_bytes=5, source="camera-1", reason="corrupt_image",
        )

    first = run_in_transaction(factory, reject)
    second = run_in_transaction(factory, reject)
    assert first[1] and second == (first[0], False)
    with factory() as session:
        scan = session.get(Scan, first[0])
        assert scan is not None
        assert (scan.status, scan.reject_reason, scan.unknown_facings) == (ScanStatus.REJECTED, "corrupt_image", 0)
        assert (scan.location_id is None) == (location_code is None)
        assert count_rows(session, Observation) == 0 and count_rows(session, Discrepancy) == 0
    with factory.begin() as session, pytest.raises(InvalidStateError):
        reconcile_scan(session, scan_id=first[0], policy=STRICT)


@pytest.mark.usefixtures("shelf")
def test_rejection_at_an_unknown_location_is_refused(factory: sessionmaker[Session]) -> None:
    with pytest.raises(UnknownLocationError), factory.begin() as session:
        record_rejected_scan(session, location_code="NOWHERE", captured_at=at(0), image_sha256="c" * 64,
                             image_size_bytes=5, source="x", reason="corrupt_image")
