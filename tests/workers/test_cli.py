"""The ``shelftally`` CLI end to end on real SQLite and PostgreSQL: what an admin types."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from workers.cli import app
from workers.demo import sample_path

runner = CliRunner()


def shelftally(db_url: str, *args: str, code: int = 0) -> Any:
    """Run the CLI; assert its exit code; return parsed JSON when --json was given, else the output."""
    result = runner.invoke(app, ["--database-url", db_url, *args], env={"SHELFTALLY_ALERTS__CHANNELS": '["log"]'})
    assert result.exit_code == code, result.output
    if "--json" in args and code == 0:
        return json.loads(result.stdout)
    return result.output


@pytest.fixture
def warehouse(db_url: str) -> str:
    """A database at the newest revision holding the shipped sample warehouse."""
    shelftally(db_url, "db", "upgrade")
    for kind in ("skus", "locations", "stock"):
        shelftally(db_url, "import", kind, str(sample_path(f"{kind}.csv")))
    return db_url


def test_db_current_reports_head(warehouse: str) -> None:
    data = shelftally(warehouse, "db", "current", "--json")
    assert data["current"] == data["head"] is not None


def test_import_is_idempotent_and_reports_json(warehouse: str) -> None:
    data = shelftally(warehouse, "import", "stock", str(sample_path("stock.csv")), "--json")
    assert data["rows_read"] == data["unchanged"] > 0
    assert data["inserted"] == data["updated"] == 0


def test_bad_import_reports_lines_and_applies_nothing(warehouse: str, tmp_path: Path) -> None:
    bad = tmp_path / "stock.csv"
    bad.write_text(
        "location_code,sku_code,quantity\nWH1-A01-B01-S1,SKU-1001,99\nWH1-A01-B01-S1,SKU-1002,-4\nNOWHERE,SKU-1001,1\n"
    )
    output = shelftally(warehouse, "import", "stock", str(bad), code=1)
    assert "line 3" in output and "line 4" in output
    rows = shelftally(warehouse, "counts", "--location", "WH1-A01-B01-S1", "--sku", "SKU-1001", "--json")
    assert [r["book_quantity"] for r in rows] == [24]  # line 2 was valid but not applied


def test_cycle_counts_discrepancies_and_review(warehouse: str) -> None:
    summary = shelftally(warehouse, "import", "counts", str(sample_path("counts.csv")), "--json")
    assert summary["scans"] == 12
    assert summary["alerts_failed"] == 0
    rows = shelftally(warehouse, "discrepancies", "--json")
    kinds = sorted((r["kind"], r["location_code"], r["sku_code"]) for r in rows)
    assert kinds == [
        ("misplaced", "WH1-A01-B02-S1", "SKU-1011"),
        ("out_of_stock", "WH1-A01-B01-S2", "SKU-1004"),
        ("overage", "WH1-A01-B01-S3", "SKU-1005"),
        ("shortage", "WH1-A01-B01-S1", "SKU-1002"),
        ("unknown_product", "WH1-A01-B02-S2", None),
    ]
    assert all(r["alert_worthy"] and r["consecutive_scans"] == 2 for r in rows)
    assert summary["alerts_delivered"] == 5
    # the one-off miscount of SKU-1006 was resolved by the second round
    resolved = shelftally(warehouse, "discrepancies", "--status", "resolved", "--json")
    assert [(r["sku_code"], r["resolution"], r["alert_worthy"]) for r in resolved] == [("SKU-1006", "agreed", False)]
    # importing the same counts again changes nothing
    again = shelftally(warehouse, "import", "counts", str(sample_path("counts.csv")), "--json")
    assert again["already_recorded"] == 12 and again["alerts_delivered"] == 0

    shortage = next(r for r in rows if r["kind"] == "shortage")
    acked = shelftally(warehouse, "discrepancies", "ack", str(shortage["id"]), "--actor", "alice", "--json")
    assert (acked["status"], acked["acknowledged_by"]) == ("acknowledged", "alice")
    shelftally(warehouse, "discrepancies", "ack", str(shortage["id"]), code=1)  # not open any more

    adjustment = shelftally(warehouse, "adjust", "approve", str(shortage["id"]), "--actor", "alice", "--json")
    assert (adjustment["from_quantity"], adjustment["to_quantity"], adjustment["actor"]) == (18, 12, "alice")
    book = shelftally(warehouse, "counts", "--location", "WH1-A01-B01-S1", "--sku", "SKU-1002", "--json")
    assert [(r["book_quantity"], r["observed_quantity"], r["open_discrepancy"]) for r in book] == [(12, 12, None)]

    overage = next(r for r in rows if r["kind"] == "overage")
    shelftally(warehouse, "discrepancies", "resolve", str(overage["id"]), "--json")
    left = shelftally(warehouse, "discrepancies", "--kind", "overage,shortage", "--json")
    assert left == []
    shelftally(warehouse, "adjust", "approve", "99999", code=1)


def test_counts_as_of_uses_capture_time(warehouse: str) -> None:
    shelftally(warehouse, "import", "counts", str(sample_path("counts.csv")))
    before = shelftally(warehouse, "counts", "--sku", "SKU-1006", "--as-of", "2026-11-29T08:30:00+00:00", "--json")
    after = shelftally(warehouse, "counts", "--sku", "SKU-1006", "--as-of", "2026-11-29T10:30:00+01:00", "--json")
    never = shelftally(warehouse, "counts", "--sku", "SKU-1006", "--as-of", "2026-11-29T07:00:00Z", "--json")
    assert [(r["observed_quantity"], r["observed_at"]) for r in before] == [(7, "2026-11-29T08:00:00+00:00")]
    assert [(r["observed_quantity"], r["observed_at"]) for r in after] == [(9, "2026-11-29T09:00:00+00:00")]
    assert [(r["book_quantity"], r["observed_quantity"]) for r in never] == [(9, None)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("counts", "--as-of", "2026-11-29T08:30:00"), "no UTC offset"),
        (("counts", "--as-of", "yesterday"), "Invalid isoformat"),
        (("discrepancies", "--status", "closed"), "not one of"),
    ],
)
def test_bad_options_exit_2_with_reason(warehouse: str, args: tuple[str, ...], message: str) -> None:
    assert message in shelftally(warehouse, *args, code=2)


def test_unmigrated_database_is_a_clear_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/empty.db"
    data = shelftally(url, "db", "current", "--json")
    assert data["current"] is None
