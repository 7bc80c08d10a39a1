"""Counts that did not come from a camera: a cycle count file from a handheld or a WMS export.

File format
    The same CSV rules as the WMS imports (:mod:`inventory.imports`): UTF-8 (a byte order mark
    is accepted), RFC 4180 quoting, a header whose column names are matched case-insensitively
    (an unknown, duplicate or missing required column rejects the file), values stripped,
    blank lines skipped, every other line with as many fields as the header, no control
    characters, integers as plain ASCII digits. Error positions are 1-based physical line
    numbers of the file.

    ===================  ========  ===============================================================
    column               required  meaning
    ===================  ========  ===============================================================
    ``location_code``    yes       the counted location (must exist)
    ``captured_at``      yes       ISO 8601 time of the count with a UTC offset, e.g.
                                   ``2026-11-29T10:00:00Z`` or ``2026-11-29T11:00:00+01:00``
    ``sku_code``         yes       counted SKU (must exist); empty for a row that only reports
                                   unrecognised items. A SKU at most once per count.
    ``facings``          yes       counted facings of that SKU, 0 to 2**31-1; empty (and only
                                   empty) when ``sku_code`` is empty
    ``unknown_facings``  no        unrecognised items at the location, 0 to 2**31-1; empty: 0.
                                   A row without ``sku_code`` must give it.
    ===================  ========  ===============================================================

Semantics
    All rows with the same (``location_code``, ``captured_at`` as an instant) form one count:
    one scan with an observation per SKU and the sum of the rows' ``unknown_facings``, recorded
    with :func:`inventory.reconcile.record_scans` and reconciled like a camera scan, oldest
    first. The scan's ``image_sha256`` is the SHA-256 of the count's rows, so importing the same
    file again is a no-op. All or nothing: the whole file is checked first (including that every
    location and SKU exists), every bad row is reported in one
    :class:`~inventory.errors.ImportFileError`, and nothing of a bad file is recorded.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from sqlalchemy.orm import Session

from inventory.db import utcnow
from inventory.errors import NaiveDatetimeError
from inventory.imports import (
    _CODE_MAX,
    _INT_MAX,
    ImportFile,
    _Cells,
    _ids_by_code,
    _raise_if_errors,
    _read_table,
    _Table,
)
from inventory.models import Location, Sku
from inventory.reconcile import (
    MAX_FUTURE_S,
    ObservedCount,
    ReconcileOutcome,
    ReconcilePolicy,
    ScanRecord,
    reconcile_scans,
    record_scans,
)

logger = logging.getLogger(__name__)

REQUIRED = ("location_code", "captured_at", "sku_code", "facings")
OPTIONAL = ("unknown_facings",)

_SOURCE_MAX = 255  # Scan.source


def parse_time(text: str) -> datetime:
    """Parse an ISO 8601 time that carries a UTC offset (``Z`` accepted) into an aware UTC datetime.

    Args:
        text: e.g. ``2026-11-29T10:00:00Z`` or ``2026-11-29T11:00:00+01:00`` (any form
            :meth:`datetime.datetime.fromisoformat` reads; letters in either case, surrounding
            whitespace ignored).

    Returns:
        The instant, in UTC.

    Raises:
        ValueError: not an ISO 8601 time, a date without a time, no UTC offset (a naive time
            names no instant), or out of range once converted to UTC (e.g.
            ``9999-12-31T23:59:59-05:00``). The message quotes ``text``.
    """
    value = text.strip()
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as error:
        try:
            parsed = datetime.fromisoformat(value.upper())  # RFC 3339 allows a lower-case t and z
        except ValueError:
            raise ValueError(
                f"{text!r} is not an ISO 8601 time with a UTC offset such as 2026-11-29T10:00:00Z ({error})"
            ) from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        try:
            day = date.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{text!r} has no UTC offset (write e.g. {value}Z or {value}+01:00)") from None
        raise ValueError(
            f"{text!r} is a date without a time and UTC offset (write e.g. {day.isoformat()}T00:00:00Z)"
        )
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{text!r} is out of range: in UTC it falls outside the years 1-9999") from None


@dataclass
class _Count:
    """The rows of one (location, capture time): one scan."""

    location_code: str
    captured_at: datetime
    facings: dict[str, int] = field(default_factory=dict)
    unknown_facings: int = 0
    rows: list[str] = field(default_factory=list)  # each row's cells, comma-joined: the digest's input

    def scan(self, source: str) -> ScanRecord:
        # The digest of the sorted rows: the same rows in any order are the same scan.
        digest = hashlib.sha256("\n".join(sorted(self.rows)).encode()).hexdigest()
        return ScanRecord(
            location_code=self.location_code,
            captured_at=self.captured_at,
            image_sha256=digest,
            image_size_bytes=0,
            source=source,
            observations=[ObservedCount(sku, n) for sku, n in self.facings.items()],
            unknown_facings=self.unknown_facings,
        )


@dataclass(frozen=True)
class _Reference:
    """Codes one row names, checked against the database together."""

    line: int
    location_code: str
    sku_code: str | None


def _parse_counts(table: _Table, *, latest: datetime) -> tuple[list[_Count], list[_Reference]]:
    """Group the rows into counts; every bad row goes to ``table.errors``."""
    counts: dict[tuple[str, datetime], _Count] = {}
    first_line: dict[tuple[str, datetime, str], int] = {}
    references: list[_Reference] = []
    for row in table.rows:
        cells = _Cells(row, table.errors)
        location_code = cells.code("location_code")
        captured_at = cells.parsed("captured_at", parse_time)
        sku_code = cells.text("sku_code", max_length=_CODE_MAX)
        facings: int | None = None
        if sku_code is not None:
            facings = cells.integer("facings", minimum=0, maximum=_INT_MAX)
        elif row.cells["facings"]:
            cells.bad("facings given without sku_code")
        elif not row.cells.get("unknown_facings"):
            cells.bad("empty count row: no sku_code and no unknown_facings")
        unknown = cells.integer("unknown_facings", minimum=0, maximum=_INT_MAX, default=0)
        if captured_at is not None and captured_at > latest:
            cells.bad(f"captured_at {row.cells['captured_at']!r} is in the future (more than {MAX_FUTURE_S:g} s "
                      f"after {latest - timedelta(seconds=MAX_FUTURE_S):%Y-%m-%dT%H:%M:%SZ})")
        if location_code is None:
            continue
        references.append(_Reference(row.line, location_code, sku_code))
        if captured_at is None:
            continue
        key = (location_code, captured_at)
        if sku_code is not None:
            first = first_line.setdefault((*key, sku_code), row.line)
            if first != row.line:
                cells.bad(f"sku_code {sku_code!r} counted twice at {location_code} "
                          f"{captured_at:%Y-%m-%dT%H:%M:%SZ} (first on line {first})")
        count = counts.setdefault(key, _Count(location_code, captured_at))
        if unknown is not None and count.unknown_facings + unknown > _INT_MAX:
            cells.bad(f"unknown_facings of {location_code} at {captured_at:%Y-%m-%dT%H:%M:%SZ} add up to more "
                      f"than {_INT_MAX}")
        if not cells.ok or unknown is None:
            continue
        if sku_code is not None and facings is not None:
            count.facings[sku_code] = facings
        count.unknown_facings += unknown
        count.rows.append(",".join(row.cells.values()))
    return list(counts.values()), references


def _check_references(session: Session, references: Sequence[_Reference], errors: list[tuple[int, str]]) -> None:
    """Report every row naming a location or SKU that does not exist (chunked ``IN`` queries)."""
    locations = _ids_by_code(session, Location.location_code, Location.id, (r.location_code for r in references))
    skus = _ids_by_code(session, Sku.sku_code, Sku.id, (r.sku_code for r in references if r.sku_code is not None))
    for r in references:
        if r.location_code not in locations:
            errors.append((r.line, f"unknown location_code {r.location_code!r}"))
        if r.sku_code is not None and r.sku_code not in skus:
            errors.append((r.line, f"unknown sku_code {r.sku_code!r}"))


def record_cycle_counts(
    session: Session,
    *,
    file: ImportFile,
    source: str,
    policy: ReconcilePolicy,
    channels: Sequence[str] = (),
    now: datetime | None = None,
) -> list[ReconcileOutcome]:
    """Record and reconcile every count in a cycle count file, in capture order (does not commit).

    Args:
        session: the caller's session; nothing is applied unless the caller commits.
        file: an open text stream or a path (see :data:`inventory.imports.ImportFile`); a
            stream is read to its end, so a unit of work that may be retried should open it
            inside the work.
        source: recorded as the scans' source (e.g. ``cycle-count:counts.csv``), cut to 255
            characters.
        policy: reconciliation tolerances.
        channels: alert channels for state changes.
        now: the current time, aware (default: the clock); a ``captured_at`` more than
            :data:`inventory.reconcile.MAX_FUTURE_S` after it is a bad row.

    Returns:
        One outcome per (location, capture time), oldest first. Counts recorded by an earlier
        import of the same rows come back ``already_reconciled``.

    Raises:
        ImportFileError: the header or any row is bad (``row_errors`` lists every bad line and
            why: not UTF-8, malformed CSV, a wrong number of fields, a control character, an
            empty or too long code, a ``captured_at`` that is not an ISO 8601 time with offset,
            is out of range or in the future, ``facings``/``unknown_facings`` that are not
            integers in 0..2**31-1, ``facings`` without ``sku_code``, a row with neither
            ``sku_code`` nor ``unknown_facings``, a SKU counted twice in one count, an unknown
            location or SKU); nothing was recorded.
        NaiveDatetimeError: ``now`` has no UTC offset.
        OSError: ``file`` is a path that cannot be read.
    """
    if now is None:
        now = utcnow()
    elif now.tzinfo is None or now.utcoffset() is None:
        raise NaiveDatetimeError(f"now {now.isoformat()} has no UTC offset")
    now = now.astimezone(UTC)
    table = _read_table(file, required=REQUIRED, optional=OPTIONAL)
    counts, references = _parse_counts(table, latest=now + timedelta(seconds=MAX_FUTURE_S))
    _check_references(session, references, table.errors)
    _raise_if_errors(table.name, table.errors)

    counts.sort(key=lambda c: c.captured_at)  # stable: counts of one instant keep file order
    scans = [count.scan(source[:_SOURCE_MAX]) for count in counts]
    scan_ids = [scan_id for scan_id, _ in record_scans(session, scans=scans, now=now)]
    outcomes = reconcile_scans(session, scan_ids=scan_ids, policy=policy, channels=channels)
    logger.info("cycle count import file=%s source=%s rows=%s scans=%s new=%s", table.name, source,
                len(table.rows), len(outcomes), sum(not o.already_reconciled for o in outcomes))
    return outcomes
