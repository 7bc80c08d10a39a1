"""Benchmark: observations reconciled per second into PostgreSQL (not a test; run on demand).

Workload: 10,000 shelf locations x 5 SKUs stocked at each (50,000 stock levels). Two rounds of
scans, one scan per location per round with 5 observations each; about 1 SKU in 10 is counted
short, so round 1 opens discrepancies and round 2 confirms them (alerts written to the outbox)
or resolves them. Each scan is recorded and reconciled with the production code path
(:func:`inventory.reconcile.record_scans` + :func:`inventory.reconcile.reconcile_scans`).

Modes (``--batch N``): scans per transaction. ``1`` is one transaction per scan, as a worker
handling one picture at a time does; larger batches are what a worker draining a queue does.

Usage::

    .venv/bin/python bench/reconcile.py [--url postgresql+psycopg://postgres@127.0.0.1:5432/test]
        [--locations 10000] [--skus-per-location 5] [--batch 1 --batch 50] [--workers 1]

Writes ``bench/results/reconcile.json`` and prints a table. The database work happens in a
schema of its own, dropped at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import platform
import random
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import migrations
from bench._database import schema_url
from inventory.db import create_engine, run_in_transaction, session_factory
from inventory.models import Alert, Discrepancy, Location, LocationLevel, Sku, StockLevel
from inventory.reconcile import ObservedCount, ReconcilePolicy, ScanRecord, reconcile_scans, record_scans

RESULTS = Path(__file__).resolve().parent / "results"
T0 = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)


def seed(url: str, n_locations: int, k: int) -> None:
    """Master data and book via bulk inserts (not what is measured)."""
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.insert(Location), [{"location_code": "WH1", "level": LocationLevel.WAREHOUSE}])
        wh = conn.scalar(sa.select(Location.id).where(Location.location_code == "WH1"))
        conn.execute(
            sa.insert(Location),
            [{"location_code": f"WH1-S{i:05d}", "level": LocationLevel.SHELF, "parent_id": wh}
             for i in range(n_locations)],
        )
        conn.execute(sa.insert(Sku), [{"sku_code": f"SKU-{j:06d}", "name": f"Product {j}"}
                                       for j in range(n_locations * k)])
        loc_ids = dict(conn.execute(sa.select(Location.location_code, Location.id)).all())
        sku_ids = dict(conn.execute(sa.select(Sku.sku_code, Sku.id)).all())
        conn.execute(
            sa.insert(StockLevel),
            [
                {"location_id": loc_ids[f"WH1-S{i:05d}"], "sku_id": sku_ids[f"SKU-{i * k + j:06d}"],
                 "quantity": 12, "source": "bench", "updated_at": T0}
                for i in range(n_locations) for j in range(k)
            ],
        )
    engine.dispose()


def plan(n_locations: int, k: int, round_no: int, seed_value: int = 7) -> list[tuple[str, list[ObservedCount]]]:
    """Per location, the counts of one round: 10 % of SKUs short in round 0; in round 1 half of
    those stay short (confirmed) and half are back to the book (resolved)."""
    rng = random.Random(seed_value)
    scans = []
    for i in range(n_locations):
        counts = []
        for j in range(k):
            short = rng.random() < 0.1
            stays = rng.random() < 0.5
            facings = 12 if not short or (round_no == 1 and not stays) else 9
            counts.append(ObservedCount(f"SKU-{i * k + j:06d}", facings, 0.95))
        scans.append((f"WH1-S{i:05d}", counts))
    return scans


def run_round(url: str, scans: list[tuple[str, list[ObservedCount]]], round_no: int, batch: int,
              progress: Progress | None = None) -> float:
    """Record and reconcile the scans; return seconds spent."""
    engine = create_engine(url)
    factory = session_factory(engine)
    policy = ReconcilePolicy()
    captured = T0 + timedelta(hours=round_no)
    task = progress.add_task(f"round {round_no + 1} batch {batch}", total=len(scans)) if progress else None
    started = time.perf_counter()
    for start in range(0, len(scans), batch):
        chunk = scans[start:start + batch]

        def work(session: sa.orm.Session, chunk: list[tuple[str, list[ObservedCount]]] = chunk) -> None:
            records = [
                ScanRecord(location_code=location_code, captured_at=captured,
                           image_sha256=hashlib.sha256(f"{location_code}{round_no}".encode()).hexdigest(),
                           image_size_bytes=250_000, source="bench", observations=counts)
                for location_code, counts in chunk
            ]
            scan_ids = [scan_id for scan_id, _ in record_scans(session, scans=records)]
            reconcile_scans(session, scan_ids=scan_ids, policy=policy, channels=("webhook",))

        run_in_transaction(factory, work)
        if progress is not None and task is not None:
            progress.advance(task, len(chunk))
    elapsed = time.perf_counter() - started
    engine.dispose()
    return elapsed


def _worker(args: tuple[str, list[tuple[str, list[ObservedCount]]], int, int]) -> float:
    url, scans, round_no, batch = args
    return run_round(url, scans, round_no, batch)


def bench(base_url: str, n_locations: int, k: int, batch: int, workers: int, console: Console) -> dict[str, Any]:
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base_url)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    url = schema_url(base_url, schema)
    try:
        migrations.upgrade(url)
        seed(url, n_locations, k)
        rounds = []
        for round_no in (0, 1):
            scans = plan(n_locations, k, round_no)
            if workers == 1:
                with Progress(console=console, transient=True) as progress:
                    seconds = run_round(url, scans, round_no, batch, progress)
            else:
                parts = [(url, scans[w::workers], round_no, batch) for w in range(workers)]
                started = time.perf_counter()
                with multiprocessing.get_context("spawn").Pool(workers) as pool:
                    pool.map(_worker, parts)
                seconds = time.perf_counter() - started
            observations = sum(len(c) for _, c in scans)
            rounds.append({"round": round_no + 1, "scans": len(scans), "observations": observations,
                           "seconds": round(seconds, 3), "observations_per_s": round(observations / seconds, 1)})
        engine = create_engine(url)
        with engine.connect() as conn:
            open_count = conn.scalar(sa.select(sa.func.count()).select_from(Discrepancy)
                                     .where(Discrepancy.status != "resolved"))
            alerts = conn.scalar(sa.select(sa.func.count()).select_from(Alert))
        engine.dispose()
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()
    total_obs = sum(r["observations"] for r in rounds)
    total_s = sum(r["seconds"] for r in rounds)
    return {"batch": batch, "workers": workers, "rounds": rounds, "open_discrepancies_after": open_count,
            "alerts_written": alerts, "observations_per_s": round(total_obs / total_s, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default=os.environ.get("SHELFTALLY_BENCH_POSTGRES_URL",
                                                        "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--locations", type=int, default=10_000)
    parser.add_argument("--skus-per-location", type=int, default=5)
    parser.add_argument("--batch", type=int, action="append", help="scans per transaction (repeatable)")
    parser.add_argument("--workers", type=int, action="append", help="processes (repeatable)")
    parser.add_argument("--out", type=Path, default=RESULTS / "reconcile.json")
    args = parser.parse_args()
    console = Console()
    runs = []
    for workers in args.workers or [1]:
        for batch in args.batch or [1, 50]:
            console.print(f"[bold]{args.locations} locations x {args.skus_per_location} SKUs, "
                          f"batch {batch}, {workers} process(es)[/]")
            runs.append(bench(args.url, args.locations, args.skus_per_location, batch, workers, console))
    table = Table(title="Observations reconciled per second (PostgreSQL)")
    for column in ("processes", "scans/transaction", "round 1 obs/s", "round 2 obs/s", "overall obs/s",
                   "open discrepancies", "alerts"):
        table.add_column(column, justify="right")
    for r in runs:
        table.add_row(str(r["workers"]), str(r["batch"]), str(r["rounds"][0]["observations_per_s"]),
                      str(r["rounds"][1]["observations_per_s"]), str(r["observations_per_s"]),
                      str(r["open_discrepancies_after"]), str(r["alerts_written"]))
    console.print(table)
    with create_engine(args.url).connect() as conn:
        server = conn.exec_driver_sql("show server_version").scalar()
    result = {
        "benchmark": "reconcile",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "postgresql": server},
        "locations": args.locations,
        "skus_per_location": args.skus_per_location,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"written to {args.out}")


if __name__ == "__main__":
    main()
