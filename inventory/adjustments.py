"""Changes to the book: audited stock adjustments and the discrepancy review actions.

Every change of a book quantity writes one :class:`~inventory.models.StockAdjustment` ledger row
(who, when, from, to, reason, discrepancy) in the same transaction as the change. Quantities
change in SQL, never by read-modify-write in Python:

* :func:`adjust_stock` adds a delta with one ``INSERT ... ON CONFLICT DO UPDATE SET quantity =
  quantity + delta ... RETURNING quantity`` (atomic on PostgreSQL and SQLite), so concurrent
  +1 adjustments never lose an update.
* :func:`set_stock` sets a quantity under a row lock (``SELECT ... FOR UPDATE``), so the ledger's
  ``from_quantity`` is the value actually replaced.

Functions take a keyword-only ``session`` and never commit: the caller owns the transaction.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from inventory import alerts
from inventory.db import dialect_insert, utcnow
from inventory.errors import InvalidInputError, InvalidStateError, NotFoundError
from inventory.models import (
    AlertStateChange,
    Discrepancy,
    DiscrepancyKind,
    DiscrepancyStatus,
    Resolution,
    StockAdjustment,
    StockLevel,
)
from inventory.reconcile import get_location, sku_ids


def adjust_stock(
    session: Session,
    *,
    location_code: str,
    sku_code: str,
    delta: int,
    actor: str,
    reason: str,
    source: str = "adjustment",
) -> StockAdjustment:
    """Add ``delta`` units to the book quantity of a SKU at a location, atomically.

    Creates the stock level (from 0) when the SKU was not stocked there.

    Args:
        session: the caller's session (it owns the transaction).
        location_code, sku_code: what to adjust.
        delta: units to add (negative to remove).
        actor: who made the change (user name or process).
        reason: why (free text, kept in the ledger).
        source: stored as the stock level's ``source``.

    Returns:
        The ledger row (``from_quantity = to_quantity - delta``; 0 for a new stock level).

    Raises:
        UnknownLocationError, UnknownSkuError: codes not in the master data.
        InvalidInputError: ``actor`` or ``reason`` too long or empty.
        sqlalchemy.exc.IntegrityError: the result would be negative (CHECK quantity >= 0).
    """
    _check_text(actor, reason)
    location = get_location(session, location_code)
    sku_id = sku_ids(session, [sku_code])[sku_code]
    now = utcnow()
    insert = dialect_insert(session, StockLevel).values(
        location_id=location.id, sku_id=sku_id, quantity=delta, source=source, updated_at=now
    )
    stmt = insert.on_conflict_do_update(
        index_elements=["location_id", "sku_id"],
        set_={
            "quantity": StockLevel.__table__.c.quantity + insert.excluded.quantity,
            "source": insert.excluded.source,
            "updated_at": insert.excluded.updated_at,
        },
    ).returning(StockLevel.quantity)
    to_quantity = session.execute(stmt).scalar_one()
    ledger = StockAdjustment(
        location_id=location.id,
        sku_id=sku_id,
        from_quantity=to_quantity - delta,
        to_quantity=to_quantity,
        reason=reason,
        actor=actor,
        created_at=now,
    )
    session.add(ledger)
    session.flush()
    return ledger


def set_stock(
    session: Session,
    *,
    location_id: int,
    sku_id: int,
    quantity: int,
    actor: str,
    reason: str,
    source: str,
    discrepancy_id: int | None = None,
) -> StockAdjustment | None:
    """Set the book quantity of a SKU at a location, under a row lock.

    Args:
        session: the caller's session (it owns the transaction).
        location_id, sku_id: what to set.
        quantity: the new book quantity (>= 0).
        actor, reason: recorded in the ledger.
        source: stored as the stock level's ``source``.
        discrepancy_id: the discrepancy that caused the change, if any.

    Returns:
        The ledger row, or ``None`` when the quantity was already ``quantity`` (nothing written).

    Raises:
        ValueError: ``quantity`` is negative.
    """
    if quantity < 0:
        raise ValueError(f"quantity must be >= 0, got {quantity}")
    now = utcnow()
    inserted = session.scalar(
        dialect_insert(session, StockLevel)
        .values(location_id=location_id, sku_id=sku_id, quantity=quantity, source=source, updated_at=now)
        .on_conflict_do_nothing(index_elements=["location_id", "sku_id"])
        .returning(StockLevel.id)
    )
    from_quantity: int | None = None
    if inserted is None:
        level = session.scalars(
            sa.select(StockLevel)
            .where(StockLevel.location_id == location_id, StockLevel.sku_id == sku_id)
            .with_for_update()
        ).one()
        session.refresh(level)
        if level.quantity == quantity:
            return None
        from_quantity = level.quantity
        level.quantity = quantity
        level.source = source
        level.updated_at = now
    ledger = StockAdjustment(
        location_id=location_id,
        sku_id=sku_id,
        from_quantity=from_quantity,
        to_quantity=quantity,
        reason=reason,
        actor=actor,
        discrepancy_id=discrepancy_id,
        created_at=now,
    )
    session.add(ledger)
    session.flush()
    return ledger


ACTOR_MAX = 128
REASON_MAX = 255


def _check_text(actor: str, reason: str | None = None) -> None:
    """Refuse an actor or reason the ledger cannot store (PostgreSQL would refuse it mid-transaction)."""
    if not actor.strip() or len(actor) > ACTOR_MAX or "\x00" in actor:
        raise InvalidInputError(f"actor must be 1-{ACTOR_MAX} characters without NUL, got {len(actor)}",
                                reason="invalid_actor")
    if reason is not None and (len(reason) > REASON_MAX or "\x00" in reason):
        raise InvalidInputError(f"reason must be at most {REASON_MAX} characters without NUL, got {len(reason)}",
                                reason="invalid_reason")


def _lock_discrepancy(session: Session, discrepancy_id: int) -> Discrepancy:
    discrepancy = session.scalars(
        sa.select(Discrepancy).where(Discrepancy.id == discrepancy_id).with_for_update()
    ).one_or_none()
    if discrepancy is None:
        raise NotFoundError(f"discrepancy {discrepancy_id} not found")
    session.refresh(discrepancy)
    return discrepancy


def acknowledge(session: Session, *, discrepancy_id: int, actor: str) -> Discrepancy:
    """Mark an open discrepancy as seen by a person; reconciliation keeps tracking it.

    Raises:
        NotFoundError: no such discrepancy.
        InvalidStateError: it is not open.
        InvalidInputError: ``actor`` too long or empty.
    """
    _check_text(actor)
    discrepancy = _lock_discrepancy(session, discrepancy_id)
    if discrepancy.status is not DiscrepancyStatus.OPEN:
        raise InvalidStateError(f"discrepancy {discrepancy_id} is {discrepancy.status.value}, not open")
    discrepancy.status = DiscrepancyStatus.ACKNOWLEDGED
    discrepancy.acknowledged_by = actor
    session.flush()
    return discrepancy


def resolve(
    session: Session, *, discrepancy_id: int, actor: str, channels: tuple[str, ...] = ()
) -> Discrepancy:
    """Close an active discrepancy without changing the book (e.g. a miscount by the camera).

    A later scan that still disagrees opens a new discrepancy.

    Raises:
        NotFoundError: no such discrepancy.
        InvalidStateError: it is already resolved.
        InvalidInputError: ``actor`` too long or empty.
    """
    _check_text(actor)
    discrepancy = _lock_discrepancy(session, discrepancy_id)
    _close(session, discrepancy, Resolution.MANUAL, actor, channels)
    return discrepancy


def approve(
    session: Session,
    *,
    discrepancy_id: int,
    actor: str,
    reason: str | None = None,
    channels: tuple[str, ...] = (),
    force: bool = False,
) -> StockAdjustment | None:
    """Approve a discrepancy: set the book to the observed quantity and resolve it, in one transaction.

    A ``misplaced`` SKU becomes stocked at the location with the observed quantity. The book
    must still hold the quantity the discrepancy was measured against (``expected_quantity``):
    if it changed since (a delivery, a WMS import), approving would silently overwrite that
    change, so it is refused unless ``force``.

    Returns:
        The ledger row (``None`` if the book already equalled the observed quantity).

    Raises:
        NotFoundError: no such discrepancy.
        InvalidStateError: it is resolved already; it is ``unknown_product`` (reason
            ``no_sku_to_adjust``); the book changed since it was measured (reason ``book_changed``).
        InvalidInputError: ``actor`` or ``reason`` too long or empty.
    """
    _check_text(actor, reason)
    discrepancy = _lock_discrepancy(session, discrepancy_id)
    if not discrepancy.is_active:
        raise InvalidStateError(f"discrepancy {discrepancy_id} is resolved already")
    if discrepancy.kind is DiscrepancyKind.UNKNOWN_PRODUCT or discrepancy.sku_id is None:
        raise InvalidStateError(
            f"discrepancy {discrepancy_id} is unknown_product: enroll the SKU or resolve it instead",
            reason="no_sku_to_adjust",
        )
    book = session.scalar(
        sa.select(StockLevel.quantity)
        .where(StockLevel.location_id == discrepancy.location_id, StockLevel.sku_id == discrepancy.sku_id)
        .with_for_update()
    )
    if book != discrepancy.expected_quantity and not force:
        raise InvalidStateError(
            f"discrepancy {discrepancy_id} was measured against a book of {discrepancy.expected_quantity}, "
            f"but the book now holds {book}; rescan the location, or approve with force to set it to "
            f"{discrepancy.observed_quantity} anyway",
            reason="book_changed",
        )
    ledger = set_stock(
        session,
        location_id=discrepancy.location_id,
        sku_id=discrepancy.sku_id,
        quantity=discrepancy.observed_quantity,
        actor=actor,
        reason=reason or f"approved discrepancy {discrepancy_id} ({discrepancy.kind.value})",
        source="adjustment",
        discrepancy_id=discrepancy_id,
    )
    _close(session, discrepancy, Resolution.ADJUSTED, actor, channels)
    return ledger


def _close(
    session: Session,
    discrepancy: Discrepancy,
    resolution: Resolution,
    actor: str,
    channels: tuple[str, ...],
) -> None:
    if not discrepancy.is_active:
        raise InvalidStateError(f"discrepancy {discrepancy.id} is resolved already")
    discrepancy.status = DiscrepancyStatus.RESOLVED
    discrepancy.resolution = resolution
    discrepancy.resolved_at = utcnow()
    discrepancy.resolved_by = actor
    session.flush()
    if discrepancy.alerted_kind is not None:
        change = alerts.state_change(session, discrepancy, AlertStateChange.RESOLVED)
        alerts.enqueue(session, changes=[change], channels=channels)
