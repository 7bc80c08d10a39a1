"""The ``shelftally`` CLI end to end on real SQLite and PostgreSQL: what an admin types."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from workers.cli import app
from workers.demo.counts import sample_path

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


def run_raw(*args: str, env: dict[str, str] | None = None) -> Any:
    return runner.invoke(app, list(args), env={"SHELFTALLY_ALERTS__CHANNELS": "log", **(env or {})})


def test_commands_before_db_upgrade_say_so_and_create_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/typo.db"
    for args in (("counts",), ("discrepancies",), ("discrepancies", "ack", "1"), ("alerts", "deliver"),
                 ("import", "skus", str(sample_path("skus.csv")))):
        result = run_raw("--database-url", url, *args)
        assert result.exit_code == 1, result.output
        assert "database_not_initialised" in result.output and "shelftally db upgrade" in result.output
        assert "Traceback" not in result.output
    assert not (tmp_path / "typo.db").exists()


def test_unmigrated_postgres_schema_is_reported(db_url: str) -> None:
    result = run_raw("--database-url", db_url, "counts", "--json")
    assert result.exit_code == 1
    error = json.loads(result.stdout)
    assert error["reason"] == "database_not_initialised"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("garbage", "invalid_database_url"),
        ("mysql://root@127.0.0.1/test", "invalid_database_url"),
        ("postgresql+psycopg://postgres@127.0.0.1:1/test", "database_unavailable"),
        ("sqlite:////nonexistent/dir/x.db", "database_unavailable"),
    ],
)
def test_bad_database_urls_are_errors_not_tracebacks(url: str, reason: str) -> None:
    result = run_raw("--database-url", url, "db", "upgrade")
    assert result.exit_code == 1, result.output
    assert reason in result.output
    assert "Traceback" not in result.output


def test_json_errors_are_json_on_stdout(warehouse: str) -> None:
    result = run_raw("--database-url", warehouse, "adjust", "approve", "4242", "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout) == {
        "error": "NotFoundError", "reason": "not_found", "message": "discrepancy 4242 not found"
    }


def test_ids_out_of_range_are_usage_errors(warehouse: str) -> None:
    result = run_raw("--database-url", warehouse, "discrepancies", "ack", "99999999999999999999")
    assert result.exit_code == 2


def test_approve_after_the_book_changed_needs_force(warehouse: str, tmp_path: Path) -> None:
    shelftally(warehouse, "import", "counts", str(sample_path("counts.csv")))
    shortage = next(r for r in shelftally(warehouse, "discrepancies", "--json") if r["kind"] == "shortage")
    delivery = tmp_path / "stock.csv"
    delivery.write_text("location_code,sku_code,quantity\nWH1-A01-B01-S1,SKU-1002,40\n")
    shelftally(warehouse, "import", "stock", str(delivery))
    output = shelftally(warehouse, "adjust", "approve", str(shortage["id"]), code=1)
    assert "book_changed" in output
    forced = shelftally(warehouse, "adjust", "approve", str(shortage["id"]), "--force", "--json")
    assert (forced["from_quantity"], forced["to_quantity"]) == (40, 12)


def test_unknown_setting_is_refused_before_any_work(warehouse: str) -> None:
    result = run_raw("--database-url", warehouse, "counts", env={"SHELFTALLY_DATABSE_URL": "sqlite:///x.db"})
    assert result.exit_code == 2
    assert "SHELFTALLY_DATABSE_URL" in result.output


def test_db_revisions(warehouse: str) -> None:
    older = run_raw("--database-url", warehouse, "db", "upgrade", "--revision", "0001")
    assert older.exit_code == 1 and "database_newer" in older.output
    unknown = run_raw("--database-url", warehouse, "db", "upgrade", "--revision", "0099")
    assert unknown.exit_code == 1 and "unknown_revision" in unknown.output
    assert run_raw("--database-url", warehouse, "db", "downgrade", "0001").exit_code == 2  # needs --yes
    assert run_raw("--database-url", warehouse, "db", "downgrade", "0001", "--yes").exit_code == 0
    assert shelftally(warehouse, "db", "current", "--json")["current"] == "0001"
    stale = run_raw("--database-url", warehouse, "counts")
    assert stale.exit_code == 1 and "database_not_initialised" in stale.output
    shelftally(warehouse, "db", "upgrade")
    assert len(shelftally(warehouse, "counts", "--json")) == 11  # book rows survived the round trip


def test_demo_refuses_a_file_as_workdir(tmp_path: Path) -> None:
    target = tmp_path / "afile"
    target.write_text("x")
    result = run_raw("demo", "--workdir", str(target))
    assert result.exit_code == 1 and "invalid_workdir" in result.output


def test_version() -> None:
    result = run_raw("--version")
    assert result.exit_code == 0 and result.stdout.startswith("shelftally ")


def test_sku_match_names_skus_from_text_and_barcodes(warehouse: str) -> None:
    found = shelftally(warehouse, "sku", "match", "SPAGHETTl No5", "--json")  # misread l for i
    assert found["matches"][0]["sku_code"] == "SKU-1001" and "spaghetti" in found["matches"][0]["matched"]
    assert found["barcode_sku"] is None
    by_code = shelftally(warehouse, "sku", "match", "2000000010014", "--json")
    assert by_code["barcode_sku"] == "SKU-1001"
    assert shelftally(warehouse, "sku", "match", "zzqx", "--json")["matches"] == []
    assert "SKU-1001" in shelftally(warehouse, "sku", "match", "spaghetti")
