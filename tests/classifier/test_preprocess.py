"""Crop preprocessing: resize policies, normalisation, channel order, padding rows, crop checks."""

from __future__ import annotations

import numpy as np
import pytest

from classifier.model_dir import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from classifier.preprocess import check_crops, prepare_batch, resize_crop


def solid(h: int, w: int, rgb: tuple[int, int, int]) -> np.ndarray:
    return np.full((h, w, 3), rgb, np.uint8)


@pytest.mark.parametrize(
    ("shape", "policy"),
    [((30, 60), "letterbox"), ((60, 30), "letterbox"), ((1, 1), "letterbox"), ((3, 500), "letterbox"),
     ((30, 60), "stretch"), ((300, 20), "stretch"), ((30, 60), "center_crop"), ((500, 3), "center_crop"),
     ((64, 64), "letterbox")],
)
def test_every_policy_gives_the_input_square(shape: tuple[int, int], policy: str) -> None:
    preprocess = Preprocess(input_size=64, resize=policy)  # type: ignore[arg-type]
    out = resize_crop(solid(*shape, (10, 20, 30)), preprocess)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8


def test_letterbox_keeps_the_whole_crop_centred_and_pads_grey() -> None:
    preprocess = Preprocess(input_size=64, pad_value=114)
    out = resize_crop(solid(20, 40, (200, 0, 0)), preprocess)  # 2:1 -> 64 x 32, 16 rows of padding above and below
    assert np.all(out[16:48] == (200, 0, 0))
    assert np.all(out[:16] == 114) and np.all(out[48:] == 114)


def test_center_crop_cuts_the_long_side_like_timm() -> None:
    crop = solid(100, 300, (0, 0, 0))
    crop[:, 140:160] = (255, 255, 255)  # a white stripe in the middle survives
    crop[:, :20] = (255, 0, 0)  # the far left is cut off
    out = resize_crop(crop, Preprocess(input_size=64, resize="center_crop", crop_pct=0.875))
    assert out[:, 32].min() > 200  # centre column white
    assert not np.any(np.all(out == (255, 0, 0), axis=2))


def test_normalisation_uses_mean_and_std_in_channel_order() -> None:
    mean_pixel = tuple(round(m * 255) for m in IMAGENET_MEAN)
    for order in ("RGB", "BGR"):
        preprocess = Preprocess(input_size=16, channel_order=order)  # type: ignore[arg-type]
        batch = prepare_batch([solid(16, 16, (255, 0, 0)), solid(16, 16, mean_pixel)], preprocess)  # type: ignore[arg-type]
        assert batch.shape == (2, 3, 16, 16) and batch.dtype == np.float32 and batch.flags.c_contiguous
        red = 0 if order == "RGB" else 2
        assert np.allclose(batch[0, red], (1.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0], atol=1e-5)
        assert np.allclose(batch[0, 2 - red], (0.0 - IMAGENET_MEAN[2]) / IMAGENET_STD[2], atol=1e-5)
        assert np.abs(batch[1]).max() < 0.01  # the ImageNet mean colour normalises to about 0


def test_batch_size_pads_with_zero_rows() -> None:
    preprocess = Preprocess(input_size=16)
    batch = prepare_batch([solid(8, 8, (1, 2, 3))], preprocess, batch_size=4)
    assert batch.shape == (4, 3, 16, 16)
    assert np.any(batch[0] != 0) and not np.any(batch[1:])
    assert prepare_batch([], preprocess).shape == (0, 3, 16, 16)
    assert prepare_batch([], preprocess, batch_size=2).shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="batch_size: expected at least 2"):
        prepare_batch([solid(8, 8, (0, 0, 0))] * 2, preprocess, batch_size=1)


@pytest.mark.parametrize("interpolation", ["auto", "linear", "area", "cubic", "nearest"])
def test_interpolations_agree_on_a_flat_crop(interpolation: str) -> None:
    preprocess = Preprocess(input_size=32, resize="stretch", interpolation=interpolation)  # type: ignore[arg-type]
    for shape in ((10, 10), (100, 100)):  # enlarging and shrinking
        assert np.all(resize_crop(solid(*shape, (9, 99, 199)), preprocess) == (9, 99, 199))


def test_check_crops_passes_views_through() -> None:
    crop = np.zeros((10, 10, 3), np.uint8)
    checked = check_crops((crop, crop[::2]))
    assert len(checked) == 2 and checked[0] is crop
