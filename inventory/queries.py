"""Admin queries on counts and discrepancies (read-only; keyword-only ``session``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from inventory.alerts import discrepancy_dict
from inventory.models import (
    Discrepancy,
    DiscrepancyKind,
    DiscrepancyStatus,
    Location,
    Observation,
    Scan,
    ScanStatus,
    Sku,
    StockLevel,
)


@dataclass(frozen=True)
class CountRow:
    """Book vs last observed quantity of one SKU at one location.

    Attributes:
        location_code, sku_code, sku_name: what.
        book_quantity: units on the book now; ``None`` when the SKU is not stocked there.
        observed_quantity: units counted by the newest scan of the location captured at or before
            ``as_of`` (0 when that scan did not see the SKU); ``None`` when no such scan exists.
        observed_at: capture time of that scan (aware UTC), or ``None``.
        evidence_scan_id: that scan's id, or ``None``.
        last_seen_at: newest capture time (at or before ``as_of``) at which the SKU was seen here.
        open_discrepancy: kind of the active discrepancy for this SKU here, if any.
    """

    location_code: str
    sku_code: str
    sku_name: str
    book_quantity: int | None
    observed_quantity: int | None
    observed_at: datetime | None
    evidence_scan_id: int | None
    last_seen_at: datetime | None
    open_discrepancy: str | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (timestamps as ISO 8601 UTC strings)."""
        out = asdict(self)
        for key in ("observed_at", "last_seen_at"):
            if out[key] is not None:
                out[key] = out[key].isoformat()
        return out


def _location_filter(prefix: str | None) -> sa.ColumnElement[bool]:
    if not prefix:
        return sa.true()
    return Location.location_code.startswith(prefix, autoescape=True)


def counts(
    session: Session,
    *,
    location_prefix: str | None = None,
    sku_code: str | None = None,
    as_of: datetime | None = None,
) -> list[CountRow]:
    """Book vs last observed counts, by capture time.

    Args:
        session: a session.
        location_prefix: only locations whose code starts with this (``WH1-A01`` covers its
            bays, shelves and bins when codes are hierarchical).
        sku_code: only this SKU.
        as_of: only scans captured at or before this aware instant (default: all). Capture
            time decides, not processing time. The book quantity is always the current one.

    Returns:
        Rows sorted by location code then SKU code: every stocked SKU and every SKU seen by the
        newest scan of its location.
    """
    latest = (
        sa.select(
            Scan.id.label("scan_id"),
            Scan.location_id,
            Scan.captured_at,
            sa.func.row_number()
            .over(partition_by=Scan.location_id, order_by=(Scan.captured_at.desc(), Scan.id.desc()))
            .label("rank"),
        )
        .where(Scan.status == ScanStatus.PROCESSED)
        .where(Scan.captured_at <= as_of if as_of is not None else sa.true())
        .subquery()
    )
    newest = {
        location_id: (scan_id, captured_at)
        for scan_id, location_id, captured_at in session.execute(
            sa.select(latest.c.scan_id, latest.c.location_id, latest.c.captured_at)
            .join(Location, Location.id == latest.c.location_id)
            .where(latest.c.rank == 1, _location_filter(location_prefix))
        )
    }
    sku_filter = Sku.sku_code == sku_code if sku_code else sa.true()
    observed: dict[tuple[int, int], int] = {}
    if newest:
        by_scan = {scan_id: location_id for location_id, (scan_id, _) in newest.items()}
        for scan_id, sku_id, quantity in session.execute(
            sa.select(Observation.scan_id, Observation.sku_id, Observation.quantity)
            .join(Sku, Sku.id == Observation.sku_id)
            .where(Observation.scan_id.in_(list(by_scan)), sku_filter)
        ):
            observed[(by_scan[scan_id], sku_id)] = quantity
    book: dict[tuple[int, int], int] = {
        (location_id, sku_id): quantity
        for location_id, sku_id, quantity in session.execute(
            sa.select(StockLevel.location_id, StockLevel.sku_id, StockLevel.quantity)
            .join(Location, Location.id == StockLevel.location_id)
            .join(Sku, Sku.id == StockLevel.sku_id)
            .where(_location_filter(location_prefix), sku_filter)
        )
    }
    keys = set(book) | set(observed)
    if not keys:
        return []
    last_seen: dict[tuple[int | None, int], datetime] = {
        (location_id, sku_id): seen_at
        for location_id, sku_id, seen_at in session.execute(
            sa.select(Scan.location_id, Observation.sku_id, sa.func.max(Scan.captured_at))
            .join(Scan, Scan.id == Observation.scan_id)
            .join(Location, Location.id == Scan.location_id)
            .join(Sku, Sku.id == Observation.sku_id)
            .where(Observation.quantity > 0, Scan.status == ScanStatus.PROCESSED)
            .where(Scan.captured_at <= as_of if as_of is not None else sa.true())
            .where(_location_filter(location_prefix), sku_filter)
            .group_by(Scan.location_id, Observation.sku_id)
        )
    }
    location_ids = {k[0] for k in keys}
    sku_ids = {k[1] for k in keys}
    location_codes = dict(
        session.execute(sa.select(Location.id, Location.location_code).where(Location.id.in_(location_ids))).all()
    )
    skus = {
        sku_id: (code, name)
        for sku_id, code, name in session.execute(
            sa.select(Sku.id, Sku.sku_code, Sku.name).where(Sku.id.in_(sku_ids))
        )
    }
    active = {
        (location_id, sku_id): kind
        for location_id, sku_id, kind in session.execute(
            sa.select(Discrepancy.location_id, Discrepancy.sku_id, Discrepancy.kind).where(
                Discrepancy.status != DiscrepancyStatus.RESOLVED,
                Discrepancy.location_id.in_(location_ids),
                Discrepancy.sku_id.is_not(None),
            )
        )
    }
    rows = []
    for location_id, sku_id in keys:
        scan = newest.get(location_id)
        rows.append(
            CountRow(
                location_code=location_codes[location_id],
                sku_code=skus[sku_id][0],
                sku_name=skus[sku_id][1],
                book_quantity=book.get((location_id, sku_id)),
                observed_quantity=observed.get((location_id, sku_id), 0) if scan else None,
                observed_at=scan[1] if scan else None,
                evidence_scan_id=scan[0] if scan else None,
                last_seen_at=last_seen.get((location_id, sku_id)),
                open_discrepancy=active[(location_id, sku_id)].value if (location_id, sku_id) in active else None,
            )
        )
    rows.sort(key=lambda r: (r.location_code, r.sku_code))
    return rows


def discrepancies(
    session: Session,
    *,
    statuses: Sequence[DiscrepancyStatus] = (DiscrepancyStatus.OPEN, DiscrepancyStatus.ACKNOWLEDGED),
    kinds: Sequence[DiscrepancyKind] = (),
    location_prefix: str | None = None,
    alert_worthy_only: bool = False,
    confirm_after_scans: int = 2,
    ids: Sequence[int] = (),
) -> list[dict[str, Any]]:
    """Discrepancies as JSON-ready dicts (the alert body's ``discrepancy`` object plus
    ``alert_worthy``, ``acknowledged_by``, ``resolved_at``, ``resolved_by``), newest first.

    Args:
        session: a session.
        statuses: which statuses to list (default: the active ones).
        kinds: only these kinds (default: all).
        location_prefix: only locations whose code starts with this.
        alert_worthy_only: only those seen by at least ``confirm_after_scans`` consecutive scans.
        confirm_after_scans: K of the reconciliation policy.
        ids: only these discrepancies (default: all).
    """
    stmt = (
        sa.select(Discrepancy, Location.location_code, Sku.sku_code)
        .join(Location, Location.id == Discrepancy.location_id)
        .outerjoin(Sku, Sku.id == Discrepancy.sku_id)
        .where(Discrepancy.status.in_(list(statuses)), _location_filter(location_prefix))
        .order_by(Discrepancy.last_seen_at.desc(), Discrepancy.id.desc())
    )
    if kinds:
        stmt = stmt.where(Discrepancy.kind.in_(list(kinds)))
    if ids:
        stmt = stmt.where(Discrepancy.id.in_(list(ids)))
    if alert_worthy_only:
        stmt = stmt.where(Discrepancy.consecutive_scans >= confirm_after_scans)
    out = []
    for discrepancy, location_code, sku_code in session.execute(stmt):
        row = discrepancy_dict(discrepancy, location_code=location_code, sku_code=sku_code)
        row["alert_worthy"] = discrepancy.alerted_kind is not None or (
            discrepancy.consecutive_scans >= confirm_after_scans
        )
        row["acknowledged_by"] = discrepancy.acknowledged_by
        row["resolved_at"] = discrepancy.resolved_at.isoformat() if discrepancy.resolved_at else None
        row["resolved_by"] = discrepancy.resolved_by
        out.append(row)
    return out
