"""Shelf-edge labels: the price, article number and SKU read from a label, on drawn labels with known prices."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pytest

from classifier.labels import parse_price, read_label
from classifier.ocr import ReadLine, ReadText
from classifier.tags import draw_tag, ean13
from classifier.text import SkuText, TextMatcher


@pytest.mark.parametrize(
    ("lines", "price"),
    [
        (["Bravo Apple Juice", "12,90 kr", "Jmf 25.80/l"], Decimal("12.90")),  # not the comparison price
        (["29:-"], Decimal("29")),
        (["€ 3.49"], Decimal("3.49")),
        (["1O,5O"], Decimal("10.50")),  # O read for 0
        (["Art.nr 123456"], None),
        (["no price here"], None),
        ([], None),
    ],
)
def test_parse_price(lines: list[str], price: Decimal | None) -> None:
    assert parse_price(lines) == price


def test_the_price_is_the_largest_print() -> None:
    assert parse_price(["Jmf 335.58/kg", "134.23"], heights=[12.0, 60.0]) == Decimal("134.23")
    assert parse_price(["134.23", "99.10"], heights=[20.0, 60.0]) == Decimal("99.10")


def test_a_label_is_named_by_its_barcode_else_its_text() -> None:
    matcher = TextMatcher([SkuText("COLA", "Cola 330 ml can", gtin=ean13("200000000001")),
                           SkuText("TEA", "Green tea 50 bags")])
    line = ReadLine("Green Tea 50 bags", 0.9, (0, 0, 1, 1))
    by_code = read_label(ReadText((line, ReadLine("9,95", 0.9, (0, 0, 1, 1))), (f"0{ean13('200000000001')}",)),
                         matcher)
    assert (by_code.sku_code, by_code.named_by, by_code.price) == ("COLA", "barcode", Decimal("9.95"))
    by_text = read_label(ReadText((line, ReadLine("Art.nr 4711", 0.9, (0, 0, 1, 1)))), matcher)
    assert (by_text.sku_code, by_text.named_by, by_text.article, by_text.price) == ("TEA", "text", "4711", None)


def test_ean13_check_digit() -> None:
    assert ean13("400638133393") == "4006381333931"
    with pytest.raises(ValueError):
        ean13("123")


def test_drawn_labels_are_read_price_and_barcode() -> None:
    pytest.importorskip("rapidocr_onnxruntime")
    from classifier.ocr import text_reader

    reader = text_reader(threads=2)
    rng = np.random.default_rng(11)
    gtin = ean13("200000000001")
    tags = [draw_tag(rng, "Cola 330 ml can", gtin, degrade=False) for _ in range(3)]
    matcher = TextMatcher([SkuText("COLA", "Cola 330 ml can", gtin=gtin), SkuText("TEA", "Green tea 50 bags")])
    for tag in tags:
        label = read_label(reader.read(tag.image), matcher)
        assert label.price == tag.price, (tag.printed, label.text)
        assert label.gtin == f"0{gtin}" and label.sku_code == "COLA" and label.named_by == "barcode"
