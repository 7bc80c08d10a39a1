"""The camera registry: cameras, watched folders and snapshot URLs, their schedule and state.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 15:40:00

Written by hand. A revision is frozen in time: it never imports project code.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CAMERA_KINDS = ("rtsp", "http", "folder")
CAMERA_STATES = ("online", "offline", "stale")


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    op.create_table(
        "camera",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("camera_code", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("url", sa.String(length=1024), nullable=False),
        sa.Column("secret_ref", sa.String(length=255), nullable=True),
        sa.Column("location_id", sa.Integer(), nullable=True),
        sa.Column("interval_s", sa.Double(), nullable=False),
        sa.Column("timeout_s", sa.Double(), nullable=False),
        sa.Column("stale_after_s", sa.Double(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("state_since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.String(length=255), nullable=True),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False),
        sa.Column("last_polled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_frame_sha256", sa.String(length=64), nullable=True),
        sa.Column("frame_changed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_scanned_sha256", sa.String(length=64), nullable=True),
        sa.Column("last_scanned_thumbnail", sa.LargeBinary(), nullable=True),
        sa.Column("cursor", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(_in("kind", CAMERA_KINDS), name=op.f("ck_camera_camera_kind")),
        sa.CheckConstraint(_in("state", CAMERA_STATES), name=op.f("ck_camera_camera_state")),
        sa.CheckConstraint("interval_s > 0", name=op.f("ck_camera_interval_positive")),
        sa.CheckConstraint("timeout_s > 0", name=op.f("ck_camera_timeout_positive")),
        sa.ForeignKeyConstraint(["location_id"], ["location.id"], name=op.f("fk_camera_location_id_location"),
                                ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_camera")),
        sa.UniqueConstraint("camera_code", name=op.f("uq_camera_camera_code")),
    )
    op.create_index(op.f("ix_camera_location_id"), "camera", ["location_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_camera_location_id"), table_name="camera")
    op.drop_table("camera")
