"""Shelf-edge labels: the price, article number, name and barcode printed on a price tag.

A label's text is read like a product's (:mod:`classifier.ocr`); this module finds what a label
says in it:

- **price**: an amount with two decimals (``12.90``, ``12,90``, ``12:90``, with or without a
  currency) or a whole amount in the Scandinavian ``12:-`` form, taken from the tallest line
  that holds one (the price is the label's largest print; a comparison price per kilogram is
  small), as a :class:`decimal.Decimal`;
- **article number**: digits after ``art``, ``art.nr``, ``article no`` or ``item``;
- **SKU**: the SKU of a GTIN barcode on the label when the SKU master has it, else the best text
  match of the label's words (:class:`classifier.text.TextMatcher`) above ``min_text_score``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from classifier.ocr import ReadText
    from classifier.text import TextMatcher

__all__ = ["ShelfLabel", "parse_price", "read_label"]

_AMOUNT = re.compile(r"(?<![\d.,])(\d{1,5})\s?[.,:]\s?(\d{2})(?![\d])")
_WHOLE = re.compile(r"(?<![\d.,])(\d{1,5})\s?:\s?-")
_COMPARISON = re.compile(r"jmf|jfr|/\s?(?:kg|l|st|100\s?g)\b|\bper\b", re.IGNORECASE)
_ARTICLE = re.compile(r"\b(?:art(?:icle)?|item)\.?\s*(?:n[or]\.?|number|#)?\s*[:.]?\s*(\d{3,12})\b", re.IGNORECASE)


def parse_price(lines: list[str], heights: list[float] | None = None) -> Decimal | None:
    """The price printed in a label's text lines (see the module docstring), or None.

    Args:
        lines: the label's text lines.
        heights: each line's box height, pixels; the price is the amount in the tallest line
            that holds one (the price is the largest print). Without heights: the first amount
            of a line that is not a comparison price (``jmf``, ``/kg``, ``/l``, ``per``).

    >>> parse_price(["Bravo Apple Juice", "12,90 kr", "Jmf 25.80/l"])
    Decimal('12.90')
    >>> parse_price(["29:-"])
    Decimal('29')
    """
    found: list[tuple[float, int, Decimal]] = []
    for index, line in enumerate(lines):
        compact = line.replace("O", "0").replace("o", "0") if any(c.isdigit() for c in line) else line
        amounts = [Decimal(f"{whole}.{cents}") for whole, cents in _AMOUNT.findall(compact)]
        amounts += [Decimal(whole) for whole in _WHOLE.findall(compact)]
        if not amounts:
            continue
        comparison = _COMPARISON.search(line) is not None
        height = heights[index] if heights is not None else (0.0 if comparison else 1.0)
        found.append((height, -index, amounts[0]))
    return max(found)[2] if found else None


@dataclass(frozen=True)
class ShelfLabel:
    """What a shelf-edge label says.

    Attributes:
        price: the price, None when none was read.
        sku_code: the SKU it labels, None when neither its barcode nor its text named one.
        named_by: ``"barcode"``, ``"text"`` or None.
        gtin: the barcode read, 14 digits, if any.
        article: the article number, if printed.
        text: the label's lines, joined.
    """

    price: Decimal | None
    sku_code: str | None
    named_by: str | None
    gtin: str | None
    article: str | None
    text: str


def read_label(read: ReadText, matcher: TextMatcher | None = None, *, min_text_score: float = 0.2) -> ShelfLabel:
    """What a label says, from what was read on it.

    Args:
        read: the label crop's text lines and GTINs (:meth:`classifier.ocr.TextReader.read`).
        matcher: the SKU master; None: no SKU is named.
        min_text_score: the least text score that names a SKU from the label's words.
    """
    lines = read.texts
    joined = " ".join(lines)
    article_match = _ARTICLE.search(joined)
    gtin = read.gtins[0] if read.gtins else None
    sku, named_by = None, None
    if matcher is not None:
        by_code = matcher.sku_of_barcodes(read.gtins)
        if by_code is not None:
            sku, gtin, named_by = by_code[0], by_code[1], "barcode"
        else:
            best = matcher.match(lines, top=1)
            if best and best[0].score >= min_text_score:
                sku, named_by = best[0].sku_code, "text"
    heights = [line.xyxy[3] - line.xyxy[1] for line in read.lines]
    article = article_match.group(1) if article_match else None
    return ShelfLabel(parse_price(lines, heights), sku, named_by, gtin, article, joined)
