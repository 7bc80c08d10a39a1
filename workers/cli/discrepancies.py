"""Reviewing discrepancies: ``shelftally discrepancies`` (list, ``ack``, ``resolve``), ``adjust approve``
(set the book to what was counted) and ``alerts deliver``.

Every review is recorded with its actor; the alerts it raises are delivered right after it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any

import typer
from sqlalchemy.orm import Session

from inventory import adjustments, queries
from inventory.models import DiscrepancyKind, DiscrepancyStatus
from workers.cli._common import ActorOption, JsonOption, default_actor, get_context, handle_errors, run_in_db
from workers.console import console, print_json
from workers.scan.report import print_discrepancies

__all__ = ["adjust_app", "alerts_app", "discrepancies_app"]

discrepancies_app = typer.Typer(help="List and review discrepancies.")
adjust_app = typer.Typer(no_args_is_help=True, help="Stock adjustments.")
alerts_app = typer.Typer(no_args_is_help=True, help="Alert delivery.")


def _parse_enums(values: Sequence[str] | None, enum: type[Any], option: str) -> list[Any]:
    out = []
    for value in values or ():
        for part in value.split(","):
            try:
                out.append(enum(part.strip()))
            except ValueError as error:
                valid = ", ".join(m.value for m in enum)
                raise typer.BadParameter(f"{part!r} is not one of {valid}", param_hint=option) from error
    return out


@discrepancies_app.callback(invoke_without_command=True)
def discrepancies_cmd(
    typer_ctx: typer.Context,
    status: Annotated[
        list[str] | None, typer.Option("--status", help="open, acknowledged, resolved (repeat or comma-separate).")
    ] = None,
    kind: Annotated[list[str] | None, typer.Option("--kind", help="Only these kinds.")] = None,
    location: Annotated[str | None, typer.Option("--location", help="Location code prefix.")] = None,
    as_json: JsonOption = False,
) -> None:
    """List discrepancies (default: open and acknowledged), newest first."""
    if typer_ctx.invoked_subcommand is not None:
        return
    statuses = _parse_enums(status, DiscrepancyStatus, "--status") or [
        DiscrepancyStatus.OPEN,
        DiscrepancyStatus.ACKNOWLEDGED,
    ]
    kinds = _parse_enums(kind, DiscrepancyKind, "--kind")
    k = get_context(typer_ctx).settings.reconcile.confirm_after_scans
    rows = run_in_db(
        typer_ctx,
        lambda s: queries.discrepancies(
            s, statuses=statuses, kinds=kinds, location_prefix=location, confirm_after_scans=k
        ),
        as_json,
    )
    if as_json:
        print_json(rows)
    else:
        print_discrepancies(rows, console, f"Discrepancies ({', '.join(s.value for s in statuses)})")


DiscrepancyId = Annotated[int, typer.Argument(min=1, max=2**31 - 1, help="Discrepancy id.")]


def _review(typer_ctx: typer.Context, action: Callable[[Session], Any], discrepancy_id: int, as_json: bool,
            verb: str) -> None:
    ctx = get_context(typer_ctx)
    run_in_db(typer_ctx, action, as_json)
    with handle_errors(as_json):
        ctx.deliver_alerts()
    (row,) = run_in_db(
        typer_ctx,
        lambda s: queries.discrepancies(s, statuses=list(DiscrepancyStatus), ids=[discrepancy_id]),
        as_json,
    )
    if as_json:
        print_json(row)
    else:
        console.print(f"discrepancy {discrepancy_id} {verb}", highlight=False)


@discrepancies_app.command("ack")
def discrepancies_ack(
    typer_ctx: typer.Context, discrepancy_id: DiscrepancyId, actor: ActorOption = "", as_json: JsonOption = False
) -> None:
    """Acknowledge an open discrepancy (it stays tracked)."""
    who = actor or default_actor()
    _review(typer_ctx, lambda s: adjustments.acknowledge(s, discrepancy_id=discrepancy_id, actor=who),
            discrepancy_id, as_json, "acknowledged")


@discrepancies_app.command("resolve")
def discrepancies_resolve(
    typer_ctx: typer.Context, discrepancy_id: DiscrepancyId, actor: ActorOption = "", as_json: JsonOption = False
) -> None:
    """Resolve a discrepancy without changing the book."""
    who = actor or default_actor()
    channels = tuple(get_context(typer_ctx).settings.alerts.channels)
    _review(
        typer_ctx,
        lambda s: adjustments.resolve(s, discrepancy_id=discrepancy_id, actor=who, channels=channels),
        discrepancy_id,
        as_json,
        "resolved",
    )


@adjust_app.command("approve")
def adjust_approve(
    typer_ctx: typer.Context,
    discrepancy_id: DiscrepancyId,
    actor: ActorOption = "",
    reason: Annotated[str | None, typer.Option(help="Recorded in the ledger.")] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Approve even if the book changed since the discrepancy was measured.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Set the book to the observed quantity of a discrepancy and resolve it, audited, in one transaction.

    Refused (reason book_changed) when the book no longer holds the quantity the discrepancy was
    measured against, unless --force.
    """
    ctx = get_context(typer_ctx)
    who = actor or default_actor()
    channels = tuple(ctx.settings.alerts.channels)

    def work(session: Session) -> dict[str, Any] | None:
        entry = adjustments.approve(session, discrepancy_id=discrepancy_id, actor=who, reason=reason,
                                    channels=channels, force=force)
        if entry is None:
            return None
        return {
            "adjustment_id": entry.id,
            "discrepancy_id": discrepancy_id,
            "from_quantity": entry.from_quantity,
            "to_quantity": entry.to_quantity,
            "actor": entry.actor,
            "reason": entry.reason,
            "created_at": entry.created_at.isoformat(),
        }

    data = run_in_db(typer_ctx, work, as_json)
    with handle_errors(as_json):
        ctx.deliver_alerts()
    if as_json:
        print_json(data or {"discrepancy_id": discrepancy_id, "adjustment_id": None})
    elif data is None:
        console.print(f"discrepancy {discrepancy_id} resolved; the book already held the observed quantity")
    else:
        console.print(
            f"adjustment {data['adjustment_id']}: book {data['from_quantity']} -> {data['to_quantity']}, "
            f"discrepancy {discrepancy_id} resolved",
            highlight=False,
        )


@alerts_app.command("deliver")
def alerts_deliver(typer_ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Deliver pending alerts on the configured channels (retries with capped backoff)."""
    with handle_errors(as_json):
        report = get_context(typer_ctx).deliver_alerts()
    data = {"delivered": report.delivered_ids, "failed": report.failed_ids}
    if as_json:
        print_json(data)
    else:
        console.print(f"{report.delivered} delivered, {report.failed} failed", highlight=False)
    if report.failed:
        raise typer.Exit(1)

