"""Zero-shot SKU naming from text and barcodes: the matcher, GTINs, the real OCR models on real and drawn pictures."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from classifier.text import SkuText, TextMatcher, gtin14, normalise, words

GROCERY = Path(__file__).resolve().parents[3] / "shared" / "data" / "grocerystore" / "dataset"

MASTER = [
    SkuText("BRAVO-APPLE", "Bravo Apple Juice", "Apple juice from concentrate, 1 l", gtin="7310865004703"),
    SkuText("BRAVO-ORANGE", "Bravo Orange Juice", "Orange juice with pulp, 1 l"),
    SkuText("TROPICANA-APPLE", "Tropicana Apple Juice", "Pressed apple juice"),
    SkuText("ARLA-MILK", "Arla Ecological Medium Fat Milk", "Milk 1.5 % fat", gtin="07310865001818"),
]


def test_normalise_and_words() -> None:
    assert normalise("Bravo Äpple-Juice, 1 L") == "bravo apple juice 1 l"
    assert words("The Original OATLY! with oats") == ["original", "oatly", "oats"]


@pytest.mark.parametrize(
    ("code", "key"),
    [
        ("4006381333931", "04006381333931"),  # EAN-13
        ("96385074", "00000096385074"),  # EAN-8
        ("036000291452", "00036000291452"),  # UPC-A
        ("10012345678902", "10012345678902"),  # GTIN-14
        ("4006381333932", None),  # a wrong check digit
        ("40063813339", None),  # 11 digits
        ("ABC", None),
    ],
)
def test_gtin14_verifies_the_check_digit(code: str, key: str | None) -> None:
    assert gtin14(code) == key


def test_the_matcher_names_the_sku_from_misread_words() -> None:
    matcher = TextMatcher(MASTER)
    best = matcher.match(["BRAV0", "APPLE JUlCE"])  # OCR confusions: 0 for O, l for I
    assert best[0].sku_code == "BRAVO-APPLE" and "bravo" in best[0].matched
    assert matcher.match(["ORANGE"])[0].sku_code == "BRAVO-ORANGE"
    scores = matcher.scores(["Tropicana"])
    assert scores.shape == (4,) and scores.argmax() == 2 and 0.0 < scores.max() <= 1.0


def test_a_rare_word_says_more_than_a_shared_one() -> None:
    matcher = TextMatcher(MASTER)
    # "juice" names three SKUs, "tropicana" one: the SKU named by the rare word scores higher alone
    assert matcher.scores(["tropicana"])[2] > matcher.scores(["juice"])[2]


def test_nothing_usable_read_scores_zero_everywhere() -> None:
    matcher = TextMatcher(MASTER)
    for read in ([], [""], ["the and with"], ["%%%"], ["zzqx"]):
        assert not matcher.scores(read).any() and matcher.match(read) == []


def test_a_barcode_names_its_sku_however_the_gtin_is_written() -> None:
    matcher = TextMatcher(MASTER)
    assert matcher.sku_of_barcode("07310865004703") == "BRAVO-APPLE"
    assert matcher.sku_of_barcode("7310865001818") == "ARLA-MILK"
    assert matcher.sku_of_barcode("7310865001819") is None  # check digit wrong
    assert matcher.sku_of_barcode("4006381333931") is None  # a real code, not in the master


def test_the_master_must_be_usable() -> None:
    with pytest.raises(ValueError, match="at least one"):
        TextMatcher([])
    with pytest.raises(ValueError, match="repeated: X"):
        TextMatcher([SkuText("X", "a"), SkuText("X", "b")])


# --- the real models --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reader():  # type: ignore[no-untyped-def]
    pytest.importorskip("rapidocr_onnxruntime")
    from classifier.ocr import text_reader

    return text_reader(threads=2)


def _label(price: str, gtin: str, name: str) -> np.ndarray:
    """A shelf-edge label drawn here: a name, a price in large digits and an EAN-13 below (RGB uint8)."""
    import zxingcpp

    barcode = zxingcpp.create_barcode(gtin, zxingcpp.BarcodeFormat.EAN13)
    code = np.asarray(barcode.to_image(scale=3, add_quiet_zones=True))
    width = max(520, code.shape[1] + 20)
    label = np.full((130 + code.shape[0], width, 3), 255, np.uint8)
    cv2.putText(label, name, (12, 36), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (0, 0, 0), 2, cv2.LINE_AA)
    cv2.putText(label, price, (12, 110), cv2.FONT_HERSHEY_SIMPLEX, 2.2, (0, 0, 0), 4, cv2.LINE_AA)
    label[125 : 125 + code.shape[0], 10 : 10 + code.shape[1]] = code[:, :, None]
    return label


def test_a_generated_label_is_read_price_and_barcode(reader) -> None:  # type: ignore[no-untyped-def]
    read = reader.read(_label("12.90", "7310865004703", "Bravo Apple Juice"))
    text = " ".join(read.texts)
    assert "12.90" in text.replace(",", ".").replace(" ", "") or "1290" in text.replace(".", "").replace(" ", "")
    assert read.gtins == ("07310865004703",)
    matcher = TextMatcher(MASTER)
    assert matcher.sku_of_barcode(read.gtins[0]) == "BRAVO-APPLE"
    assert matcher.match(read.texts)[0].sku_code == "BRAVO-APPLE"


def test_an_unreadable_crop_reads_nothing(reader) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(3)
    blurred_noise = cv2.GaussianBlur(rng.integers(0, 256, (160, 160, 3), dtype=np.uint8), (0, 0), 6)
    blank, grey = np.zeros((64, 64, 3), np.uint8), np.full((200, 120, 3), 180, np.uint8)
    tiny = np.zeros((4, 4, 3), np.uint8)
    for crop in (blank, grey, blurred_noise, tiny):
        read = reader.read(crop)
        assert read.gtins == () and not TextMatcher(MASTER).scores(read.texts).any()
    with pytest.raises(ValueError, match="uint8"):
        reader.read(np.zeros((32, 32), np.uint8))


def _grocery_master() -> list[SkuText]:
    skus = []
    with (GROCERY / "classes.csv").open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            name = row["Class Name (str)"]
            description = GROCERY / row["Product Description Path (str)"].lstrip("/")
            text = description.read_text(encoding="utf-8", errors="replace") if description.is_file() else None
            skus.append(SkuText(name, name.replace("-", " "), text))
    return skus


@pytest.mark.skipif(not GROCERY.is_dir(), reason="the Grocery Store dataset of ../shared/data is not here")
def test_real_packages_are_named_from_their_printed_text_alone(reader) -> None:  # type: ignore[no-untyped-def]
    """Zero-shot on real photos: no training picture, only the 81 classes' names and descriptions."""
    matcher = TextMatcher(_grocery_master())
    named = {}
    for sku in ("God-Morgon-Orange-Juice", "God-Morgon-Orange-Red-Grapefruit-Juice", "Bravo-Orange-Juice"):
        picture = sorted((GROCERY / "val" / "Packages" / "Juice" / sku).glob("*.jpg"))[1]
        rgb = cv2.cvtColor(cv2.imread(str(picture)), cv2.COLOR_BGR2RGB)
        named[sku] = [m.sku_code for m in matcher.match(reader.read(rgb).texts, top=3)]
    assert named["God-Morgon-Orange-Juice"][0] == "God-Morgon-Orange-Juice"
    assert named["God-Morgon-Orange-Red-Grapefruit-Juice"][0] == "God-Morgon-Orange-Red-Grapefruit-Juice"
    assert "Bravo-Orange-Juice" in named["Bravo-Orange-Juice"]


def test_words_a_reader_ran_together_still_match() -> None:
    matcher = TextMatcher(MASTER)
    assert normalise("Cola330mlcan") == "cola 330 mlcan"
    assert matcher.match(["BRAVOAPPLEJUICE"])[0].sku_code == "BRAVO-APPLE"  # one long word, three inside
    assert matcher.match(["TROPICANAJUICE"])[0].sku_code == "TROPICANA-APPLE"
    assert matcher.match(["xqzvwkplm"]) == []  # a long word with no vocabulary word inside
