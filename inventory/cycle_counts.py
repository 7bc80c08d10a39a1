"""Counts that did not come from a camera: a cycle count file from a handheld or a WMS export.

Columns (header required, UTF-8, comma-separated)::

    location_code   the counted location (required)
    captured_at     ISO 8601 time of the count with a UTC offset, e.g. 2026-11-29T10:00:00Z (required)
    sku_code        counted SKU; empty for a row that only reports unrecognised items (required column)
    facings         counted facings (integer >= 0) of that SKU (required)
    unknown_facings unrecognised items at the location in that count (optional, integer >= 0)

All rows with the same (location_code, captured_at) form one scan, recorded with
:func:`inventory.reconcile.record_scan` (its ``image_sha256`` is the SHA-256 of the group's
rows, so importing the same file twice is a no-op) and reconciled like a camera scan.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TextIO

from sqlalchemy.orm import Session

from inventory.errors import ImportFileError
from inventory.reconcile import (
    ObservedCount,
    ReconcileOutcome,
    ReconcilePolicy,
    ScanRecord,
    reconcile_scans,
    record_scans,
)

REQUIRED = ("location_code", "captured_at", "sku_code", "facings")


@dataclass
class _Group:
    first_line: int
    counts: dict[str, int] = field(default_factory=dict)
    unknown: int = 0
    raw: list[str] = field(default_factory=list)


def parse_time(text: str) -> datetime:
    """Parse an ISO 8601 time that carries a UTC offset (``Z`` accepted).

    Raises:
        ValueError: unparsable, or no offset (a naive time names no instant).
    """
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset (write e.g. {text}Z or {text}+01:00)")
    return value


def _int(text: str, name: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError(f"{name} {text!r} is not an integer") from None
    if value < 0:
        raise ValueError(f"{name} {value} is negative")
    return value


def record_cycle_counts(
    session: Session,
    *,
    file: TextIO,
    source: str,
    policy: ReconcilePolicy,
    channels: Sequence[str] = (),
) -> list[ReconcileOutcome]:
    """Record and reconcile every count in a cycle count file, in capture order (does not commit).

    Args:
        session: the caller's session; nothing is applied unless the caller commits.
        file: the open CSV text.
        source: recorded as the scans' source (e.g. ``cycle-count:counts.csv``).
        policy: reconciliation tolerances.
        channels: alert channels for state changes.

    Returns:
        One outcome per (location, capture time), oldest first.

    Raises:
        ImportFileError: bad rows, with line numbers; nothing is recorded.
        UnknownLocationError, UnknownSkuError: codes not in the master data.
    """
    reader = csv.reader(file)
    header = [h.strip().lstrip("\ufeff") for h in next(reader, [])]
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise ImportFileError(f"missing column(s): {', '.join(missing)}", [(1, f"missing column(s) {missing}")])
    index = {name: i for i, name in enumerate(header)}
    groups: dict[tuple[str, datetime], _Group] = {}
    errors: list[tuple[int, str]] = []
    for row in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        try:
            cells = {name: (row[i].strip() if i < len(row) else "") for name, i in index.items()}
            if not cells["location_code"]:
                raise ValueError("location_code is empty")
            key = (cells["location_code"], parse_time(cells["captured_at"]))
            group = groups.setdefault(key, _Group(first_line=line))
            sku = cells["sku_code"]
            if sku:
                if sku in group.counts:
                    raise ValueError(f"sku_code {sku} counted twice at {key[0]} {cells['captured_at']}")
                group.counts[sku] = _int(cells["facings"], "facings")
            if cells.get("unknown_facings"):
                group.unknown += _int(cells["unknown_facings"], "unknown_facings")
            group.raw.append(",".join(row))
        except ValueError as error:
            errors.append((line, str(error)))
    if errors:
        raise ImportFileError(f"{len(errors)} bad row(s); nothing was recorded", errors)
    records = [
        ScanRecord(
            location_code=location_code,
            captured_at=captured_at,
            image_sha256=hashlib.sha256("\n".join(sorted(group.raw)).encode()).hexdigest(),
            image_size_bytes=0,
            source=source,
            observations=[ObservedCount(sku, n) for sku, n in group.counts.items()],
            unknown_facings=group.unknown,
        )
        for (location_code, captured_at), group in sorted(groups.items(), key=lambda kv: kv[0][1])
    ]
    scan_ids = [scan_id for scan_id, _ in record_scans(session, scans=records)]
    return reconcile_scans(session, scan_ids=scan_ids, policy=policy, channels=channels)
