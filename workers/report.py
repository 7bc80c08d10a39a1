"""Rich tables of counts and discrepancies, shared by the CLI and the demo."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from inventory.queries import CountRow


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
