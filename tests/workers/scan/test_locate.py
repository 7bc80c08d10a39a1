"""``workers.scan.locate``: a location label's QR code in a shelf photo names the scan's location.

Shelves are drawn here (random coloured boxes on noise, 1280 x 960), labels are rendered by
:func:`workers.scan.locate.location_label_image` and pasted, shrunk like a photo would (area
averaging), at several sizes, positions and rotations; product barcodes are written with
zxing-cpp. One real photo from ``../shared/data/grocerystore`` checks that a picture without a
label names no location.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest
import zxingcpp

from shelftally.errors import ShelfTallyError
from workers.ingest import decode_image, read_image
from workers.scan import locate
from workers.scan.locate import (
    AmbiguousLocationError,
    LocationError,
    LocationLabel,
    LocationNotFoundError,
    UnknownLocationError,
    location_code_from_labels,
    location_label_image,
    read_labels,
)

GROCERY_VAL = Path(__file__).resolve().parents[4] / "shared" / "data" / "grocerystore" / "dataset" / "val"
GTIN = "4006381333931"  # a valid EAN-13 (check digit 1)

Box = tuple[float, float, float, float]


def shelf(seed: int = 0, height: int = 960, width: int = 1280) -> npt.NDArray[np.uint8]:
    """(H, W, 3) uint8 RGB clutter: noise under a few hundred random filled and outlined boxes."""
    rng = np.random.default_rng(seed)
    image = rng.integers(60, 200, (height, width, 3), dtype=np.uint8)
    for _ in range(300):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(10, 220)), int(rng.integers(10, 220))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.rectangle(image, (x, y), (x + w, y + h), colour, -1 if rng.random() < 0.7 else 3)
    return image


def shrink(picture: npt.NDArray[np.uint8], width: int) -> npt.NDArray[np.uint8]:
    """``picture`` resized to ``width`` pixels wide, aspect kept, with area averaging."""
    height = round(picture.shape[0] * width / picture.shape[1])
    return np.asarray(cv2.resize(picture, (width, height), interpolation=cv2.INTER_AREA), dtype=np.uint8)


def paste(image: npt.NDArray[np.uint8], picture: npt.NDArray[np.uint8], x: int, y: int) -> Box:
    """Paste ``picture`` into ``image`` (in place) at top-left (x, y); return the pasted box xyxy."""
    h, w = picture.shape[:2]
    image[y : y + h, x : x + w] = picture
    return (float(x), float(y), float(x + w), float(y + h))


def rotate(image: npt.NDArray[np.uint8], box: Box, quarter_turns: int) -> tuple[npt.NDArray[np.uint8], Box]:
    """Rotate ``image`` counter-clockwise by 90 degrees ``quarter_turns`` times, and ``box`` with it."""
    for _ in range(quarter_turns % 4):
        width = image.shape[1]
        image = np.rot90(image)  # pixel (x, y) goes to (y, W - x)
        x1, y1, x2, y2 = box
        box = (y1, width - x2, y2, width - x1)
    return np.ascontiguousarray(image), box


def product_barcode(gtin: str = GTIN, scale: int = 3) -> npt.NDArray[np.uint8]:
    """(H, W, 3) uint8 RGB EAN-13 with its digits under it, as printed on a package."""
    grey = np.asarray(zxingcpp.create_barcode(gtin, zxingcpp.BarcodeFormat.EAN13).to_image(scale=scale, add_hrt=True))
    return np.repeat(grey.astype(np.uint8)[:, :, None], 3, axis=2)


def assert_inside(box: Box, area: Box, slack: float = 2.0) -> None:
    """``box`` lies within ``area`` (give or take ``slack`` pixels) and covers a good part of it."""
    assert area[0] - slack <= box[0] < box[2] <= area[2] + slack, (box, area)
    assert area[1] - slack <= box[1] < box[3] <= area[3] + slack, (box, area)
    covered = (box[2] - box[0]) * (box[3] - box[1]) / ((area[2] - area[0]) * (area[3] - area[1]))
    assert covered > 0.3, (box, area, covered)  # the QR symbol is about 40 % of a label with its text


def labels_of(*payloads: str) -> list[LocationLabel]:
    return [LocationLabel(text=p, symbology="QRCode", xyxy=(0.0, 0.0, 10.0, 10.0)) for p in payloads]


# --- reading labels from pictures ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("width_px", "x", "y", "quarter_turns"),
    [
        (60, 40, 30, 0),  # about 2 px per QR module
        (75, 1180, 850, 0),  # bottom-right corner
        (100, 600, 420, 0),
        (160, 300, 700, 0),
        (300, 900, 100, 0),
        (120, 700, 200, 1),  # picture turned 90 degrees
        (200, 150, 500, 2),  # upside down
        (70, 1000, 600, 2),
        (90, 400, 60, 3),
    ],
)
def test_pasted_label_is_read_with_its_code_and_box(width_px: int, x: int, y: int, quarter_turns: int) -> None:
    image = shelf(seed=width_px)
    area = paste(image, shrink(location_label_image("WH1-A01"), width_px), x, y)
    image, area = rotate(image, area, quarter_turns)

    labels = read_labels(image)

    assert [(label.text, label.symbology) for label in labels] == [("LOC:WH1-A01", "QRCode")]
    assert_inside(labels[0].xyxy, area)
    assert location_code_from_labels(labels) == "WH1-A01"
    assert location_code_from_labels(labels, known_codes={"WH1-A01", "WH1-A02"}) == "WH1-A01"


def _blur(image: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    return np.asarray(cv2.GaussianBlur(image, (0, 0), 1.0), dtype=np.uint8)


def _jpeg(image: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(image[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 70])
    assert ok
    return np.array(decode_image(data.tobytes()).pixels)  # through the project's own decoder


@pytest.mark.parametrize(
    ("degradation", "width_px"),
    [
        ("blur", 90),
        ("blur", 200),
        ("jpeg70", 70),
        ("jpeg70", 150),
        ("blur+jpeg70", 100),
        ("blur+jpeg70", 250),
    ],
)
def test_label_survives_blur_and_jpeg(degradation: str, width_px: int) -> None:
    image = shelf(seed=7)
    area = paste(image, shrink(location_label_image("B-12-03"), width_px), 500, 300)
    if "blur" in degradation:
        image = _blur(image)
    if "jpeg70" in degradation:
        image = _jpeg(image)

    labels = read_labels(image)

    assert [label.text for label in labels] == ["LOC:B-12-03"]
    assert_inside(labels[0].xyxy, area)
    assert location_code_from_labels(labels) == "B-12-03"


def test_large_picture_is_shrunk_first_and_boxes_come_back_in_its_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    # A 1280 x 960 picture read as if it were above the limit: shrunk to 0.3 MP (half size).
    monkeypatch.setattr(locate, "MAX_READ_PIXELS", 1280 * 960 // 4)
    image = shelf(seed=3)
    area = paste(image, shrink(location_label_image("WH2-C07"), 240), 820, 560)

    labels = read_labels(image)

    assert [label.text for label in labels] == ["LOC:WH2-C07"]
    assert_inside(labels[0].xyxy, area, slack=4.0)


@pytest.mark.parametrize(("upscale", "found"), [(1.0, []), (2.0, ["LOC:WH1-A01"])])
def test_enlarged_second_pass_reads_a_small_label(
    monkeypatch: pytest.MonkeyPatch, upscale: float, found: list[str]
) -> None:
    # 38 px wide: the symbol is 26 px, 1.2 px per module, too few for ZXing at the picture's own size.
    monkeypatch.setattr(locate, "UPSCALE", upscale)
    image = shelf(seed=5)
    area = paste(image, shrink(location_label_image("WH1-A01"), 38), 640, 480)

    labels = read_labels(image)

    assert [label.text for label in labels] == found
    for label in labels:
        assert_inside(label.xyxy, area)


def test_no_label_names_no_location() -> None:
    labels = read_labels(shelf(seed=11))

    assert labels == []
    with pytest.raises(LocationNotFoundError) as caught:
        location_code_from_labels(labels)
    assert caught.value.reason == "location_not_found"


def test_two_different_labels_are_ambiguous() -> None:
    image = shelf(seed=12)
    paste(image, shrink(location_label_image("WH1-A01"), 150), 100, 100)
    paste(image, shrink(location_label_image("WH1-A02"), 150), 900, 600)

    labels = read_labels(image)

    assert sorted(label.text for label in labels) == ["LOC:WH1-A01", "LOC:WH1-A02"]
    with pytest.raises(AmbiguousLocationError) as caught:
        location_code_from_labels(labels)
    assert caught.value.reason == "ambiguous_location"
    assert caught.value.codes == ("WH1-A01", "WH1-A02")
    assert "'WH1-A01'" in str(caught.value) and "'WH1-A02'" in str(caught.value)


def test_same_code_twice_is_that_location() -> None:
    image = shelf(seed=13)
    first = paste(image, shrink(location_label_image("WH1-A01"), 120), 100, 600)
    second = paste(image, shrink(location_label_image("WH1-A01"), 180), 800, 150)

    labels = sorted(read_labels(image), key=lambda label: label.xyxy[0])

    assert [label.text for label in labels] == ["LOC:WH1-A01", "LOC:WH1-A01"]
    assert_inside(labels[0].xyxy, first)
    assert_inside(labels[1].xyxy, second)
    assert location_code_from_labels(labels) == "WH1-A01"


@pytest.mark.parametrize(
    ("known_codes", "with_location_label", "expected", "error"),
    [
        (None, False, None, LocationNotFoundError),
        ({"WH1-A01"}, False, None, LocationNotFoundError),
        ({GTIN}, False, GTIN, None),  # a known code printed as EAN-13 (unusual, but exact)
        (None, True, "WH1-A01", None),  # the product barcode beside the label is ignored
        ({"WH1-A01"}, True, "WH1-A01", None),
        ({"WH1-A01", GTIN}, True, None, AmbiguousLocationError),
    ],
)
def test_product_barcode_is_not_a_location(
    known_codes: Collection[str] | None,
    with_location_label: bool,
    expected: str | None,
    error: type[LocationError] | None,
) -> None:
    image = shelf(seed=14)
    barcode_area = paste(image, product_barcode(), 200, 250)
    if with_location_label:
        paste(image, shrink(location_label_image("WH1-A01"), 160), 850, 500)

    labels = read_labels(image)

    products = [label for label in labels if label.symbology == "EAN13"]
    assert [label.text for label in products] == [GTIN]
    assert_inside(products[0].xyxy, barcode_area, slack=3.0)
    if error is None:
        assert location_code_from_labels(labels, known_codes=known_codes) == expected
    else:
        with pytest.raises(error):
            location_code_from_labels(labels, known_codes=known_codes)


def test_real_photo_without_label_names_no_location() -> None:
    photos = sorted(GROCERY_VAL.rglob("*.jpg"))[:3] if GROCERY_VAL.is_dir() else []
    if not photos:
        pytest.skip(f"no Grocery Store validation photos under {GROCERY_VAL}")
    for photo in photos:
        labels = read_labels(read_image(photo).pixels)
        with pytest.raises(LocationNotFoundError):
            location_code_from_labels(labels)


def test_label_pasted_on_a_real_photo_is_read() -> None:
    photos = sorted(GROCERY_VAL.rglob("*.jpg"))[:1] if GROCERY_VAL.is_dir() else []
    if not photos:
        pytest.skip(f"no Grocery Store validation photos under {GROCERY_VAL}")
    image = np.array(read_image(photos[0]).pixels)  # writable copy
    width = image.shape[1] // 5
    area = paste(image, shrink(location_label_image("FRUIT-01"), width), 10, 10)

    labels = read_labels(image)

    assert location_code_from_labels(labels, known_codes={"FRUIT-01"}) == "FRUIT-01"
    assert_inside(next(label for label in labels if label.text == "LOC:FRUIT-01").xyxy, area)


# --- choosing the location from payloads ---------------------------------------------------------


@pytest.mark.parametrize(
    ("payloads", "known_codes", "prefix", "expected", "reason"),
    [
        ([], None, "LOC:", None, "location_not_found"),
        ([], {"A"}, "LOC:", None, "location_not_found"),
        (["LOC:A"], None, "LOC:", "A", None),
        (["LOC:A", "LOC:A"], None, "LOC:", "A", None),
        (["LOC:A", GTIN, "https://example.com"], None, "LOC:", "A", None),
        (["LOC:A", "LOC:B"], None, "LOC:", None, "ambiguous_location"),
        (["LOC:"], None, "LOC:", None, "location_not_found"),  # a prefix without a code
        (["loc:A"], None, "LOC:", None, "location_not_found"),  # exact, case kept
        (["A"], None, "LOC:", None, "location_not_found"),  # a bare code needs known_codes
        (["A"], {"A", "B"}, "LOC:", "A", None),  # legacy label without the prefix
        (["LOC:A", "A"], {"A"}, "LOC:", "A", None),
        (["LOC:A", "B"], {"A", "B"}, "LOC:", None, "ambiguous_location"),
        (["LOC:C"], {"A", "B"}, "LOC:", None, "unknown_location"),
        (["LOC:A", "LOC:C"], {"A", "B"}, "LOC:", None, "unknown_location"),
        (["LOC:A"], set(), "LOC:", None, "unknown_location"),
        ([GTIN], {"A"}, "LOC:", None, "location_not_found"),
        ([GTIN], {GTIN}, "LOC:", GTIN, None),
        (["LOC:LOC:X"], {"LOC:X"}, "LOC:", "LOC:X", None),  # a known code that starts with the prefix
        (["WH/A-1", "LOC:A"], None, "WH/", "A-1", None),  # another prefix
    ],
)
def test_location_code_from_payloads(
    payloads: Sequence[str],
    known_codes: Collection[str] | None,
    prefix: str,
    expected: str | None,
    reason: str | None,
) -> None:
    labels = labels_of(*payloads)
    if reason is None:
        assert location_code_from_labels(labels, known_codes=known_codes, prefix=prefix) == expected
    else:
        with pytest.raises(LocationError) as caught:
            location_code_from_labels(labels, known_codes=known_codes, prefix=prefix)
        assert caught.value.reason == reason


def test_unknown_location_names_the_code() -> None:
    with pytest.raises(UnknownLocationError) as caught:
        location_code_from_labels(labels_of("LOC:WH9-Z99", "LOC:WH1-A01"), known_codes=["WH1-A01"])

    assert caught.value.codes == ("WH9-Z99",)
    assert "'WH9-Z99'" in str(caught.value)
    assert isinstance(caught.value, ShelfTallyError)
    assert caught.value.to_dict()["reason"] == "unknown_location"


def test_empty_prefix_is_refused() -> None:
    with pytest.raises(ValueError, match="prefix"):
        location_code_from_labels(labels_of("LOC:A"), prefix="")


# --- rendering labels ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "size_px", "error"),
    [
        ("WH1-A01", 400, None),
        ("WH1-A01", 87, None),  # 3 px per module of QR version 1 with its quiet zone
        ("WAREHOUSE-7/AISLE-12/BAY-03/SHELF-4", 300, None),
        ("Kühlraum-3", 200, None),  # non-ASCII code: UTF-8 in the QR code
        ("WH1-A01", 86, ValueError),
        ("", 400, ValueError),
        ("   ", 400, ValueError),
    ],
)
def test_label_image_reads_back(code: str, size_px: int, error: type[Exception] | None) -> None:
    if error is not None:
        with pytest.raises(error):
            location_label_image(code, size_px=size_px)
        return

    image = location_label_image(code, size_px=size_px)

    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[1:] == (size_px, 3)
    assert size_px < image.shape[0] < 1.3 * size_px
    assert [(label.text, label.symbology) for label in read_labels(image)] == [(f"LOC:{code}", "QRCode")]
    text_band = image[image.shape[0] - round(0.2 * size_px) :]
    assert (text_band < 128).any()  # the code is written under the symbol


def test_label_image_with_another_prefix() -> None:
    labels = read_labels(location_label_image("A-1", prefix="WH/", size_px=200))

    assert location_code_from_labels(labels, prefix="WH/") == "A-1"
    with pytest.raises(LocationNotFoundError):
        location_code_from_labels(labels)


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pixels",
    [
        np.zeros((10, 10), np.uint8),
        np.zeros((10, 10, 4), np.uint8),
        np.zeros((10, 10, 1), np.uint8),
        np.zeros((0, 10, 3), np.uint8),
        np.zeros((10, 10, 3), np.float32),
        np.zeros((10, 10, 3), np.uint16),
    ],
    ids=["2d", "rgba", "one-channel", "empty", "float32", "uint16"],
)
def test_read_labels_refuses_other_arrays(pixels: npt.NDArray[np.uint8]) -> None:
    with pytest.raises(ValueError, match="pixels"):
        read_labels(pixels)


@pytest.mark.parametrize(
    ("text", "symbology", "xyxy", "error"),
    [
        ("LOC:A", "QRCode", (1.0, 2.0, 3.0, 4.0), None),
        ("", "Code128", (0, 0, 0, 0), None),
        ("LOC:A", "", (1.0, 2.0, 3.0, 4.0), "symbology"),
        ("LOC:A", "QRCode", (3.0, 2.0, 1.0, 4.0), "xyxy"),
        ("LOC:A", "QRCode", (1.0, 4.0, 3.0, 2.0), "xyxy"),
        ("LOC:A", "QRCode", (-1.0, 2.0, 3.0, 4.0), "xyxy"),
        ("LOC:A", "QRCode", (1.0, 2.0, 3.0), "xyxy"),
        ("LOC:A", "QRCode", (1.0, 2.0, float("nan"), 4.0), "xyxy"),
    ],
)
def test_location_label_validates(text: str, symbology: str, xyxy: Box, error: str | None) -> None:
    if error is not None:
        with pytest.raises(ValueError, match=error):
            LocationLabel(text=text, symbology=symbology, xyxy=xyxy)
        return
    label = LocationLabel(text=text, symbology=symbology, xyxy=xyxy)
    assert label.xyxy == tuple(float(v) for v in xyxy)
    assert all(isinstance(v, float) for v in label.xyxy)
