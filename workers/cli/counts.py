"""``shelftally counts``: book vs last observed quantity per location and SKU."""

from __future__ import annotations

from typing import Annotated

import typer

from inventory import queries
from workers.cli._common import JsonOption, parse_time_option, run_in_db
from workers.console import console, print_json
from workers.scan.report import print_counts

__all__ = ["counts_cmd"]


def counts_cmd(
    typer_ctx: typer.Context,
    location: Annotated[str | None, typer.Option("--location", help="Location code prefix.")] = None,
    sku: Annotated[str | None, typer.Option("--sku", help="SKU code.")] = None,
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="Only scans captured at or before this ISO 8601 time (with offset).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Book vs last observed quantity per location and SKU (by capture time)."""
    when = parse_time_option(as_of, "--as-of")
    rows = run_in_db(
        typer_ctx, lambda s: queries.counts(s, location_prefix=location, sku_code=sku, as_of=when), as_json
    )
    if as_json:
        print_json([r.to_dict() for r in rows])
        return
    print_counts(rows, console, when)
