"""The inventory book and what ShelfTally saw: SQLAlchemy 2.0 models.

Quantities are integers (pieces). Every timestamp is an aware UTC datetime
(:class:`inventory.db.UTCDateTime`). Confidences are floats in [0, 1]. Boxes are ``xyxy`` in
pixels of the upright source image.

The schema is created by Alembic (``migrations/``); ``tests/inventory/test_migrations.py`` fails
when these models drift from the migration head.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from inventory.db import UTCDateTime, utcnow

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base with the naming convention Alembic relies on for batch migrations."""

    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime()}


def _enum(cls: type[enum.Enum], name: str) -> sa.Enum:
    # Stored as VARCHAR + CHECK on every backend so adding a value is a plain migration.
    return sa.Enum(
        cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=32,
        values_callable=lambda members: [m.value for m in members],
    )


class LocationLevel(enum.StrEnum):
    """Depth of a location in the hierarchy warehouse > zone > aisle > bay > shelf > bin."""

    WAREHOUSE = "warehouse"
    ZONE = "zone"
    AISLE = "aisle"
    BAY = "bay"
    SHELF = "shelf"
    BIN = "bin"

    @property
    def depth(self) -> int:
        """0 for warehouse ... 5 for bin."""
        return list(LocationLevel).index(self)


class FacingRule(enum.StrEnum):
    """How counted facings become units at a location.

    * ``units_per_facing``: each visible facing stands for ``units_per_facing`` units (a lane
      of ``n`` units deep behind the front one, or a case of ``n`` pieces).
    * ``visible_units``: count what is visible, one unit per facing.
    """

    UNITS_PER_FACING = "units_per_facing"
    VISIBLE_UNITS = "visible_units"


class ScanStatus(enum.StrEnum):
    """Lifecycle of a scan: received, processed into observations, or rejected with a reason."""

    PENDING = "pending"
    PROCESSED = "processed"
    REJECTED = "rejected"


class DiscrepancyKind(enum.StrEnum):
    """What disagrees between the book and what a scan saw (see :mod:`inventory.reconcile`)."""

    SHORTAGE = "shortage"
    OUT_OF_STOCK = "out_of_stock"
    OVERAGE = "overage"
    MISPLACED = "misplaced"
    UNKNOWN_PRODUCT = "unknown_product"


class DiscrepancyStatus(enum.StrEnum):
    """``open`` and ``acknowledged`` discrepancies are active; ``resolved`` ones are history."""

    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


class Resolution(enum.StrEnum):
    """How a discrepancy was resolved."""

    AGREED = "agreed"  # a later scan agreed with the book
    MANUAL = "manual"  # a person resolved it without changing the book
    ADJUSTED = "adjusted"  # a person approved a stock adjustment to the observed quantity


class AlertStateChange(enum.StrEnum):
    """The discrepancy state change an alert announces."""

    OPENED = "opened"  # became alert-worthy (K consecutive agreeing scans)
    CHANGED = "changed"  # an alerted discrepancy changed kind (e.g. shortage -> out_of_stock)
    RESOLVED = "resolved"  # an alerted discrepancy was resolved


class DeliveryStatus(enum.StrEnum):
    """Delivery state of an alert on its channel."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class Sku(Base):
    """A stock keeping unit: the product identity."""

    __tablename__ = "sku"

    id: Mapped[int] = mapped_column(primary_key=True)
    sku_code: Mapped[str] = mapped_column(sa.String(64), unique=True)
    name: Mapped[str] = mapped_column(sa.String(255))
    description: Mapped[str | None] = mapped_column(sa.Text)
    gtin: Mapped[str | None] = mapped_column(sa.String(14))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Location(Base):
    """A place that holds stock, in the hierarchy warehouse > zone > aisle > bay > shelf > bin.

    ``reconciled_through`` is the capture time of the newest scan reconciled here: an older scan
    that arrives later is stored but never changes discrepancies (capture time decides order).
    """

    __tablename__ = "location"

    id: Mapped[int] = mapped_column(primary_key=True)
    location_code: Mapped[str] = mapped_column(sa.String(64), unique=True)
    name: Mapped[str | None] = mapped_column(sa.String(255))
    level: Mapped[LocationLevel] = mapped_column(_enum(LocationLevel, "location_level"))
    parent_id: Mapped[int | None] = mapped_column(sa.ForeignKey("location.id", ondelete="RESTRICT"), index=True)
    facing_rule: Mapped[FacingRule] = mapped_column(
        _enum(FacingRule, "facing_rule"), default=FacingRule.VISIBLE_UNITS
    )
    units_per_facing: Mapped[int] = mapped_column(default=1)
    reconciled_through: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    parent: Mapped[Location | None] = relationship(remote_side=[id])

    __table_args__ = (sa.CheckConstraint("units_per_facing >= 1", name="units_per_facing_positive"),)

    def facings_to_units(self, facings: int) -> int:
        """Convert counted facings to units by this location's :class:`FacingRule`.

        Raises:
            ValueError: if ``facings`` is negative.
        """
        if facings < 0:
            raise ValueError(f"facings must be >= 0, got {facings}")
        if self.facing_rule is FacingRule.UNITS_PER_FACING:
            return facings * self.units_per_facing
        return facings


class StockLevel(Base):
    """Book quantity of one SKU at one location. A row means the SKU is stocked (slotted) there."""

    __tablename__ = "stock_level"

    id: Mapped[int] = mapped_column(primary_key=True)
    location_id: Mapped[int] = mapped_column(sa.ForeignKey("location.id", ondelete="CASCADE"))
    sku_id: Mapped[int] = mapped_column(sa.ForeignKey("sku.id", ondelete="RESTRICT"), index=True)
    quantity: Mapped[int] = mapped_column(sa.BigInteger)
    source: Mapped[str] = mapped_column(sa.String(64))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    location: Mapped[Location] = relationship()
    sku: Mapped[Sku] = relationship()

    __table_args__ = (
        sa.UniqueConstraint("location_id", "sku_id"),
        sa.CheckConstraint("quantity >= 0", name="quantity_non_negative"),
    )


class Scan(Base):
    """One picture of one location at one capture time.

    Unique on (image_sha256, location, captured_at): the same picture of the same place at the
    same time is one scan, however often it is delivered. A rejected picture whose location
    could not be known (it was to be read from a label in the unreadable picture) has no
    location; every other scan has one.
    """

    __tablename__ = "scan"

    id: Mapped[int] = mapped_column(primary_key=True)
    location_id: Mapped[int | None] = mapped_column(sa.ForeignKey("location.id", ondelete="RESTRICT"))
    captured_at: Mapped[datetime] = mapped_column()
    image_sha256: Mapped[str] = mapped_column(sa.String(64))
    image_size_bytes: Mapped[int] = mapped_column(sa.BigInteger)
    width_px: Mapped[int | None] = mapped_column()
    height_px: Mapped[int | None] = mapped_column()
    source: Mapped[str] = mapped_column(sa.String(255))
    detector_version: Mapped[str | None] = mapped_column(sa.String(128))
    classifier_version: Mapped[str | None] = mapped_column(sa.String(128))
    status: Mapped[ScanStatus] = mapped_column(_enum(ScanStatus, "scan_status"), default=ScanStatus.PENDING)
    reject_reason: Mapped[str | None] = mapped_column(sa.String(64))
    unknown_facings: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    processed_at: Mapped[datetime | None] = mapped_column()
    reconciled_at: Mapped[datetime | None] = mapped_column()

    location: Mapped[Location | None] = relationship()

    __table_args__ = (
        sa.UniqueConstraint("image_sha256", "location_id", "captured_at"),
        sa.CheckConstraint("location_id IS NOT NULL OR status = 'rejected'", name="location_unless_rejected"),
        sa.Index("ix_scan_location_id_captured_at", "location_id", "captured_at"),
    )


class Detection(Base):
    """One detected item in a scan: its box, detector confidence and (when named) its SKU."""

    __tablename__ = "detection"

    id: Mapped[int] = mapped_column(primary_key=True)
    scan_id: Mapped[int] = mapped_column(sa.ForeignKey("scan.id", ondelete="CASCADE"), index=True)
    x1: Mapped[float] = mapped_column(sa.Float)
    y1: Mapped[float] = mapped_column(sa.Float)
    x2: Mapped[float] = mapped_column(sa.Float)
    y2: Mapped[float] = mapped_column(sa.Float)
    confidence: Mapped[float] = mapped_column(sa.Float)
    class_id: Mapped[int] = mapped_column()
    sku_id: Mapped[int | None] = mapped_column(sa.ForeignKey("sku.id", ondelete="RESTRICT"), index=True)
    sku_confidence: Mapped[float | None] = mapped_column(sa.Float)


class Observation(Base):
    """Counted quantity of one SKU in one scan (facings and the units they stand for)."""

    __tablename__ = "observation"

    id: Mapped[int] = mapped_column(primary_key=True)
    scan_id: Mapped[int] = mapped_column(sa.ForeignKey("scan.id", ondelete="CASCADE"))
    sku_id: Mapped[int] = mapped_column(sa.ForeignKey("sku.id", ondelete="RESTRICT"), index=True)
    facings: Mapped[int] = mapped_column()
    quantity: Mapped[int] = mapped_column(sa.BigInteger)
    confidence: Mapped[float] = mapped_column(sa.Float)

    scan: Mapped[Scan] = relationship()
    sku: Mapped[Sku] = relationship()

    __table_args__ = (
        sa.UniqueConstraint("scan_id", "sku_id"),
        sa.CheckConstraint("quantity >= 0 AND facings >= 0", name="counts_non_negative"),
    )


class Discrepancy(Base):
    """Observed and expected disagree beyond tolerance for one SKU (or unknown products) at a location.

    At most one discrepancy per (location, SKU) is active (status open or acknowledged).
    ``consecutive_scans`` counts the consecutive scans (by capture time) that agreed on ``kind``;
    it becomes alert-worthy when that reaches the policy's ``confirm_after_scans``.
    ``alerted_kind`` is the kind last announced by an alert (``None``: never announced).
    """

    __tablename__ = "discrepancy"

    id: Mapped[int] = mapped_column(primary_key=True)
    location_id: Mapped[int] = mapped_column(sa.ForeignKey("location.id", ondelete="CASCADE"))
    sku_id: Mapped[int | None] = mapped_column(sa.ForeignKey("sku.id", ondelete="RESTRICT"), index=True)
    kind: Mapped[DiscrepancyKind] = mapped_column(_enum(DiscrepancyKind, "discrepancy_kind"))
    status: Mapped[DiscrepancyStatus] = mapped_column(
        _enum(DiscrepancyStatus, "discrepancy_status"), default=DiscrepancyStatus.OPEN
    )
    expected_quantity: Mapped[int | None] = mapped_column(sa.BigInteger)
    observed_quantity: Mapped[int] = mapped_column(sa.BigInteger)
    first_seen_at: Mapped[datetime] = mapped_column()
    last_seen_at: Mapped[datetime] = mapped_column()
    consecutive_scans: Mapped[int] = mapped_column(default=1)
    alerted_kind: Mapped[DiscrepancyKind | None] = mapped_column(_enum(DiscrepancyKind, "alerted_kind"))
    evidence_scan_id: Mapped[int | None] = mapped_column(sa.ForeignKey("scan.id", ondelete="SET NULL"), index=True)
    resolution: Mapped[Resolution | None] = mapped_column(_enum(Resolution, "resolution"))
    resolved_at: Mapped[datetime | None] = mapped_column()
    resolved_by: Mapped[str | None] = mapped_column(sa.String(128))
    acknowledged_by: Mapped[str | None] = mapped_column(sa.String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    location: Mapped[Location] = relationship()
    sku: Mapped[Sku | None] = relationship()

    __table_args__ = (
        sa.Index("ix_discrepancy_location_id_status", "location_id", "status"),
        sa.Index(
            "uq_discrepancy_active_location_sku",
            "location_id",
            "sku_id",
            unique=True,
            sqlite_where=sa.text("status != 'resolved'"),
            postgresql_where=sa.text("status != 'resolved'"),
        ),
        # sku_id is NULL for unknown_product, and NULLs never collide in a unique index.
        sa.Index(
            "uq_discrepancy_active_unknown_location",
            "location_id",
            unique=True,
            sqlite_where=sa.text("sku_id IS NULL AND status != 'resolved'"),
            postgresql_where=sa.text("sku_id IS NULL AND status != 'resolved'"),
        ),
    )

    @property
    def is_active(self) -> bool:
        """Open or acknowledged."""
        return self.status is not DiscrepancyStatus.RESOLVED


class Alert(Base):
    """One announcement of a discrepancy state change on one channel, and its delivery.

    Rows are written in the reconciling transaction (a transactional outbox) and delivered
    after commit by :func:`inventory.sinks.deliver_pending`. A dispatcher that is sending an
    alert holds a claim on it (``claimed_by``, a run token, and ``claimed_at``); a claim older
    than the dispatcher's time-to-live belongs to a dispatcher that died and may be taken over.
    """

    __tablename__ = "alert"

    id: Mapped[int] = mapped_column(primary_key=True)
    discrepancy_id: Mapped[int] = mapped_column(sa.ForeignKey("discrepancy.id", ondelete="CASCADE"), index=True)
    channel: Mapped[str] = mapped_column(sa.String(32))
    state_change: Mapped[AlertStateChange] = mapped_column(_enum(AlertStateChange, "alert_state_change"))
    payload: Mapped[dict[str, Any]] = mapped_column(sa.JSON().with_variant(postgresql.JSONB(), "postgresql"))
    delivery_status: Mapped[DeliveryStatus] = mapped_column(
        _enum(DeliveryStatus, "delivery_status"), default=DeliveryStatus.PENDING
    )
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    claimed_by: Mapped[str | None] = mapped_column(sa.String(64))
    claimed_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column()

    discrepancy: Mapped[Discrepancy] = relationship()

    __table_args__ = (sa.Index("ix_alert_delivery_status", "delivery_status"),)


class StockAdjustment(Base):
    """Audited ledger of book changes: who changed what, when, from what to what, and why."""

    __tablename__ = "stock_adjustment"

    id: Mapped[int] = mapped_column(primary_key=True)
    location_id: Mapped[int] = mapped_column(sa.ForeignKey("location.id", ondelete="RESTRICT"))
    sku_id: Mapped[int] = mapped_column(sa.ForeignKey("sku.id", ondelete="RESTRICT"), index=True)
    from_quantity: Mapped[int | None] = mapped_column(sa.BigInteger)
    to_quantity: Mapped[int] = mapped_column(sa.BigInteger)
    reason: Mapped[str] = mapped_column(sa.String(255))
    actor: Mapped[str] = mapped_column(sa.String(128))
    discrepancy_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("discrepancy.id", ondelete="SET NULL"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (sa.Index("ix_stock_adjustment_location_id_sku_id", "location_id", "sku_id"),)


class CameraKind(enum.StrEnum):
    """How a camera delivers pictures."""

    RTSP = "rtsp"
    """An RTSP (or other FFmpeg-readable) video stream; the newest frame is taken."""
    HTTP = "http"
    """A snapshot URL answering one picture per GET."""
    FOLDER = "folder"
    """A watched folder; each file is taken once it is completely written."""


class CameraState(enum.StrEnum):
    """Health of a camera feed, from its polls.

    A STALE or OFFLINE feed is never scanned, and scans it delivered are withheld
    ``out_of_stock`` and ``shortage`` verdicts (an empty-looking shelf from a broken feed is not
    an empty shelf).
    """

    ONLINE = "online"
    """The last poll got a picture."""
    OFFLINE = "offline"
    """The last poll(s) failed: unreachable, timed out, a bad payload, a blank frame."""
    STALE = "stale"
    """Pictures arrive, but byte-identical for longer than the camera's ``stale_after_s``: a frozen feed."""


class Camera(Base):
    """A camera (or watched folder) in the registry, its schedule and its last known state.

    The URL never carries a password: ``secret_ref`` names where the worker reads it
    (``env:NAME`` for an environment variable, ``file:/path`` for a file such as a Docker or
    Kubernetes secret), so the database, logs and CLI output never hold it.
    """

    __tablename__ = "camera"

    id: Mapped[int] = mapped_column(primary_key=True)
    camera_code: Mapped[str] = mapped_column(sa.String(64), unique=True)
    kind: Mapped[CameraKind] = mapped_column(_enum(CameraKind, "camera_kind"))
    url: Mapped[str] = mapped_column(sa.String(1024))
    secret_ref: Mapped[str | None] = mapped_column(sa.String(255))
    location_id: Mapped[int | None] = mapped_column(sa.ForeignKey("location.id", ondelete="RESTRICT"), index=True)
    interval_s: Mapped[float] = mapped_column(default=60.0)
    timeout_s: Mapped[float] = mapped_column(default=10.0)
    stale_after_s: Mapped[float] = mapped_column(default=300.0)
    enabled: Mapped[bool] = mapped_column(default=True)
    state: Mapped[CameraState] = mapped_column(_enum(CameraState, "camera_state"), default=CameraState.OFFLINE)
    state_since: Mapped[datetime] = mapped_column(default=utcnow)
    last_error: Mapped[str | None] = mapped_column(sa.String(255))
    consecutive_failures: Mapped[int] = mapped_column(default=0)
    last_polled_at: Mapped[datetime | None] = mapped_column()
    last_frame_sha256: Mapped[str | None] = mapped_column(sa.String(64))
    frame_changed_at: Mapped[datetime | None] = mapped_column()
    last_scanned_sha256: Mapped[str | None] = mapped_column(sa.String(64))
    last_scanned_thumbnail: Mapped[bytes | None] = mapped_column(sa.LargeBinary)
    cursor: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    location: Mapped[Location | None] = relationship()

    __table_args__ = (
        sa.CheckConstraint("interval_s > 0", name="interval_positive"),
        sa.CheckConstraint("timeout_s > 0", name="timeout_positive"),
    )
