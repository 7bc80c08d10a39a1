"""GS1 trade item numbers (GTIN-8, -12, -13, -14: EAN-8, UPC-A, EAN-13, ITF-14) and their check digit.

Shared by the WMS import (:mod:`inventory.imports`, which refuses a SKU master row with a wrong
check digit), the barcode evidence on crops (:mod:`classifier.text`) and the drawn price tags
(:mod:`classifier.tags`).

The check digit (GS1 General Specifications, section 7.9.1): from the right of the body (the
digits before the check digit), digits are weighted 3, 1, 3, ...; the check digit brings the
weighted sum up to a multiple of 10.
"""

from __future__ import annotations

__all__ = ["GTIN_LENGTHS", "check_digit", "gtin14", "has_valid_check_digit"]

GTIN_LENGTHS = (8, 12, 13, 14)
"""Digits in a GTIN-8, GTIN-12 (UPC-A), GTIN-13 (EAN-13) and GTIN-14."""


def check_digit(body: str) -> int:
    """The GS1 check digit of ``body`` (digits only, any length).

    >>> check_digit("400638133393")
    1

    Raises:
        ValueError: ``body`` is empty or holds a character other than a digit.
    """
    if not body or not body.isdigit():
        raise ValueError(f"body: expected digits, received {body!r}")
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return (10 - total % 10) % 10


def has_valid_check_digit(code: str) -> bool:
    """Whether the last digit of ``code`` (digits only, at least 2) is the GS1 check digit of the rest."""
    return len(code) >= 2 and code.isdigit() and check_digit(code[:-1]) == int(code[-1])


def gtin14(code: str) -> str | None:
    """A GTIN of any length as 14 digits (zero-padded on the left), or None when it is not a valid GTIN.

    Spaces and hyphens are ignored; the check digit is verified.

    >>> gtin14("4006381333931")
    '04006381333931'
    >>> gtin14("4006381333932") is None
    True
    """
    digits = code.strip().replace(" ", "").replace("-", "")
    if not digits.isdigit() or len(digits) not in GTIN_LENGTHS or not has_valid_check_digit(digits):
        return None
    return digits.zfill(14)
