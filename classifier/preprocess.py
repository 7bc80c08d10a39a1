"""Turn crops into the classifier's input batch, in numpy and OpenCV (shared by every backend).

A crop is (h, w, 3) uint8 RGB, any size of at least 1 x 1 (a detection cut out of an upright
picture). :func:`prepare_batch` resizes each crop as the model directory's
:class:`~classifier.model_dir.Preprocess` says, stacks them and normalises the stack once:
``(x * scale - mean) / std`` per channel, then NCHW float32 in the network's channel order.
Resizing happens on uint8 (the small S x S result is the only float array per crop).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
import numpy.typing as npt

from classifier.model_dir import Preprocess

__all__ = ["check_crops", "prepare_batch", "resize_crop"]

_INTERPOLATION = {
    "linear": cv2.INTER_LINEAR,
    "area": cv2.INTER_AREA,
    "cubic": cv2.INTER_CUBIC,
    "nearest": cv2.INTER_NEAREST,
}


def check_crops(crops: Sequence[npt.NDArray[np.uint8]]) -> list[npt.NDArray[np.uint8]]:
    """Check that ``crops`` is a sequence of (h, w, 3) uint8 arrays with h, w >= 1.

    Args:
        crops: the crops (a list; one crop goes in a list of one).

    Returns:
        The crops as a list (the arrays themselves, not copies).

    Raises:
        ValueError: ``crops`` is a single array instead of a sequence, or a crop is not an
            ndarray, not uint8, not (h, w, 3) or empty; the message names the crop's index and
            says expected and received.
    """
    if isinstance(crops, np.ndarray):
        raise ValueError(
            f"crops: expected a sequence of (h, w, 3) uint8 arrays, received one array of shape {crops.shape}; "
            "wrap a single crop in a list"
        )
    checked: list[npt.NDArray[np.uint8]] = []
    for i, crop in enumerate(crops):
        if not isinstance(crop, np.ndarray):
            raise ValueError(f"crops[{i}]: expected a numpy array (h, w, 3) uint8, received {type(crop).__name__}")
        if crop.dtype != np.uint8:
            raise ValueError(f"crops[{i}]: expected dtype uint8 (RGB 0-255), received {crop.dtype}")
        if crop.ndim != 3 or crop.shape[2] != 3:
            raise ValueError(f"crops[{i}]: expected shape (h, w, 3) RGB, received {crop.shape}")
        if crop.shape[0] < 1 or crop.shape[1] < 1:
            raise ValueError(f"crops[{i}]: expected h >= 1 and w >= 1, received shape {crop.shape}")
        checked.append(crop)
    return checked


def _interpolation(preprocess: Preprocess, source_hw: tuple[int, int], target_hw: tuple[int, int]) -> int:
    if preprocess.interpolation != "auto":
        return _INTERPOLATION[preprocess.interpolation]
    shrinks = target_hw[0] <= source_hw[0] and target_hw[1] <= source_hw[1]
    return cv2.INTER_AREA if shrinks else cv2.INTER_LINEAR


def _resize(crop: npt.NDArray[np.uint8], preprocess: Preprocess, width: int, height: int) -> npt.NDArray[np.uint8]:
    h, w = crop.shape[:2]
    if (w, h) == (width, height):
        return crop
    flag = _interpolation(preprocess, (h, w), (height, width))
    return np.asarray(cv2.resize(np.ascontiguousarray(crop), (width, height), interpolation=flag), dtype=np.uint8)


def resize_crop(crop: npt.NDArray[np.uint8], preprocess: Preprocess) -> npt.NDArray[np.uint8]:
    """Resize one crop to the network's square input by ``preprocess.resize``.

    Args:
        crop: (h, w, 3) uint8 RGB, h, w >= 1 (not checked here; see :func:`check_crops`).
        preprocess: the model's input preparation.

    Returns:
        (S, S, 3) uint8 RGB with S = ``preprocess.input_size`` (the crop itself when it already
        is S x S).
    """
    size = preprocess.input_size
    h, w = crop.shape[:2]
    if preprocess.resize == "stretch":
        return _resize(crop, preprocess, size, size)
    if preprocess.resize == "letterbox":
        ratio = min(size / h, size / w)
        new_w = min(size, max(1, round(w * ratio)))
        new_h = min(size, max(1, round(h * ratio)))
        resized = _resize(crop, preprocess, new_w, new_h)
        if (new_w, new_h) == (size, size):
            return resized
        out = np.full((size, size, 3), preprocess.pad_value, dtype=np.uint8)
        top, left = (size - new_h) // 2, (size - new_w) // 2
        out[top : top + new_h, left : left + new_w] = resized
        return out
    # center_crop: the shorter side becomes floor(S / crop_pct) (timm), then the centre S x S is kept.
    short = max(size, math.floor(size / preprocess.crop_pct))
    ratio = short / min(h, w)
    new_w = max(size, round(w * ratio))
    new_h = max(size, round(h * ratio))
    resized = _resize(crop, preprocess, new_w, new_h)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return resized[top : top + size, left : left + size]


def prepare_batch(
    crops: Sequence[npt.NDArray[np.uint8]], preprocess: Preprocess, *, batch_size: int | None = None
) -> npt.NDArray[np.float32]:
    """Resize and normalise crops into one network input batch.

    Args:
        crops: each (h, w, 3) uint8 RGB, h, w >= 1.
        preprocess: the model's input preparation.
        batch_size: B, the batch to return; the rows after the crops are zeros (padding for a
            model exported with a fixed batch). Default ``len(crops)``.

    Returns:
        (B, 3, S, S) float32, C-contiguous, ``(x * scale - mean) / std`` per channel in
        ``preprocess.channel_order``.

    Raises:
        ValueError: a crop is not (h, w, 3) uint8 with h, w >= 1 (:func:`check_crops`), or
            ``batch_size`` is smaller than the number of crops.
    """
    checked = check_crops(crops)
    n = len(checked)
    total = n if batch_size is None else batch_size
    if total < n:
        raise ValueError(f"batch_size: expected at least {n} (the number of crops), received {total}")
    size = preprocess.input_size
    batch = np.zeros((total, 3, size, size), dtype=np.float32)
    if not n:
        return batch
    stacked = np.stack([resize_crop(crop, preprocess) for crop in checked])  # (n, S, S, 3) uint8 RGB
    if preprocess.channel_order == "BGR":
        stacked = stacked[..., ::-1]
    order = slice(None, None, -1) if preprocess.channel_order == "BGR" else slice(None)
    mean = np.asarray(preprocess.mean, dtype=np.float32)[order]
    std = np.asarray(preprocess.std, dtype=np.float32)[order]
    gain = np.float32(preprocess.scale) / std  # x * scale / std - mean / std
    offset = mean / std
    normalised = stacked.astype(np.float32) * gain - offset  # (n, S, S, 3)
    batch[:n] = normalised.transpose(0, 3, 1, 2)
    return batch
