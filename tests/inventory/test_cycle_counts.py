"""Cycle count files (inventory.cycle_counts) on real SQLite and real PostgreSQL (the ``factory`` fixture)."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from inventory.cycle_counts import parse_time, record_cycle_counts
from inventory.db import run_in_transaction
from inventory.errors import ImportFileError, NaiveDatetimeError
from inventory.models import (
    Alert,
    Discrepancy,
    DiscrepancyKind,
    DiscrepancyStatus,
    FacingRule,
    Location,
    LocationLevel,
    Observation,
    Scan,
    Sku,
)
from inventory.reconcile import ReconcileOutcome, ReconcilePolicy
from tests.conftest import count_rows, seed_shelf

S1 = "WH1-A01-B01-S1"  # visible units; book SKU-A 10, SKU-B 5
S2 = "WH1-A01-B01-S2"  # 6 units per facing; nothing stocked
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)  # the import's clock: the counts lie before it
POLICY = ReconcilePolicy()  # strict, confirmed after 2 scans
HEADER = "location_code,captured_at,sku_code,facings,unknown_facings\n"
T = "2026-11-29T08:00:00Z"
GOOD_ROW = f"{S1},{T},SKU-A,10,\n"  # line 2 after the header

Content = str | bytes


def seed(factory: sessionmaker[Session]) -> None:
    """WH1 > S1 (SKU-A 10, SKU-B 5 in the book; SKU-C exists) and WH1 > S2 (6 units per facing)."""
    with factory.begin() as s:
        shelf = seed_shelf(s, book={"SKU-A": 10, "SKU-B": 5, "SKU-C": None}, location_code=S1)
        s.add(Location(location_code=S2, level=LocationLevel.SHELF, parent_id=shelf.parent_id,
                       facing_rule=FacingRule.UNITS_PER_FACING, units_per_facing=6))


def source_of(content: Content, tmp_path: Path) -> io.StringIO | Path:
    """Text as a named stream; bytes as a file on disk (read as bytes by the importer)."""
    if isinstance(content, bytes):
        path = tmp_path / "counts.csv"
        path.write_bytes(content)
        return path
    buffer = io.StringIO(content)
    buffer.name = "counts.csv"
    return buffer


def run_counts(
    factory: sessionmaker[Session], content: Content, tmp_path: Path, *, now: datetime = NOW
) -> list[ReconcileOutcome]:
    """Record a count file in one committed transaction (the stream is made inside the retried work)."""
    return run_in_transaction(factory, lambda s: record_cycle_counts(
        s, file=source_of(content, tmp_path), source="cycle-count:counts.csv", policy=POLICY, now=now))


def count_error(factory: sessionmaker[Session], content: Content, tmp_path: Path) -> ImportFileError:
    with pytest.raises(ImportFileError) as info:
        run_counts(factory, content, tmp_path)
    return info.value


def totals(factory: sessionmaker[Session]) -> tuple[int, int, int, int]:
    """Rows of scans, observations, discrepancies and alerts."""
    with factory() as s:
        return (count_rows(s, Scan), count_rows(s, Observation), count_rows(s, Discrepancy),
                count_rows(s, Alert))


def scans(factory: sessionmaker[Session]) -> list[tuple[str, datetime, int, dict[str, tuple[int, int]], str]]:
    """Every scan as (location, captured_at, unknown_facings, {sku: (facings, units)}, source), by capture time."""
    with factory() as s:
        out = []
        for scan in s.scalars(sa.select(Scan).order_by(Scan.captured_at, Scan.id)):
            observed = {
                sku: (facings, quantity)
                for sku, facings, quantity in s.execute(
                    sa.select(Sku.sku_code, Observation.facings, Observation.quantity)
                    .join(Sku, Observation.sku_id == Sku.id)
                    .where(Observation.scan_id == scan.id)
                )
            }
            out.append((scan.location.location_code, scan.captured_at.astimezone(UTC), scan.unknown_facings,
                        observed, scan.source))
        return out


def discrepancies(factory: sessionmaker[Session]) -> set[tuple[str, str | None, DiscrepancyKind, DiscrepancyStatus,
                                                              int, int | None]]:
    """Every discrepancy as (location, sku or None, kind, status, consecutive scans, observed quantity)."""
    with factory() as s:
        rows = s.execute(
            sa.select(Location.location_code, Sku.sku_code, Discrepancy.kind, Discrepancy.status,
                      Discrepancy.consecutive_scans, Discrepancy.observed_quantity)
            .join(Location, Discrepancy.location_id == Location.id)
            .outerjoin(Sku, Discrepancy.sku_id == Sku.id)
        )
        return {tuple(row) for row in rows}  # type: ignore[misc]


# ------------------------------------------------------------------------------------- good files


GOOD = (
    HEADER
    + f"{S1},2026-11-29T09:00:00+01:00,SKU-A,4,\n"  # 08:00Z: a shortage
    + f"{S1},2026-11-29T08:00:00Z,SKU-B,5,\n"  # the same count (the same instant)
    + f"{S1},2026-11-29t08:00:00z,,,2\n"  # the same count: 2 unrecognised items
    + f"{S2},2026-11-29T08:30:00Z,SKU-C,3,0\n"  # 3 facings of 6 units: misplaced
    + f"{S1},2026-11-29T07:00:00Z,SKU-A,10,\n"  # an earlier count, later in the file: SKU-B missing
)


def test_a_good_file_records_one_scan_per_count_and_reconciles_in_capture_order(
    factory: sessionmaker[Session], tmp_path: Path
) -> None:
    seed(factory)

    outcomes = run_counts(factory, GOOD, tmp_path)

    at = [datetime(2026, 11, 29, h, m, tzinfo=UTC) for h, m in ((7, 0), (8, 0), (8, 30))]
    assert scans(factory) == [
        (S1, at[0], 0, {"SKU-A": (10, 10)}, "cycle-count:counts.csv"),
        (S1, at[1], 2, {"SKU-A": (4, 4), "SKU-B": (5, 5)}, "cycle-count:counts.csv"),
        (S2, at[2], 0, {"SKU-C": (3, 18)}, "cycle-count:counts.csv"),
    ]
    assert len(outcomes) == 3
    assert not any(o.stale or o.already_reconciled for o in outcomes)  # the 07:00 count went first
    with factory() as s:
        assert s.scalars(sa.select(Scan.id).order_by(Scan.captured_at)).all() == [o.scan_id for o in outcomes]
        through = dict(s.execute(sa.select(Location.location_code, Location.reconciled_through)).all())
    assert through[S1] is not None and through[S1].astimezone(UTC) == at[1]
    K, St = DiscrepancyKind, DiscrepancyStatus
    assert discrepancies(factory) == {
        (S1, "SKU-B", K.OUT_OF_STOCK, St.RESOLVED, 1, 0),  # opened at 07:00, resolved by 08:00
        (S1, "SKU-A", K.SHORTAGE, St.OPEN, 1, 4),
        (S1, None, K.UNKNOWN_PRODUCT, St.OPEN, 1, 2),
        (S2, "SKU-C", K.MISPLACED, St.OPEN, 1, 18),
    }


def test_importing_the_same_counts_again_is_a_no_op(factory: sessionmaker[Session], tmp_path: Path) -> None:
    seed(factory)
    run_counts(factory, GOOD, tmp_path)
    before_totals, before_discrepancies = totals(factory), discrepancies(factory)
    header, *rows = GOOD.splitlines(keepends=True)
    reordered = (header + "".join(reversed(rows))).encode()  # the same rows in another order, from a path

    again = run_counts(factory, GOOD, tmp_path)
    shuffled = run_counts(factory, reordered, tmp_path)

    assert [o.already_reconciled for o in again + shuffled] == [True] * 6
    assert [o.scan_id for o in again] == [o.scan_id for o in shuffled]
    assert totals(factory) == before_totals
    assert discrepancies(factory) == before_discrepancies


def test_bom_crlf_case_insensitive_header_blank_lines_and_no_optional_column(
    factory: sessionmaker[Session], tmp_path: Path
) -> None:
    seed(factory)
    content = (
        "\ufeff\r\n FACINGS ,Location_Code,SKU_CODE,captured_at\r\n\r\n"
        f" 7 , {S1} , SKU-B , {T} \r\n,,,\r\n"
    ).encode()

    outcomes = run_counts(factory, content, tmp_path)

    assert len(outcomes) == 1
    assert scans(factory) == [(S1, datetime(2026, 11, 29, 8, tzinfo=UTC), 0, {"SKU-B": (7, 7)},
                               "cycle-count:counts.csv")]


def test_an_empty_count_file_records_nothing(factory: sessionmaker[Session], tmp_path: Path) -> None:
    seed(factory)

    assert run_counts(factory, HEADER, tmp_path) == []
    assert totals(factory) == (0, 0, 0, 0)


# -------------------------------------------------------------------------------------- bad files


def _digits(n: int) -> str:
    return "9" * n


# (file content: text as a stream, bytes as a file; lines the reason is reported on; reason substring).
# The database holds seed(); every file is rejected whole.
BAD_FILES = [
    # header
    pytest.param("", [1], "no header", id="empty-file"),
    pytest.param("location_code,captured_at,sku_code,facings,colour\n" + GOOD_ROW, [1],
                 "unknown column(s): colour", id="unknown-column"),
    pytest.param("location_code,captured_at,sku_code,facings,FACINGS\n", [1], "duplicate column(s): facings",
                 id="duplicate-column"),
    pytest.param("location_code,captured_at,sku_code\n", [1], "missing required column(s): facings",
                 id="missing-column"),
    # CSV structure and bytes
    pytest.param(HEADER + GOOD_ROW + f"{S1},{T},SKU-B,1,,extra\n", [3], "expected 5 fields like the header",
                 id="too-many-fields"),
    pytest.param(HEADER + GOOD_ROW + f"{S1},{T},SKU-B\n", [3], "expected 5 fields", id="too-few-fields"),
    pytest.param(HEADER + GOOD_ROW + f'{S1},{T},"SKU-B,1,\n{S1},{T},SKU-C,1,\n', [3], "malformed CSV",
                 id="unterminated-quote"),
    pytest.param(HEADER + f'{S1},{T},"SKU-A"x,1,\n', [2], "malformed CSV", id="text-after-quote"),
    pytest.param((HEADER + GOOD_ROW).encode() + b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xd8\n", [3],
                 "invalid UTF-8 at byte offset", id="binary-content"),
    pytest.param((HEADER + GOOD_ROW + f"{S1},{T},Caf\xe9,1,\n").encode("latin-1"), [3], "invalid UTF-8",
                 id="latin-1"),
    pytest.param(HEADER + GOOD_ROW + f"{S1},{T},SKU-B\x00,1,\n", [3], "sku_code contains a control character "
                 "(U+0000", id="nul"),
    pytest.param(HEADER + f"{S1}\x1b[31m,{T},SKU-B,1,\n", [2], "location_code contains a control character (U+001B",
                 id="escape-sequence"),
    # integers
    pytest.param(HEADER + f"{S1},{T},SKU-A,{2**31},\n", [2], "facings 2147483648 is too large (at most 2147483647)",
                 id="facings-int32-overflow"),
    pytest.param(HEADER + f"{S1},{T},SKU-A,{2**63},\n", [2], "too large", id="facings-int64-overflow"),
    pytest.param(HEADER + f"{S1},{T},SKU-A,{_digits(5000)},\n", [2], "too large", id="facings-5000-digits"),
    pytest.param(HEADER + f"{S1},{T},,,{2**31}\n", [2], "unknown_facings 2147483648 is too large",
                 id="unknown-facings-overflow"),
    pytest.param(HEADER + f"{S1},{T},,,{2**31 - 1}\n{S1},{T},,,1\n", [3], "add up to more than 2147483647",
                 id="unknown-facings-sum-overflow"),
    pytest.param(HEADER + f"{S1},{T},SKU-A,\u0663,\n", [2], "facings '\u0663' is not an integer",
                 id="arabic-indic-digit"),
    pytest.param(HEADER + f"{S1},{T},SKU-A,1_000,\n", [2], "facings '1_000' is not an integer", id="underscore"),
    pytest.param(HEADER + f"{S1},{T},SKU-A,1.5,\n", [2], "facings '1.5' is not an integer", id="decimal"),
    pytest.param(HEADER + f"{S1},{T},SKU-A,-1,\n", [2], "facings -1 is negative", id="negative"),
    pytest.param(HEADER + f"{S1},{T},SKU-A,,\n", [2], "facings is empty", id="facings-empty"),
    pytest.param(HEADER + f"{S1},{T},,,-2\n", [2], "unknown_facings -2 is negative", id="unknown-negative"),
    # captured_at
    pytest.param(HEADER + f"{S1},yesterday,SKU-A,1,\n", [2], "captured_at 'yesterday' is not an ISO 8601 time",
                 id="not-a-time"),
    pytest.param(HEADER + f"{S1},2026-11-29T08:00:00,SKU-A,1,\n", [2],
                 "captured_at '2026-11-29T08:00:00' has no UTC offset", id="naive-time"),
    pytest.param(HEADER + f"{S1},2026-11-29,SKU-A,1,\n", [2], "write e.g. 2026-11-29T00:00:00Z", id="date-only"),
    pytest.param(HEADER + f"{S1},9999-12-31T23:59:59-05:00,SKU-A,1,\n", [2],
                 "captured_at '9999-12-31T23:59:59-05:00' is out of range", id="out-of-range-in-utc"),
    pytest.param(HEADER + f"{S1},2026-02-30T08:00:00Z,SKU-A,1,\n", [2], "day is out of range for month",
                 id="no-such-day"),
    pytest.param(HEADER + f"{S1},,SKU-A,1,\n", [2], "captured_at is empty", id="time-empty"),
    pytest.param(HEADER + f"{S1},2026-12-24T18:00:00Z,SKU-A,1,\n", [2],
                 "captured_at '2026-12-24T18:00:00Z' is in the future", id="future"),
    # row semantics
    pytest.param(HEADER + f"{S1},{T},,3,\n", [2], "facings given without sku_code", id="facings-without-sku"),
    pytest.param(HEADER + GOOD_ROW + f"{S1},{T},,,\n", [3], "empty count row", id="empty-count-row"),
    pytest.param(HEADER + f",{T},SKU-A,1,\n", [2], "location_code is empty", id="location-empty"),
    pytest.param(HEADER + f"{'X' * 65},{T},SKU-A,1,\n", [2], "location_code is longer than 64", id="location-long"),
    pytest.param(HEADER + f"{S1},{T},{'X' * 65},1,\n", [2], "sku_code is longer than 64", id="sku-long"),
    pytest.param(HEADER + GOOD_ROW + f"{S1},{T},SKU-B,1,\n{S1},2026-11-29T09:00:00+01:00,SKU-A,3,\n", [4],
                 f"sku_code 'SKU-A' counted twice at {S1} 2026-11-29T08:00:00Z (first on line 2)",
                 id="duplicate-sku-in-count"),
    # master data
    pytest.param(HEADER + GOOD_ROW + f"WH9-NOPE,{T},SKU-A,1,\n", [3], "unknown location_code 'WH9-NOPE'",
                 id="unknown-location"),
    pytest.param(HEADER + GOOD_ROW + f"{S1},{T},SKU-Z,1,\n{S2},{T},SKU-B,1,\n{S2},{T},SKU-Z,2,\n", [3, 5],
                 "unknown sku_code 'SKU-Z'", id="unknown-sku-on-two-lines"),
]


@pytest.mark.parametrize(("content", "lines", "reason"), BAD_FILES)
def test_a_bad_file_is_rejected_naming_lines_and_reason_and_records_nothing(
    factory: sessionmaker[Session], tmp_path: Path, content: Content, lines: list[int], reason: str
) -> None:
    seed(factory)

    error = count_error(factory, content, tmp_path)

    assert sorted(line for line, why in error.row_errors if reason in why) == lines, error.row_errors
    assert error.reason == "invalid_import_file"
    assert totals(factory) == (0, 0, 0, 0)


def test_every_bad_row_is_reported_at_once_and_a_good_earlier_import_is_untouched(
    factory: sessionmaker[Session], tmp_path: Path
) -> None:
    seed(factory)
    run_counts(factory, GOOD, tmp_path)
    before_totals, before_discrepancies = totals(factory), discrepancies(factory)
    content = (
        HEADER
        + f"{S1},2026-11-29T10:00:00Z,SKU-A,10,\n"  # good
        + f"{S1},2026-11-29T10:00:00Z,SKU-B,1_000,\n"
        + f"{S2},2026-11-29,SKU-C,1,\n"
        + f"{S1},2026-11-29T10:00:00Z,SKU-Q,1,\n"
        + f"WH9,2026-11-29T10:00:00Z,SKU-A,{2**31},\n"
    )

    error = count_error(factory, content, tmp_path)

    assert error.row_errors == [
        (3, "facings '1_000' is not an integer (write plain digits 0-9, no separators)"),
        (4, "captured_at '2026-11-29' is a date without a time and UTC offset (write e.g. 2026-11-29T00:00:00Z)"),
        (5, "unknown sku_code 'SKU-Q'"),
        (6, "facings 2147483648 is too large (at most 2147483647)"),
        (6, "unknown location_code 'WH9'"),
    ]
    assert "line 3" in str(error) and "line 6" in str(error)
    assert totals(factory) == before_totals
    assert discrepancies(factory) == before_discrepancies


def test_a_binary_file_opened_as_utf8_text_names_the_bad_line(factory: sessionmaker[Session], tmp_path: Path) -> None:
    seed(factory)
    path = tmp_path / "counts.csv"
    good = (HEADER + GOOD_ROW + f"{S1},{T},SKU-B,5,\n").encode()
    path.write_bytes(good + b"\xff\xfe\x00\x01binary\n")

    def work(s: Session) -> list[ReconcileOutcome]:
        with path.open(encoding="utf-8", newline="") as handle:  # as the CLI opens it
            return record_cycle_counts(s, file=handle, source="cli", policy=POLICY, now=NOW)

    with pytest.raises(ImportFileError, match=r"^counts\.csv: not a UTF-8 file") as info:
        run_in_transaction(factory, work)

    assert info.value.row_errors == [(4, f"invalid UTF-8 at byte offset {len(good)}")]
    assert totals(factory) == (0, 0, 0, 0)


# ------------------------------------------------------------------------------------ the clock


def test_now_decides_what_is_in_the_future(factory: sessionmaker[Session], tmp_path: Path) -> None:
    seed(factory)
    content = HEADER + f"{S1},2026-11-30T12:10:00+00:00,SKU-A,10,\n"  # 10 minutes after NOW

    with pytest.raises(ImportFileError) as info:
        run_counts(factory, content, tmp_path)
    later = run_counts(factory, content, tmp_path, now=datetime(2026, 11, 30, 13, 10, tzinfo=UTC))

    assert info.value.row_errors == [
        (2, "captured_at '2026-11-30T12:10:00+00:00' is in the future (more than 300 s after 2026-11-30T12:00:00Z)")
    ]
    assert len(later) == 1 and totals(factory)[0] == 1


def test_a_naive_now_is_refused(factory: sessionmaker[Session], tmp_path: Path) -> None:
    seed(factory)

    with pytest.raises(NaiveDatetimeError):
        run_counts(factory, HEADER + GOOD_ROW, tmp_path, now=datetime(2026, 11, 30, 12))


# ---------------------------------------------------------------------------------- parse_time


@pytest.mark.parametrize(
    ("text", "expected", "message"),
    [
        ("2026-11-29T10:00:00Z", datetime(2026, 11, 29, 10, tzinfo=UTC), None),
        (" 2026-11-29t11:00:00+01:00 ", datetime(2026, 11, 29, 10, tzinfo=UTC), None),
        ("2026-11-29 10:00:00.250z", datetime(2026, 11, 29, 10, 0, 0, 250_000, tzinfo=UTC), None),
        ("9999-12-31T23:59:59+00:00", datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC), None),
        ("", None, "'' is not an ISO 8601 time"),
        ("yesterday", None, "'yesterday' is not an ISO 8601 time with a UTC offset"),
        ("2026-11-29T10:00:00", None, "'2026-11-29T10:00:00' has no UTC offset (write e.g. 2026-11-29T10:00:00Z"),
        ("2026-11-29", None, "'2026-11-29' is a date without a time and UTC offset (write e.g. 2026-11-29T00:00:00Z)"),
        ("9999-12-31T23:59:59-05:00", None, "'9999-12-31T23:59:59-05:00' is out of range"),
        ("0001-01-01T00:30:00+01:00", None, "'0001-01-01T00:30:00+01:00' is out of range"),
        ("2026-11-29T10:00:00+\u0661\u0660:00", None, "is not an ISO 8601 time"),
    ],
)
def test_parse_time(text: str, expected: datetime | None, message: str | None) -> None:
    if message is not None:
        with pytest.raises(ValueError) as info:
            parse_time(text)
        assert message in str(info.value)
        return
    parsed = parse_time(text)
    assert parsed == expected
    assert parsed.utcoffset() is not None and parsed.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
