"""Letterboxing and decoding of the raw YOLO head: thresholds, NMS, max_det, truncation, mapping back."""

from __future__ import annotations

import time

import numpy as np
import pytest

from detector.model_dir import Preprocess
from detector.postprocess import decode, nms
from detector.preprocess import Letterbox, letterbox, letterbox_params
from detector.types import Detections

S = 640
IDENTITY = Letterbox(source_wh=(S, S), resized_wh=(S, S), pad_left=0, pad_top=0, input_size=S)


def raw_head(
    xyxy: np.ndarray, confidence: np.ndarray, class_id: np.ndarray, *, classes: int = 2, anchors: int | None = None
) -> np.ndarray:
    """A (1, 4 + classes, A) head output holding these boxes (input pixels); other anchors score 0."""
    n = len(xyxy)
    a = anchors or max(n, 1)
    raw = np.zeros((1, 4 + classes, a), np.float32)
    if n:
        xyxy = np.asarray(xyxy, np.float32)
        raw[0, 0, :n] = (xyxy[:, 0] + xyxy[:, 2]) / 2
        raw[0, 1, :n] = (xyxy[:, 1] + xyxy[:, 3]) / 2
        raw[0, 2, :n] = xyxy[:, 2] - xyxy[:, 0]
        raw[0, 3, :n] = xyxy[:, 3] - xyxy[:, 1]
        raw[0, 4 + np.asarray(class_id), np.arange(n)] = confidence
    return raw


def grid_boxes(n: int, cell: float = 16.0, size: float = 10.0) -> np.ndarray:
    """n well-separated size x size boxes on a grid of cell-pixel cells."""
    per_row = int(S // cell)
    i = np.arange(n)
    x1 = (i % per_row) * cell + 2
    y1 = (i // per_row) * cell + 2
    return np.stack([x1, y1, x1 + size, y1 + size], axis=1).astype(np.float32)


def _case(name: str, xyxy: np.ndarray, conf: np.ndarray, cls: np.ndarray, max_det: int,
          count: int | None, truncated: bool | None, error: type[Exception] | None = None) -> object:
    return pytest.param(xyxy, conf, cls, max_det, count, truncated, error, id=name)


RNG = np.random.default_rng(0)
MANY = grid_boxes(1200)
MANY_CONF = RNG.uniform(0.3, 1.0, 1200).astype(np.float32)
DUPLICATE = np.array([[100, 100, 200, 200], [102, 101, 201, 203]], np.float32)

CASES = [
    _case("empty: no candidates", np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64),
          1000, 0, False),
    _case("all below the confidence threshold", grid_boxes(5), np.full(5, 0.1, np.float32), np.zeros(5, np.int64),
          1000, 0, False),
    _case("one box", grid_boxes(1), np.array([0.9], np.float32), np.array([1]), 1000, 1, False),
    _case("1,200 separated boxes, max_det 2000", MANY, MANY_CONF, np.zeros(1200, np.int64), 2000, 1200, False),
    _case("1,200 separated boxes, max_det exactly 1200", MANY, MANY_CONF, np.zeros(1200, np.int64), 1200, 1200,
          False),
    _case("1,200 separated boxes, max_det 1000 bites", MANY, MANY_CONF, np.zeros(1200, np.int64), 1000, 1000, True),
    _case("overlapping duplicates of one class suppressed", DUPLICATE, np.array([0.8, 0.9], np.float32),
          np.array([0, 0]), 1000, 1, False),
    _case("overlapping boxes of two classes both kept", DUPLICATE, np.array([0.8, 0.9], np.float32),
          np.array([0, 1]), 1000, 2, False),
    _case("max_det 0 is refused", grid_boxes(2), np.array([0.9, 0.9], np.float32), np.array([0, 0]), 0, None,
          None, ValueError),
]


@pytest.mark.parametrize(("xyxy", "conf", "cls", "max_det", "count", "truncated", "error"), CASES)
def test_decode_table(
    xyxy: np.ndarray, conf: np.ndarray, cls: np.ndarray, max_det: int, count: int | None, truncated: bool | None,
    error: type[Exception] | None,
) -> None:
    raw = raw_head(xyxy, conf, cls, anchors=max(len(xyxy), 8))
    if error is not None:
        with pytest.raises(error):
            decode(raw, [IDENTITY], conf=0.25, iou=0.45, max_det=max_det)
        return
    (found,) = decode(raw, [IDENTITY], conf=0.25, iou=0.45, max_det=max_det)
    assert isinstance(found, Detections)
    assert found.xyxy.shape == (count, 4)
    assert found.truncated is truncated
    assert np.all(np.diff(found.confidence) <= 0), "most confident first"
    if count and count < len(xyxy):
        # The kept ones are the most confident of the candidates above the threshold.
        assert found.confidence.min() >= np.sort(conf)[::-1][count - 1] - 1e-6


def test_truncation_keeps_the_most_confident_boxes() -> None:
    raw = raw_head(MANY, MANY_CONF, np.zeros(1200, np.int64))
    (found,) = decode(raw, [IDENTITY], max_det=1000)
    expected = np.sort(MANY_CONF)[::-1][:1000]
    np.testing.assert_allclose(found.confidence, expected, rtol=0, atol=1e-6)


def test_duplicate_suppression_keeps_the_more_confident_box() -> None:
    (found,) = decode(raw_head(DUPLICATE, np.array([0.8, 0.9], np.float32), np.array([0, 0])), [IDENTITY])
    np.testing.assert_allclose(found.xyxy[0], DUPLICATE[1], atol=1e-4)
    assert found.confidence[0] == pytest.approx(0.9)


def test_best_class_is_reported() -> None:
    raw = raw_head(grid_boxes(1), np.array([0.7], np.float32), np.array([1]), classes=3)
    raw[0, 4, 0] = 0.4  # a weaker class 0 score for the same anchor
    (found,) = decode(raw, [IDENTITY])
    assert found.class_id.tolist() == [1]
    assert found.confidence.tolist() == pytest.approx([0.7])


def test_thousands_of_candidates_all_go_through_nms_quickly() -> None:
    # 1,200 objects with 5 jittered candidates each: 6,000 candidates, nothing dropped by a time limit.
    rng = np.random.default_rng(1)
    base = np.repeat(grid_boxes(1200), 5, axis=0)
    jitter = rng.uniform(-0.4, 0.4, base.shape).astype(np.float32)
    conf = rng.uniform(0.3, 1.0, len(base)).astype(np.float32)
    raw = raw_head(base + jitter, conf, np.zeros(len(base), np.int64), anchors=8400)
    started = time.perf_counter()
    (found,) = decode(raw, [IDENTITY], max_det=2000)
    elapsed = time.perf_counter() - started
    assert len(found) == 1200
    assert not found.truncated
    assert elapsed < 2.0, f"decoding 6,000 candidates took {elapsed:.2f} s"


def test_nms_matches_torchvision_batched_nms() -> None:
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    rng = np.random.default_rng(2)
    xy = rng.uniform(0, 1000, (3000, 2))
    xyxy = np.concatenate([xy, xy + rng.uniform(5, 150, (3000, 2))], axis=1).astype(np.float32)
    conf = rng.uniform(0, 1, 3000).astype(np.float32)
    cls = rng.integers(0, 4, 3000).astype(np.int64)
    ours = nms(xyxy, conf, cls, 0.45)
    reference = torchvision.ops.batched_nms(
        torch.from_numpy(xyxy), torch.from_numpy(conf), torch.from_numpy(cls), 0.45
    ).numpy()
    np.testing.assert_array_equal(ours, reference)


def test_class_agnostic_nms_suppresses_across_classes() -> None:
    keep = nms(DUPLICATE, np.array([0.8, 0.9], np.float32), np.array([0, 1]), 0.45, class_agnostic=True)
    assert keep.tolist() == [1]


def test_boxes_are_clipped_to_the_picture_and_degenerate_ones_dropped() -> None:
    # A 400 x 200 picture letterboxed into 640: scale 1.6, 160 px of padding above and below.
    box = letterbox_params((400, 200), S)
    inside_and_beyond = box.to_input(np.array([[-50, 20, 120, 260]], np.float32))[0]
    in_the_padding = np.array([10, 5, 60, 150], np.float32)  # entirely in the top padding band
    raw = raw_head(np.stack([inside_and_beyond, in_the_padding]), np.array([0.9, 0.8], np.float32),
                   np.array([0, 1]))
    (found,) = decode(raw, [box])
    assert len(found) == 1
    np.testing.assert_allclose(found.xyxy[0], [0, 20, 120, 200], atol=0.01)


def test_batch_rows_beyond_the_letterboxes_are_ignored() -> None:
    raw = np.concatenate([raw_head(grid_boxes(3), np.full(3, 0.9, np.float32), np.zeros(3, np.int64))] * 4)
    results = decode(raw, [IDENTITY, IDENTITY])
    assert [len(r) for r in results] == [3, 3]


@pytest.mark.parametrize(
    ("raw_shape", "letterboxes"),
    [((2, 6), 1), ((1, 4, 10), 1), ((1, 6, 10), 2)],
    ids=["2-D output", "no class rows", "fewer rows than pictures"],
)
def test_decode_rejects_malformed_output(raw_shape: tuple[int, ...], letterboxes: int) -> None:
    with pytest.raises(ValueError, match="expected shape"):
        decode(np.zeros(raw_shape, np.float32), [IDENTITY] * letterboxes)


# --- letterbox ---------------------------------------------------------------------------------

SIZES = [
    pytest.param((480, 640), id="portrait 480x640"),
    pytest.param((1920, 1080), id="landscape 1920x1080"),
    pytest.param((7, 3), id="tiny 7x3"),
    pytest.param((640, 640), id="square at input size"),
    pytest.param((12000, 9000), id="huge 12000x9000"),
    pytest.param((5000, 40), id="thin 5000x40"),
]


@pytest.mark.parametrize("source_wh", SIZES)
def test_letterbox_round_trip_within_one_pixel(source_wh: tuple[int, int]) -> None:
    width, height = source_wh
    box = letterbox_params(source_wh, S)
    rng = np.random.default_rng(width * 7 + height)
    x = np.sort(rng.uniform(0, width, (50, 2)), axis=1)
    y = np.sort(rng.uniform(0, height, (50, 2)), axis=1)
    source = np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1).astype(np.float32)
    back = box.to_source(box.to_input(source))
    np.testing.assert_allclose(back, source, atol=1.0)
    # The picture is centred and fills the input along its longer side.
    assert max(box.resized_wh) == S
    assert box.pad_left + box.resized_wh[0] <= S and box.pad_top + box.resized_wh[1] <= S
    assert abs(box.pad_left - (S - box.resized_wh[0] - box.pad_left)) <= 1
    assert abs(box.pad_top - (S - box.resized_wh[1] - box.pad_top)) <= 1


@pytest.mark.parametrize("source_wh", [(480, 640), (1920, 1080), (300, 200)], ids=["portrait", "landscape", "small"])
def test_letterbox_puts_a_painted_box_where_to_input_says(source_wh: tuple[int, int]) -> None:
    width, height = source_wh
    image = np.full((height, width, 3), 30, np.uint8)
    painted = np.array([[width * 0.2, height * 0.3, width * 0.6, height * 0.7]], np.float32)
    x1, y1, x2, y2 = painted[0].astype(int)
    image[y1:y2, x1:x2] = (250, 10, 10)
    batch, (box,) = letterbox([image], Preprocess(input_size=S))
    assert batch.shape == (1, 3, S, S) and batch.dtype == np.float32 and batch.flags.c_contiguous
    red = batch[0, 0] > 0.8
    ys, xs = np.nonzero(red)
    found = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
    np.testing.assert_allclose(found, box.to_input(painted)[0], atol=1.5)
    # None of these fills the square, so the corner is padding: the pad value, scaled like the pixels.
    assert batch[0, :, 0, 0] == pytest.approx([114 / 255] * 3)


def test_letterbox_channel_order_and_padding_rows() -> None:
    image = np.zeros((64, 64, 3), np.uint8)
    image[..., 0] = 200  # red
    rgb, _ = letterbox([image], Preprocess(input_size=64))
    bgr, _ = letterbox([image], Preprocess(input_size=64, channel_order="BGR"), batch_size=3)
    assert rgb[0, 0].mean() == pytest.approx(200 / 255) and rgb[0, 2].mean() == 0
    assert bgr[0, 2].mean() == pytest.approx(200 / 255) and bgr[0, 0].mean() == 0
    assert bgr.shape == (3, 3, 64, 64)
    assert np.allclose(bgr[1:], 114 / 255)


@pytest.mark.parametrize(
    "image",
    [
        pytest.param(np.zeros((10, 10), np.uint8), id="grey 2-D"),
        pytest.param(np.zeros((10, 10, 4), np.uint8), id="RGBA"),
        pytest.param(np.zeros((10, 10, 3), np.float32), id="float"),
        pytest.param(np.zeros((0, 10, 3), np.uint8), id="empty"),
    ],
)
def test_letterbox_rejects_pictures_that_are_not_rgb_uint8(image: np.ndarray) -> None:
    with pytest.raises(ValueError, match="image 0"):
        letterbox([image], Preprocess(input_size=64))
