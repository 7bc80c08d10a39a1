"""``shelftally demo --counts-only``: the inventory half of the demo, without models or photos.

Runs on the embedded default (a SQLite file, everything in-process) with nothing outside the
repository, in under a second (the photo demo is :mod:`workers.demo.vision`). The counts come
from the shipped cycle count file
``workers/sample_data/counts.csv`` (two rounds, an hour apart, with deliberate errors in the
book: a shortage, an empty slot, an overage, a misplaced SKU, unrecognised products, and a
one-off miscount that the second round corrects, so it never alerts).
"""

from __future__ import annotations

import shutil
import sys
import time
from importlib import resources
from pathlib import Path

from rich.console import Console
from sqlalchemy.orm import Session

import migrations
from inventory import queries
from inventory.cycle_counts import record_cycle_counts
from inventory.db import create_engine, run_in_transaction, session_factory
from inventory.imports import import_locations, import_skus, import_stock
from inventory.reconcile import ReconcileOutcome
from inventory.sinks import LogSink, deliver_pending
from workers.scan.report import print_counts, print_discrepancies
from workers.settings import Settings

SAMPLE_FILES = ("skus.csv", "locations.csv", "stock.csv")


def sample_path(name: str) -> Path:
    """Path of a shipped sample file (``workers/sample_data/<name>``)."""
    return Path(str(resources.files("workers").joinpath("sample_data", name)))


def run_demo(workdir: Path, *, console: Console, settings: Settings) -> Path:
    """Build the demo database in ``workdir`` (replacing an earlier one) and print the report.

    Args:
        workdir: folder for ``shelftally.db``; created if missing.
        console: where the report goes.
        settings: reconciliation policy and alert channels (its database URL is not used).

    Returns:
        Path of the demo database.

    Raises:
        ShelfTallyError: a sample file failed to import (a packaging error).
    """
    started = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    database = workdir / "shelftally.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    url = f"sqlite:///{database}"
    migrations.upgrade(url)
    engine = create_engine(url)
    factory = session_factory(engine)
    console.rule("[bold]ShelfTally demo[/]: the inventory half (cycle counts instead of photos)")
    console.print(f"database: {database}  (schema {migrations.current(url)})", highlight=False)

    for name, importer in zip(SAMPLE_FILES, (import_skus, import_locations, import_stock), strict=True):
        path = sample_path(name)
        result = run_in_transaction(factory, lambda s, p=path, f=importer: f(s, file=p, actor="demo"))  # type: ignore[misc]
        console.print(f"imported {name}: {result.rows_read} rows ({result.inserted} new)", highlight=False)

    policy = settings.reconcile.policy()
    counts_file = sample_path("counts.csv")

    def record(session: Session) -> list[ReconcileOutcome]:
        with counts_file.open(encoding="utf-8", newline="") as handle:
            return record_cycle_counts(session, file=handle, source="demo:counts.csv", policy=policy,
                                       channels=("log",))

    outcomes = run_in_transaction(factory, record)
    report = deliver_pending(factory, [LogSink()])
    console.print(
        f"reconciled {len(outcomes)} scans (one per shelf and count round): "
        f"{sum(len(o.opened) for o in outcomes)} discrepancies opened, "
        f"{sum(len(o.resolved) for o in outcomes)} resolved by a later count, "
        f"{report.delivered} alerts delivered (log)",
        highlight=False,
    )

    with factory() as session:
        rows = queries.counts(session)
        open_rows = queries.discrepancies(session, confirm_after_scans=policy.confirm_after_scans)
        resolved = queries.discrepancies(session, statuses=["resolved"],  # type: ignore[list-item]
                                         confirm_after_scans=policy.confirm_after_scans)
    print_counts(rows, console)
    print_discrepancies(open_rows, console, "Open discrepancies (book vs counted)")
    print_discrepancies(resolved, console, "Resolved by a later count (never alerted)")
    engine.dispose()
    command = shutil.which("shelftally") or str(Path(sys.executable).with_name("shelftally"))
    url = f"sqlite:///{database.resolve()}"
    console.print(
        f"\ndemo finished in {time.perf_counter() - started:.1f} s. Explore it:\n"
        f"  {command} --database-url {url} discrepancies\n"
        f"  {command} --database-url {url} counts --location WH1-A01-B01\n"
        f"  {command} --database-url {url} adjust approve <id>",
        highlight=False,
        soft_wrap=True,
    )
    return database
