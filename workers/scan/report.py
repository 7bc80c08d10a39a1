"""Rich tables of counts, discrepancies and scan runs, shared by the CLI and the demo."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from sqlalchemy.orm import Session, sessionmaker

from inventory import queries
from inventory.queries import CountRow
from workers.console import console as default_console

if TYPE_CHECKING:
    from workers.scan.run import ScanRun


def _short(value: datetime | str | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.strftime("%Y-%m-%d %H:%M:%SZ")


def print_discrepancies(rows: list[dict[str, Any]], console: Console, title: str) -> None:
    """Render discrepancy dicts (from :func:`inventory.queries.discrepancies`) as a table."""
    table = Table(title=title)
    for column in ("id", "kind", "status", "location", "SKU", "expected", "observed", "scans", "alert",
                   "first seen", "last seen", "evidence"):
        table.add_column(column)
    colours = {"out_of_stock": "bold red", "shortage": "red", "overage": "yellow", "misplaced": "magenta",
               "unknown_product": "cyan"}
    for r in rows:
        table.add_row(
            str(r["id"]),
            f"[{colours[r['kind']]}]{r['kind']}[/]",
            r["status"],
            r["location_code"],
            r["sku_code"] or "(unknown)",
            "-" if r["expected_quantity"] is None else str(r["expected_quantity"]),
            str(r["observed_quantity"]),
            str(r["consecutive_scans"]),
            "yes" if r["alert_worthy"] else "no",
            _short(r["first_seen_at"]),
            _short(r["last_seen_at"]),
            "-" if r["evidence_scan_id"] is None else f"scan {r['evidence_scan_id']}",
        )
    console.print(table)


def print_counts(rows: list[CountRow], console: Console, as_of: datetime | None = None) -> None:
    """Render :func:`inventory.queries.counts` rows as a table (observed in red where it differs)."""
    table = Table(title=f"Counts{' as of ' + as_of.isoformat() if as_of else ''}")
    for column in ("location", "SKU", "name", "book", "observed", "observed at", "last seen", "scan", "discrepancy"):
        table.add_column(column, justify="right" if column in ("book", "observed", "scan") else "left")
    for r in rows:
        mismatch = r.observed_quantity is not None and r.observed_quantity != (r.book_quantity or 0)
        table.add_row(
            r.location_code,
            r.sku_code,
            r.sku_name,
            "-" if r.book_quantity is None else str(r.book_quantity),
            "-" if r.observed_quantity is None else f"[{'red' if mismatch else 'green'}]{r.observed_quantity}[/]",
            _short(r.observed_at),
            _short(r.last_seen_at),
            "-" if r.evidence_scan_id is None else str(r.evidence_scan_id),
            r.open_discrepancy or "",
        )
    console.print(table)


def print_run(
    run: ScanRun, factory: sessionmaker[Session], *, confirm_after_scans: int, out: Console = default_console
) -> None:
    """The per-picture table, then the open discrepancies at the scanned locations (on ``out``)."""
    table = Table(title="Scans")  # evidence paths are never cut: they are what a person opens next
    for column in ("picture", "status", "location", "scan", "counted (facings)", "unknown", "discrepancies",
                   "evidence / reason"):
        table.add_column(column, overflow="fold")
    for r in run.results:
        counted = ", ".join(f"{code} x{n}" for code, n in sorted(r.counts.items())) or "-"
        kinds = ", ".join(f"{line.sku_code or 'unknown'}: {line.discrepancy}" for line in r.lines if line.discrepancy)
        status = {"processed": "[green]processed[/]", "duplicate": "[yellow]already scanned[/]",
                  "rejected": "[red]rejected[/]"}[r.status]
        if r.stale:
            status = "[yellow]processed, older than the newest scan here: not reconciled[/]"
            kinds = ""
        detail = (f"{r.reason}: {r.message}" if r.status == "rejected"
                  else str(r.evidence) if r.evidence is not None else r.evidence_error or "-")
        table.add_row(
            Path(r.source).name, status, r.location_code or "-", "-" if r.scan_id is None else str(r.scan_id),
            counted, str(r.unknown_facings), kinds or "-", detail,
        )
    out.print(table)
    locations = sorted({r.location_code for r in run.results if r.location_code and r.status != "rejected"})
    if locations:
        with factory() as session:
            rows = [
                row for code in locations
                for row in queries.discrepancies(session, location_prefix=code, confirm_after_scans=confirm_after_scans)
                if row["location_code"] == code
            ]
        print_discrepancies(rows, out, "Open discrepancies at the scanned locations (book vs counted)")
    processed = sum(r.status == "processed" for r in run.results)
    duplicates = sum(r.status == "duplicate" for r in run.results)
    out.print(
        f"{len(run.results)} picture(s): {processed} scanned, {duplicates} already scanned before, "
        f"{len(run.failed)} rejected",
        highlight=False,
    )
