"""thumbnail / scene_changed on toy shelves: re-encoding and exposure are unchanged, a removed product is changed."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from tests.workers.cameras.conftest import jpeg, shelf, without_one_product
from tests.workers.conftest import encode
from workers.cameras import changed_fraction, pack_thumbnail, scene_changed, thumbnail, unpack_thumbnail
from workers.ingest import decode_image


def thumb_of(data: bytes) -> np.ndarray:
    thumb: np.ndarray = thumbnail(decode_image(data).pixels)
    return thumb


def brighter(rgb: np.ndarray, gain: float, offset: float) -> np.ndarray:
    return np.clip(rgb.astype(np.float32) * gain + offset, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("seed", [1, 3, 5, 8, 13])
@pytest.mark.parametrize(
    ("variant", "changed"),
    [
        ("reencoded_q60", False),
        ("png", False),
        ("sensor_noise", False),
        ("brighter_by_6", False),
        ("auto_exposure_gain", False),
        ("one_product_removed", True),
        ("other_shelf", True),
    ],
)
def test_scene_changed(seed: int, variant: str, changed: bool) -> None:
    image = shelf(seed)
    base = thumb_of(jpeg(image, 95))
    rng = np.random.default_rng(seed)
    if variant == "reencoded_q60":
        other = jpeg(decode_image(jpeg(image, 95)).pixels, 60)
    elif variant == "png":
        other = encode(image, ".png")
    elif variant == "sensor_noise":
        other = jpeg(np.clip(image + rng.normal(0, 3, image.shape), 0, 255).astype(np.uint8), 90)
    elif variant == "brighter_by_6":
        other = jpeg(brighter(image, 1.0, 6), 90)
    elif variant == "auto_exposure_gain":
        other = jpeg(brighter(image, 1.08, -4), 90)
    elif variant == "one_product_removed":
        other = jpeg(without_one_product(seed), 95)
    else:
        other = jpeg(shelf(seed + 100), 95)
    assert scene_changed(base, thumb_of(other)) is changed


def test_changed_fraction_is_zero_for_the_same_thumbnail_and_positive_for_a_removed_product() -> None:
    base = thumb_of(jpeg(shelf(3)))
    assert changed_fraction(base, base) == 0.0
    assert changed_fraction(base, thumb_of(jpeg(without_one_product(3)))) > 0.01


@pytest.mark.parametrize(
    ("pixels", "expected_error"),
    [
        (np.zeros((480, 640, 3), np.uint8), None),
        (np.zeros((7, 5), np.uint8), None),
        (np.zeros((1, 1, 3), np.uint8), None),
        (np.zeros((0, 4, 3), np.uint8), ValueError),
        (np.zeros((10, 10, 4), np.uint8), ValueError),
        (np.zeros((10, 10, 3), np.float32), ValueError),
    ],
)
def test_thumbnail_shape(pixels: np.ndarray, expected_error: type[Exception] | None) -> None:
    if expected_error is not None:
        with pytest.raises(expected_error):
            thumbnail(pixels)
        return
    thumb = thumbnail(pixels)
    assert thumb.shape == (120, 160) and thumb.dtype == np.uint8


def test_thumbnail_is_grey_of_rgb() -> None:
    red = np.zeros((60, 80, 3), np.uint8)
    red[..., 0] = 200
    assert int(thumbnail(red)[0, 0]) == int(cv2.cvtColor(red, cv2.COLOR_RGB2GRAY)[0, 0])


def test_pack_round_trip_and_bad_shapes() -> None:
    thumb = thumb_of(jpeg(shelf()))
    assert np.array_equal(unpack_thumbnail(pack_thumbnail(thumb)), thumb)
    with pytest.raises(ValueError, match="19200"):
        unpack_thumbnail(b"\0" * 10)
    with pytest.raises(ValueError, match="thumbnail"):
        scene_changed(thumb, np.zeros((10, 10), np.uint8))
