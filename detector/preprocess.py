"""Letterbox pictures into the detector's input batch, and map boxes back.

The convention is ultralytics' ``LetterBox`` (``ultralytics/data/augment.py``, centred padding)
and ``scale_boxes`` (``ultralytics/utils/ops.py``): the picture is scaled by
``r = min(S / H, S / W)`` (up or down), each side rounded to whole pixels (at least 1), and the
remainder of the ``S x S`` square is padded with ``pad_value``; the left/top pads are
``round(d / 2 - 0.1)`` of the total padding ``d`` on that axis. Boxes go back by subtracting the
pads and dividing by the per-axis gain ``new_w / W`` and ``new_h / H``.

The picture is resized as uint8 (OpenCV ``INTER_LINEAR``, as ultralytics' predictor) and only the
``S x S`` result is converted to float, so a 12000 x 9000 picture never becomes a float array.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from detector.model_dir import Preprocess

__all__ = ["Letterbox", "letterbox", "letterbox_params"]


@dataclass(frozen=True)
class Letterbox:
    """Where one source picture landed in the square network input.

    Attributes:
        source_wh: (width, height) of the source picture in pixels.
        resized_wh: (width, height) of the picture after resizing, before padding, in input pixels.
        pad_left: columns of padding left of the picture, input pixels.
        pad_top: rows of padding above the picture, input pixels.
        input_size: side of the square network input, pixels.
    """

    source_wh: tuple[int, int]
    resized_wh: tuple[int, int]
    pad_left: int
    pad_top: int
    input_size: int

    @property
    def gain_x(self) -> float:
        """Input pixels per source pixel along x."""
        return self.resized_wh[0] / self.source_wh[0]

    @property
    def gain_y(self) -> float:
        """Input pixels per source pixel along y."""
        return self.resized_wh[1] / self.source_wh[1]

    def to_input(self, xyxy: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Map boxes from source pixels to network-input pixels.

        Args:
            xyxy: (N, 4) float32, x1, y1, x2, y2 in pixels of the source picture.

        Returns:
            (N, 4) float32 in pixels of the ``input_size`` square (a new array).
        """
        out = np.asarray(xyxy, dtype=np.float32).reshape(-1, 4).copy()
        out[:, 0::2] = out[:, 0::2] * self.gain_x + self.pad_left
        out[:, 1::2] = out[:, 1::2] * self.gain_y + self.pad_top
        return out

    def to_source(self, xyxy: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Map boxes from network-input pixels back to source pixels (no clipping).

        Args:
            xyxy: (N, 4) float32, x1, y1, x2, y2 in pixels of the ``input_size`` square.

        Returns:
            (N, 4) float32 in pixels of the source picture (a new array).
        """
        out = np.asarray(xyxy, dtype=np.float32).reshape(-1, 4).copy()
        out[:, 0::2] = (out[:, 0::2] - self.pad_left) / self.gain_x
        out[:, 1::2] = (out[:, 1::2] - self.pad_top) / self.gain_y
        return out


def letterbox_params(source_wh: tuple[int, int], input_size: int) -> Letterbox:
    """Compute the letterbox of a ``source_wh`` picture into an ``input_size`` square.

    Args:
        source_wh: (width, height) of the picture in pixels, both positive.
        input_size: side of the square network input in pixels.

    Returns:
        The resize and padding (ultralytics ``LetterBox.get_params`` with ``center=True``,
        ``auto=False``, ``scaleup=True``).

    Raises:
        ValueError: a side is not positive.
    """
    width, height = source_wh
    if width <= 0 or height <= 0 or input_size <= 0:
        raise ValueError(f"expected positive sizes, received source_wh={source_wh}, input_size={input_size}")
    r = min(input_size / height, input_size / width)
    new_w = min(max(round(width * r), 1), input_size)
    new_h = min(max(round(height * r), 1), input_size)
    pad_left = round((input_size - new_w) / 2 - 0.1)
    pad_top = round((input_size - new_h) / 2 - 0.1)
    return Letterbox((width, height), (new_w, new_h), pad_left, pad_top, input_size)


def _check_image(image: npt.NDArray[np.uint8], index: int) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise ValueError(f"image {index}: expected (H, W, 3) uint8 RGB, received shape {shape} dtype {dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image {index}: expected a non-empty picture, received shape {image.shape}")


def letterbox(
    images: Sequence[npt.NDArray[np.uint8]],
    preprocess: Preprocess,
    *,
    batch_size: int | None = None,
) -> tuple[npt.NDArray[np.float32], list[Letterbox]]:
    """Letterbox RGB pictures into one network input batch.

    Args:
        images: pictures, each (H, W, 3) uint8 RGB (any sizes).
        preprocess: input size, pad value, scale and channel order of the model
            (:class:`detector.model_dir.Preprocess`).
        batch_size: rows of the returned batch; rows after ``len(images)`` are padding (filled
            with ``pad_value``) for models with a fixed batch dimension. Default ``len(images)``.

    Returns:
        ``(batch, letterboxes)``: batch (B, 3, S, S) float32, C-contiguous, channels in
        ``preprocess.channel_order``, values ``pixel * preprocess.scale``; one
        :class:`Letterbox` per picture (not per padding row).

    Raises:
        ValueError: a picture is not (H, W, 3) uint8 or is empty; ``batch_size < len(images)``.
    """
    size = preprocess.input_size
    rows = len(images) if batch_size is None else batch_size
    if rows < len(images):
        raise ValueError(f"batch_size {rows} is smaller than the {len(images)} pictures given")
    scale = np.float32(preprocess.scale)
    batch = np.empty((rows, 3, size, size), dtype=np.float32)
    batch.fill(np.float32(preprocess.pad_value) * scale)
    boxes: list[Letterbox] = []
    for index, image in enumerate(images):
        _check_image(image, index)
        params = letterbox_params((int(image.shape[1]), int(image.shape[0])), size)
        new_w, new_h = params.resized_wh
        resized = image if (new_w, new_h) == (image.shape[1], image.shape[0]) else cv2.resize(
            image, (new_w, new_h), interpolation=cv2.INTER_LINEAR
        )
        planes = cv2.split(resized)  # contiguous uint8 planes: the float write below is sequential
        if preprocess.channel_order == "BGR":
            planes = planes[::-1]
        top, left = params.pad_top, params.pad_left
        for channel, plane in enumerate(planes):
            np.multiply(plane, scale, out=batch[index, channel, top : top + new_h, left : left + new_w])
        boxes.append(params)
    return batch, boxes
