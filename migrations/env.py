"""Alembic environment: runs the revisions against :data:`inventory.models.Base.metadata`.

The database URL is the Config's ``sqlalchemy.url`` (set by :func:`migrations.alembic_config`)
or, for the ``alembic`` command, ``-x url=...``. A connection in
``config.attributes["connection"]`` is used instead when given (Alembic cookbook, "Sharing a
Connection across one or more programmatic migration commands").

Online runs build the engine with :func:`inventory.db.create_engine`, so SQLite gets its
pragmas and ``BEGIN IMMEDIATE`` transactions. All revisions of a run share one transaction on
both backends (``transactional_ddl=True``: SQLite's DDL is transactional once pysqlite no longer
manages transactions, which that engine arranges). On SQLite, foreign keys are switched off for
the run (a batch-mode table copy drops the old table, and with foreign keys on that drop
deletes, or cascades into, the rows that refer to it) and ``PRAGMA foreign_key_check`` runs
before the commit. SQLite only changes ``PRAGMA foreign_keys`` outside a transaction, so this
happens on the driver connection before Alembic begins.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from alembic import context

from inventory.db import create_engine
from inventory.models import Base
from migrations import MigrationError

logger = logging.getLogger("migrations.env")

config = context.config
target_metadata = Base.metadata


def _database_url() -> str:
    url = config.get_main_option("sqlalchemy.url") or context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        raise MigrationError(
            "no database URL: call migrations.upgrade(database_url) or pass `-x url=...` to alembic",
            reason="missing_database_url",
        )
    return url


def _options(dialect_name: str) -> dict[str, Any]:
    return {
        "target_metadata": target_metadata,
        "compare_type": True,
        "render_as_batch": dialect_name == "sqlite",
        "transactional_ddl": True,
    }


def run_migrations_offline() -> None:
    """Write the migration SQL to standard output (``alembic upgrade --sql``) without a database."""
    url = _database_url()
    context.configure(
        url=url,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **_options(sa.engine.make_url(url).get_backend_name()),
    )
    with context.begin_transaction():
        context.run_migrations()


@contextmanager
def _sqlite_foreign_keys_off(connection: sa.Connection) -> Iterator[bool]:
    """Switch SQLite's foreign keys off for the block; yield whether this call switched them."""
    driver = connection.connection.driver_connection
    if driver is None:  # pragma: no cover - an open connection always has one
        raise MigrationError("SQLite connection has no driver connection")
    if not driver.execute("PRAGMA foreign_keys").fetchone()[0]:
        yield False
        return
    if driver.in_transaction:
        # The caller's transaction pins the pragma. Plain upgrades are safe; a revision that
        # copies a table in batch mode checks for this and refuses (see 0002's downgrade).
        logger.warning("SQLite connection is in a transaction: foreign keys stay on for this migration")
        yield False
        return
    driver.execute("PRAGMA foreign_keys=OFF")
    try:
        yield True
    finally:
        driver.execute("PRAGMA foreign_keys=ON")


def _check_sqlite_foreign_keys(connection: sa.Connection) -> None:
    violations = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if violations:
        shown = ", ".join(f"{row[0]} rowid {row[1]} -> {row[2]}" for row in violations[:10])
        raise MigrationError(
            f"migration would leave {len(violations)} rows breaking a foreign key ({shown}); rolled back",
            reason="foreign_key_violation",
        )


def _run_on(connection: sa.Connection) -> None:
    dialect_name = connection.dialect.name
    if dialect_name != "sqlite":
        context.configure(connection=connection, **_options(dialect_name))
        with context.begin_transaction():
            context.run_migrations()
        return
    with _sqlite_foreign_keys_off(connection) as switched_off:
        context.configure(connection=connection, **_options(dialect_name))
        with context.begin_transaction():
            context.run_migrations()
            if switched_off:
                _check_sqlite_foreign_keys(connection)


def run_migrations_online() -> None:
    """Run the migrations on the given connection, or on a new engine for the configured URL."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_on(connection)
        return
    engine = create_engine(_database_url())
    try:
        with engine.connect() as new_connection:
            _run_on(new_connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
