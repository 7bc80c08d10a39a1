"""Alembic migrations of the inventory database, and the functions that run them.

The revisions in ``migrations/versions`` build the schema of :mod:`inventory.models` on SQLite
and PostgreSQL. SQLite alters tables in Alembic's batch mode (copy the table, drop the old one,
rename the copy), with foreign keys switched off for the run so that dropping the old table
does not cascade into the tables that refer to it; ``PRAGMA foreign_key_check`` runs before
commit instead.

Every run is one transaction on both backends: a revision that fails leaves the database at
the revision it started from.

Example::

    import migrations

    migrations.upgrade("sqlite:///shelftally.db")
    assert migrations.current("sqlite:///shelftally.db") == migrations.head()
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError

from inventory.db import create_engine
from shelftally.errors import ShelfTallyError

__all__ = ["MigrationError", "alembic_config", "current", "downgrade", "head", "upgrade"]

#: The package directory: Alembic's ``script_location``, holding ``env.py`` and ``versions/``.
SCRIPT_LOCATION = Path(__file__).resolve().parent


class MigrationError(ShelfTallyError):
    """A migration cannot run, or would leave the database inconsistent (nothing was committed)."""

    reason = "migration_failed"


def _config() -> Config:
    config = Config(str(SCRIPT_LOCATION / "alembic.ini"))
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    return config


def alembic_config(database_url: str) -> Config:
    """Return the Alembic configuration for a database.

    Args:
        database_url: SQLAlchemy URL of the database, e.g. ``sqlite:///shelftally.db`` or
            ``postgresql+psycopg://user@127.0.0.1:5432/shelftally``. ``env.py`` builds the
            engine with :func:`inventory.db.create_engine`.

    Returns:
        A Config whose ``script_location`` is this package and whose ``sqlalchemy.url`` is
        ``database_url``. Put an open SQLAlchemy connection in ``config.attributes["connection"]``
        to run the migrations on it instead of a new engine (on SQLite, pass a connection that
        is not in a transaction, so that foreign keys can be switched off for the run).
    """
    config = _config()
    # ConfigParser interpolation: a literal "%" (URL escapes, passwords) must be doubled.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Upgrade a database to ``revision``, in one transaction.

    Args:
        database_url: SQLAlchemy URL of the database (an empty database is upgraded from base).
        revision: target revision id, ``"head"`` or a relative target such as ``"+1"``.

    Raises:
        MigrationError: ``revision`` is unknown (reason ``unknown_revision``), the database is
            already past it (reason ``database_newer``: use :func:`downgrade`), or the upgrade
            would leave rows that break a foreign key (SQLite).
        sqlalchemy.exc.DBAPIError: the database refused a statement; nothing was committed.
    """
    target = _resolve(revision)
    at = current(database_url)
    if target is not None and at is not None and at != target and _is_ancestor(target, at):
        raise MigrationError(
            f"the database is at revision {at}, newer than {target}; to go back use downgrade",
            reason="database_newer",
        )
    _command(command.upgrade, database_url, revision)


def downgrade(database_url: str, revision: str) -> None:
    """Downgrade a database to ``revision``, in one transaction.

    Downgrading drops the tables and columns that later revisions added, with their rows.

    Args:
        database_url: SQLAlchemy URL of the database.
        revision: target revision id, ``"base"`` (no tables) or a relative target such as ``"-1"``.

    Raises:
        MigrationError: ``revision`` is unknown (reason ``unknown_revision``), or the downgrade
            would leave rows that break a foreign key (SQLite).
        sqlalchemy.exc.DBAPIError: the database refused a statement; nothing was committed.
    """
    _resolve(revision)
    _command(command.downgrade, database_url, revision)


def _command(run: Callable[[Config, str], None], database_url: str, revision: str) -> None:
    try:
        run(alembic_config(database_url), revision)
    except CommandError as error:
        raise MigrationError(str(error), reason="unknown_revision") from error


def _resolve(revision: str) -> str | None:
    """The concrete revision id a target names (``None`` for base and relative targets)."""
    if revision in ("base",) or revision[:1] in "+-":
        return None
    script = ScriptDirectory.from_config(_config())
    try:
        found = script.get_revision(revision)
    except CommandError as error:
        known = ", ".join(r.revision for r in script.walk_revisions())
        raise MigrationError(f"unknown revision {revision!r} (known: {known}, head, base)",
                             reason="unknown_revision") from error
    return found.revision if found is not None else None


def _is_ancestor(ancestor: str, revision: str) -> bool:
    script = ScriptDirectory.from_config(_config())
    return any(r.revision == ancestor for r in script.iterate_revisions(revision, "base"))


def current(database_url: str) -> str | None:
    """Return the revision a database is at.

    Args:
        database_url: SQLAlchemy URL of the database.

    Returns:
        The revision id, or ``None`` for a database that was never migrated.

    Raises:
        alembic.util.CommandError: the database records more than one revision.
    """
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def head() -> str:
    """Return the id of the newest revision, the one :func:`upgrade` goes to by default.

    Raises:
        MigrationError: the revisions have no single head (a missing or a branched revision).
    """
    script = ScriptDirectory.from_config(_config())
    heads = script.get_heads()
    if len(heads) != 1:
        raise MigrationError(f"expected one head revision in {script.versions}, found {heads}")
    return heads[0]
