"""``shelftally db``: create, migrate and inspect the database schema (Alembic revisions)."""

from __future__ import annotations

from typing import Annotated

import typer

import migrations
from inventory.errors import DatabaseUnavailableError
from shelftally.redact import mask_url
from workers.cli._common import JsonOption, get_context, handle_errors, sqlite_path
from workers.console import console, err_console, print_json

__all__ = ["db_app"]

db_app = typer.Typer(no_args_is_help=True, help="Database schema.")


@db_app.command("upgrade")
def db_upgrade(
    typer_ctx: typer.Context,
    revision: Annotated[str, typer.Option(help="Target revision id, or head.")] = "head",
) -> None:
    """Create the schema, or migrate it forward to --revision (default: the newest)."""
    url = get_context(typer_ctx).settings.database_url
    with handle_errors():
        path = sqlite_path(url)
        if path is not None and not path.parent.is_dir():
            raise DatabaseUnavailableError(f"cannot create a database in {path.parent}: no such directory")
        migrations.upgrade(url, revision)
        console.print(f"database {mask_url(url)} at revision {migrations.current(url)}", highlight=False)


@db_app.command("downgrade")
def db_downgrade(
    typer_ctx: typer.Context,
    revision: Annotated[str, typer.Argument(help="Target revision id, or base (drops every table).")],
    yes: Annotated[bool, typer.Option("--yes", help="Confirm: later revisions' tables and rows are dropped.")] = False,
) -> None:
    """Migrate the schema back to REVISION; what later revisions added is dropped, rows included."""
    url = get_context(typer_ctx).settings.database_url
    if not yes:
        err_console.print("refusing to drop data without --yes", highlight=False)
        raise typer.Exit(2)
    with handle_errors():
        migrations.downgrade(url, revision)
        console.print(f"database {mask_url(url)} at revision {migrations.current(url)}", highlight=False)


@db_app.command("current")
def db_current(typer_ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Show the schema revision of the database and the newest one this version knows."""
    url = get_context(typer_ctx).settings.database_url
    with handle_errors(as_json):
        path = sqlite_path(url)
        at = None if path is not None and not path.exists() else migrations.current(url)
        data = {"database_url": mask_url(url), "current": at, "head": migrations.head()}
    if as_json:
        print_json(data)
    else:
        state = "up to date" if at == data["head"] else "run `shelftally db upgrade`"
        console.print(f"{data['database_url']}: revision {at or 'none'} (newest {data['head']}; {state})",
                      highlight=False)
