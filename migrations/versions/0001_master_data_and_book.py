"""Master data and the book: sku, location, stock_level.

Revision ID: 0001
Revises:
Create Date: 2026-11-29 09:57:11.777111

Written by hand from autogenerate output. A revision is frozen in time: it never imports
project code (models, types, enums); types, names and CHECK constraints are spelled out here.
Enums are VARCHAR(32) with a CHECK constraint on every backend. Timestamps are
``DateTime(timezone=True)``: ``timestamptz`` on PostgreSQL, UTC text on SQLite.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LOCATION_LEVELS = ("warehouse", "zone", "aisle", "bay", "shelf", "bin")
FACING_RULES = ("units_per_facing", "visible_units")


def _one_of(column: str, values: Sequence[str]) -> str:
    """SQL of the CHECK that SQLAlchemy's non-native Enum emits: ``column IN ('a', 'b')``."""
    quoted = ", ".join(f"'{value}'" for value in values)
    return f"{column} IN ({quoted})"


def upgrade() -> None:
    op.create_table(
        "sku",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sku_code", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("gtin", sa.String(length=14), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sku")),
        sa.UniqueConstraint("sku_code", name=op.f("uq_sku_sku_code")),
    )

    # location.reconciled_through arrives in 0002.
    op.create_table(
        "location",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("location_code", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=True),
        sa.Column("level", sa.String(length=32), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("facing_rule", sa.String(length=32), nullable=False),
        sa.Column("units_per_facing", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_location")),
        sa.UniqueConstraint("location_code", name=op.f("uq_location_location_code")),
        sa.ForeignKeyConstraint(
            ["parent_id"], ["location.id"], name=op.f("fk_location_parent_id_location"), ondelete="RESTRICT"
        ),
        sa.CheckConstraint("units_per_facing >= 1", name=op.f("ck_location_units_per_facing_positive")),
        sa.CheckConstraint(_one_of("level", LOCATION_LEVELS), name=op.f("ck_location_location_level")),
        sa.CheckConstraint(_one_of("facing_rule", FACING_RULES), name=op.f("ck_location_facing_rule")),
    )
    op.create_index(op.f("ix_location_parent_id"), "location", ["parent_id"])

    op.create_table(
        "stock_level",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("location_id", sa.Integer(), nullable=False),
        sa.Column("sku_id", sa.Integer(), nullable=False),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stock_level")),
        sa.UniqueConstraint("location_id", "sku_id", name=op.f("uq_stock_level_location_id_sku_id")),
        sa.ForeignKeyConstraint(
            ["location_id"],
            ["location.id"],
            name=op.f("fk_stock_level_location_id_location"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(["sku_id"], ["sku.id"], name=op.f("fk_stock_level_sku_id_sku"), ondelete="RESTRICT"),
        sa.CheckConstraint("quantity >= 0", name=op.f("ck_stock_level_quantity_non_negative")),
    )
    op.create_index(op.f("ix_stock_level_sku_id"), "stock_level", ["sku_id"])


def downgrade() -> None:
    op.drop_table("stock_level")
    op.drop_table("location")
    op.drop_table("sku")
