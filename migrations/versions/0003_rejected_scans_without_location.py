"""A rejected picture may have no location: ``scan.location_id`` becomes nullable for rejected scans.

A picture whose location comes from a label in the picture (a barcode or QR code) and that
cannot be decoded, or shows no readable label, is still recorded (status ``rejected`` with its
reason) but has no location. The CHECK ``ck_scan_location_unless_rejected`` keeps every other
scan tied to a location.

Downgrade deletes the location-less rejected scans (they cannot exist under 0002's NOT NULL)
before restoring the constraint; every other row is kept.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 12:50:00

Written by hand. A revision is frozen in time: it never imports project code.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CHECK = "location_id IS NOT NULL OR status = 'rejected'"
SCAN_STATUSES = ("pending", "processed", "rejected")


def _scan_table(location_nullable: bool) -> sa.Table:
    """The scan table as 0002 left it (or as this revision leaves it), spelled out.

    SQLite alters a column by copying the table (batch mode); given the table, the copy needs no
    reflection, so ``alembic upgrade --sql`` can write the script without a database.
    """
    statuses = ", ".join(f"'{status}'" for status in SCAN_STATUSES)
    checks = [sa.CheckConstraint(f"status IN ({statuses})", name="ck_scan_scan_status")]
    if location_nullable:
        checks.append(sa.CheckConstraint(_CHECK, name="ck_scan_location_unless_rejected"))
    return sa.Table(
        "scan",
        sa.MetaData(),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("location_id", sa.Integer(), nullable=location_nullable),
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
        sa.PrimaryKeyConstraint("id", name="pk_scan"),
        sa.UniqueConstraint(
            "image_sha256", "location_id", "captured_at", name="uq_scan_image_sha256_location_id_captured_at"
        ),
        sa.ForeignKeyConstraint(
            ["location_id"], ["location.id"], name="fk_scan_location_id_location", ondelete="RESTRICT"
        ),
        *checks,
        sa.Index("ix_scan_location_id_captured_at", "location_id", "captured_at"),
    )


def upgrade() -> None:
    with op.batch_alter_table("scan", copy_from=_scan_table(location_nullable=False)) as batch_op:
        batch_op.alter_column("location_id", existing_type=sa.Integer(), nullable=True)
        batch_op.create_check_constraint(op.f("ck_scan_location_unless_rejected"), _CHECK)


def downgrade() -> None:
    op.execute("DELETE FROM scan WHERE location_id IS NULL")
    with op.batch_alter_table("scan", copy_from=_scan_table(location_nullable=True)) as batch_op:
        batch_op.drop_constraint(op.f("ck_scan_location_unless_rejected"), type_="check")
        batch_op.alter_column("location_id", existing_type=sa.Integer(), nullable=False)
