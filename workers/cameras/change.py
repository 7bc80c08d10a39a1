"""Small grey thumbnails of camera frames and the test "did the scene change?".

A fixed camera sends a new picture every poll even when nothing on the shelf moved: a re-encoded
JPEG, sensor noise, auto-exposure. Scanning costs a detector and classifier pass, so a frame is
compared first with the previous one on a :data:`THUMBNAIL_HW` grey thumbnail.

How the defaults were chosen (measured on 40 real shelf photos of ``../shared/data/shelf-testing-ccby``
(valid split) and 80 toy shelves of ``tests/workers/conftest.py``, thumbnails of a JPEG at
quality 95 against the variants):

* unchanged variants (must stay below the thresholds): the same frame re-encoded at JPEG
  quality 60, decoded from PNG instead of JPEG, with Gaussian sensor noise sigma 4 grey levels:
  0 % of thumbnail pixels above 8 grey levels after the 5x5 blur; brightness ``1.10 x + 5``
  (auto-exposure) after the linear gain/offset fit: 0.18 % of pixels above 15 (0.38 % above 12);
* changed (must exceed them): one product box of the photo inpainted away (median-size box, 6.7 %
  of the picture): median 2.0 % of pixels above 15, 10th percentile 0.8 %, 22 of 23 labelled photos
  above 0.3 % (the miss was a box of 0.12 % of the picture, below the thumbnail's resolution);
  one toy rectangle painted over with background: at least 1.8 %.

So :data:`PIXEL_DELTA` = 15 grey levels and :data:`AREA_FRACTION` = 0.003 (0.3 % of the
thumbnail, 58 pixels): ten times the re-encoding/noise margin and under the smallest product
that a 160 x 120 thumbnail still resolves. Products smaller than about 0.3 % of the picture can
be missed; callers that must see those rescan on a timer anyway.
"""

from __future__ import annotations

from typing import Final

import cv2
import numpy as np
import numpy.typing as npt

THUMBNAIL_HW: Final[tuple[int, int]] = (120, 160)
"""(height, width) of every thumbnail, pixels."""

PIXEL_DELTA: Final[float] = 15.0
"""Grey levels (0..255) a thumbnail pixel must differ by, after the exposure fit, to count as changed."""

AREA_FRACTION: Final[float] = 0.003
"""Fraction of thumbnail pixels that must change for the scene to count as changed."""

BLANK_STD: Final[float] = 2.0
"""A thumbnail whose grey standard deviation is below this is a blank (uniform) frame."""


def thumbnail(pixels: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """Shrink a picture to the grey thumbnail that change detection compares.

    Args:
        pixels: (H, W, 3) uint8 RGB or (H, W) uint8 grey, any size >= 1 x 1.

    Returns:
        (120, 160) uint8 grey (ITU-R BT.601 luma, as ``cv2.COLOR_RGB2GRAY``), resized with
        ``cv2.INTER_AREA`` to exactly :data:`THUMBNAIL_HW` whatever the aspect ratio.

    Raises:
        ValueError: ``pixels`` is not uint8 of shape (H, W) or (H, W, 3) with H, W >= 1.
    """
    array = np.asarray(pixels)
    if array.dtype != np.uint8:
        raise ValueError(f"pixels: expected dtype uint8, received {array.dtype}")
    if array.ndim not in (2, 3) or array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"pixels: expected shape (H, W) or (H, W, 3) with H, W >= 1, received {array.shape}")
    if array.ndim == 3 and array.shape[2] == 3:
        grey = cv2.cvtColor(np.ascontiguousarray(array), cv2.COLOR_RGB2GRAY)
    elif array.ndim == 2:
        grey = array
    else:
        raise ValueError(f"pixels: expected shape (H, W) or (H, W, 3), received {array.shape}")
    height, width = THUMBNAIL_HW
    small = cv2.resize(np.ascontiguousarray(grey), (width, height), interpolation=cv2.INTER_AREA)
    return np.asarray(small, dtype=np.uint8)


def is_blank(thumb: npt.NDArray[np.uint8], *, min_std: float = BLANK_STD) -> bool:
    """True when a thumbnail is uniform (lens covered, black or grey frame).

    Args:
        thumb: (120, 160) uint8 grey, from :func:`thumbnail`.
        min_std: Smallest grey standard deviation (0..255 levels) of a real scene.

    Raises:
        ValueError: ``thumb`` is not a thumbnail.
    """
    _check_thumbnail("thumb", thumb)
    return float(np.std(thumb)) < min_std


def changed_fraction(
    previous: npt.NDArray[np.uint8], current: npt.NDArray[np.uint8], *, pixel_delta: float = PIXEL_DELTA
) -> float:
    """Fraction (0..1) of thumbnail pixels that changed by more than ``pixel_delta`` grey levels.

    Both thumbnails are blurred (5x5 Gaussian) to suppress JPEG and sensor noise, then
    ``current`` is compared with the least-squares linear fit ``a * previous + b`` (a global
    gain and offset: auto-exposure and white balance), so only local changes remain.

    Args:
        previous: (120, 160) uint8 grey thumbnail of the earlier frame.
        current: (120, 160) uint8 grey thumbnail of the new frame.
        pixel_delta: Grey levels (0..255) above which a pixel counts as changed.

    Raises:
        ValueError: a thumbnail of the wrong shape or dtype, or ``pixel_delta`` < 0.
    """
    _check_thumbnail("previous", previous)
    _check_thumbnail("current", current)
    if pixel_delta < 0:
        raise ValueError(f"pixel_delta: expected >= 0, received {pixel_delta}")
    before = cv2.GaussianBlur(previous.astype(np.float32), (5, 5), 0).ravel()
    after = cv2.GaussianBlur(current.astype(np.float32), (5, 5), 0).ravel()
    spread = float(np.var(before))
    if spread < 1e-6:  # a uniform previous frame: only an offset can be fitted
        gain, offset = 1.0, float(np.mean(after) - np.mean(before))
    else:
        gain = float(np.mean((before - before.mean()) * (after - after.mean())) / spread)
        gain = min(max(gain, 0.5), 2.0)
        offset = float(after.mean() - gain * before.mean())
    residual = np.abs(after - (gain * before + offset))
    return float(np.mean(residual > pixel_delta))


def scene_changed(
    previous: npt.NDArray[np.uint8],
    current: npt.NDArray[np.uint8],
    *,
    pixel_delta: float = PIXEL_DELTA,
    area_fraction: float = AREA_FRACTION,
) -> bool:
    """Whether the scene in ``current`` differs from ``previous`` (see the module docstring).

    A re-encoded copy, sensor noise and a global brightness change are unchanged; one product
    taken from or put on a shelf is changed.

    Args:
        previous: (120, 160) uint8 grey thumbnail of the earlier frame (:func:`thumbnail`).
        current: (120, 160) uint8 grey thumbnail of the new frame.
        pixel_delta: Grey levels (0..255) a pixel must change by (default 15, measured).
        area_fraction: Fraction of pixels, 0..1, that must change (default 0.003, measured).

    Raises:
        ValueError: a thumbnail of the wrong shape or dtype, ``pixel_delta`` < 0, or
            ``area_fraction`` outside [0, 1).
    """
    if not 0.0 <= area_fraction < 1.0:
        raise ValueError(f"area_fraction: expected 0 <= value < 1, received {area_fraction}")
    return changed_fraction(previous, current, pixel_delta=pixel_delta) > area_fraction


def pack_thumbnail(thumb: npt.NDArray[np.uint8]) -> bytes:
    """The thumbnail as 19,200 raw bytes (row-major), to store next to a camera's record.

    Raises:
        ValueError: ``thumb`` is not a thumbnail.
    """
    _check_thumbnail("thumb", thumb)
    return np.ascontiguousarray(thumb).tobytes()


def unpack_thumbnail(data: bytes) -> npt.NDArray[np.uint8]:
    """The inverse of :func:`pack_thumbnail`: (120, 160) uint8 grey.

    Raises:
        ValueError: ``data`` is not 19,200 bytes long.
    """
    height, width = THUMBNAIL_HW
    if len(data) != height * width:
        raise ValueError(f"data: expected {height * width} bytes, received {len(data)}")
    return np.frombuffer(data, dtype=np.uint8).reshape(height, width).copy()


def _check_thumbnail(name: str, thumb: npt.NDArray[np.uint8]) -> None:
    array = np.asarray(thumb)
    if array.dtype != np.uint8 or array.shape != THUMBNAIL_HW:
        raise ValueError(f"{name}: expected a {THUMBNAIL_HW} uint8 thumbnail, received {array.shape} {array.dtype}")
