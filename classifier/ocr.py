"""Reading the text and the barcodes printed on a crop: the evidence :mod:`classifier.text` matches.

Text: PP-OCRv4 (text detection, direction classification, recognition; Chinese and Latin
script), as the ONNX files bundled in the ``rapidocr-onnxruntime`` 1.4.4 wheel (Apache-2.0),
run by ONNX Runtime through that library's own pipeline, the way it is meant to be used. The
models are loaded once per process (:func:`text_reader`); nothing is downloaded.

Barcodes: zxing-cpp (a core dependency) reads EAN-8, EAN-13, UPC-A, UPC-E and ITF-14 on the
crop; only codes whose GS1 check digit holds are kept (:func:`shelftally.gtin.gtin14`).

Both take (h, w, 3) uint8 RGB crops, upright, as the detector cuts them.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from shelftally.errors import MissingDependencyError
from shelftally.gtin import gtin14

__all__ = ["ReadLine", "ReadText", "TextReader", "read_gtins", "text_reader"]

logger = logging.getLogger(__name__)

GTIN_FORMATS = ("EAN8", "EAN13", "UPCA", "UPCE", "ITF14")
"""zxing-cpp formats that carry a GTIN (ITF-14 on cartons)."""


@dataclass(frozen=True)
class ReadLine:
    """One line of text found on a crop.

    Attributes:
        text: as recognised.
        confidence: the recogniser's score in [0, 1].
        xyxy: the line's box in crop pixels (x1, y1, x2, y2).
    """

    text: str
    confidence: float
    xyxy: tuple[float, float, float, float]


@dataclass(frozen=True)
class ReadText:
    """What was read on one crop.

    Attributes:
        lines: text lines at or above the reader's ``min_confidence``, top to bottom.
        gtins: barcodes read, as 14-digit GTINs (check digit verified), in reading order, once each.
    """

    lines: tuple[ReadLine, ...] = ()
    gtins: tuple[str, ...] = ()

    @property
    def texts(self) -> list[str]:
        """The lines' text."""
        return [line.text for line in self.lines]


def read_gtins(crop: npt.NDArray[np.uint8]) -> tuple[str, ...]:
    """The GTIN barcodes on a crop, as 14 digits, once each, in zxing-cpp's reading order.

    Args:
        crop: (h, w, 3) uint8 RGB or (h, w) uint8 grey.

    Returns:
        Codes whose GS1 check digit holds; an unreadable crop gives ``()``.
    """
    import zxingcpp

    formats = zxingcpp.BarcodeFormats([getattr(zxingcpp.BarcodeFormat, name) for name in GTIN_FORMATS])
    found: list[str] = []
    for barcode in zxingcpp.read_barcodes(np.ascontiguousarray(crop), formats=formats):
        key = gtin14(barcode.text)
        if key is not None and key not in found:
            found.append(key)
    return tuple(found)


class TextReader:
    """PP-OCRv4 through rapidocr, loaded once; see the module docstring.

    Args:
        threads: ONNX Runtime intra-op threads (None: its default).
        min_confidence: lines the recogniser scores below this are dropped.
        barcodes: also read GTIN barcodes on each crop.

    Raises:
        MissingDependencyError: rapidocr-onnxruntime is not installed (extra ``shelftally[text]``).
    """

    def __init__(self, *, threads: int | None = None, min_confidence: float = 0.5, barcodes: bool = True) -> None:
        try:
            from rapidocr_onnxruntime import RapidOCR
        except ImportError as error:
            raise MissingDependencyError(
                "reading text needs rapidocr-onnxruntime: pip install 'shelftally[text]'"
            ) from error
        options = {} if threads is None else {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
        self._ocr = RapidOCR(**options)
        self.min_confidence = min_confidence
        self.barcodes = barcodes

    def read(self, crop: npt.NDArray[np.uint8]) -> ReadText:
        """Read one crop.

        Args:
            crop: (h, w, 3) uint8 RGB.

        Returns:
            Its text lines and GTINs; a crop with nothing readable gives an empty :class:`ReadText`.

        Raises:
            ValueError: ``crop`` is not (h, w, 3) uint8.
        """
        if not isinstance(crop, np.ndarray) or crop.dtype != np.uint8 or crop.ndim != 3 or crop.shape[2] != 3:
            raise ValueError(f"crop: expected (h, w, 3) uint8 RGB, received {getattr(crop, 'shape', type(crop))}")
        if min(crop.shape[:2]) < 8:
            return ReadText()
        bgr = np.ascontiguousarray(crop[:, :, ::-1])  # rapidocr takes arrays in OpenCV's BGR order
        result, _ = self._ocr(bgr)
        lines = []
        for box, text, score in result or []:
            if float(score) < self.min_confidence or not str(text).strip():
                continue
            xs = [float(point[0]) for point in box]
            ys = [float(point[1]) for point in box]
            lines.append(ReadLine(str(text), float(score), (min(xs), min(ys), max(xs), max(ys))))
        lines.sort(key=lambda line: (line.xyxy[1], line.xyxy[0]))
        gtins = read_gtins(crop) if self.barcodes else ()
        return ReadText(tuple(lines), gtins)


@functools.cache
def text_reader(threads: int | None = None) -> TextReader:
    """The process's :class:`TextReader` for ``threads`` (its models load once, on the first call)."""
    return TextReader(threads=threads)
