"""Sliced inference of large pictures with the tiny detector, and the seam-merging rules."""

from __future__ import annotations

import itertools
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest

from detector.backends import DetectorBackend, load
from detector.tiling import Tile, _merge_seams, detect, detect_tiled, scale_tile_px, suppress_fragments, tile_grid
from detector.types import Detections
from tests.detector.conftest import TOY_COLOURS, toy_picture
from tests.detector.test_backends import iou_matrix

# The tiny detector saw 128 px pictures with rectangles of 16-42 px. Tiles of 1024 px are
# letterboxed to 128 (1/8), so rectangles of 130-330 px in the big picture look as in training.
TILE = 1024
SCALE = TILE // 128
W, H = 12000, 9000


@pytest.fixture(scope="module")
def backend(tiny_detector: Path) -> DetectorBackend:
    return load(tiny_detector, backend="onnx", threads=2, batch_size=16)


def _background(rng: np.random.Generator) -> np.ndarray:
    """12000 x 9000 textured noise like the toy pictures' at 1/8 scale (uint8, 324 MB, no float copy)."""
    small = cv2.GaussianBlur(rng.integers(90, 170, (H // SCALE, W // SCALE, 3), dtype=np.uint8), (5, 5), 0)
    return cv2.resize(small, (W, H), interpolation=cv2.INTER_NEAREST)


def _seam_objects(tiles: list[Tile]) -> list[tuple[int, int, int, int]]:
    """Rectangles (x1, y1, x2, y2) straddling tile seams: across vertical and horizontal edges and a corner."""
    xs = sorted({t.x2 for t in tiles if t.x2 < W})
    ys = sorted({t.y2 for t in tiles if t.y2 < H})
    x_seam, y_seam = xs[3], ys[2]
    return [
        (x_seam - 120, 2000, x_seam + 100, 2230),  # across a vertical tile edge
        (6000, y_seam - 90, 6260, y_seam + 110),  # across a horizontal tile edge
        (xs[7] - 130, ys[5] - 120, xs[7] + 120, ys[5] + 110),  # across a corner of four tiles
        (xs[10] - 260, 7000, xs[10] + 40, 7180),  # mostly left of a vertical edge
    ]


@pytest.fixture(scope="module")
def big_picture() -> tuple[np.ndarray, np.ndarray, int]:
    """The 12000 x 9000 picture, its painted rectangles (rows of class, x1, y1, x2, y2) and how many straddle seams."""
    rng = np.random.default_rng(7)
    image = _background(rng)
    tiles = tile_grid(W, H, TILE, 0.2)
    seams = _seam_objects(tiles)
    boxes: list[tuple[int, int, int, int, int]] = []
    for i, (x1, y1, x2, y2) in enumerate(seams):
        boxes.append((i % 2, x1, y1, x2, y2))
    for gy in range(300, H - 500, 1400):
        for gx in range(250, W - 500, 1500):
            w, h = (int(v) for v in rng.integers(130, 330, 2))
            x1, y1 = gx + int(rng.integers(0, 400)), gy + int(rng.integers(0, 400))
            box = (int(rng.integers(0, 2)), x1, y1, x1 + w, y1 + h)
            if all(box[1] >= b[3] + 50 or box[3] + 50 <= b[1] or box[2] >= b[4] + 50 or box[4] + 50 <= b[2]
                   for b in boxes):
                boxes.append(box)
    # Objects at the picture's corners and borders are not seams and must survive too.
    boxes.append((0, 0, 0, 200, 180))
    boxes.append((1, W - 250, H - 200, W, H))
    for cls, x1, y1, x2, y2 in boxes:
        cv2.rectangle(image, (x1, y1), (x2 - 1, y2 - 1), TOY_COLOURS[cls], -1)
    return image, np.array(boxes, np.float32), len(seams)


@pytest.mark.slow
def test_a_12000_by_9000_picture_is_tiled_and_objects_on_seams_found_once(
    backend: DetectorBackend, big_picture: tuple[np.ndarray, np.ndarray, int]
) -> None:
    image, truth, n_seams = big_picture
    calls: list[int] = []
    predict = backend.predict

    def counting(images: list[np.ndarray]) -> list:  # type: ignore[type-arg]
        calls.append(len(images))
        return predict(images)

    backend.predict = counting  # type: ignore[method-assign]
    try:
        tracemalloc.start()
        found = detect(backend, image, tile_threshold_px=4000, tile_px=TILE, tile_overlap=0.2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        del backend.predict
    assert calls == [len(tile_grid(W, H, TILE, 0.2))], "one predict call over all tiles"
    assert peak < 200 * 2**20, f"peak {peak / 2**20:.0f} MiB: a full-size float copy would be 1,236 MiB"
    assert len(found) and not found.truncated
    assert np.all(found.xyxy[:, [0, 1]] >= 0)
    assert np.all(found.xyxy[:, 2] <= W) and np.all(found.xyxy[:, 3] <= H)
    iou = iou_matrix(found.xyxy, truth[:, 1:])
    # Every box lies on a painted object, of that object's colour.
    assert np.all(iou.max(axis=1) >= 0.5), f"boxes off their objects: {found.xyxy[iou.max(axis=1) < 0.5]}"
    assert np.array_equal(found.class_id, truth[iou.argmax(axis=1), 0].astype(np.int64))
    # Objects straddling seams are found exactly once; no object twice; (almost) all found: the
    # tiny detector's recall on its own validation pictures is about 0.95.
    matches_per_object = (iou >= 0.5).sum(axis=0)
    assert np.all(matches_per_object[:n_seams] == 1), f"seam objects matched {matches_per_object[:n_seams]} times"
    assert matches_per_object.max() == 1, f"objects matched {matches_per_object.tolist()} times"
    assert np.mean(matches_per_object == 1) >= 0.9, f"found {np.sum(matches_per_object)} of {len(truth)} objects"


def test_a_picture_under_the_threshold_is_not_tiled(backend: DetectorBackend) -> None:
    rng = np.random.default_rng(5)
    image, truth = toy_picture(rng)
    calls: list[int] = []
    predict = backend.predict

    def counting(images: list[np.ndarray]) -> list:  # type: ignore[type-arg]
        calls.append(len(images))
        return predict(images)

    backend.predict = counting  # type: ignore[method-assign]
    try:
        found = detect(backend, image)  # 128 px, threshold 3 x 128
    finally:
        del backend.predict
    assert calls == [1]
    assert len(found) == len(predict([image])[0])
    assert len(found) >= 1 and iou_matrix(found.xyxy, truth[:, 1:]).max() >= 0.5


def test_a_picture_with_nothing_on_it_gives_no_boxes(backend: DetectorBackend) -> None:
    blank = np.full((3000, 3000, 3), 128, np.uint8)
    found = detect_tiled(backend, blank, tile_px=TILE)
    assert found.xyxy.shape == (0, 4) and not found.truncated


@pytest.mark.parametrize(
    ("width", "height", "tile", "overlap", "count"),
    [
        (12000, 9000, 1024, 0.2, None),
        (640, 480, 640, 0.2, 1),
        (641, 480, 640, 0.2, 2),
        (3000, 200, 640, 0.0, 5),
        (5000, 5000, 640, 0.5, None),
    ],
)
def test_tile_grid_covers_the_picture_with_the_requested_overlap(
    width: int, height: int, tile: int, overlap: float, count: int | None
) -> None:
    tiles = tile_grid(width, height, tile, overlap)
    if count is not None:
        assert len(tiles) == count
    covered = np.zeros((-(-height // 10), -(-width // 10)), bool)  # 10 px cells
    for t in tiles:
        assert 0 <= t.x1 < t.x2 <= width and 0 <= t.y1 < t.y2 <= height
        assert t.x2 - t.x1 == min(tile, width) and t.y2 - t.y1 == min(tile, height)
        covered[t.y1 // 10 : -(-t.y2 // 10), t.x1 // 10 : -(-t.x2 // 10)] = True
    assert covered.all()
    xs = sorted({t.x1 for t in tiles})
    for a, b in itertools.pairwise(xs):
        assert (a + tile) - b >= overlap * tile - 1


@pytest.mark.parametrize(("tile", "overlap"), [(0, 0.2), (640, 1.0), (640, -0.1)])
def test_tile_grid_refuses_bad_settings(tile: int, overlap: float) -> None:
    with pytest.raises(ValueError):
        tile_grid(1000, 1000, tile, overlap)


def test_a_cut_piece_goes_when_a_complete_box_exists() -> None:
    # Tile 0 saw the object whole; tile 1 saw its left part, cut at its left edge.
    xyxy = np.array([[900, 100, 1150, 300], [1000, 102, 1150, 299]], np.float32)
    kept, conf, cls = _merge_seams(xyxy, np.array([0.6, 0.9], np.float32), np.array([0, 0]), np.array([0, 1]),
                                   np.array([False, True]), 0.6)
    np.testing.assert_array_equal(kept, xyxy[:1])
    assert conf.tolist() == pytest.approx([0.6]) and cls.tolist() == [0]


def test_pieces_of_an_object_larger_than_the_overlap_are_joined() -> None:
    # Neither tile saw it whole: tile 0 up to its right edge at 1024, tile 1 from its left edge at 784.
    xyxy = np.array([[700, 100, 1024, 300], [784, 101, 1100, 302], [3000, 100, 3100, 200]], np.float32)
    kept, conf, cls = _merge_seams(xyxy, np.array([0.7, 0.8, 0.5], np.float32), np.array([1, 1, 1]),
                                   np.array([0, 1, 5]), np.array([True, True, False]), 0.6)
    assert cls.tolist() == [1, 1]
    order = np.argsort(kept[:, 0])
    np.testing.assert_array_equal(kept[order], [[700, 100, 1100, 302], [3000, 100, 3100, 200]])
    assert conf[order].tolist() == pytest.approx([0.8, 0.5])


def test_pieces_of_different_classes_are_not_joined() -> None:
    xyxy = np.array([[700, 100, 1024, 300], [784, 101, 1100, 302]], np.float32)
    kept, _, cls = _merge_seams(xyxy, np.array([0.7, 0.8], np.float32), np.array([0, 1]), np.array([0, 1]),
                                np.array([True, True]), 0.6)
    assert len(kept) == 2 and sorted(cls.tolist()) == [0, 1]


def test_a_fragment_inside_a_larger_confident_box_goes() -> None:
    xyxy = np.array([[0, 0, 100, 200], [10, 10, 40, 40], [200, 0, 300, 200], [210, 10, 240, 40],
                     [400, 0, 500, 100], [450, 0, 550, 100]], np.float32)
    confidence = np.array([0.8, 0.9, 0.2, 0.9, 0.7, 0.7], np.float32)
    keep = suppress_fragments(xyxy, confidence, np.zeros(6, np.int64))
    # The logo inside the product goes; the confident box inside a faint one stays; neighbours
    # overlapping by half are two products.
    assert keep.tolist() == [0, 2, 3, 4, 5]
    other_class = suppress_fragments(xyxy[:2], confidence[:2], np.array([0, 1]))
    assert other_class.tolist() == [0, 1]


def test_the_tile_side_follows_the_median_object() -> None:
    def found(side: float, n: int = 3) -> Detections:
        xyxy = np.array([[i * 2 * side, 0, i * 2 * side + side, side] for i in range(n)], np.float32)
        return Detections(xyxy, np.full(n, 0.9, np.float32), np.zeros(n, np.int64))

    empty = Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
    assert scale_tile_px(empty, 4000, 3000, 320, 40) is None
    assert scale_tile_px(found(200, n=2), 4000, 3000, 320, 40) is None  # two boxes do not tell a scale
    # 4000 px letterboxed to 320 is 1/12.5: a 800 px product is 64 network pixels, large enough.
    assert scale_tile_px(found(800), 4000, 3000, 320, 40) is None
    # 200 px products are 16 network pixels whole; tiles of 200 * 320 / 40 = 1600 px make them 40.
    assert scale_tile_px(found(200), 4000, 3000, 320, 40) == 1600
    # Never below the network input (native resolution) nor above the picture.
    assert scale_tile_px(found(10), 4000, 3000, 320, 40) == 320


def _large_objects_picture(side: int = 1536) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    small = cv2.GaussianBlur(rng.integers(90, 170, (side // 12, side // 12, 3), dtype=np.uint8), (5, 5), 0)
    image = cv2.resize(small, (side, side), interpolation=cv2.INTER_NEAREST)
    boxes = np.array([(0, 100, 150, 460, 520), (1, 800, 120, 1200, 470), (0, 200, 900, 560, 1300),
                      (1, 900, 950, 1330, 1350)], np.float32)
    for cls, x1, y1, x2, y2 in boxes.astype(int):
        cv2.rectangle(image, (x1, y1), (x2 - 1, y2 - 1), TOY_COLOURS[cls], -1)
    return image, boxes


def test_tiles_do_not_multiply_large_objects(backend: DetectorBackend) -> None:
    # 1536 px is over the tiling threshold (3 x 128); its 360-430 px objects are 30-36 network
    # pixels when the picture is letterboxed whole, above the default object_px (16), so the
    # whole-picture pass stands; tiles at native resolution (128 px) would cut each in ~12.
    image, truth = _large_objects_picture()
    found = detect(backend, image)
    iou = iou_matrix(found.xyxy, truth[:, 1:])
    assert len(found) == len(truth), f"{len(found)} boxes for {len(truth)} objects"
    assert (iou >= 0.5).sum(axis=0).tolist() == [1, 1, 1, 1]
    # The fixed native-resolution tiling that this replaces, with fragment suppression, still
    # never returns more boxes than objects plus the pieces it could not join.
    tiled = detect_tiled(backend, image, tile_px=128)
    assert len(tiled) >= len(found)


def test_small_objects_in_a_large_picture_are_tiled_from_their_scale(backend: DetectorBackend) -> None:
    # 2048 px picture with 100-150 px rectangles: 6-9 network pixels whole, too small to see;
    # the fallback tiles (3 x 128 = 384 px) bring them to 33-50.
    rng = np.random.default_rng(13)
    small = cv2.GaussianBlur(rng.integers(90, 170, (2048 // 3, 2048 // 3, 3), dtype=np.uint8), (5, 5), 0)
    image = cv2.resize(small, (2048, 2048), interpolation=cv2.INTER_NEAREST)
    boxes = []
    for gy in range(100, 1900, 450):
        for gx in range(100, 1900, 450):
            w, h = (int(v) for v in rng.integers(100, 150, 2))
            cls = int(rng.integers(0, 2))
            boxes.append((cls, gx, gy, gx + w, gy + h))
            cv2.rectangle(image, (gx, gy), (gx + w - 1, gy + h - 1), TOY_COLOURS[cls], -1)
    truth = np.array(boxes, np.float32)
    found = detect(backend, image)
    iou = iou_matrix(found.xyxy, truth[:, 1:])
    matches = (iou >= 0.5).sum(axis=0)
    assert matches.max() == 1, f"objects matched {matches.tolist()} times"
    assert np.mean(matches == 1) >= 0.9 and len(found) <= len(truth) + 1
