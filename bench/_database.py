"""A throw-away PostgreSQL schema for the benchmarks: created, migrated and seeded, then dropped.

Each benchmark run works in a schema of its own in the database of ``base`` (reached through
``search_path`` in the URL), so runs never see each other's rows or the tests'.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from inventory.db import create_engine, session_factory
from inventory.models import Location, LocationLevel, Sku, StockLevel


def schema_url(base: str, schema: str) -> str:
    """``base`` with its connections' ``search_path`` set to ``schema``."""
    separator = "&" if "?" in base else "?"
    return f"{base}{separator}options=-csearch_path%3D{schema}"


def fresh_schema(
    base: str, *, prefix: str, location_code: str, skus: Sequence[tuple[str, str]], quantity: int
) -> tuple[str, str]:
    """Create and migrate a schema, with one shelf holding ``quantity`` units of each SKU.

    Args:
        base: SQLAlchemy URL of the PostgreSQL database.
        prefix: schema name prefix (a random suffix follows).
        location_code: the shelf's code.
        skus: ``(sku_code, name)`` pairs, all stocked on the shelf.
        quantity: book quantity of each SKU, units.

    Returns:
        ``(schema, url)``: the schema's name and a URL whose connections use it.
    """
    import migrations

    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    admin.dispose()
    url = schema_url(base, schema)
    migrations.upgrade(url)
    engine = create_engine(url)
    with session_factory(engine).begin() as session:
        location = Location(location_code=location_code, level=LocationLevel.SHELF, name=f"{prefix} shelf")
        session.add(location)
        session.flush()
        for code, name in skus:
            sku = Sku(sku_code=code, name=name)
            session.add(sku)
            session.flush()
            session.add(StockLevel(location_id=location.id, sku_id=sku.id, quantity=quantity, source="bench"))
    engine.dispose()
    return schema, url


def drop_schema(base: str, schema: str) -> None:
    """Drop ``schema`` and everything in it."""
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
    admin.dispose()
