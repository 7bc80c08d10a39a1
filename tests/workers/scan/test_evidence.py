"""Evidence images: boxes in the right colours at the right places, header, downscaling, files, paths."""

from __future__ import annotations

import itertools
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from inventory.models import DiscrepancyKind
from workers.scan.evidence import (
    DISCREPANCY_COLOURS,
    UNKNOWN_COLOUR,
    EvidenceItem,
    draw_evidence,
    evidence_path,
    sku_colour,
    write_evidence,
)

BACKGROUND = (10, 20, 30)
TITLE = "scan 17 · A-01-02 · 2026-11-29 12:00 UTC"


def shelf(height: int = 480, width: int = 640) -> npt.NDArray[np.uint8]:
    """A plain dark picture, so every drawn pixel stands out."""
    image = np.empty((height, width, 3), np.uint8)
    image[:] = BACKGROUND
    return image


def picture_part(out: npt.NDArray[np.uint8], picture_height: int) -> npt.NDArray[np.uint8]:
    """The drawn picture below the header band."""
    return out[out.shape[0] - picture_height :]


def colour_at(image: npt.NDArray[np.uint8], x: int, y: int) -> tuple[int, int, int]:
    r, g, b = (int(v) for v in image[y, x])
    return r, g, b


def edge_points(x1: int, y1: int, x2: int, y2: int) -> list[tuple[int, int]]:
    """Pixels on the left, right and bottom edges of a box (x2, y2 exclusive), away from the tag."""
    mid_x, mid_y = (x1 + x2) // 2, (y1 + y2) // 2
    return [(x1, mid_y), (x2 - 1, mid_y), (mid_x, y2 - 1), (x1, y2 - 1), (x2 - 1, y2 - 1)]


# --- EvidenceItem ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("xyxy", "sku_code", "confidence", "discrepancy", "error"),
    [
        ((10, 20, 30, 40), "SKU-A", 0.93, None, None),
        ((10, 20, 10, 20), "SKU-A", 0.0, "shortage", None),  # zero area is allowed (skipped when drawn)
        ((-50, -50, 5000, 5000), "SKU-A", 1.0, "overage", None),  # outside the picture: clipped when drawn
        ((0, 0, 1, 1), None, 0.2, None, None),
        ((0, 0, 1, 1), None, 0.2, "unknown_product", None),
        ((0, 0, 1, 1), "SKU-A", 0.5, DiscrepancyKind.MISPLACED, None),
        ((30, 20, 10, 40), "SKU-A", 0.5, None, "x1 <= x2"),
        ((10, 40, 30, 20), "SKU-A", 0.5, None, "x1 <= x2"),
        ((0, 0, float("nan"), 1), "SKU-A", 0.5, None, "finite"),
        ((0, 0, 1), "SKU-A", 0.5, None, "4 numbers"),
        ((0, 0, 1, 1), "", 0.5, None, "non-empty"),
        ((0, 0, 1, 1), "SKU-A", 1.5, None, r"\[0, 1\]"),
        ((0, 0, 1, 1), "SKU-A", -0.1, None, r"\[0, 1\]"),
        ((0, 0, 1, 1), "SKU-A", float("nan"), None, r"\[0, 1\]"),
        ((0, 0, 1, 1), "SKU-A", 0.5, "lost", "one of"),
        ((0, 0, 1, 1), None, 0.5, "shortage", "unrecognised item"),
        ((0, 0, 1, 1), "SKU-A", 0.5, "unknown_product", "belongs to unrecognised"),
    ],
)
def test_evidence_item_validation(
    xyxy: tuple[float, ...], sku_code: str | None, confidence: float, discrepancy: str | None, error: str | None
) -> None:
    if error is None:
        item = EvidenceItem(xyxy, sku_code, confidence, discrepancy)  # type: ignore[arg-type]
        assert item.xyxy == tuple(float(v) for v in xyxy)
        assert type(item.confidence) is float
        assert item.discrepancy is None or type(item.discrepancy) is str
    else:
        with pytest.raises(ValueError, match=error):
            EvidenceItem(xyxy, sku_code, confidence, discrepancy)  # type: ignore[arg-type]


def test_every_discrepancy_kind_has_a_red_or_orange_colour() -> None:
    assert set(DISCREPANCY_COLOURS) == {kind.value for kind in DiscrepancyKind}
    for r, g, b in DISCREPANCY_COLOURS.values():
        assert r > 200 and b < 60 and g < r  # red to orange


# --- the drawing ----------------------------------------------------------------------------


def test_output_is_a_new_rgb_image_with_the_header_band_above_the_picture() -> None:
    pixels = shelf()
    before = pixels.copy()
    items = [
        EvidenceItem((100, 100, 200, 300), "SKU-A", 0.93, "shortage"),
        EvidenceItem((300, 100, 400, 300), None, 0.3),
    ]
    out = draw_evidence(pixels, items, title=TITLE, summary_lines=["SKU-A: 4 counted, book 6 -> shortage"])

    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[1:] == (640, 3)
    header_h = out.shape[0] - 480
    assert header_h > 0
    header = out[:header_h]
    # Mostly the dark header background, with light text on it.
    assert np.median(header.reshape(-1, 3), axis=0).tolist() == [32, 32, 32]
    assert int((header.min(axis=2) > 200).sum()) > 100
    # The picture is below it, untouched away from the boxes.
    assert np.array_equal(picture_part(out, 480)[350:, :], before[350:, :])
    assert np.array_equal(pixels, before)  # the input is never modified
    assert not np.shares_memory(out, pixels)


def test_header_grows_with_summary_lines_and_shows_the_title() -> None:
    pixels = shelf()
    plain = draw_evidence(pixels, [], title=TITLE)
    two = draw_evidence(pixels, [], title=TITLE, summary_lines=["SKU-A: 4 counted, book 6 -> shortage", "SKU-B: ok"])
    other_title = draw_evidence(pixels, [], title="scan 18 · B-07")
    assert two.shape[0] > plain.shape[0]
    assert other_title.shape == plain.shape and not np.array_equal(other_title, plain)


def test_non_ascii_text_is_spelled_in_ascii() -> None:
    """``·`` in the title is drawn as ``|`` and ``→`` as ``->`` (cv2.putText has only ASCII)."""
    pixels = shelf()
    unicode = draw_evidence(pixels, [], title="scan 17 · A-01", summary_lines=["SKU-A: 4 → shortage"])
    ascii_ = draw_evidence(pixels, [], title="scan 17 | A-01", summary_lines=["SKU-A: 4 -> shortage"])
    assert np.array_equal(unicode, ascii_)


@pytest.mark.parametrize(
    ("sku_code", "discrepancy", "expected"),
    [
        ("SKU-A", None, sku_colour("SKU-A")),
        ("SKU-1002", None, sku_colour("SKU-1002")),
        ("CAFÉ-1", None, sku_colour("CAFÉ-1")),  # non-ASCII code: tag shows "CAF?-1", colour from the real code
        ("SKU-A", "shortage", DISCREPANCY_COLOURS["shortage"]),
        ("SKU-A", "out_of_stock", DISCREPANCY_COLOURS["out_of_stock"]),
        ("SKU-A", "overage", DISCREPANCY_COLOURS["overage"]),
        ("SKU-A", "misplaced", DISCREPANCY_COLOURS["misplaced"]),
        (None, "unknown_product", DISCREPANCY_COLOURS["unknown_product"]),
    ],
)
def test_box_outline_has_the_colour_of_its_sku_or_discrepancy(
    sku_code: str | None, discrepancy: str | None, expected: tuple[int, int, int]
) -> None:
    box = (200, 150, 360, 400)
    out = draw_evidence(shelf(), [EvidenceItem(box, sku_code, 0.9, discrepancy)], title=TITLE)
    picture = picture_part(out, 480)
    for x, y in edge_points(*box):
        assert colour_at(picture, x, y) == expected, (x, y)
    assert colour_at(picture, 280, 300) == BACKGROUND  # inside the box
    assert colour_at(picture, 195, 300) == BACKGROUND  # outside it
    # The tag sits above the box, filled with the same colour.
    tag = picture[100:150, 200:360].reshape(-1, 3)
    assert int(np.all(tag == expected, axis=1).sum()) > 200


def test_discrepancy_outline_is_thicker_than_a_plain_one() -> None:
    def thickness(discrepancy: str | None) -> int:
        out = draw_evidence(shelf(), [EvidenceItem((200, 150, 360, 400), "SKU-A", 0.9, discrepancy)], title=TITLE)
        row = picture_part(out, 480)[300, 200:280]
        return int(np.argmax(np.all(row == BACKGROUND, axis=1)))

    assert thickness("shortage") > thickness(None) >= 1


def test_same_sku_same_colour_in_every_image_different_skus_differ() -> None:
    box = (100, 100, 300, 300)
    first = draw_evidence(shelf(), [EvidenceItem(box, "SKU-A", 0.9)], title="scan 1")
    second = draw_evidence(shelf(360, 500), [EvidenceItem(box, "SKU-A", 0.4)], title="scan 2")
    assert colour_at(picture_part(first, 480), 100, 200) == colour_at(picture_part(second, 360), 100, 200)
    # Pinned: the colour comes from BLAKE2b of the code, the same in every process and release.
    assert sku_colour("SKU-A") == (137, 248, 1)

    codes = [f"SKU-{i:04d}" for i in range(60)]
    colours = [np.array(sku_colour(code), float) for code in codes]
    assert len({tuple(c) for c in colours}) == len(codes)
    close = sum(np.linalg.norm(a - b) < 30 for a, b in itertools.combinations(colours, 2))
    assert close / (len(codes) * (len(codes) - 1) / 2) < 0.05
    # No SKU looks like a discrepancy or an unrecognised item.
    reserved = [np.array(c, float) for c in (*DISCREPANCY_COLOURS.values(), UNKNOWN_COLOUR)]
    assert min(np.linalg.norm(c - r) for c in colours for r in reserved) > 60


def test_unrecognised_item_is_a_thin_grey_dashed_outline() -> None:
    x1, y1, x2, y2 = 200, 150, 360, 400
    out = draw_evidence(shelf(), [EvidenceItem((x1, y1, x2, y2), None, 0.3)], title=TITLE)
    picture = picture_part(out, 480)
    for x, y in [(x1, y2 - 1), (x2 - 1, y2 - 1), (x2 - 1, y1)]:  # corners (top-left is under the tag)
        assert colour_at(picture, x, y) == UNKNOWN_COLOUR
    for edge in (picture[y1 + 40 : y2, x1], picture[y1 + 40 : y2, x2 - 1], picture[y2 - 1, x1:x2]):
        grey = np.all(edge == UNKNOWN_COLOUR, axis=1).mean()
        assert 0.3 < grey < 0.7  # dashed
        assert np.all(np.all(edge == UNKNOWN_COLOUR, axis=1) | np.all(edge == BACKGROUND, axis=1))
    assert colour_at(picture, x1 + 1, 300) == BACKGROUND  # 1 px thin


@pytest.mark.parametrize(
    ("xyxy", "visible"),
    [
        ((-50.0, -40.0, 100.0, 120.0), [(99, 60), (50, 119)]),  # over the top-left corner
        ((560.0, 400.0, 900.0, 700.0), [(560, 440), (600, 400)]),  # over the bottom-right corner
        ((700.0, 500.0, 800.0, 600.0), []),  # wholly outside
        ((-100.0, 100.0, -10.0, 200.0), []),  # wholly outside, left
        ((100.0, 100.0, 100.0, 200.0), []),  # zero width
        ((100.0, 100.0, 200.0, 100.0), []),  # zero height
        ((0.0, 0.0, 0.0, 0.0), []),
    ],
)
def test_boxes_outside_the_picture_are_clipped_and_empty_ones_skipped(
    xyxy: tuple[float, float, float, float], visible: list[tuple[int, int]]
) -> None:
    pixels = shelf()
    out = draw_evidence(pixels, [EvidenceItem(xyxy, "SKU-A", 0.9)], title=TITLE)
    picture = picture_part(out, 480)
    assert out.shape[1] == 640
    if not visible:
        assert np.array_equal(picture, pixels)
    for x, y in visible:
        assert colour_at(picture, x, y) == sku_colour("SKU-A")


def test_tag_of_a_box_in_the_top_right_corner_stays_inside_the_picture() -> None:
    out = draw_evidence(shelf(), [EvidenceItem((600, 0, 640, 40), "SKU-LONG-CODE-1", 0.9)], title=TITLE)
    picture = picture_part(out, 480)
    colour = sku_colour("SKU-LONG-CODE-1")
    # No room above: the tag is inside at the top, moved left so that it ends at the right edge.
    top_rows = np.all(picture[:5] == colour, axis=2)
    assert top_rows[:, 639].all()
    assert top_rows[:, 550:600].any()


@pytest.mark.parametrize(
    ("size_hw", "max_side_px", "expected_hw", "box", "expected_box"),
    [
        ((1600, 2000), 800, (640, 800), (500, 250, 1500, 1250), (200, 100, 600, 500)),
        ((2000, 1000), 1000, (1000, 500), (100, 200, 700, 1800), (50, 100, 350, 900)),
        ((480, 640), 1600, (480, 640), (100, 100, 300, 300), (100, 100, 300, 300)),  # never upscaled
        ((480, 640), 640, (480, 640), (100, 100, 300, 300), (100, 100, 300, 300)),
    ],
)
def test_large_picture_is_downscaled_with_its_boxes(
    size_hw: tuple[int, int],
    max_side_px: int,
    expected_hw: tuple[int, int],
    box: tuple[int, int, int, int],
    expected_box: tuple[int, int, int, int],
) -> None:
    out = draw_evidence(shelf(*size_hw), [EvidenceItem(box, "SKU-B", 0.8)], title=TITLE, max_side_px=max_side_px)
    height, width = expected_hw
    assert out.shape[1] == width and out.shape[0] > height
    picture = picture_part(out, height)
    for x, y in edge_points(*expected_box):
        assert colour_at(picture, x, y) == sku_colour("SKU-B"), (x, y)
    x1, y1, x2, y2 = expected_box
    assert colour_at(picture, x2 + 2, (y1 + y2) // 2) == BACKGROUND
    assert colour_at(picture, (x1 + x2) // 2, y2 + 2) == BACKGROUND


def test_downscaled_picture_keeps_its_content() -> None:
    pixels = shelf(1200, 1600)
    pixels[:, 800:] = (200, 100, 50)  # right half another colour
    picture = picture_part(draw_evidence(pixels, [], title=TITLE, max_side_px=400), 300)
    assert picture.shape == (300, 400, 3)
    assert colour_at(picture, 100, 150) == BACKGROUND
    assert colour_at(picture, 300, 150) == (200, 100, 50)


def test_no_items_gives_the_picture_unchanged_under_the_header() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    out = draw_evidence(pixels, [], title=TITLE, summary_lines=[])
    assert np.array_equal(picture_part(out, 240), pixels)


@pytest.mark.parametrize(
    ("pixels", "max_side_px", "error"),
    [
        (np.zeros((48, 64), np.uint8), 1600, r"\(H, W, 3\)"),
        (np.zeros((48, 64, 4), np.uint8), 1600, r"\(H, W, 3\)"),
        (np.zeros((48, 64, 1), np.uint8), 1600, r"\(H, W, 3\)"),
        (np.zeros((0, 64, 3), np.uint8), 1600, r"\(H, W, 3\)"),
        (np.zeros((48, 64, 3), np.float32), 1600, "uint8"),
        (np.zeros((48, 64, 3), np.uint16), 1600, "uint8"),
        ([[[0, 0, 0]]], 1600, "numpy array"),
        (np.zeros((48, 64, 3), np.uint8), 0, "max_side_px"),
        (np.zeros((48, 64, 3), np.uint8), 16, "max_side_px"),
    ],
)
def test_bad_input_is_refused(pixels: npt.NDArray[np.uint8], max_side_px: int, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        draw_evidence(pixels, [], title=TITLE, max_side_px=max_side_px)


def test_many_items_on_a_small_picture_do_not_raise() -> None:
    rng = np.random.default_rng(1)
    kinds = [None, "shortage", "overage", "out_of_stock", "misplaced"]
    items = [
        EvidenceItem((float(x), float(y), float(x + w), float(y + h)), f"SKU-{i % 7}", float(c), kinds[i % len(kinds)])
        for i, (x, y, w, h, c) in enumerate(rng.uniform([-20, -20, 0, 0, 0], [60, 60, 40, 40, 1], (200, 5)))
    ]
    items.append(EvidenceItem((5, 5, 30, 30), None, 0.1))
    out = draw_evidence(shelf(40, 48), items, title=TITLE * 3, summary_lines=["x" * 300] * 3)
    assert out.shape[1:] == (48, 3)


# --- files ----------------------------------------------------------------------------------


def test_write_evidence_round_trip_in_a_non_ascii_folder(tmp_path: Path) -> None:
    yy, xx = np.mgrid[0:240, 0:320]
    image = np.stack([xx * 255 // 319, yy * 255 // 239, (xx + yy) * 255 // 558], axis=2).astype(np.uint8)
    path = tmp_path / "évidence" / "货架 A-01" / "scan-00000017.jpg"

    assert write_evidence(path, image, quality=95) == path
    data = path.read_bytes()
    assert data[:3] == b"\xff\xd8\xff"  # JPEG
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None and decoded.shape == image.shape
    rgb = cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)  # channels stay RGB through the file
    assert float(np.abs(rgb.astype(float) - image.astype(float)).mean()) < 3.0
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left

    # Overwriting replaces the content, and a lower quality makes a smaller file.
    write_evidence(path, image, quality=20)
    assert len(path.read_bytes()) < len(data)
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_write_evidence_of_a_drawn_image(tmp_path: Path) -> None:
    out = draw_evidence(shelf(), [EvidenceItem((100, 100, 300, 300), "SKU-A", 0.9, "shortage")], title=TITLE)
    path = write_evidence(evidence_path(tmp_path, "A-01-02", 17), out)
    decoded = cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None and decoded.shape == out.shape
    r, g, b = (int(v) for v in cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)[out.shape[0] - 480 + 200, 101])
    assert r > 180 and g < 80 and b < 80  # the red shortage outline survives the JPEG


@pytest.mark.parametrize(
    ("image", "quality", "error"),
    [
        (np.zeros((10, 10, 3), np.uint8), 0, "quality"),
        (np.zeros((10, 10, 3), np.uint8), 101, "quality"),
        (np.zeros((10, 10), np.uint8), 85, r"\(H, W, 3\)"),
        (np.zeros((10, 10, 3), np.float64), 85, "uint8"),
    ],
)
def test_write_evidence_refuses_bad_input(
    tmp_path: Path, image: npt.NDArray[np.uint8], quality: int, error: str
) -> None:
    with pytest.raises(ValueError, match=error):
        write_evidence(tmp_path / "x" / "e.jpg", image, quality=quality)
    assert not (tmp_path / "x").exists()


# --- paths ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("location_code", "folder"),
    [
        ("A-01-02", "A-01-02"),
        ("WH1.A01_3", "WH1.A01_3"),
        ("A/01", "A_01~"),
        ("A\\01", "A_01~"),
        ("A 01", "A_01~"),
        ("A:01*?", "A_01__~"),
        ("..", "__~"),
        (".", "_~"),
        (".hidden", "_hidden~"),
        ("A-01.", "A-01_~"),
        ("货架-1", "__-1~"),
        ("a-01", "a-01~"),  # lower case: macOS and Windows folders ignore case
        ("CON", "CON~"),
        ("LPT1.X", "LPT1.X~"),
        ("A" * 64, "A" * 64),
        ("A" * 65, "A" * 64 + "~"),
    ],
)
def test_evidence_path_sanitises_the_location_code(tmp_path: Path, location_code: str, folder: str) -> None:
    path = evidence_path(tmp_path, location_code, 17)
    assert path.name == "scan-00000017.jpg"
    assert path.parent.parent == tmp_path
    name = path.parent.name
    if folder.endswith("~"):
        assert name.startswith(folder) and len(name) == len(folder) + 12
        assert all(c in "0123456789abcdef" for c in name[len(folder) :])
    else:
        assert name == folder


def test_evidence_paths_are_collision_free_also_ignoring_case(tmp_path: Path) -> None:
    codes = ["A_01", "A/01", "A:01", "A 01", "A\\01", "a_01", "a/01", "A_01~", "A-01", "a-01", "..", "__", "_.",
             ".", "_", "CON", "con", "Con", "货架", "貨架", "__~", "A" * 65, "A" * 66, "A" * 64 + "B"]
    folders = [evidence_path(tmp_path, code, 1).parent.name for code in codes]
    assert len({f.casefold() for f in folders}) == len(codes)
    # The same code always gives the same folder.
    assert folders == [evidence_path(tmp_path, code, 1).parent.name for code in codes]


@pytest.mark.parametrize(
    ("location_code", "scan_id", "expected"),
    [
        ("A-01", 0, "scan-00000000.jpg"),
        ("A-01", 123456789, "scan-123456789.jpg"),
        ("", 1, ValueError),
        ("A-01", -1, ValueError),
        ("A-01", True, ValueError),
    ],
)
def test_evidence_path_file_name(tmp_path: Path, location_code: str, scan_id: int, expected: object) -> None:
    if expected is ValueError:
        with pytest.raises(ValueError):
            evidence_path(tmp_path, location_code, scan_id)
    else:
        assert evidence_path(tmp_path, location_code, scan_id).name == expected
