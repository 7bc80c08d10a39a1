"""Location from the picture: read a location label's QR code or barcode in a shelf photo.

When a location label is visible in a shelf photo, the scan does not need a location typed in:
:func:`read_labels` finds every barcode and QR code in the picture, and
:func:`location_code_from_labels` picks the one that names a location.

**ShelfTally's label convention.** A location label carries the payload ``"LOC:" + location_code``
(for example ``LOC:WH1-A01``), normally as a QR code with the code printed under it in plain text;
:func:`location_label_image` renders one to print. The ``LOC:`` prefix is what tells a location
label apart from the product barcodes (EAN-13, UPC-A, GS1 DataMatrix, ...) that every package in
the picture carries, so a product barcode is never taken for a location. Labels printed before
this convention (a bare location code, say ``WH1-A01`` in Code 128) are accepted when the caller
passes the known location codes (``known_codes``): a payload that equals one of them exactly
counts too.

Decoding uses zxing-cpp (``zxingcpp``, the Python bindings of the C++ port of ZXing,
https://github.com/zxing-cpp/zxing-cpp), which reads all its linear and matrix formats (QR Code,
Micro QR, DataMatrix, Aztec, PDF417, Code 128/39/93, EAN/UPC, ITF, DataBar, ...) in any of the
four 90-degree orientations, and writes them too.

Example:
    >>> from workers.ingest import read_image
    >>> from workers.scan.locate import location_code_from_labels, read_labels
    >>> labels = read_labels(read_image("shelf.jpg").pixels)  # doctest: +SKIP
    >>> location_code_from_labels(labels, known_codes={"WH1-A01", "WH1-A02"})  # doctest: +SKIP
    'WH1-A01'
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Final

import cv2
import numpy as np
import numpy.typing as npt
import zxingcpp
from PIL import Image, ImageDraw, ImageFont

from shelftally.errors import ShelfTallyError

logger = logging.getLogger(__name__)

LOCATION_PREFIX: Final[str] = "LOC:"
"""The payload prefix of ShelfTally's location labels: a label reads ``LOC:<location_code>``."""

MAX_READ_PIXELS: Final[int] = 12_000_000
"""Largest picture (width x height) read at its own resolution: 12 MP. Larger ones are shrunk to it first."""

MAX_UPSCALED_PIXELS: Final[int] = 24_000_000
"""Largest size (width x height) the second, enlarged pass may reach: 24 MP."""

UPSCALE: Final[float] = 2.0
"""Enlargement of the second pass, tried only when the first pass found nothing."""

_MIN_UPSCALE: Final[float] = 1.25  # below this the second pass would add little to the first
_QR_EC_LEVEL: Final[str] = "M"  # QR error correction "M": about 15 % of the code words may be damaged
_TEXT_BAND: Final[float] = 0.2  # height of the plain-text line under the QR code, as a fraction of its width


class LocationError(ShelfTallyError):
    """No single location could be read from a picture's labels; ``reason`` says why.

    Args:
        message: Human-readable explanation (names the codes involved).
        codes: The location codes involved, sorted (empty when none was found).
        reason: Machine-readable reason; defaults to the class attribute ``reason``.

    Attributes:
        codes: The location codes involved, sorted.
    """

    reason = "location_error"

    def __init__(self, message: str, *, codes: Sequence[str] = (), reason: str | None = None) -> None:
        super().__init__(message, reason=reason)
        self.codes: tuple[str, ...] = tuple(codes)


class LocationNotFoundError(LocationError):
    """No label in the picture names a location (none found, or only product barcodes)."""

    reason = "location_not_found"


class AmbiguousLocationError(LocationError):
    """Labels of two or more different locations are visible; ``codes`` lists them."""

    reason = "ambiguous_location"


class UnknownLocationError(LocationError):
    """A ``LOC:`` label names a location code that is not among the known ones; ``codes`` lists them."""

    reason = "unknown_location"


@dataclass(frozen=True)
class LocationLabel:
    """One barcode or QR code found in a picture (any payload: location labels and product barcodes alike).

    Attributes:
        text: The decoded payload as text (zxing-cpp's human-readable interpretation,
            ``TextMode.HRI``; UTF-8 for a QR code of ShelfTally's labels).
        symbology: The symbology as zxing-cpp's format name: ``"QRCode"``, ``"MicroQRCode"``,
            ``"DataMatrix"``, ``"Aztec"``, ``"PDF417"``, ``"Code128"``, ``"Code39"``, ``"EAN13"``,
            ``"EAN8"``, ``"UPCA"``, ``"ITF"``, ...
        xyxy: (x1, y1, x2, y2) float pixels of the upright picture given to :func:`read_labels`,
            the axis-aligned box around the symbol's four corners (without its quiet zone),
            0 <= x1 <= x2, 0 <= y1 <= y2.

    Raises:
        ValueError: on construction, when ``text`` or ``symbology`` is not a string or
            ``symbology`` is empty, or ``xyxy`` is not four finite numbers with
            0 <= x1 <= x2 and 0 <= y1 <= y2; the message says expected and received.
    """

    text: str
    symbology: str
    xyxy: tuple[float, float, float, float]

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise ValueError(f"text: expected a string, received {type(self.text).__name__}")
        if not isinstance(self.symbology, str) or not self.symbology:
            raise ValueError(f"symbology: expected a non-empty string, received {self.symbology!r}")
        try:
            box = tuple(float(v) for v in self.xyxy)
        except (TypeError, ValueError) as error:
            raise ValueError(f"xyxy: expected four numbers (x1, y1, x2, y2), received {self.xyxy!r}") from error
        if len(box) != 4 or not all(math.isfinite(v) for v in box):
            raise ValueError(f"xyxy: expected four finite numbers (x1, y1, x2, y2), received {self.xyxy!r}")
        x1, y1, x2, y2 = box
        if not (0.0 <= x1 <= x2 and 0.0 <= y1 <= y2):
            raise ValueError(f"xyxy: expected 0 <= x1 <= x2 and 0 <= y1 <= y2 (pixels), received {box}")
        object.__setattr__(self, "xyxy", (x1, y1, x2, y2))


def read_labels(pixels: npt.NDArray[np.uint8]) -> list[LocationLabel]:
    """Find and decode every barcode and QR code in a picture.

    Two passes, each a single zxing-cpp ``read_barcodes`` call over all the formats it reads,
    90/270-degree rotations tried (180 degrees needs no extra try):

    1. The whole picture in greyscale (ITU-R BT.601 luma, OpenCV's ``COLOR_RGB2GRAY``). A picture
       above :data:`MAX_READ_PIXELS` (12 MP) is first shrunk to 12 MP with area averaging
       (``cv2.INTER_AREA``), so a 48 MP phone shot costs what a 12 MP one does. zxing-cpp's
       defaults apply: it also scans its own downscaled copies (codes too big or too blurred at
       full size) and, when nothing is found, the inverted picture (light-on-dark codes).
    2. Only when pass 1 found nothing: the same greyscale enlarged by :data:`UPSCALE` (2x, bicubic),
       capped at :data:`MAX_UPSCALED_PIXELS` (24 MP, so a 12 MP picture is enlarged about 1.41x),
       and skipped when the cap leaves less than 1.25x. ZXing's binarizer and finder-pattern
       search lose a QR code whose modules are much narrower than 2 pixels; enlarging a small or
       distant label gives them enough pixels to be found. On the tests' 1280 x 960 shelves a
       label 45 px wide or more (the symbol about 1.5 px per module) is read by pass 1, one 35 to
       40 px wide mostly only by pass 2, one 30 px wide not at all. This pass looks for small,
       printed (dark-on-light) labels only, so zxing-cpp's downscaled copies and inverted
       picture are not tried again, which halves its cost on a 12 MP picture.

    Boxes from a resized pass are mapped back to the pixels given. Cost (median of 3 calls on the
    2-core development machine while it trained a model, cluttered synthetic shelves): 4000 x 3000
    with a 333 px label 0.9 s, without a label 2.1 s (both passes); 8000 x 6000 (shrunk to 12 MP)
    1.0 s and 2.2 s; 1280 x 960 0.04 s and 0.09 s. Peak extra memory is the 24 MP greyscale
    enlargement, 24 MB.

    Args:
        pixels: (H, W, 3) uint8 RGB, upright (as :mod:`workers.ingest` decodes it), H, W >= 1.
            Not modified; any strides.

    Returns:
        Every symbol found, in zxing-cpp's order; empty when none. The
        same payload printed twice gives two labels. Codes that fail their checksum are not
        returned.

    Raises:
        ValueError: ``pixels`` is not an (H, W, 3) uint8 array with H, W >= 1.
    """
    array = np.asarray(pixels)
    if array.dtype != np.uint8:
        raise ValueError(f"pixels: expected dtype uint8, received {array.dtype}")
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"pixels: expected shape (H, W, 3) with H, W >= 1, received {array.shape}")
    height, width = int(array.shape[0]), int(array.shape[1])
    started = time.perf_counter()
    grey = np.asarray(cv2.cvtColor(np.ascontiguousarray(array), cv2.COLOR_RGB2GRAY), dtype=np.uint8)

    scale = min(1.0, math.sqrt(MAX_READ_PIXELS / (height * width)))
    if scale < 1.0:
        grey = _resize(grey, scale, cv2.INTER_AREA)
    labels = _read(grey, scale, width, height)
    passes = 1
    if not labels:
        upscale = min(UPSCALE, math.sqrt(MAX_UPSCALED_PIXELS / grey.size))
        if upscale >= _MIN_UPSCALE:
            enlarged = _resize(grey, upscale, cv2.INTER_CUBIC)
            labels = _read(enlarged, scale * upscale, width, height, try_downscale=False, try_invert=False)
            passes = 2
    logger.debug(
        "read_labels: %d label(s) in a %dx%d picture, %d pass(es), %.0f ms",
        len(labels), width, height, passes, (time.perf_counter() - started) * 1000.0,
    )
    return labels


def location_code_from_labels(
    labels: Sequence[LocationLabel],
    *,
    known_codes: Collection[str] | None = None,
    prefix: str = LOCATION_PREFIX,
) -> str:
    """Pick the one location code that a picture's labels name.

    A label names a location when (ShelfTally's label convention, see the module docstring):

    * its payload starts with ``prefix`` (default ``"LOC:"``) followed by at least one character:
      the location code is the rest, the prefix stripped, compared exactly (case and spaces kept);
      with ``known_codes`` it must be one of them (else ``unknown_location``); or
    * ``known_codes`` is given and the whole payload equals one of them exactly (labels printed
      without the prefix).

    Everything else is ignored, in particular product barcodes (EAN-13 and the like): a product's
    GTIN counts only if it happens to be exactly a known code. The same code on several labels is
    one location.

    Args:
        labels: The labels read from one picture (:func:`read_labels`), any order; may be empty.
        known_codes: The location codes that exist (the warehouse's ``location_code`` list), or
            None to accept any code behind the prefix. An empty collection knows no location.
        prefix: The payload prefix of location labels; non-empty.

    Returns:
        The location code (without the prefix).

    Raises:
        UnknownLocationError: (reason ``unknown_location``) ``known_codes`` is given and a
            prefixed label names a code that is not in it; checked first, since it is a wrong or
            foreign label, or a location not yet imported. ``codes`` lists those codes.
        AmbiguousLocationError: (reason ``ambiguous_location``) labels name two or more different
            locations; the message and ``codes`` list them.
        LocationNotFoundError: (reason ``location_not_found``) no label names a location.
        ValueError: ``prefix`` is empty.
    """
    if not prefix:
        raise ValueError("prefix: expected a non-empty string, received ''; without one every barcode would match")
    known = None if known_codes is None else frozenset(known_codes)
    found: set[str] = set()
    unknown: set[str] = set()
    for label in labels:
        text = label.text
        if text.startswith(prefix) and len(text) > len(prefix):
            code = text[len(prefix) :]
            if known is None or code in known:
                found.add(code)
            elif text in known:  # a known code that itself starts with the prefix
                found.add(text)
            else:
                unknown.add(code)
        elif known is not None and text in known:
            found.add(text)
    if unknown:
        listed = sorted(unknown)
        raise UnknownLocationError(
            f"the picture shows a location label of {_quoted(listed)}, which is not a known location",
            codes=listed,
        )
    if len(found) > 1:
        listed = sorted(found)
        raise AmbiguousLocationError(
            f"the picture shows labels of {len(listed)} different locations: {_quoted(listed)}; "
            "photograph one location at a time or give the location",
            codes=listed,
        )
    if not found:
        raise LocationNotFoundError(
            f"no location label in the picture ({len(labels)} barcode(s) read, none starts with "
            f"{prefix!r}{' or is a known location' if known is not None else ''}); give the location"
        )
    return found.pop()


def location_label_image(code: str, *, prefix: str = LOCATION_PREFIX, size_px: int = 400) -> npt.NDArray[np.uint8]:
    """Render a printable location label: a QR code of ``prefix + code`` with ``code`` in plain text under it.

    The QR code (zxing-cpp's writer, error correction level M: about 15 % of the code words may
    be lost, with its 4-module quiet zone) is drawn with a whole number of pixels per module,
    centred, black on white; the code is written under it in Pillow's default scalable font
    (Aileron Regular, ``ImageFont.load_default``), shrunk to fit the width. At 300 dpi the
    default 400 px is 34 mm wide.

    Args:
        code: The location code (``location_code``), non-empty, without the prefix.
        prefix: The payload prefix (ShelfTally's convention ``"LOC:"``).
        size_px: The label's width in pixels; at least 3 pixels per QR module with its quiet zone
            (87 px for a short code, QR version 1 with 29 modules; longer codes need more).

    Returns:
        (H, W, 3) uint8 RGB, W = ``size_px``, H about 1.1 to 1.2 W; black (0) on white (255).

    Raises:
        ValueError: ``code`` is empty or blank, or ``size_px`` leaves fewer than 3 pixels per module.
    """
    if not code.strip():
        raise ValueError(f"code: expected a location code, received {code!r}")
    barcode = zxingcpp.create_barcode(prefix + code, zxingcpp.BarcodeFormat.QRCode, ec_level=_QR_EC_LEVEL)
    modules = np.asarray(barcode.to_image(scale=1, add_quiet_zones=True), dtype=np.uint8)
    side = int(modules.shape[1])
    module_px = size_px // side
    if module_px < 3:
        raise ValueError(
            f"size_px: expected at least {3 * side} px (3 per module of a {side}-module QR code with its "
            f"quiet zone) for {prefix + code!r}, received {size_px}"
        )
    qr = np.asarray(barcode.to_image(scale=module_px, add_quiet_zones=True), dtype=np.uint8)
    band = max(12, round(size_px * _TEXT_BAND))
    canvas = np.full((qr.shape[0] + band, size_px), 255, dtype=np.uint8)
    left = (size_px - qr.shape[1]) // 2
    canvas[: qr.shape[0], left : left + qr.shape[1]] = qr

    text_image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(text_image)
    margin = 4 * module_px  # the quiet zone's width, so the text lines up with the symbol
    font_px = max(8, int(band * 0.75))
    while True:
        font = ImageFont.load_default(size=font_px)
        x1, y1, x2, y2 = draw.textbbox((0, 0), code, font=font)
        if x2 - x1 <= size_px - 2 * margin or font_px <= 8:
            break
        font_px -= 1
    top = qr.shape[0] - module_px + (band + module_px - (y2 - y1)) // 2 - y1
    draw.text(((size_px - (x2 - x1)) // 2 - x1, top), code, fill=0, font=font)
    grey = np.asarray(text_image, dtype=np.uint8)
    return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))


def _resize(grey: npt.NDArray[np.uint8], factor: float, interpolation: int) -> npt.NDArray[np.uint8]:
    size = (max(1, round(grey.shape[1] * factor)), max(1, round(grey.shape[0] * factor)))
    return np.asarray(cv2.resize(grey, size, interpolation=interpolation), dtype=np.uint8)


def _read(
    grey: npt.NDArray[np.uint8],
    scale: float,
    width: int,
    height: int,
    *,
    try_downscale: bool = True,
    try_invert: bool = True,
) -> list[LocationLabel]:
    """Decode ``grey`` (the picture resized by ``scale``) and map the boxes back to ``width`` x ``height``."""
    labels = []
    for barcode in zxingcpp.read_barcodes(grey, try_downscale=try_downscale, try_invert=try_invert):
        position = barcode.position
        corners = (position.top_left, position.top_right, position.bottom_right, position.bottom_left)
        xs = [point.x / scale for point in corners]
        ys = [point.y / scale for point in corners]
        labels.append(
            LocationLabel(
                text=barcode.text,
                symbology=barcode.format.name,
                xyxy=(
                    min(max(min(xs), 0.0), float(width)),
                    min(max(min(ys), 0.0), float(height)),
                    min(max(max(xs), 0.0), float(width)),
                    min(max(max(ys), 0.0), float(height)),
                ),
            )
        )
    return labels


def _quoted(codes: Sequence[str]) -> str:
    return ", ".join(repr(code) for code in codes)
