"""Reconciliation: compare what a scan saw at a location with the book, per SKU.

The rule (:func:`classify`), for a SKU with book quantity ``expected`` (``None`` when the SKU is
not stocked at the location) and counted quantity ``observed`` (units, after the location's
facing rule), where ``allowed = max(tolerance_units, floor(tolerance_fraction * expected))``:

=====================================  ===================
condition (checked in this order)      kind
=====================================  ===================
expected is None and observed > 0      ``misplaced``
expected > 0 and observed == 0         ``out_of_stock`` (tolerance never hides an empty slot)
expected - observed > allowed          ``shortage``
observed - expected > allowed          ``overage``
otherwise                              agrees with the book
=====================================  ===================

Unrecognised products (``Scan.unknown_facings``) above ``unknown_tolerance_facings`` give one
``unknown_product`` discrepancy per location (``sku_id`` null).

Lifecycle (hysteresis): the first disagreeing scan opens a discrepancy with
``consecutive_scans = 1``; each later scan of the same kind adds one, and when the count reaches
``confirm_after_scans`` (K, default 2) the discrepancy becomes alert-worthy and one ``opened``
alert is written. A scan of another kind restarts the count under the new kind (an alert
``changed`` when that kind is confirmed, if the old kind had been announced). A scan that agrees
with the book resolves it (``resolution = agreed``; a ``resolved`` alert only if one was
announced). Alerts therefore follow state changes, never scans.

Order is decided by capture time, not processing time: the location row is locked
(``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite serialises writers with ``BEGIN IMMEDIATE``) and
carries ``reconciled_through``, the capture time of the newest scan reconciled there. A scan
captured before it is stored but changes nothing (``ReconcileOutcome.stale``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from inventory import alerts
from inventory.db import utcnow
from inventory.errors import InvalidStateError, NotFoundError, UnknownLocationError, UnknownSkuError
from inventory.models import (
    AlertStateChange,
    Discrepancy,
    DiscrepancyKind,
    DiscrepancyStatus,
    Location,
    Observation,
    Resolution,
    Scan,
    ScanStatus,
    Sku,
    StockLevel,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReconcilePolicy:
    """Tolerances and hysteresis of reconciliation.

    Attributes:
        tolerance_units: absolute deviation in units that still agrees with the book.
        tolerance_fraction: deviation as a fraction of the book quantity that still agrees
            (``0.1`` = 10 %); the larger of the two allowances applies.
        confirm_after_scans: K, consecutive agreeing scans before a discrepancy is alert-worthy.
        unknown_tolerance_facings: unrecognised facings per scan that are not reported.
    """

    tolerance_units: int = 0
    tolerance_fraction: Decimal = Decimal(0)
    confirm_after_scans: int = 2
    unknown_tolerance_facings: int = 0

    def __post_init__(self) -> None:
        if self.tolerance_units < 0:
            raise ValueError(f"tolerance_units must be >= 0, got {self.tolerance_units}")
        if not 0 <= self.tolerance_fraction < 1:
            raise ValueError(f"tolerance_fraction must be in [0, 1), got {self.tolerance_fraction}")
        if self.confirm_after_scans < 1:
            raise ValueError(f"confirm_after_scans must be >= 1, got {self.confirm_after_scans}")
        if self.unknown_tolerance_facings < 0:
            raise ValueError(f"unknown_tolerance_facings must be >= 0, got {self.unknown_tolerance_facings}")

    def allowed_deviation(self, expected: int) -> int:
        """Largest ``|observed - expected|`` in units that agrees with a book of ``expected`` units."""
        fraction = math.floor(Decimal(expected) * Decimal(self.tolerance_fraction))
        return max(self.tolerance_units, fraction)


def classify(expected: int | None, observed: int, policy: ReconcilePolicy) -> DiscrepancyKind | None:
    """Kind of discrepancy between a book quantity and a counted quantity, or ``None`` if they agree.

    Args:
        expected: book quantity in units; ``None`` when the SKU is not stocked at the location.
        observed: counted units (>= 0).
        policy: tolerances.

    Raises:
        ValueError: if ``observed`` or ``expected`` is negative.
    """
    if observed < 0 or (expected is not None and expected < 0):
        raise ValueError(f"quantities must be >= 0, got expected={expected} observed={observed}")
    if expected is None:
        return DiscrepancyKind.MISPLACED if observed > 0 else None
    if expected > 0 and observed == 0:
        return DiscrepancyKind.OUT_OF_STOCK
    allowed = policy.allowed_deviation(expected)
    if expected - observed > allowed:
        return DiscrepancyKind.SHORTAGE
    if observed - expected > allowed:
        return DiscrepancyKind.OVERAGE
    return None


@dataclass(frozen=True)
class ObservedCount:
    """What one scan counted of one SKU.

    Attributes:
        sku_code: the SKU.
        facings: counted facings (>= 0).
        confidence: mean classifier confidence of the counted items, in [0, 1].
    """

    sku_code: str
    facings: int
    confidence: float = 1.0


@dataclass
class ReconcileOutcome:
    """What reconciling one scan changed.

    Attributes:
        scan_id: the scan.
        stale: the scan was older than one already reconciled at its location: nothing changed.
        already_reconciled: the scan had been reconciled before (a redelivery): nothing changed.
        opened / updated / resolved: discrepancy ids by what happened to them.
        alert_ids: alerts written (pending delivery).
    """

    scan_id: int
    stale: bool = False
    already_reconciled: bool = False
    opened: list[int] = field(default_factory=list)
    updated: list[int] = field(default_factory=list)
    resolved: list[int] = field(default_factory=list)
    alert_ids: list[int] = field(default_factory=list)


def _insert(session: Session) -> type[sa.Insert]:
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert  # type: ignore[return-value]
    if name == "sqlite":
        return sqlite.insert  # type: ignore[return-value]
    raise NotImplementedError(f"dialect {name!r} is not supported (SQLite and PostgreSQL are)")


def get_location(session: Session, location_code: str, *, for_update: bool = False) -> Location:
    """Load a location by code.

    Raises:
        UnknownLocationError: no such location.
    """
    stmt = sa.select(Location).where(Location.location_code == location_code)
    if for_update:
        stmt = stmt.with_for_update()
    location = session.scalars(stmt).one_or_none()
    if location is None:
        raise UnknownLocationError(f"unknown location_code {location_code!r}")
    return location


def sku_ids(session: Session, sku_codes: Sequence[str]) -> dict[str, int]:
    """Map SKU codes to ids.

    Raises:
        UnknownSkuError: naming every code not in the SKU master.
    """
    wanted = set(sku_codes)
    found = dict(session.execute(sa.select(Sku.sku_code, Sku.id).where(Sku.sku_code.in_(wanted))).tuples().all())
    missing = sorted(wanted - found.keys())
    if missing:
        raise UnknownSkuError(f"unknown sku_code(s): {', '.join(missing)}")
    return found


def record_scan(
    session: Session,
    *,
    location_code: str,
    captured_at: datetime,
    image_sha256: str,
    image_size_bytes: int,
    source: str,
    observations: Sequence[ObservedCount] = (),
    unknown_facings: int = 0,
    width_px: int | None = None,
    height_px: int | None = None,
    detector_version: str | None = None,
    classifier_version: str | None = None,
) -> tuple[Scan, bool]:
    """Store a processed scan and its observations, once (does not commit).

    The scan is keyed by (``image_sha256``, location, ``captured_at``): recording the same
    picture again, even concurrently, returns the existing scan and writes nothing.
    Facings become units by the location's facing rule.

    Args:
        session: the caller's session (it owns the transaction).
        location_code: where the picture was taken.
        captured_at: aware capture time (stored as UTC).
        image_sha256: hex digest of the encoded picture.
        image_size_bytes: size of the encoded picture.
        source: where it came from (camera id, path, upload).
        observations: counted facings per SKU; at most one entry per SKU.
        unknown_facings: detected items no SKU was recognised for.
        width_px, height_px: upright picture size.
        detector_version, classifier_version: model versions that produced the counts.

    Returns:
        ``(scan, created)``: ``created`` is False when the scan already existed.

    Raises:
        UnknownLocationError, UnknownSkuError: for codes not in the master data.
        ValueError: a SKU listed twice, or a negative count.
        NaiveDatetimeError: ``captured_at`` has no UTC offset.
    """
    codes = [o.sku_code for o in observations]
    if len(set(codes)) != len(codes):
        raise ValueError("observations list a SKU more than once")
    if unknown_facings < 0 or any(o.facings < 0 for o in observations):
        raise ValueError("facings must be >= 0")
    location = get_location(session, location_code)
    ids = sku_ids(session, codes) if codes else {}
    now = utcnow()
    stmt = (
        _insert(session)(Scan)
        .values(
            location_id=location.id,
            captured_at=captured_at,
            image_sha256=image_sha256,
            image_size_bytes=image_size_bytes,
            width_px=width_px,
            height_px=height_px,
            source=source,
            detector_version=detector_version,
            classifier_version=classifier_version,
            status=ScanStatus.PROCESSED,
            unknown_facings=unknown_facings,
            created_at=now,
            processed_at=now,
        )
        .on_conflict_do_nothing(index_elements=["image_sha256", "location_id", "captured_at"])
        .returning(Scan.id)
    )
    scan_id = session.scalar(stmt)
    created = scan_id is not None
    if not created:
        existing = session.scalars(
            sa.select(Scan).where(
                Scan.image_sha256 == image_sha256,
                Scan.location_id == location.id,
                Scan.captured_at == captured_at,
            )
        ).one()
        return existing, False
    if observations:
        session.execute(
            sa.insert(Observation),
            [
                {
                    "scan_id": scan_id,
                    "sku_id": ids[o.sku_code],
                    "facings": o.facings,
                    "quantity": location.facings_to_units(o.facings),
                    "confidence": o.confidence,
                }
                for o in observations
            ],
        )
    scan = session.get(Scan, scan_id)
    if scan is None:  # pragma: no cover - just inserted in this transaction
        raise NotFoundError(f"scan {scan_id} vanished")
    return scan, True


def reconcile_scan(
    session: Session,
    *,
    scan_id: int,
    policy: ReconcilePolicy,
    channels: Sequence[str] = (),
) -> ReconcileOutcome:
    """Reconcile one processed scan against the book of its location (does not commit).

    Locks the location row for the rest of the transaction, so concurrent reconciliations of
    one location run one after the other. Idempotent: a scan already reconciled changes nothing.

    Args:
        session: the caller's session (it owns the transaction).
        scan_id: a scan with status ``processed``.
        policy: tolerances and hysteresis.
        channels: alert channels to write state-change alerts for.

    Returns:
        What changed.

    Raises:
        NotFoundError: no such scan.
        InvalidStateError: the scan is not ``processed`` (rejected scans never reconcile).
    """
    scan = session.get(Scan, scan_id)
    if scan is None:
        raise NotFoundError(f"scan {scan_id} not found")
    if scan.status is not ScanStatus.PROCESSED:
        raise InvalidStateError(f"scan {scan_id} is {scan.status.value}; only processed scans are reconciled")
    location = session.scalars(
        sa.select(Location).where(Location.id == scan.location_id).with_for_update()
    ).one()
    session.refresh(scan)  # re-read under the lock: another transaction may have reconciled it
    outcome = ReconcileOutcome(scan_id=scan_id)
    if scan.reconciled_at is not None:
        outcome.already_reconciled = True
        return outcome
    now = utcnow()
    scan.reconciled_at = now
    if location.reconciled_through is not None and scan.captured_at < location.reconciled_through:
        outcome.stale = True
        logger.info("scan_id=%s captured %s before location %s was last reconciled (%s): stale",
                    scan_id, scan.captured_at, location.location_code, location.reconciled_through)
        return outcome
    location.reconciled_through = scan.captured_at

    observed: dict[int | None, int] = dict(
        session.execute(
            sa.select(Observation.sku_id, Observation.quantity).where(Observation.scan_id == scan_id)
        ).tuples().all()
    )
    book: dict[int | None, int] = dict(
        session.execute(
            sa.select(StockLevel.sku_id, StockLevel.quantity).where(StockLevel.location_id == location.id)
        ).tuples().all()
    )
    active: dict[int | None, Discrepancy] = {
        d.sku_id: d
        for d in session.scalars(
            sa.select(Discrepancy)
            .where(Discrepancy.location_id == location.id, Discrepancy.status != DiscrepancyStatus.RESOLVED)
            .with_for_update()
        )
    }
    keys = sorted(set(book) | set(observed) | {k for k in active if k is not None})
    verdicts: list[tuple[int | None, DiscrepancyKind | None, int | None, int]] = []
    for sku_id in keys:
        expected = book.get(sku_id)
        seen = observed.get(sku_id, 0)
        verdicts.append((sku_id, classify(expected, seen, policy), expected, seen))
    unknown_kind = (
        DiscrepancyKind.UNKNOWN_PRODUCT if scan.unknown_facings > policy.unknown_tolerance_facings else None
    )
    verdicts.append((None, unknown_kind, 0, scan.unknown_facings))

    for sku_id, kind, expected, seen in verdicts:
        current = active.get(sku_id)
        changes = _apply(session, current, kind, expected, seen, location=location, scan=scan,
                         sku_id=sku_id, policy=policy, outcome=outcome)
        for discrepancy, state_change in changes:
            outcome.alert_ids.extend(
                a.id for a in alerts.enqueue(session, discrepancy=discrepancy, state_change=state_change,
                                             channels=channels)
            )
    session.flush()
    return outcome


def _apply(
    session: Session,
    current: Discrepancy | None,
    kind: DiscrepancyKind | None,
    expected: int | None,
    seen: int,
    *,
    location: Location,
    scan: Scan,
    sku_id: int | None,
    policy: ReconcilePolicy,
    outcome: ReconcileOutcome,
) -> list[tuple[Discrepancy, AlertStateChange]]:
    """Advance one (location, SKU) through the discrepancy lifecycle; return alerts to write."""
    k = policy.confirm_after_scans
    if kind is None:
        if current is None:
            return []
        current.status = DiscrepancyStatus.RESOLVED
        current.resolution = Resolution.AGREED
        current.resolved_at = scan.captured_at
        current.resolved_by = "reconciliation"
        current.evidence_scan_id = scan.id
        current.expected_quantity = expected
        current.observed_quantity = seen
        outcome.resolved.append(current.id)
        return [(current, AlertStateChange.RESOLVED)] if current.alerted_kind is not None else []
    if current is None:
        current = Discrepancy(
            location_id=location.id,
            sku_id=sku_id,
            kind=kind,
            status=DiscrepancyStatus.OPEN,
            expected_quantity=expected,
            observed_quantity=seen,
            first_seen_at=scan.captured_at,
            last_seen_at=scan.captured_at,
            consecutive_scans=1,
            evidence_scan_id=scan.id,
        )
        session.add(current)
        session.flush()
        outcome.opened.append(current.id)
    else:
        if current.kind is kind:
            current.consecutive_scans += 1
        else:
            current.kind = kind
            current.consecutive_scans = 1
        current.expected_quantity = expected
        current.observed_quantity = seen
        current.last_seen_at = scan.captured_at
        current.evidence_scan_id = scan.id
        outcome.updated.append(current.id)
    if current.consecutive_scans >= k and current.alerted_kind is not kind:
        change = AlertStateChange.OPENED if current.alerted_kind is None else AlertStateChange.CHANGED
        current.alerted_kind = kind
        return [(current, change)]
    return []
