"""``shelftally import``: SKUs, locations, book quantities and cycle counts from WMS files (CSV).

Nothing of a bad file is applied: a file is imported in one transaction or not at all.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy.orm import Session

from inventory.cycle_counts import record_cycle_counts
from inventory.imports import ImportResult, import_locations, import_skus, import_stock
from inventory.reconcile import ReconcileOutcome
from workers.cli._common import ActorOption, JsonOption, get_context, handle_errors, run_in_db
from workers.console import console, err_console, print_json

__all__ = ["import_app"]

import_app = typer.Typer(no_args_is_help=True, help="Import WMS files (CSV). Nothing of a bad file is applied.")


def _import(
    typer_ctx: typer.Context,
    importer: Callable[..., ImportResult],
    file: Path,
    actor: str,
    as_json: bool,
) -> None:
    result = run_in_db(typer_ctx, lambda s: importer(s, file=file, actor=actor), as_json)
    data = {
        "file": result.file_name,
        "rows_read": result.rows_read,
        "inserted": result.inserted,
        "updated": result.updated,
        "unchanged": result.unchanged,
    }
    if as_json:
        print_json(data)
    else:
        console.print(
            f"{result.file_name}: {result.rows_read} rows, {result.inserted} inserted, "
            f"{result.updated} updated, {result.unchanged} unchanged",
            highlight=False,
        )


FileArgument = Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)]


@import_app.command("skus")
def import_skus_cmd(
    typer_ctx: typer.Context, file: FileArgument, actor: ActorOption = "wms_import", as_json: JsonOption = False
) -> None:
    """Upsert SKUs from a CSV (sku_code,name[,description,gtin])."""
    _import(typer_ctx, import_skus, file, actor, as_json)


@import_app.command("locations")
def import_locations_cmd(
    typer_ctx: typer.Context, file: FileArgument, actor: ActorOption = "wms_import", as_json: JsonOption = False
) -> None:
    """Upsert locations from a CSV (location_code,level,parent_code[,name,facing_rule,units_per_facing])."""
    _import(typer_ctx, import_locations, file, actor, as_json)


@import_app.command("stock")
def import_stock_cmd(
    typer_ctx: typer.Context, file: FileArgument, actor: ActorOption = "wms_import", as_json: JsonOption = False
) -> None:
    """Set book quantities from a CSV (location_code,sku_code,quantity); changes are audited."""
    _import(typer_ctx, import_stock, file, actor, as_json)


@import_app.command("counts")
def import_counts_cmd(
    typer_ctx: typer.Context, file: FileArgument, as_json: JsonOption = False
) -> None:
    """Record and reconcile a cycle count file (location_code,captured_at,sku_code,facings[,unknown_facings])."""
    ctx = get_context(typer_ctx)
    policy = ctx.settings.reconcile.policy()
    channels = tuple(ctx.settings.alerts.channels)

    def work(session: Session) -> list[ReconcileOutcome]:
        with file.open(encoding="utf-8", newline="") as handle:
            return record_cycle_counts(
                session, file=handle, source=f"cycle-count:{file.name}", policy=policy, channels=channels
            )

    outcomes = run_in_db(typer_ctx, work, as_json)
    with handle_errors(as_json):
        report = ctx.deliver_alerts()
    data = {
        "scans": len(outcomes),
        "stale": sum(o.stale for o in outcomes),
        "already_recorded": sum(o.already_reconciled for o in outcomes),
        "discrepancies_opened": sum(len(o.opened) for o in outcomes),
        "discrepancies_resolved": sum(len(o.resolved) for o in outcomes),
        "alerts_delivered": report.delivered,
        "alerts_failed": report.failed,
    }
    if as_json:
        print_json(data)
    else:
        console.print(", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in data.items()), highlight=False)
    if report.failed:
        err_console.print(f"the counts were recorded, but {report.failed} alert(s) could not be delivered; "
                          "see `shelftally alerts deliver`", highlight=False)
        raise typer.Exit(1)
