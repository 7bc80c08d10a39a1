"""Errors raised by the inventory package."""

from __future__ import annotations

from shelftally.errors import ShelfTallyError


class InventoryError(ShelfTallyError):
    """Base class of inventory errors."""

    reason = "inventory_error"


class NotFoundError(InventoryError):
    """A SKU, location, scan or discrepancy named by the caller does not exist."""

    reason = "not_found"


class UnknownSkuError(NotFoundError):
    """A ``sku_code`` is not in the SKU master."""

    reason = "unknown_sku"


class UnknownLocationError(NotFoundError):
    """A ``location_code`` is not in the location master."""

    reason = "unknown_location"


class InvalidStateError(InventoryError):
    """An operation is not allowed in the record's current state (e.g. acknowledging a resolved discrepancy)."""

    reason = "invalid_state"


class NaiveDatetimeError(InventoryError, ValueError):
    """A timestamp without a UTC offset was given where an aware one is required."""

    reason = "naive_datetime"


class ImportFileError(InventoryError):
    """A WMS import file has bad rows; nothing of the file was applied.

    Attributes:
        row_errors: ``(line_number, reason)`` pairs, 1-based line numbers of the file
            (line 1 is the header).
    """

    reason = "invalid_import_file"

    def __init__(self, message: str, row_errors: list[tuple[int, str]]) -> None:
        super().__init__(message)
        self.row_errors = row_errors


class DatabaseUnavailableError(InventoryError):
    """The database cannot be reached or opened (bad URL, server down, unwritable path)."""

    reason = "database_unavailable"


class DatabaseNotInitialisedError(InventoryError):
    """The database has no ShelfTally schema, or one of another revision: run ``shelftally db upgrade``."""

    reason = "database_not_initialised"


class InvalidInputError(InventoryError, ValueError):
    """A value given by the caller cannot be stored (too long, out of range, in the future)."""

    reason = "invalid_input"
