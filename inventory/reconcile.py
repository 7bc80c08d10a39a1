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
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from inventory import alerts
from inventory.db import dialect_insert, utcnow
from inventory.errors import (
    InvalidInputError,
    InvalidStateError,
    NaiveDatetimeError,
    NotFoundError,
    UnknownLocationError,
    UnknownSkuError,
)
from inventory.models import (
    AlertStateChange,
    Detection,
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


@dataclass(frozen=True)
class DetectedItem:
    """One detected item of a scan, stored as a ``detection`` row (the evidence behind a count).

    Attributes:
        xyxy: box corners (x1, y1, x2, y2), pixels of the upright picture, x1 <= x2, y1 <= y2.
        confidence: detector confidence in [0, 1].
        class_id: the detector's class index.
        sku_code: the SKU the classifier named, or None (not recognised, or not in the SKU master).
        sku_confidence: the classifier's confidence in [0, 1], or None when not classified.
    """

    xyxy: tuple[float, float, float, float]
    confidence: float
    class_id: int
    sku_code: str | None = None
    sku_confidence: float | None = None


@dataclass(frozen=True)
class ScanRecord:
    """A processed scan to record: one picture (or one manual count) of one location.

    Attributes:
        location_code: where the picture was taken.
        captured_at: aware capture time (stored as UTC).
        image_sha256: hex digest of the encoded picture (for a manual count, of its rows).
        image_size_bytes: size of the encoded picture.
        source: where it came from (camera id, path, upload, count file).
        observations: counted facings per SKU; at most one entry per SKU.
        unknown_facings: detected items no SKU was recognised for.
        width_px, height_px: upright picture size.
        detector_version, classifier_version: model versions that produced the counts.
        detections: the detected items behind the counts (stored with the scan).
    """

    location_code: str
    captured_at: datetime
    image_sha256: str
    image_size_bytes: int
    source: str
    observations: Sequence[ObservedCount] = ()
    unknown_facings: int = 0
    width_px: int | None = None
    height_px: int | None = None
    detector_version: str | None = None
    classifier_version: str | None = None
    detections: Sequence[DetectedItem] = ()

    def key(self) -> tuple[str, str, datetime]:
        """Idempotency key: (image_sha256, location_code, captured_at in UTC)."""
        return (self.image_sha256, self.location_code, self.captured_at.astimezone(UTC))

    def validate(self) -> None:
        """Raise ValueError / NaiveDatetimeError for inputs no database could store meaningfully."""
        if self.captured_at.tzinfo is None or self.captured_at.utcoffset() is None:
            raise NaiveDatetimeError(f"captured_at {self.captured_at.isoformat()} has no UTC offset")
        codes = [o.sku_code for o in self.observations]
        if len(set(codes)) != len(codes):
            raise ValueError(f"observations of the scan at {self.location_code} list a SKU more than once")
        if self.unknown_facings < 0 or any(o.facings < 0 for o in self.observations):
            raise ValueError("facings must be >= 0")


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


def get_location(session: Session, location_code: str) -> Location:
    """Load a location by code.

    Raises:
        UnknownLocationError: no such location.
    """
    location = session.scalars(sa.select(Location).where(Location.location_code == location_code)).one_or_none()
    if location is None:
        raise UnknownLocationError(f"unknown location_code {location_code!r}")
    return location


def sku_ids(session: Session, sku_codes: Iterable[str]) -> dict[str, int]:
    """Map SKU codes to ids.

    Raises:
        UnknownSkuError: naming every code not in the SKU master.
    """
    wanted = set(sku_codes)
    if not wanted:
        return {}
    found: dict[str, int] = dict(session.execute(sa.select(Sku.sku_code, Sku.id).where(Sku.sku_code.in_(wanted))).all())
    missing = sorted(wanted - found.keys())
    if missing:
        raise UnknownSkuError(f"unknown sku_code(s): {', '.join(missing)}")
    return found


#: How far in the future a capture time may lie (camera clocks drift); beyond it a scan is refused,
#: because a wrong future time would make every real scan of its location look stale.
MAX_FUTURE_S = 300.0


def record_scans(
    session: Session,
    *,
    scans: Sequence[ScanRecord],
    now: datetime | None = None,
    max_future_s: float = MAX_FUTURE_S,
) -> list[tuple[int, bool]]:
    """Store processed scans and their observations, each once (does not commit).

    A scan is keyed by (``image_sha256``, location, ``captured_at``): recording the same picture
    again, even concurrently, returns the existing scan and writes nothing
    (``INSERT ... ON CONFLICT DO NOTHING``). Facings become units by the location's facing rule.
    The whole batch costs a fixed number of statements, whatever its size.

    Args:
        session: the caller's session (it owns the transaction).
        scans: what to record.
        now: the current time (default: the clock).
        max_future_s: largest allowed ``captured_at - now`` in seconds.

    Returns:
        ``(scan_id, created)`` per input, in input order; ``created`` is False for a scan that
        already existed (or appears earlier in the same batch).

    Raises:
        UnknownLocationError, UnknownSkuError: codes not in the master data (nothing written).
        InvalidInputError: a capture time more than ``max_future_s`` ahead of ``now`` (reason
            ``captured_in_future``).
        ValueError: a SKU listed twice in one scan, or a negative count.
        NaiveDatetimeError: a ``captured_at`` without UTC offset.
    """
    if not scans:
        return []
    for record in scans:
        record.validate()
    current = now or utcnow()
    future = [r for r in scans if r.captured_at > current + timedelta(seconds=max_future_s)]
    if future:
        raise InvalidInputError(
            f"capture time {future[0].captured_at.isoformat()} of a scan at {future[0].location_code} is more "
            f"than {max_future_s:g} s after now ({current:%Y-%m-%dT%H:%M:%SZ}); check the camera or count clock",
            reason="captured_in_future",
        )
    codes = {r.location_code for r in scans}
    locations = {loc.location_code: loc for loc in session.scalars(
        sa.select(Location).where(Location.location_code.in_(codes)))}
    missing = sorted(codes - locations.keys())
    if missing:
        raise UnknownLocationError(f"unknown location_code(s): {', '.join(missing)}")
    skus = sku_ids(session, [
        *(o.sku_code for r in scans for o in r.observations),
        *(d.sku_code for r in scans for d in r.detections if d.sku_code is not None),
    ])
    now = utcnow()
    unique = list({r.key(): r for r in reversed(scans)}.values())[::-1]  # first occurrence wins
    rows = [
        {
            "location_id": locations[r.location_code].id,
            "captured_at": r.captured_at,
            "image_sha256": r.image_sha256,
            "image_size_bytes": r.image_size_bytes,
            "width_px": r.width_px,
            "height_px": r.height_px,
            "source": r.source,
            "detector_version": r.detector_version,
            "classifier_version": r.classifier_version,
            "status": ScanStatus.PROCESSED,
            "unknown_facings": r.unknown_facings,
            "created_at": now,
            "processed_at": now,
        }
        for r in unique
    ]
    code_of: dict[int | None, str] = {loc.id: code for code, loc in locations.items()}
    stmt = (
        dialect_insert(session, Scan)
        .on_conflict_do_nothing(index_elements=["image_sha256", "location_id", "captured_at"])
        .returning(Scan.id, Scan.image_sha256, Scan.location_id, Scan.captured_at)
    )
    created: dict[tuple[str, str, datetime], int] = {
        (sha, code_of[location_id], captured): scan_id
        for scan_id, sha, location_id, captured in session.execute(stmt, rows).all()
    }
    ids = dict(created)
    if len(created) < len(unique):
        for scan_id, sha, location_id, captured in session.execute(
            sa.select(Scan.id, Scan.image_sha256, Scan.location_id, Scan.captured_at).where(
                Scan.image_sha256.in_({r.image_sha256 for r in unique if r.key() not in created}),
                Scan.location_id.in_([loc.id for loc in locations.values()]),
            )
        ).all():
            ids.setdefault((sha, code_of[location_id], captured), scan_id)
    observations = [
        {
            "scan_id": created[r.key()],
            "sku_id": skus[o.sku_code],
            "facings": o.facings,
            "quantity": locations[r.location_code].facings_to_units(o.facings),
            "confidence": o.confidence,
        }
        for r in unique
        if r.key() in created
        for o in r.observations
    ]
    if observations:
        session.execute(sa.insert(Observation), observations)
    detections = [
        {
            "scan_id": created[r.key()],
            "x1": d.xyxy[0], "y1": d.xyxy[1], "x2": d.xyxy[2], "y2": d.xyxy[3],
            "confidence": d.confidence,
            "class_id": d.class_id,
            "sku_id": skus[d.sku_code] if d.sku_code is not None else None,
            "sku_confidence": d.sku_confidence,
        }
        for r in unique
        if r.key() in created
        for d in r.detections
    ]
    if detections:
        session.execute(sa.insert(Detection), detections)
    out = []
    seen: set[tuple[str, str, datetime]] = set()
    for r in scans:
        key = r.key()
        out.append((ids[key], key in created and key not in seen))
        seen.add(key)
    return out


def record_rejected_scan(
    session: Session,
    *,
    location_code: str | None,
    captured_at: datetime,
    image_sha256: str,
    image_size_bytes: int,
    source: str,
    reason: str,
) -> tuple[int, bool]:
    """Record a picture that produced no counts (status ``rejected``), once (does not commit).

    A rejected scan never has observations, detections or alerts, and is never reconciled. Keyed
    like every scan by (``image_sha256``, location, ``captured_at``); without a location (it was
    to be read from the unreadable picture) by (``image_sha256``, ``captured_at``, ``source``)
    among the location-less rejections.

    Args:
        session: the caller's session (it owns the transaction).
        location_code: where the picture was taken, or None when unknown.
        captured_at: aware capture time.
        image_sha256: hex digest of the picture's bytes.
        image_size_bytes: their number.
        source: where the picture came from (path, camera id, upload).
        reason: the machine-readable reason (e.g. ``corrupt_image``), at most 64 characters.

    Returns:
        ``(scan_id, created)``; ``created`` is False when the same rejection (or a processed scan
        with the same key) was already recorded.

    Raises:
        UnknownLocationError: ``location_code`` is not a location.
        NaiveDatetimeError: ``captured_at`` has no UTC offset.
    """
    if captured_at.tzinfo is None or captured_at.utcoffset() is None:
        raise NaiveDatetimeError(f"captured_at {captured_at.isoformat()} has no UTC offset")
    location_id = get_location(session, location_code).id if location_code is not None else None
    key = sa.and_(
        Scan.image_sha256 == image_sha256,
        Scan.captured_at == captured_at,
        Scan.location_id == location_id if location_id is not None else Scan.location_id.is_(None),
        Scan.source == source if location_id is None else sa.true(),
    )
    existing = session.scalars(sa.select(Scan.id).where(key).order_by(Scan.id).limit(1)).first()
    if existing is not None:
        return existing, False
    now = utcnow()
    stmt = dialect_insert(session, Scan).values(
        location_id=location_id, captured_at=captured_at, image_sha256=image_sha256,
        image_size_bytes=image_size_bytes, source=source[:255], status=ScanStatus.REJECTED,
        reject_reason=reason[:64], unknown_facings=0, created_at=now, processed_at=now,
    )
    if location_id is not None:
        stmt = stmt.on_conflict_do_nothing(index_elements=["image_sha256", "location_id", "captured_at"])
    scan_id = session.execute(stmt.returning(Scan.id)).scalar()
    if scan_id is None:  # a concurrent transaction recorded the same key first
        return session.scalars(sa.select(Scan.id).where(key)).one(), False
    return int(scan_id), True


def record_scan(session: Session, *, scan: ScanRecord, now: datetime | None = None) -> tuple[int, bool]:
    """Store one processed scan and its observations, once (see :func:`record_scans`).

    Returns:
        ``(scan_id, created)``.
    """
    return record_scans(session, scans=[scan], now=now)[0]


def reconcile_scan(
    session: Session,
    *,
    scan_id: int,
    policy: ReconcilePolicy,
    channels: Sequence[str] = (),
) -> ReconcileOutcome:
    """Reconcile one processed scan against the book of its location (see :func:`reconcile_scans`)."""
    return reconcile_scans(session, scan_ids=[scan_id], policy=policy, channels=channels)[0]


@dataclass
class _Pending:
    """Discrepancies touched by one scan, turned into ids once flushed."""

    outcome: ReconcileOutcome
    opened: list[Discrepancy] = field(default_factory=list)
    updated: list[Discrepancy] = field(default_factory=list)
    resolved: list[Discrepancy] = field(default_factory=list)
    changes: list[alerts.StateChange] = field(default_factory=list)


def reconcile_scans(
    session: Session,
    *,
    scan_ids: Sequence[int],
    policy: ReconcilePolicy,
    channels: Sequence[str] = (),
    withhold: Collection[DiscrepancyKind] = (),
) -> list[ReconcileOutcome]:
    """Reconcile processed scans against the book of their locations (does not commit).

    Locks the scans' location rows (in id order, so concurrent batches cannot deadlock) for the
    rest of the transaction: concurrent reconciliations of one location run one after the
    other. Scans are applied in capture order; a scan captured before one already reconciled at
    its location is ``stale`` and changes nothing. Idempotent: a scan reconciled before changes
    nothing (``already_reconciled``). The batch costs a fixed number of statements.

    Args:
        session: the caller's session (it owns the transaction).
        scan_ids: scans with status ``processed`` (duplicates are reconciled once).
        policy: tolerances and hysteresis.
        channels: alert channels to write state-change alerts for.
        withhold: discrepancy kinds these scans are not trusted to show (a frozen or failing
            camera feed is withheld ``out_of_stock`` and ``shortage``): a verdict of such a kind
            neither opens, advances nor resolves anything; every other verdict applies.

    Returns:
        One outcome per distinct scan id, in input order.

    Raises:
        NotFoundError: a scan does not exist (nothing changed).
        InvalidStateError: a scan is not ``processed`` (rejected scans never reconcile).
    """
    ids = list(dict.fromkeys(scan_ids))
    if not ids:
        return []
    found = session.execute(sa.select(Scan.id, Scan.location_id).where(Scan.id.in_(ids))).all()
    missing = sorted(set(ids) - {scan_id for scan_id, _ in found})
    if missing:
        raise NotFoundError(f"scan(s) not found: {', '.join(map(str, missing))}")
    nowhere = [scan_id for scan_id, location_id in found if location_id is None]
    if nowhere:  # only rejected scans lack a location (CHECK ck_scan_location_unless_rejected)
        raise InvalidStateError(
            f"scan(s) {', '.join(map(str, nowhere))} are rejected; only processed scans are reconciled"
        )
    location_of: dict[int, int] = {scan_id: location_id for scan_id, location_id in found if location_id is not None}
    location_ids = sorted(set(location_of.values()))
    locations = {
        loc.id: loc
        for loc in session.scalars(
            sa.select(Location)
            .where(Location.id.in_(location_ids))
            .order_by(Location.id)
            .with_for_update(key_share=True)
            .execution_options(populate_existing=True)
        )
    }
    # Read the scans under the location locks: another transaction may have reconciled them.
    scans = {
        scan.id: scan
        for scan in session.scalars(
            sa.select(Scan).where(Scan.id.in_(ids)).execution_options(populate_existing=True)
        )
    }
    for scan in scans.values():
        if scan.status is not ScanStatus.PROCESSED:
            raise InvalidStateError(f"scan {scan.id} is {scan.status.value}; only processed scans are reconciled")
    observed: dict[int, dict[int, int]] = {i: {} for i in ids}
    for scan_id, sku_id, quantity in session.execute(
        sa.select(Observation.scan_id, Observation.sku_id, Observation.quantity).where(Observation.scan_id.in_(ids))
    ).all():
        observed[scan_id][sku_id] = quantity
    book: dict[int, dict[int, int]] = {i: {} for i in location_ids}
    for location_id, sku_id, quantity in session.execute(
        sa.select(StockLevel.location_id, StockLevel.sku_id, StockLevel.quantity).where(
            StockLevel.location_id.in_(location_ids)
        )
    ).all():
        book[location_id][sku_id] = quantity
    active: dict[tuple[int, int | None], Discrepancy] = {
        (d.location_id, d.sku_id): d
        for d in session.scalars(
            sa.select(Discrepancy)
            .where(Discrepancy.location_id.in_(location_ids), Discrepancy.status != DiscrepancyStatus.RESOLVED)
            .order_by(Discrepancy.id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    }

    now = utcnow()
    pending = {i: _Pending(ReconcileOutcome(scan_id=i)) for i in ids}
    fresh = [scan for scan in scans.values() if scan.reconciled_at is None]
    fresh_set = set(fresh)
    if fresh:  # one UPDATE for the batch instead of one per scan from the unit of work
        session.execute(
            sa.update(Scan).where(Scan.id.in_([scan.id for scan in fresh])).values(reconciled_at=now),
            execution_options={"synchronize_session": False},
        )
        for scan in fresh:
            set_committed_value(scan, "reconciled_at", now)
    for scan in sorted(scans.values(), key=lambda s: (s.captured_at, s.id)):
        work = pending[scan.id]
        if scan not in fresh_set:
            work.outcome.already_reconciled = True
            continue
        location = locations[location_of[scan.id]]
        if location.reconciled_through is not None and scan.captured_at < location.reconciled_through:
            work.outcome.stale = True
            logger.info("scan_id=%s captured %s before location %s was last reconciled (%s): stale",
                        scan.id, scan.captured_at, location.location_code, location.reconciled_through)
            continue
        location.reconciled_through = scan.captured_at
        seen = observed[scan.id]
        stocked = book[location.id]
        keys = sorted({k for (loc, k) in active if loc == location.id and k is not None} | seen.keys() | stocked.keys())
        verdicts: list[tuple[int | None, DiscrepancyKind | None, int | None, int]] = [
            (key, classify(stocked.get(key), seen.get(key, 0), policy), stocked.get(key), seen.get(key, 0))
            for key in keys
        ]
        unknown_kind = (
            DiscrepancyKind.UNKNOWN_PRODUCT if scan.unknown_facings > policy.unknown_tolerance_facings else None
        )
        verdicts.append((None, unknown_kind, 0, scan.unknown_facings))
        for verdict_sku, kind, expected, counted in verdicts:
            if kind is not None and kind in withhold:
                logger.info("scan_id=%s: %s at %s withheld (sku_id=%s)", scan.id, kind.value,
                            location.location_code, verdict_sku)
                continue
            _advance(session, active, work, kind, expected, counted,
                     location=location, scan=scan, sku_id=verdict_sku, policy=policy)

    session.flush()
    changes = [change for work in pending.values() for change in work.changes]
    written = alerts.enqueue(session, changes=changes, channels=channels) if changes else []
    by_change = iter(written)
    for work in pending.values():
        work.outcome.opened = [d.id for d in work.opened]
        work.outcome.updated = [d.id for d in work.updated]
        work.outcome.resolved = [d.id for d in work.resolved]
        work.outcome.alert_ids = [next(by_change).id for _ in work.changes for _ in channels]
    return [pending[i].outcome for i in ids]


def _advance(
    session: Session,
    active: dict[tuple[int, int | None], Discrepancy],
    work: _Pending,
    kind: DiscrepancyKind | None,
    expected: int | None,
    counted: int,
    *,
    location: Location,
    scan: Scan,
    sku_id: int | None,
    policy: ReconcilePolicy,
) -> None:
    """Advance one (location, SKU) through the discrepancy lifecycle for one scan."""
    current = active.get((location.id, sku_id))
    if kind is None:
        if current is None:
            return
        # Expected, observed and evidence stay those of the last disagreeing scan.
        current.status = DiscrepancyStatus.RESOLVED
        current.resolution = Resolution.AGREED
        current.resolved_at = scan.captured_at
        current.resolved_by = "reconciliation"
        del active[(location.id, sku_id)]
        work.resolved.append(current)
        if current.alerted_kind is not None:
            work.changes.append(alerts.StateChange.of(current, AlertStateChange.RESOLVED, location.location_code))
        return
    if current is None:
        current = Discrepancy(
            location_id=location.id,
            sku_id=sku_id,
            kind=kind,
            status=DiscrepancyStatus.OPEN,
            expected_quantity=expected,
            observed_quantity=counted,
            first_seen_at=scan.captured_at,
            last_seen_at=scan.captured_at,
            consecutive_scans=1,
            evidence_scan_id=scan.id,
        )
        session.add(current)
        active[(location.id, sku_id)] = current
        work.opened.append(current)
    else:
        if current.kind is kind:
            current.consecutive_scans += 1
        else:
            current.kind = kind
            current.consecutive_scans = 1
        current.expected_quantity = expected
        current.observed_quantity = counted
        current.last_seen_at = scan.captured_at
        current.evidence_scan_id = scan.id
        work.updated.append(current)
    if current.consecutive_scans >= policy.confirm_after_scans and current.alerted_kind is not kind:
        change = AlertStateChange.OPENED if current.alerted_kind is None else AlertStateChange.CHANGED
        current.alerted_kind = kind
        work.changes.append(alerts.StateChange.of(current, change, location.location_code))
