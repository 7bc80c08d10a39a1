"""Withheld verdicts (a camera that is not trusted to show an empty or thin shelf), on real SQLite
and PostgreSQL: through :func:`inventory.reconcile.reconcile_scans` and through the third stage
of the scan pipeline (:meth:`workers.scan.pipeline.ScanPipeline.record`)."""

from __future__ import annotations

import hashlib
from collections.abc import Collection

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from inventory.db import run_in_transaction
from inventory.models import Alert, Discrepancy, DiscrepancyKind, DiscrepancyStatus, Location, Scan
from inventory.reconcile import (
    ObservedCount,
    ReconcileOutcome,
    ReconcilePolicy,
    ScanRecord,
    reconcile_scans,
    record_scans,
)
from shelftally.errors import ConfigurationError
from tests.conftest import at, count_rows, seed_shelf
from workers.ingest import decode_image
from workers.scan.pipeline import AdmittedPicture, ObservedPicture, PipelineConfig, ScanPipeline

K = DiscrepancyKind
SHELF = "WH1-A01-B01-S1"
WITHHELD = frozenset({K.OUT_OF_STOCK, K.SHORTAGE})
CONFIRM_TWICE = ReconcilePolicy(confirm_after_scans=2)


@pytest.fixture
def shelf(factory: sessionmaker[Session]) -> None:
    """The shelf with book SKU-RED 3; SKU-BLUE exists but is not stocked there."""
    with factory.begin() as session:
        seed_shelf(session, book={"SKU-RED": 3, "SKU-BLUE": None}, location_code=SHELF)


def scan(
    factory: sessionmaker[Session],
    minute: int,
    counts: dict[str, int],
    *,
    withhold: Collection[K] = (),
    policy: ReconcilePolicy = CONFIRM_TWICE,
) -> ReconcileOutcome:
    """Record a scan captured at 10:<minute> counting ``counts`` facings, and reconcile it."""

    def work(session: Session) -> ReconcileOutcome:
        ((scan_id, created),) = record_scans(session, scans=[ScanRecord(
            location_code=SHELF, captured_at=at(minute),
            image_sha256=hashlib.sha256(f"{minute}{sorted(counts.items())}".encode()).hexdigest(),
            image_size_bytes=1000, source="camera:CAM-1",
            observations=[ObservedCount(code, n, 0.9) for code, n in counts.items()],
        )])
        assert created
        (outcome,) = reconcile_scans(session, scan_ids=[scan_id], policy=policy, channels=("log",),
                                     withhold=withhold)
        return outcome

    return run_in_transaction(factory, work)


def discrepancies(session: Session) -> list[Discrepancy]:
    return list(session.scalars(sa.select(Discrepancy).order_by(Discrepancy.id)))


def open_kinds(session: Session) -> dict[str | None, K]:
    return {
        (d.sku.sku_code if d.sku else None): d.kind
        for d in discrepancies(session) if d.status is not DiscrepancyStatus.RESOLVED
    }


def reconciled_through(session: Session) -> object:
    return session.scalars(sa.select(Location.reconciled_through).where(Location.location_code == SHELF)).one()


@pytest.mark.usefixtures("shelf")
def test_empty_shelf_twice_opens_and_alerts_out_of_stock(factory: sessionmaker[Session]) -> None:
    first = scan(factory, 0, {"SKU-RED": 0})
    assert len(first.opened) == 1 and first.alert_ids == []
    second = scan(factory, 1, {"SKU-RED": 0})
    assert second.updated == first.opened
    assert len(second.alert_ids) == 1
    with factory() as session:
        (d,) = discrepancies(session)
        assert (d.kind, d.status, d.consecutive_scans) == (K.OUT_OF_STOCK, DiscrepancyStatus.OPEN, 2)
        assert (d.expected_quantity, d.observed_quantity) == (3, 0)
        assert d.alerted_kind is K.OUT_OF_STOCK
        alerts = list(session.scalars(sa.select(Alert)))
        assert [(a.payload["discrepancy"]["kind"], a.state_change.value) for a in alerts] == [
            ("out_of_stock", "opened")]


@pytest.mark.usefixtures("shelf")
def test_withheld_empty_shelf_opens_nothing_but_is_reconciled(factory: sessionmaker[Session]) -> None:
    outcomes = [scan(factory, minute, {"SKU-RED": 0}, withhold=WITHHELD) for minute in (0, 1)]
    for outcome in outcomes:
        assert (outcome.opened, outcome.updated, outcome.resolved, outcome.alert_ids) == ([], [], [], [])
        assert not outcome.stale and not outcome.already_reconciled
    with factory() as session:
        assert discrepancies(session) == []
        assert count_rows(session, Alert) == 0
        scans = list(session.scalars(sa.select(Scan).order_by(Scan.id)))
        assert [s.id for s in scans] == [o.scan_id for o in outcomes]
        assert all(s.reconciled_at is not None for s in scans)
        assert reconciled_through(session) == at(1)
    # a withheld scan is reconciled: an older scan processed later is stale
    late = scan(factory, 0, {"SKU-RED": 5})
    assert late.stale and late.opened == []


@pytest.mark.usefixtures("shelf")
@pytest.mark.parametrize("counted", [0, 2], ids=["out_of_stock", "shortage"])
def test_withheld_scan_neither_advances_nor_resolves_an_open_shortage(
    factory: sessionmaker[Session], counted: int,
) -> None:
    opened = scan(factory, 0, {"SKU-RED": 1})  # shortage, 1 scan
    (shortage_id,) = opened.opened
    outcome = scan(factory, 1, {"SKU-RED": counted}, withhold=WITHHELD)
    assert (outcome.opened, outcome.updated, outcome.resolved, outcome.alert_ids) == ([], [], [], [])
    with factory() as session:
        (d,) = discrepancies(session)
        assert d.id == shortage_id
        assert (d.kind, d.status, d.consecutive_scans) == (K.SHORTAGE, DiscrepancyStatus.OPEN, 1)
        assert (d.observed_quantity, d.last_seen_at, d.evidence_scan_id) == (1, at(0), opened.scan_id)
        assert d.alerted_kind is None
        assert count_rows(session, Alert) == 0
        assert reconciled_through(session) == at(1)
        assert session.get(Scan, outcome.scan_id).reconciled_at is not None  # type: ignore[union-attr]
    # a trusted scan afterwards continues the count where the last trusted one left it
    confirmed = scan(factory, 2, {"SKU-RED": 1})
    assert confirmed.updated == [shortage_id] and len(confirmed.alert_ids) == 1


@pytest.mark.usefixtures("shelf")
def test_withheld_scan_still_opens_overage(factory: sessionmaker[Session]) -> None:
    outcome = scan(factory, 0, {"SKU-RED": 5}, withhold=WITHHELD)
    assert len(outcome.opened) == 1
    with factory() as session:
        assert open_kinds(session) == {"SKU-RED": K.OVERAGE}
        (d,) = discrepancies(session)
        assert (d.expected_quantity, d.observed_quantity) == (3, 5)
    scan(factory, 1, {"SKU-RED": 5}, withhold=WITHHELD)
    with factory() as session:
        (d,) = discrepancies(session)
        assert (d.consecutive_scans, d.alerted_kind) == (2, K.OVERAGE)
        assert count_rows(session, Alert) == 1


@pytest.mark.usefixtures("shelf")
def test_withheld_scan_still_opens_misplaced_and_holds_back_only_withheld_kinds(
    factory: sessionmaker[Session],
) -> None:
    outcome = scan(factory, 0, {"SKU-RED": 0, "SKU-BLUE": 2}, withhold=WITHHELD)
    assert len(outcome.opened) == 1
    with factory() as session:
        assert open_kinds(session) == {"SKU-BLUE": K.MISPLACED}
    trusted = scan(factory, 1, {"SKU-RED": 0, "SKU-BLUE": 2})
    assert len(trusted.opened) == 1 and len(trusted.updated) == 1
    with factory() as session:
        assert open_kinds(session) == {"SKU-BLUE": K.MISPLACED, "SKU-RED": K.OUT_OF_STOCK}


@pytest.mark.usefixtures("shelf")
def test_withholding_only_out_of_stock_lets_a_shortage_through(factory: sessionmaker[Session]) -> None:
    scan(factory, 0, {"SKU-RED": 0}, withhold={K.OUT_OF_STOCK})
    scan(factory, 1, {"SKU-RED": 1}, withhold={K.OUT_OF_STOCK})
    with factory() as session:
        assert open_kinds(session) == {"SKU-RED": K.SHORTAGE}


# ---------------------------------------------------------------- the pipeline's record stage


def _pipeline(factory: sessionmaker[Session]) -> ScanPipeline:
    return ScanPipeline(factory=factory, detector=None, recognizer=None,
                        policy=ReconcilePolicy(confirm_after_scans=1), config=PipelineConfig(evidence_dir=None))


def _empty_picture(minute: int = 0) -> ObservedPicture:
    picture = AdmittedPicture(source="camera:CAM-1", image_sha256=hashlib.sha256(b"empty %d" % minute).hexdigest(),
                              size_bytes=2048, location_code=SHELF, captured_at=at(minute),
                              timings_ms={"decode": 1.0})
    return ObservedPicture(picture=picture, width_px=64, height_px=48, detector_version="det-test",
                           classifier_version="cls-test", boxes=())


@pytest.mark.usefixtures("shelf")
@pytest.mark.parametrize(("withhold", "opens"), [((), True), (WITHHELD, False)], ids=["trusted", "withheld"])
def test_pipeline_record_honours_withhold(factory: sessionmaker[Session], withhold: Collection[K],
                                          opens: bool) -> None:
    result = _pipeline(factory).record(_empty_picture(), withhold=withhold)
    assert result.status == "processed"
    assert result.counts == {} and result.unknown_facings == 0
    assert result.outcome is not None and not result.outcome.stale
    red = next(line for line in result.lines if line.sku_code == "SKU-RED")
    assert (red.counted, red.book) == (0, 3)
    with factory() as session:
        assert open_kinds(session) == ({"SKU-RED": K.OUT_OF_STOCK} if opens else {})
        assert reconciled_through(session) == at(0)
        recorded = session.get(Scan, result.scan_id)
        assert recorded is not None and recorded.reconciled_at is not None
    assert len(result.outcome.opened) == (1 if opens else 0)
    assert red.discrepancy == ("out_of_stock" if opens else None)
    # recording the same picture again records it once
    again = _pipeline(factory).record(_empty_picture(), withhold=withhold)
    assert (again.status, again.scan_id) == ("duplicate", result.scan_id)


@pytest.mark.usefixtures("shelf")
def test_pipeline_without_models_cannot_observe(factory: sessionmaker[Session]) -> None:
    import cv2

    ok, png = cv2.imencode(".png", np.zeros((48, 64, 3), np.uint8))
    assert ok
    decoded = decode_image(png.tobytes())
    with pytest.raises(ConfigurationError) as caught:
        _pipeline(factory).observe(_empty_picture().picture, decoded)
    assert caught.value.reason == "no_models"
