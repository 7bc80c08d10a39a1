"""Scans, detections, observations, discrepancies, alerts, the stock adjustment ledger.

Also adds ``location.reconciled_through`` (capture time of the newest scan reconciled at a
location). The column is added and dropped in batch mode: on SQLite, dropping it copies the
location table, which needs foreign keys off (``migrations/env.py`` arranges that).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 09:57:11.777111

Written by hand from autogenerate output. A revision is frozen in time: it never imports
project code (models, types, enums); types, names and CHECK constraints are spelled out here.
Enums are VARCHAR(32) with a CHECK constraint on every backend. Timestamps are
``DateTime(timezone=True)``: ``timestamptz`` on PostgreSQL, UTC text on SQLite.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCAN_STATUSES = ("pending", "processed", "rejected")
DISCREPANCY_KINDS = ("shortage", "out_of_stock", "overage", "misplaced", "unknown_product")
DISCREPANCY_STATUSES = ("open", "acknowledged", "resolved")
RESOLUTIONS = ("agreed", "manual", "adjusted")
ALERT_STATE_CHANGES = ("opened", "changed", "resolved")
DELIVERY_STATUSES = ("pending", "delivered", "failed")


def _one_of(column: str, values: Sequence[str]) -> str:
    """SQL of the CHECK that SQLAlchemy's non-native Enum emits: ``column IN ('a', 'b')``."""
    quoted = ", ".join(f"'{value}'" for value in values)
    return f"{column} IN ({quoted})"


def upgrade() -> None:
    with op.batch_alter_table("location") as batch_op:
        batch_op.add_column(sa.Column("reconciled_through", sa.DateTime(timezone=True), nullable=True))

    op.create_table(
        "scan",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("location_id", sa.Integer(), nullable=False),
        sa.Column("captured_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("image_sha256", sa.String(length=64), nullable=False),
        sa.Column("image_size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("width_px", sa.Integer(), nullable=True),
        sa.Column("height_px", sa.Integer(), nullable=True),
        sa.Column("source", sa.String(length=255), nullable=False),
        sa.Column("detector_version", sa.String(length=128), nullable=True),
        sa.Column("classifier_version", sa.String(length=128), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("reject_reason", sa.String(length=64), nullable=True),
        sa.Column("unknown_facings", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reconciled_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scan")),
        sa.UniqueConstraint(
            "image_sha256",
            "location_id",
            "captured_at",
            name=op.f("uq_scan_image_sha256_location_id_captured_at"),
        ),
        sa.ForeignKeyConstraint(
            ["location_id"], ["location.id"], name=op.f("fk_scan_location_id_location"), ondelete="RESTRICT"
        ),
        sa.CheckConstraint(_one_of("status", SCAN_STATUSES), name=op.f("ck_scan_scan_status")),
    )
    op.create_index(op.f("ix_scan_location_id_captured_at"), "scan", ["location_id", "captured_at"])

    op.create_table(
        "detection",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("scan_id", sa.Integer(), nullable=False),
        sa.Column("x1", sa.Float(), nullable=False),
        sa.Column("y1", sa.Float(), nullable=False),
        sa.Column("x2", sa.Float(), nullable=False),
        sa.Column("y2", sa.Float(), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("class_id", sa.Integer(), nullable=False),
        sa.Column("sku_id", sa.Integer(), nullable=True),
        sa.Column("sku_confidence", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_detection")),
        sa.ForeignKeyConstraint(["scan_id"], ["scan.id"], name=op.f("fk_detection_scan_id_scan"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["sku_id"], ["sku.id"], name=op.f("fk_detection_sku_id_sku"), ondelete="RESTRICT"),
    )
    op.create_index(op.f("ix_detection_scan_id"), "detection", ["scan_id"])
    op.create_index(op.f("ix_detection_sku_id"), "detection", ["sku_id"])

    op.create_table(
        "observation",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("scan_id", sa.Integer(), nullable=False),
        sa.Column("sku_id", sa.Integer(), nullable=False),
        sa.Column("facings", sa.Integer(), nullable=False),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_observation")),
        sa.UniqueConstraint("scan_id", "sku_id", name=op.f("uq_observation_scan_id_sku_id")),
        sa.ForeignKeyConstraint(["scan_id"], ["scan.id"], name=op.f("fk_observation_scan_id_scan"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["sku_id"], ["sku.id"], name=op.f("fk_observation_sku_id_sku"), ondelete="RESTRICT"),
        sa.CheckConstraint("quantity >= 0 AND facings >= 0", name=op.f("ck_observation_counts_non_negative")),
    )
    op.create_index(op.f("ix_observation_sku_id"), "observation", ["sku_id"])

    op.create_table(
        "discrepancy",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("location_id", sa.Integer(), nullable=False),
        sa.Column("sku_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("expected_quantity", sa.BigInteger(), nullable=True),
        sa.Column("observed_quantity", sa.BigInteger(), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("consecutive_scans", sa.Integer(), nullable=False),
        sa.Column("alerted_kind", sa.String(length=32), nullable=True),
        sa.Column("evidence_scan_id", sa.Integer(), nullable=True),
        sa.Column("resolution", sa.String(length=32), nullable=True),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resolved_by", sa.String(length=128), nullable=True),
        sa.Column("acknowledged_by", sa.String(length=128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_discrepancy")),
        sa.ForeignKeyConstraint(
            ["location_id"],
            ["location.id"],
            name=op.f("fk_discrepancy_location_id_location"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(["sku_id"], ["sku.id"], name=op.f("fk_discrepancy_sku_id_sku"), ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(
            ["evidence_scan_id"],
            ["scan.id"],
            name=op.f("fk_discrepancy_evidence_scan_id_scan"),
            ondelete="SET NULL",
        ),
        sa.CheckConstraint(_one_of("kind", DISCREPANCY_KINDS), name=op.f("ck_discrepancy_discrepancy_kind")),
        sa.CheckConstraint(_one_of("status", DISCREPANCY_STATUSES), name=op.f("ck_discrepancy_discrepancy_status")),
        sa.CheckConstraint(_one_of("alerted_kind", DISCREPANCY_KINDS), name=op.f("ck_discrepancy_alerted_kind")),
        sa.CheckConstraint(_one_of("resolution", RESOLUTIONS), name=op.f("ck_discrepancy_resolution")),
    )
    op.create_index(op.f("ix_discrepancy_sku_id"), "discrepancy", ["sku_id"])
    op.create_index(op.f("ix_discrepancy_location_id_status"), "discrepancy", ["location_id", "status"])
    # At most one active (open or acknowledged) discrepancy per (location, SKU).
    op.create_index(
        op.f("uq_discrepancy_active_location_sku"),
        "discrepancy",
        ["location_id", "sku_id"],
        unique=True,
        sqlite_where=sa.text("status != 'resolved'"),
        postgresql_where=sa.text("status != 'resolved'"),
    )
    # ... and at most one active unknown_product discrepancy (sku_id NULL) per location.
    op.create_index(
        op.f("uq_discrepancy_active_unknown_location"),
        "discrepancy",
        ["location_id"],
        unique=True,
        sqlite_where=sa.text("sku_id IS NULL AND status != 'resolved'"),
        postgresql_where=sa.text("sku_id IS NULL AND status != 'resolved'"),
    )
    op.create_index(op.f("ix_discrepancy_evidence_scan_id"), "discrepancy", ["evidence_scan_id"])

    op.create_table(
        "alert",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("discrepancy_id", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("state_change", sa.String(length=32), nullable=False),
        sa.Column("payload", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("delivery_status", sa.String(length=32), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("claimed_by", sa.String(length=64), nullable=True),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alert")),
        sa.ForeignKeyConstraint(
            ["discrepancy_id"],
            ["discrepancy.id"],
            name=op.f("fk_alert_discrepancy_id_discrepancy"),
            ondelete="CASCADE",
        ),
        sa.CheckConstraint(_one_of("state_change", ALERT_STATE_CHANGES), name=op.f("ck_alert_alert_state_change")),
        sa.CheckConstraint(_one_of("delivery_status", DELIVERY_STATUSES), name=op.f("ck_alert_delivery_status")),
    )
    op.create_index(op.f("ix_alert_discrepancy_id"), "alert", ["discrepancy_id"])
    op.create_index(op.f("ix_alert_delivery_status"), "alert", ["delivery_status"])

    op.create_table(
        "stock_adjustment",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("location_id", sa.Integer(), nullable=False),
        sa.Column("sku_id", sa.Integer(), nullable=False),
        sa.Column("from_quantity", sa.BigInteger(), nullable=True),
        sa.Column("to_quantity", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(length=255), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("discrepancy_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stock_adjustment")),
        sa.ForeignKeyConstraint(
            ["location_id"],
            ["location.id"],
            name=op.f("fk_stock_adjustment_location_id_location"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["sku_id"], ["sku.id"], name=op.f("fk_stock_adjustment_sku_id_sku"), ondelete="RESTRICT"
        ),
        sa.ForeignKeyConstraint(
            ["discrepancy_id"],
            ["discrepancy.id"],
            name=op.f("fk_stock_adjustment_discrepancy_id_discrepancy"),
            ondelete="SET NULL",
        ),
    )
    op.create_index(op.f("ix_stock_adjustment_location_id_sku_id"), "stock_adjustment", ["location_id", "sku_id"])
    op.create_index(op.f("ix_stock_adjustment_sku_id"), "stock_adjustment", ["sku_id"])
    op.create_index(op.f("ix_stock_adjustment_discrepancy_id"), "stock_adjustment", ["discrepancy_id"])


def _refuse_sqlite_table_copy_with_foreign_keys_on() -> None:
    # Copying a table in batch mode drops the old one; with foreign keys on, SQLite deletes its
    # rows first and so cascades into stock_level. The pragma cannot change inside a transaction,
    # so it is set before the run begins (migrations/env.py); refuse if it is still on.
    if op.get_context().as_sql:
        return
    bind = op.get_bind()
    if bind.dialect.name == "sqlite" and bind.exec_driver_sql("PRAGMA foreign_keys").scalar():
        raise RuntimeError(
            "SQLite foreign keys are on, so copying table location would delete stock_level rows; "
            "run this downgrade on a connection that is not in a transaction (migrations.downgrade does)"
        )


def downgrade() -> None:
    _refuse_sqlite_table_copy_with_foreign_keys_on()
    op.drop_table("stock_adjustment")
    op.drop_table("alert")
    op.drop_table("discrepancy")
    op.drop_table("observation")
    op.drop_table("detection")
    op.drop_table("scan")
    with op.batch_alter_table("location") as batch_op:
        batch_op.drop_column("reconciled_through")
