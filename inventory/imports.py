"""Imports from a WMS (warehouse management system): SKUs, locations and stock levels as CSV files.

Three importers, one per file, run in this order when setting up a warehouse (a stock file
refers to SKUs and locations that must already exist):

* :func:`import_skus` (``skus.csv``), the SKU master;
* :func:`import_locations` (``locations.csv``), the location hierarchy;
* :func:`import_stock` (``stock.csv``), the book quantities.

File format (all three)
    UTF-8 (a byte order mark is accepted), comma separated, double-quoted fields as in RFC 4180
    (a quoted field may contain commas, quotes doubled as ``""`` and line breaks). The first
    non-blank line is the header; column names are matched case-insensitively, in any order.
    An unknown, duplicate or missing required column rejects the file. Whitespace around every
    value is stripped. Blank lines, and lines whose fields are all empty, are skipped. Every
    other line must have as many fields as the header. A value must not contain a control
    character (U+0000-U+001F) other than tab, or line breaks inside a quoted field: PostgreSQL
    refuses NUL in text, and the others are signs of a binary or corrupted file. Integers are
    plain ASCII digits with an optional sign. Codes are case-sensitive; ``level`` and
    ``facing_rule`` values are not.

    Error positions are 1-based physical line numbers of the file (line 1 is the header when
    the file does not start with blank lines); a record whose quoted field spans several lines
    is reported at the line where it starts, and the lines after it keep their true numbers.

``skus.csv``: one row per SKU, keyed by ``sku_code``

    ===============  ========  ===================================================================
    column           required  meaning
    ===============  ========  ===================================================================
    ``sku_code``     yes       the SKU's code (internal code or GTIN), 1-64 characters, unique in
                               the file
    ``name``         yes       display name, 1-255 characters
    ``description``  no        free text; empty: none
    ``gtin``         no        GTIN-8/12/13/14 (digits, GS1 mod-10 check digit); empty: none
    ===============  ========  ===================================================================

``locations.csv``: one row per location, keyed by ``location_code``

    ====================  ========  ==============================================================
    column                required  meaning
    ====================  ========  ==============================================================
    ``location_code``     yes       the location's code, 1-64 characters, unique in the file
    ``level``             yes       one of ``warehouse``, ``zone``, ``aisle``, ``bay``,
                                    ``shelf``, ``bin``
    ``parent_code``       yes       the enclosing location; the column is required, the value
                                    is empty for (and only for) a warehouse. The parent may be
                                    defined earlier or later in the same file, or already exist
                                    in the database. The location's level must be deeper than
                                    its parent's (levels may be skipped: a shelf directly in a
                                    warehouse is allowed), existing children of a location must
                                    stay deeper than it, and parent links must not form a cycle.
    ``name``              no        display name, up to 255 characters; empty: none
    ``facing_rule``       no        ``visible_units`` (one unit per visible facing) or
                                    ``units_per_facing``; empty: ``visible_units``
    ``units_per_facing``  no        integer >= 1, units one facing stands for under
                                    ``units_per_facing``; empty: 1
    ====================  ========  ==============================================================

``stock.csv``: one row per (location, SKU), the book quantity

    =================  ========  =================================================================
    column             required  meaning
    =================  ========  =================================================================
    ``location_code``  yes       an existing location (of any level)
    ``sku_code``       yes       an existing SKU; each (location_code, sku_code) pair at most once
    ``quantity``       yes       book quantity in pieces, a whole number >= 0 (``12``; no
                                 decimals, exponents or thousands separators)
    =================  ========  =================================================================

Semantics
    * All or nothing: the whole file is validated first, every bad row is collected, and
      :class:`~inventory.errors.ImportFileError` lists them all (``row_errors``); nothing of a
      bad file is written.
    * Upserts: a row inserts its record or updates the existing one. An optional column that is
      absent from the header leaves stored values alone (new records get the default); an
      empty cell in a present column sets the default shown above.
    * Idempotent: importing the same file again changes nothing (``updated_at`` is only touched
      when a value changes) and :class:`ImportResult` reports every row ``unchanged``.
    * Partial files: records not named in a file are left alone (nothing is deleted, no book
      quantity is zeroed).
    * Stock: a changed or new stock level gets ``source = "wms_import"`` and a
      :class:`~inventory.models.StockAdjustment` ledger row (``from_quantity`` ``None`` for a new
      one) with the given ``actor`` and reason ``"wms_import: <file name>"``. Existing stock
      rows are locked (``SELECT ... FOR UPDATE``) before they are compared, missing ones are
      inserted with ``ON CONFLICT DO NOTHING`` (a row inserted concurrently is then locked and
      compared like an existing one). A stock level whose quantity already equals the file's
      is not touched (its ``source`` stays what it was).
    * The importers take a keyword-only ``session`` and never commit: the caller owns the
      transaction (e.g. :func:`inventory.db.run_in_transaction`). A stream is read to its end,
      so a unit of work that may be retried should pass a path, or open the stream inside it.
    * Bulk: references are resolved with chunked ``IN`` queries and rows are written with
      executemany, so a file of 100k rows costs a few hundred statements, not one per row.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TextIO, TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import InstrumentedAttribute, Session

from inventory.db import dialect_insert, utcnow
from inventory.errors import ImportFileError
from inventory.models import Base, FacingRule, Location, LocationLevel, Sku, StockAdjustment, StockLevel
from shelftally.gtin import has_valid_check_digit

logger = logging.getLogger(__name__)

#: A CSV file: an open text stream, or a path (read as UTF-8).
ImportFile = TextIO | str | os.PathLike[str]

#: ``StockLevel.source`` of book quantities set by :func:`import_stock`.
STOCK_SOURCE = "wms_import"

#: Keys per ``IN (...)`` query: two bound parameters per key pair stay far below SQLite's limit.
IN_CHUNK = 500

# Column lengths of inventory.models.
_CODE_MAX = 64
_NAME_MAX = 255
_REASON_MAX = 255
_ACTOR_MAX = 128
_INT_MAX = 2**31 - 1  # Integer columns
_BIGINT_MAX = 2**63 - 1  # BigInteger columns
_GTIN_LENGTHS = (8, 12, 13, 14)
_INTEGER = re.compile(r"[+-]?[0-9]+")
# Digits an integer may have before it is "too large" without being converted (Python refuses to
# convert strings of more than 4300 digits; every column here is far below 30 digits).
_INTEGER_DIGITS_MAX = 30
# C0 control characters except tab, CR and LF (line breaks are allowed in quoted fields), and
# lone surrogates (a stream decoded with errors="surrogateescape"), which no database stores.
_FORBIDDEN_CHARACTER = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff]")
# How many row errors the exception message quotes (row_errors holds all of them).
_MESSAGE_ERRORS = 5

T = TypeVar("T")
V = TypeVar("V")


@dataclass(frozen=True)
class ImportResult:
    """What one import did.

    Attributes:
        file_name: the file's name (no directories), ``"<stream>"`` for an unnamed stream.
        rows_read: data rows in the file (blank lines not counted).
        inserted: rows that created a record.
        updated: rows that changed an existing record.
        unchanged: rows whose record already held the file's values.

    Raises:
        ValueError: a count is negative or ``inserted + updated + unchanged != rows_read``.
    """

    file_name: str
    rows_read: int
    inserted: int
    updated: int
    unchanged: int

    def __post_init__(self) -> None:
        counts = {"rows_read": self.rows_read, "inserted": self.inserted, "updated": self.updated,
                  "unchanged": self.unchanged}
        negative = {k: v for k, v in counts.items() if v < 0}
        if negative:
            raise ValueError(f"counts must be >= 0, got {negative}")
        total = self.inserted + self.updated + self.unchanged
        if total != self.rows_read:
            raise ValueError(
                f"inserted + updated + unchanged must equal rows_read: expected {self.rows_read}, "
                f"received {total} ({self.inserted} + {self.updated} + {self.unchanged})"
            )


def _result(kind: str, file_name: str, rows: int, inserted: int, updated: int, actor: str) -> ImportResult:
    """The import's result (rows neither inserted nor updated were unchanged), logged."""
    result = ImportResult(file_name, rows, inserted, updated, rows - inserted - updated)
    logger.info("%s import file=%s actor=%s rows=%s inserted=%s updated=%s unchanged=%s",
                kind, result.file_name, actor, result.rows_read, result.inserted, result.updated, result.unchanged)
    return result


# --------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class _Row:
    line: int  # physical line where the record starts
    cells: dict[str, str]  # column -> stripped value


@dataclass
class _Table:
    name: str
    columns: tuple[str, ...]
    rows: list[_Row]
    errors: list[tuple[int, str]]


def _file_name(file: ImportFile) -> str:
    if isinstance(file, str | os.PathLike):
        return Path(file).name
    name = getattr(file, "name", None)
    return Path(name).name if isinstance(name, str) and name else "<stream>"


def _read_text(file: ImportFile, name: str) -> str:
    if isinstance(file, str | os.PathLike):
        return _decode(Path(file).read_bytes(), name)
    try:
        return file.read().removeprefix("\ufeff")
    except UnicodeDecodeError as error:
        # A text stream opened as UTF-8: find the line in its bytes when they can be reread.
        buffer = getattr(file, "buffer", None)
        if buffer is not None and buffer.seekable():
            buffer.seek(0)
            _decode(buffer.read(), name)
        raise ImportFileError(
            f"{name}: not a UTF-8 file; nothing was imported",
            row_errors=[(1, f"invalid UTF-8 ({error.reason}; line unknown)")],
        ) from error


def _decode(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ImportFileError(
            f"{name}: not a UTF-8 file; nothing was imported",
            row_errors=[(line, f"invalid UTF-8 at byte offset {error.start}")],
        ) from error


def _read_table(file: ImportFile, *, required: Sequence[str], optional: Sequence[str]) -> _Table:
    """Read a CSV file into rows of stripped cells; header problems raise at once."""
    name = _file_name(file)
    text = _read_text(file, name)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    errors: list[tuple[int, str]] = []
    rows: list[_Row] = []
    columns: tuple[str, ...] | None = None
    header_line = 1
    end = 0  # physical line on which the previous record ended
    try:
        for record in reader:
            start, end = end + 1, reader.line_num
            cells = [c.strip() for c in record]
            if not any(cells):
                continue
            if columns is None:
                header_line = start
                columns = _check_header(cells, required=required, optional=optional, name=name, line=start)
                continue
            if len(cells) != len(columns):
                errors.append((start, f"expected {len(columns)} fields like the header, got {len(cells)}"))
                continue
            row = _Row(start, dict(zip(columns, cells, strict=True)))
            forbidden = _forbidden_characters(row)
            if forbidden:
                errors.extend((start, reason) for reason in forbidden)
                continue
            rows.append(row)
    except csv.Error as error:
        # Reported where the broken record starts (an unclosed quote is only noticed at the end).
        hint = " (a quoted field starting on this line is never closed)" if reader.line_num > end + 1 else ""
        errors.append((end + 1, f"malformed CSV: {error}{hint}"))
        _raise_if_errors(name, errors)
    if columns is None:
        raise ImportFileError(
            f"{name}: the file is empty; nothing was imported",
            row_errors=[(header_line, f"no header; expected columns {', '.join(required)}")],
        )
    return _Table(name, columns, rows, errors)


def _forbidden_characters(row: _Row) -> list[str]:
    reasons = []
    for column, value in row.cells.items():
        found = _FORBIDDEN_CHARACTER.search(value)
        if found is None:
            continue
        char = found.group()
        kind = "a lone surrogate" if "\ud800" <= char <= "\udfff" else "a control character"
        reasons.append(f"{column} contains {kind} (U+{ord(char):04X} at character {found.start() + 1}); "
                       f"only tab and line breaks in quoted fields are allowed")
    return reasons


def _check_header(
    cells: list[str], *, required: Sequence[str], optional: Sequence[str], name: str, line: int
) -> tuple[str, ...]:
    columns = tuple(c.lower() for c in cells)
    known = (*required, *optional)
    problems: list[str] = []
    if "" in columns:
        problems.append(f"empty column name (column {columns.index('') + 1})")
    duplicates = sorted({c for c in columns if c and columns.count(c) > 1})
    if duplicates:
        problems.append(f"duplicate column(s): {', '.join(duplicates)}")
    unknown = [c for c in columns if c and c not in known]
    if unknown:
        problems.append(f"unknown column(s): {', '.join(unknown)} (known: {', '.join(known)})")
    missing = [c for c in required if c not in columns]
    if missing:
        problems.append(f"missing required column(s): {', '.join(missing)}")
    if problems:
        raise ImportFileError(
            f"{name}: bad header: {'; '.join(problems)}; nothing was imported",
            row_errors=[(line, p) for p in problems],
        )
    return columns


def _raise_if_errors(name: str, errors: list[tuple[int, str]]) -> None:
    if not errors:
        return
    errors.sort(key=lambda e: e[0])
    lines = len({line for line, _ in errors})
    quoted = "; ".join(f"line {line}: {reason}" for line, reason in errors[:_MESSAGE_ERRORS])
    more = f"; and {len(errors) - _MESSAGE_ERRORS} more" if len(errors) > _MESSAGE_ERRORS else ""
    raise ImportFileError(
        f"{name}: {len(errors)} error(s) on {lines} line(s); nothing was imported: {quoted}{more}",
        row_errors=errors,
    )


# ------------------------------------------------------------------------------------ cell values


class _Cells:
    """Typed access to one row's cells that records every problem in ``errors``."""

    def __init__(self, row: _Row, errors: list[tuple[int, str]]) -> None:
        self.row = row
        self.errors = errors
        self.ok = True

    def bad(self, reason: str) -> None:
        self.errors.append((self.row.line, reason))
        self.ok = False

    def code(self, column: str) -> str | None:
        value = self.row.cells[column]
        if not value:
            self.bad(f"{column} is empty")
            return None
        if len(value) > _CODE_MAX:
            self.bad(f"{column} is longer than {_CODE_MAX} characters")
            return None
        return value

    def text(self, column: str, *, required: bool = False, max_length: int | None = None) -> str | None:
        value = self.row.cells.get(column, "")
        if not value:
            if required:
                self.bad(f"{column} is empty")
            return None
        if max_length is not None and len(value) > max_length:
            self.bad(f"{column} is longer than {max_length} characters")
            return None
        return value

    def integer(self, column: str, *, minimum: int, maximum: int, default: int | None = None) -> int | None:
        value = self.row.cells.get(column, "")
        if not value:
            if default is None:
                self.bad(f"{column} is empty")
            return default
        if not _INTEGER.fullmatch(value):
            digits = any(c.isdigit() for c in value)  # e.g. 1.5, 1_000, Arabic-Indic digits
            self.bad(f"{column} {_shorten(value)} is not an integer"
                     + (" (write plain digits 0-9, no separators)" if digits else ""))
            return None
        if len(value.lstrip("+-").lstrip("0")) > _INTEGER_DIGITS_MAX:  # int() of it could be refused
            self.bad(f"{column} {_shorten(value)} is negative" if value.startswith("-")
                     else f"{column} {_shorten(value)} is too large (at most {maximum})")
            return None
        number = int(value)
        if number < minimum:
            self.bad(f"{column} {number} is negative" if minimum == 0
                     else f"{column} {number} is below {minimum}")
            return None
        if number > maximum:
            self.bad(f"{column} {number} is too large (at most {maximum})")
            return None
        return number

    def parsed(self, column: str, parse: Callable[[str], V]) -> V | None:
        """The non-empty value converted by ``parse``; a ``ValueError`` it raises becomes the reason."""
        value = self.row.cells.get(column, "")
        if not value:
            self.bad(f"{column} is empty")
            return None
        try:
            return parse(value)
        except ValueError as error:
            self.bad(f"{column} {error}")
            return None

    def gtin(self, column: str) -> str | None:
        value = self.row.cells.get(column, "")
        if not value:
            return None
        if not (value.isascii() and value.isdigit()) or len(value) not in _GTIN_LENGTHS:
            self.bad(f"{column} {value!r} is not a GTIN (8, 12, 13 or 14 digits)")
            return None
        if not has_valid_check_digit(value):
            self.bad(f"{column} {value!r} has a wrong check digit")
            return None
        return value

    def level(self, column: str) -> LocationLevel | None:
        value = self.row.cells[column].lower()
        if not value:
            self.bad(f"{column} is empty")
            return None
        try:
            return LocationLevel(value)
        except ValueError:
            self.bad(f"{column} {self.row.cells[column]!r} is not one of {', '.join(LocationLevel)}")
            return None

    def facing_rule(self, column: str) -> FacingRule | None:
        value = self.row.cells.get(column, "").lower()
        if not value:
            return FacingRule.VISIBLE_UNITS
        try:
            return FacingRule(value)
        except ValueError:
            self.bad(f"{column} {self.row.cells[column]!r} is not one of {', '.join(FacingRule)}")
            return None


def _shorten(value: str, limit: int = 40) -> str:
    """``repr`` of a value, cut in the middle when long (for messages about huge inputs)."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[: limit // 2]!r}...{value[-limit // 2 :]!r} ({len(value)} characters)"


def _check_actor(actor: str) -> None:
    if not actor or len(actor) > _ACTOR_MAX:
        raise ValueError(f"actor must be 1-{_ACTOR_MAX} characters, got {actor!r}")


# ------------------------------------------------------------------------------------ SQL helpers


def _chunks(items: Sequence[T], size: int = IN_CHUNK) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _expire_cached(session: Session, model: type[Base], ids: Iterable[int]) -> None:
    """Expire objects of ``model`` already loaded in ``session`` whose rows were written with Core."""
    wanted = set(ids)
    if not wanted:
        return
    for key in list(session.identity_map.keys()):
        if key[0] is model and key[1][0] in wanted:
            session.expire(session.identity_map[key])


def _upsert(
    session: Session,
    model: type[Sku] | type[Location],
    *,
    key: str,
    params: list[dict[str, object]],
    update_columns: Sequence[str],
    now: datetime,
) -> tuple[dict[str, int], int, int]:
    """``INSERT ... ON CONFLICT (key) DO UPDATE`` only where a value differs.

    Returns:
        ``(ids, inserted, updated)``: ids of the rows written, by key value; rows not written
        (already identical) are absent. A row counts as inserted when its ``created_at`` is
        ``now`` (set by this statement), otherwise as updated.
    """
    if not params:
        return {}, 0, 0
    table = model.__table__
    stmt = dialect_insert(session, model)
    changed = sa.or_(*(table.c[c].is_distinct_from(stmt.excluded[c]) for c in update_columns))
    stmt = stmt.on_conflict_do_update(
        index_elements=[key],
        set_={**{c: stmt.excluded[c] for c in update_columns}, "updated_at": stmt.excluded.updated_at},
        where=changed,
    )
    returning = stmt.returning(table.c.id, table.c[key], table.c.created_at)
    ids: dict[str, int] = {}
    inserted = updated = 0
    for row_id, code, created_at in session.execute(returning, params):
        ids[code] = row_id
        if created_at == now:
            inserted += 1
        else:
            updated += 1
    _expire_cached(session, model, ids.values())
    return ids, inserted, updated


# ------------------------------------------------------------------------------------------- SKUs


@dataclass(frozen=True)
class _SkuRecord:
    line: int
    sku_code: str
    name: str
    description: str | None
    gtin: str | None


def import_skus(session: Session, *, file: ImportFile, actor: str = "wms_import") -> ImportResult:
    """Insert or update SKUs from a ``skus.csv`` file (columns in the module docstring); does not commit.

    Args:
        session: the caller's session (it owns the transaction).
        file: an open text stream or a path.
        actor: who imports (logged).

    Returns:
        Rows read, inserted, updated and unchanged.

    Raises:
        ImportFileError: the header or any row is bad (``row_errors`` lists every bad line and
            why: empty or too long fields, a bad GTIN, a ``sku_code`` listed twice); nothing
            was written.
        ValueError: ``actor`` is empty or longer than 128 characters.
        OSError: ``file`` is a path that cannot be read.
    """
    _check_actor(actor)
    table = _read_table(file, required=("sku_code", "name"), optional=("description", "gtin"))
    errors = table.errors
    records: list[_SkuRecord] = []
    first_line: dict[str, int] = {}
    for row in table.rows:
        cells = _Cells(row, errors)
        code = cells.code("sku_code")
        name = cells.text("name", required=True, max_length=_NAME_MAX)
        description = cells.text("description")
        gtin = cells.gtin("gtin")
        if code is not None:
            if code in first_line:
                cells.bad(f"duplicate sku_code {code!r} (first on line {first_line[code]})")
            else:
                first_line[code] = row.line
        if cells.ok and code is not None and name is not None:
            records.append(_SkuRecord(row.line, code, name, description, gtin))
    _raise_if_errors(table.name, errors)

    now = utcnow()
    optional = [c for c in ("description", "gtin") if c in table.columns]
    params: list[dict[str, object]] = []
    for r in records:
        values: dict[str, object] = {"sku_code": r.sku_code, "name": r.name,
                                     "created_at": now, "updated_at": now}
        if "description" in optional:
            values["description"] = r.description
        if "gtin" in optional:
            values["gtin"] = r.gtin
        params.append(values)
    inserted = updated = 0
    for chunk in _chunks(params):
        _, n_inserted, n_updated = _upsert(
            session, Sku, key="sku_code", params=list(chunk), update_columns=["name", *optional], now=now
        )
        inserted += n_inserted
        updated += n_updated
    return _result("sku", table.name, len(records), inserted, updated, actor)


# -------------------------------------------------------------------------------------- locations


@dataclass(frozen=True)
class _LocationRecord:
    line: int
    location_code: str
    level: LocationLevel | None  # None: the row's level is bad (already reported)
    parent_code: str | None
    name: str | None
    facing_rule: FacingRule | None
    units_per_facing: int | None
    ok: bool  # every field parsed


@dataclass(frozen=True)
class _DbLocation:
    id: int
    location_code: str
    level: LocationLevel
    parent_id: int | None


class _LocationGraph:
    """Locations of the database overlaid with the rows of a file, for validation."""

    def __init__(self, session: Session, records: dict[str, _LocationRecord]) -> None:
        self.file = records
        self.by_code: dict[str, _DbLocation] = {}
        self.by_id: dict[int, _DbLocation] = {}
        wanted = sorted(set(records) | {r.parent_code for r in records.values() if r.parent_code})
        for chunk in _chunks(wanted):
            # Lock the rows the file writes and the parents it points at: no concurrent change
            # of their levels, and (PostgreSQL's FK check takes KEY SHARE) no new children.
            self._add(session.execute(
                sa.select(Location.id, Location.location_code, Location.level, Location.parent_id)
                .where(Location.location_code.in_(chunk))
                .order_by(Location.location_code)
                .with_for_update()
            ))
        for _ in range(len(LocationLevel) * 4):  # ancestors of those, up to the warehouse
            missing = sorted({p.parent_id for p in self.by_id.values()
                              if p.parent_id is not None and p.parent_id not in self.by_id})
            if not missing:
                break
            for id_chunk in _chunks(missing):
                self._add(session.execute(
                    sa.select(Location.id, Location.location_code, Location.level, Location.parent_id)
                    .where(Location.id.in_(id_chunk))
                ))
        self.children: dict[int, list[_DbLocation]] = defaultdict(list)
        parent_ids = sorted(self.by_code[c].id for c in records if c in self.by_code)
        for id_chunk in _chunks(parent_ids):
            for row in session.execute(
                sa.select(Location.id, Location.location_code, Location.level, Location.parent_id)
                .where(Location.parent_id.in_(id_chunk))
            ):
                child = _DbLocation(*row)
                if child.parent_id is not None:
                    self.children[child.parent_id].append(child)

    def _add(self, rows: Iterable[tuple[int, str, LocationLevel, int | None]]) -> None:
        for row in rows:
            loc = _DbLocation(*row)
            self.by_code[loc.location_code] = loc
            self.by_id[loc.id] = loc

    def exists(self, code: str) -> bool:
        return code in self.file or code in self.by_code

    def parent_of(self, code: str) -> str | None:
        """Parent code after the import (``None``: a root, or not known)."""
        if code in self.file:
            return self.file[code].parent_code
        loc = self.by_code.get(code)
        if loc is None or loc.parent_id is None:
            return None
        parent = self.by_id.get(loc.parent_id)
        return parent.location_code if parent is not None else None

    def level_of(self, code: str) -> LocationLevel | None:
        """Level after the import (``None``: unknown or bad in the file)."""
        if code in self.file:
            return self.file[code].level
        loc = self.by_code.get(code)
        return loc.level if loc is not None else None

    def cycles(self) -> dict[str, list[str]]:
        """Every file location on a parent cycle -> the cycle from it back to itself.

        One pass over the parent links (each location is walked once), so a long chain costs
        linear time.
        """
        found: dict[str, list[str]] = {}
        done: set[str] = set()
        for start in self.file:
            path: list[str] = []
            position: dict[str, int] = {}
            node: str | None = start
            while node is not None and node not in done and node not in position:
                position[node] = len(path)
                path.append(node)
                node = self.parent_of(node)
            if node is not None and node in position:
                cycle = path[position[node]:]
                for i, member in enumerate(cycle):
                    if member in self.file:
                        found[member] = [*cycle[i:], *cycle[:i], member]
            done.update(path)
        return found


def _parse_locations(table: _Table) -> dict[str, _LocationRecord]:
    errors = table.errors
    records: dict[str, _LocationRecord] = {}
    for row in table.rows:
        cells = _Cells(row, errors)
        code = cells.code("location_code")
        level = cells.level("level")
        parent_code = cells.text("parent_code", max_length=_CODE_MAX)
        name = cells.text("name", max_length=_NAME_MAX)
        facing_rule = cells.facing_rule("facing_rule")
        units = cells.integer("units_per_facing", minimum=1, maximum=_INT_MAX, default=1)
        if level is LocationLevel.WAREHOUSE and parent_code is not None:
            cells.bad(f"a warehouse has no parent; parent_code must be empty, got {parent_code!r}")
        elif level is not None and level is not LocationLevel.WAREHOUSE and parent_code is None:
            cells.bad(f"parent_code is empty; only a warehouse has no parent, this is a {level.value}")
        if code is None:
            continue
        if code in records:
            cells.bad(f"duplicate location_code {code!r} (first on line {records[code].line})")
            continue
        records[code] = _LocationRecord(
            row.line, code, level, parent_code, name, facing_rule, units, ok=cells.ok
        )
    return records


def _check_hierarchy(graph: _LocationGraph, errors: list[tuple[int, str]]) -> None:
    cycles = graph.cycles()
    for record in graph.file.values():
        parent = record.parent_code
        if parent is None:
            continue
        if not graph.exists(parent):
            errors.append((record.line, f"unknown parent_code {parent!r} (not in this file or the database)"))
            continue
        cycle = cycles.get(record.location_code)
        if cycle is not None:
            errors.append((record.line, f"parent cycle: {' -> '.join(cycle)}"))
            continue
        parent_level = graph.level_of(parent)
        if record.level is None or parent_level is None:
            continue  # a bad level, reported on its own line
        if record.level.depth <= parent_level.depth:
            errors.append((record.line, f"level {record.level.value} must be deeper than the level of "
                                        f"parent {parent!r} ({parent_level.value})"))
    for record in graph.file.values():
        existing = graph.by_code.get(record.location_code)
        if existing is None or record.level is None:
            continue
        for child in graph.children.get(existing.id, []):
            if child.location_code in graph.file:
                continue  # checked on the child's own row
            if child.level.depth <= record.level.depth:
                errors.append((record.line, f"existing child {child.location_code!r} ({child.level.value}) "
                                            f"would not be deeper than level {record.level.value}"))


def import_locations(session: Session, *, file: ImportFile, actor: str = "wms_import") -> ImportResult:
    """Insert or update locations from a ``locations.csv`` file (columns in the module docstring).

    Parents may come later in the file than their children; rows are written parents first.
    Does not commit. Locks the existing locations the file names or points at as parents.

    Args:
        session: the caller's session (it owns the transaction).
        file: an open text stream or a path.
        actor: who imports (logged).

    Returns:
        Rows read, inserted, updated and unchanged.

    Raises:
        ImportFileError: the header or any row is bad (``row_errors`` lists every bad line and
            why: empty or too long fields, a bad ``level``, ``facing_rule`` or
            ``units_per_facing``, a warehouse with a parent or another level without one, a
            ``location_code`` listed twice, an unknown parent, a parent cycle, a level not deeper
            than its parent's or not above an existing child's); nothing was written.
        ValueError: ``actor`` is empty or longer than 128 characters.
        OSError: ``file`` is a path that cannot be read.
    """
    _check_actor(actor)
    table = _read_table(
        file,
        required=("location_code", "level", "parent_code"),
        optional=("name", "facing_rule", "units_per_facing"),
    )
    records = _parse_locations(table)
    graph = _LocationGraph(session, records)
    _check_hierarchy(graph, table.errors)
    _raise_if_errors(table.name, table.errors)

    now = utcnow()
    optional = [c for c in ("name", "facing_rule", "units_per_facing") if c in table.columns]
    ids = {code: loc.id for code, loc in graph.by_code.items()}
    inserted = updated = 0
    # Parents are strictly shallower than their children: write level by level.
    for level in LocationLevel:
        wave = [r for r in records.values() if r.level is level]
        params: list[dict[str, object]] = []
        for r in wave:
            values: dict[str, object] = {
                "location_code": r.location_code,
                "level": level,
                "parent_id": ids[r.parent_code] if r.parent_code is not None else None,
                "created_at": now,
                "updated_at": now,
            }
            for column in optional:
                values[column] = getattr(r, column)
            params.append(values)
        for chunk in _chunks(params):
            written, n_inserted, n_updated = _upsert(
                session, Location, key="location_code", params=list(chunk),
                update_columns=["level", "parent_id", *optional], now=now,
            )
            ids.update(written)
            inserted += n_inserted
            updated += n_updated
        unknown = sorted(r.location_code for r in wave if r.location_code not in ids)
        for code_chunk in _chunks(unknown):  # inserted concurrently, identical to the file
            ids.update(session.execute(
                sa.select(Location.location_code, Location.id).where(Location.location_code.in_(code_chunk))
            ).all())
    return _result("location", table.name, len(records), inserted, updated, actor)


# ------------------------------------------------------------------------------------------ stock


@dataclass(frozen=True)
class _StockRecord:
    line: int
    location_code: str
    sku_code: str
    quantity: int


def _ids_by_code(
    session: Session, column: InstrumentedAttribute[str], id_column: InstrumentedAttribute[int],
    codes: Iterable[str],
) -> dict[str, int]:
    found: dict[str, int] = {}
    for chunk in _chunks(sorted(set(codes))):
        found.update(session.execute(sa.select(column, id_column).where(column.in_(chunk))).all())
    return found


def _lock_stock(session: Session, pairs: Sequence[tuple[int, int]]) -> dict[tuple[int, int], tuple[int, int]]:
    """Lock the stock rows of ``(location_id, sku_id)`` pairs: pair -> ``(stock_level.id, quantity)``."""
    found: dict[tuple[int, int], tuple[int, int]] = {}
    key = sa.tuple_(StockLevel.location_id, StockLevel.sku_id)
    for chunk in _chunks(sorted(pairs)):
        rows = session.execute(
            sa.select(StockLevel.location_id, StockLevel.sku_id, StockLevel.id, StockLevel.quantity)
            .where(key.in_(list(chunk)))
            .order_by(StockLevel.location_id, StockLevel.sku_id)
            .with_for_update()
        )
        for location_id, sku_id, row_id, quantity in rows:
            found[(location_id, sku_id)] = (row_id, quantity)
    return found


def import_stock(session: Session, *, file: ImportFile, actor: str = "wms_import") -> ImportResult:
    """Set book quantities from a ``stock.csv`` file (columns in the module docstring); does not commit.

    Each changed or new stock level gets ``source = "wms_import"``, ``updated_at`` now, and one
    :class:`~inventory.models.StockAdjustment` ledger row (from the old quantity, ``None`` for a
    new stock level, to the file's) with ``actor`` and reason ``"wms_import: <file name>"``.
    Unchanged stock levels are not touched and get no ledger row. Existing stock rows named by
    the file are locked (``SELECT ... FOR UPDATE``) for the rest of the transaction.

    Args:
        session: the caller's session (it owns the transaction).
        file: an open text stream or a path.
        actor: who imports, recorded on every ledger row.

    Returns:
        Rows read, inserted (new stock levels), updated (changed quantities) and unchanged.

    Raises:
        ImportFileError: the header or any row is bad (``row_errors`` lists every bad line and
            why: empty fields, a quantity that is not an integer or is negative, a
            (location_code, sku_code) pair listed twice, an unknown location or SKU); nothing was
            written.
        ValueError: ``actor`` is empty or longer than 128 characters.
        OSError: ``file`` is a path that cannot be read.
    """
    _check_actor(actor)
    table = _read_table(file, required=("location_code", "sku_code", "quantity"), optional=())
    errors = table.errors
    records: list[_StockRecord] = []
    first_line: dict[tuple[str, str], int] = {}
    for row in table.rows:
        cells = _Cells(row, errors)
        location_code = cells.code("location_code")
        sku_code = cells.code("sku_code")
        quantity = cells.integer("quantity", minimum=0, maximum=_BIGINT_MAX)
        if location_code is not None and sku_code is not None:
            codes = (location_code, sku_code)
            if codes in first_line:
                cells.bad(f"duplicate location_code/sku_code pair {location_code!r}/{sku_code!r} "
                          f"(first on line {first_line[codes]})")
            else:
                first_line[codes] = row.line
        if cells.ok and location_code is not None and sku_code is not None and quantity is not None:
            records.append(_StockRecord(row.line, location_code, sku_code, quantity))

    location_ids = _ids_by_code(
        session, Location.location_code, Location.id, (r.location_code for r in records)
    )
    sku_id_map = _ids_by_code(session, Sku.sku_code, Sku.id, (r.sku_code for r in records))
    for r in records:
        if r.location_code not in location_ids:
            errors.append((r.line, f"unknown location_code {r.location_code!r}"))
        if r.sku_code not in sku_id_map:
            errors.append((r.line, f"unknown sku_code {r.sku_code!r}"))
    _raise_if_errors(table.name, errors)

    now = utcnow()
    wanted = {(location_ids[r.location_code], sku_id_map[r.sku_code]): r.quantity for r in records}
    existing = _lock_stock(session, list(wanted))
    missing = sorted(pair for pair in wanted if pair not in existing)
    created: dict[tuple[int, int], int] = {}
    if missing:
        stmt = (
            dialect_insert(session, StockLevel)
            .on_conflict_do_nothing(index_elements=["location_id", "sku_id"])
            .returning(StockLevel.location_id, StockLevel.sku_id, StockLevel.id)
        )
        for chunk in _chunks(missing):
            params = [
                {"location_id": loc, "sku_id": sku, "quantity": wanted[(loc, sku)], "source": STOCK_SOURCE,
                 "updated_at": now}
                for loc, sku in chunk
            ]
            for location_id, sku_id, row_id in session.execute(stmt, params):
                created[(location_id, sku_id)] = row_id
        raced = [pair for pair in missing if pair not in created]
        if raced:  # inserted by a concurrent transaction since we looked: compare under lock
            logger.info("stock import file=%s: %s stock levels were inserted concurrently; comparing them",
                        table.name, len(raced))
            existing.update(_lock_stock(session, raced))

    updates: list[dict[str, object]] = []
    updated_ids: list[int] = []
    ledger: list[dict[str, object]] = []
    reason = f"wms_import: {table.name}"[:_REASON_MAX]
    for pair, quantity in wanted.items():
        if pair in created:
            ledger.append(_ledger_row(pair, None, quantity, reason=reason, actor=actor, now=now))
            continue
        row_id, old = existing[pair]
        if old != quantity:
            updates.append({"id": row_id, "quantity": quantity, "source": STOCK_SOURCE, "updated_at": now})
            updated_ids.append(row_id)
            ledger.append(_ledger_row(pair, old, quantity, reason=reason, actor=actor, now=now))
    for update_chunk in _chunks(updates, 5 * IN_CHUNK):
        session.execute(sa.update(StockLevel), list(update_chunk))
    for ledger_chunk in _chunks(ledger, 5 * IN_CHUNK):
        session.execute(sa.insert(StockAdjustment), list(ledger_chunk))
    _expire_cached(session, StockLevel, updated_ids)

    return _result("stock", table.name, len(records), len(created), len(updates), actor)


def _ledger_row(
    pair: tuple[int, int],
    from_quantity: int | None,
    to_quantity: int,
    *,
    reason: str,
    actor: str,
    now: datetime,
) -> dict[str, object]:
    location_id, sku_id = pair
    return {"location_id": location_id, "sku_id": sku_id, "from_quantity": from_quantity,
            "to_quantity": to_quantity, "reason": reason, "actor": actor, "created_at": now}
