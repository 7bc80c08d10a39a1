"""Evidence images: the scanned picture with every detected item boxed and named, for a person to check.

Each scan writes one JPEG (:func:`write_evidence`, at :func:`evidence_path`) drawn by
:func:`draw_evidence` with OpenCV:

* **Picture**: downscaled (``cv2.INTER_AREA``) so its longer side is at most ``max_side_px``,
  never upscaled; boxes are scaled with it.
* **Header band** above the picture (dark grey): the ``title``, a legend line that says what the
  colours mean, then one line per ``summary_lines`` entry. Lines too wide for the picture end in
  ``...``; every summary line is shown, so a long summary makes a tall header.
* **Boxes**, each with a small filled tag above its top-left corner (inside the box when there is
  no room above; always moved inside the picture), holding the SKU code and the classifier
  confidence (``"SKU-A 0.93"``):

  ========================= ====================================================================
  item                      drawn as
  ========================= ====================================================================
  recognised                solid outline in the SKU's colour (:func:`sku_colour`: a hash of the
                            code, so the same SKU has the same colour in every image)
  not recognised            thin dashed grey outline (:data:`UNKNOWN_COLOUR`), tag ``(unknown)``
  SKU with a discrepancy    thick solid outline in :data:`DISCREPANCY_COLOURS` (red for
                            ``shortage``/``out_of_stock``, orange for ``overage``/``misplaced``/
                            ``unknown_product``); the kind is added to the tag
  ========================= ====================================================================

  Discrepancy boxes are drawn last, so they are never hidden under another box or tag. Tags of
  neighbouring boxes may overlap each other; nothing moves them apart.
* **Text** is drawn with ``cv2.putText`` (Hershey fonts), which only has printable ASCII. In SKU
  codes every other character becomes ``?`` (``"CAFÉ-1"`` is shown as ``"CAF?-1"``: an accent is
  not silently dropped, so two codes that differ only there do not look identical). In the title,
  legend and summary lines a few common characters are spelled out first (``·`` and ``•`` as
  ``|``, dashes as ``-``, ``→`` as ``->``, typographic quotes as plain ones, accented letters
  without their accent), then anything else becomes ``?``.
* **Sizes** (font scale, line widths, tag padding) follow the size of the drawn picture.

Colours are RGB, like the pixels (``write_evidence`` converts to OpenCV's BGR only to encode).
"""

from __future__ import annotations

import colorsys
import hashlib
import math
import os
import re
import secrets
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import cv2
import numpy as np
import numpy.typing as npt

from inventory.models import DiscrepancyKind

__all__ = [
    "DISCREPANCY_COLOURS",
    "UNKNOWN_COLOUR",
    "EvidenceItem",
    "draw_evidence",
    "evidence_path",
    "sku_colour",
    "write_evidence",
]

RGB = tuple[int, int, int]

_RED: RGB = (230, 25, 25)
_ORANGE: RGB = (255, 140, 0)

DISCREPANCY_COLOURS: Mapping[str, RGB] = MappingProxyType(
    {
        DiscrepancyKind.SHORTAGE.value: _RED,
        DiscrepancyKind.OUT_OF_STOCK.value: _RED,
        DiscrepancyKind.OVERAGE.value: _ORANGE,
        DiscrepancyKind.MISPLACED.value: _ORANGE,
        DiscrepancyKind.UNKNOWN_PRODUCT.value: _ORANGE,
    }
)
"""RGB outline colour of an item whose SKU has a discrepancy, by discrepancy kind."""

UNKNOWN_COLOUR: RGB = (160, 160, 160)
"""RGB outline colour of an item the classifier did not recognise (``sku_code`` None)."""

_HEADER_BACKGROUND: RGB = (32, 32, 32)
_HEADER_TEXT: RGB = (240, 240, 240)
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_ELLIPSIS = "..."

# SKU hues avoid the reds and oranges reserved for discrepancies: 70..320 degrees (yellow-green,
# greens, cyans, blues, purples, magentas). Saturation and value stay high so no SKU looks grey.
_SKU_HUE_DEG = (70.0, 320.0)
_SKU_SATURATION = (0.65, 1.0)
_SKU_VALUE = (0.75, 1.0)

_TEXT_REPLACEMENTS = str.maketrans(
    {
        "\u00b7": "|",  # middle dot
        "\u2022": "|",  # bullet
        "\u2010": "-",
        "\u2011": "-",
        "\u2012": "-",
        "\u2013": "-",  # en dash
        "\u2014": "-",  # em dash
        "\u2212": "-",  # minus sign
        "\u2192": "->",
        "\u2190": "<-",
        "\u2264": "<=",
        "\u2265": ">=",
        "\u00d7": "x",
        "\u2018": "'",
        "\u2019": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u2026": "...",
        "\u00a0": " ",
        "\t": " ",
    }
)


@dataclass(frozen=True)
class EvidenceItem:
    """One detected item as drawn on an evidence image.

    Attributes:
        xyxy: box corners (x1, y1, x2, y2) in pixels of the upright picture (before any
            downscaling by :func:`draw_evidence`), x1 <= x2 and y1 <= y2, finite. The box may lie
            partly or wholly outside the picture (it is clipped) and may have zero area (it is
            skipped).
        sku_code: the SKU the classifier named, or None when it did not recognise the item.
        confidence: the classifier's confidence in [0, 1] (for an unrecognised item, the
            probability that was too low).
        discrepancy: the kind of discrepancy open for this item's SKU at the scanned location
            (a :class:`inventory.models.DiscrepancyKind` value: ``"shortage"``, ``"overage"``,
            ``"out_of_stock"``, ``"misplaced"``, ``"unknown_product"``), or None. A
            ``DiscrepancyKind`` member is accepted and stored as its string value.
            ``"unknown_product"`` belongs to unrecognised items only, and an unrecognised item
            can carry no other kind (reconciliation reports unknown items per location, without
            a SKU).
        modality: what named it: ``"visual"``, ``"visual+text"``, ``"text"`` or ``"barcode"``
            (:class:`classifier.zeroshot.NamedCrop`); the tag says ``[text]`` or ``[barcode]``
            when it was not the look alone.

    Raises:
        ValueError: on construction, when a field is out of range or the fields disagree; the
            message says expected and received.
    """

    xyxy: tuple[float, float, float, float]
    sku_code: str | None
    confidence: float
    discrepancy: str | None = None
    modality: str = "visual"

    def __post_init__(self) -> None:
        try:
            xyxy = tuple(float(v) for v in self.xyxy)
        except (TypeError, ValueError) as error:
            raise ValueError(f"xyxy: expected 4 numbers, received {self.xyxy!r}") from error
        if len(xyxy) != 4:
            raise ValueError(f"xyxy: expected 4 numbers (x1, y1, x2, y2), received {len(xyxy)}")
        if not all(math.isfinite(v) for v in xyxy):
            raise ValueError(f"xyxy: expected finite numbers, received {xyxy}")
        x1, y1, x2, y2 = xyxy
        if x2 < x1 or y2 < y1:
            raise ValueError(f"xyxy: expected x1 <= x2 and y1 <= y2, received {xyxy}")

        if self.sku_code is not None and not (isinstance(self.sku_code, str) and self.sku_code):
            raise ValueError(f"sku_code: expected a non-empty string or None, received {self.sku_code!r}")

        if isinstance(self.confidence, bool):
            raise ValueError(f"confidence: expected a number in [0, 1], received {self.confidence!r}")
        try:
            confidence = float(self.confidence)
        except (TypeError, ValueError) as error:
            raise ValueError(f"confidence: expected a number in [0, 1], received {self.confidence!r}") from error
        if not (0.0 <= confidence <= 1.0):  # also refuses NaN
            raise ValueError(f"confidence: expected a number in [0, 1], received {confidence}")

        discrepancy = self.discrepancy
        if discrepancy is not None:
            if not isinstance(discrepancy, str) or discrepancy not in DISCREPANCY_COLOURS:
                raise ValueError(
                    f"discrepancy: expected None or one of {sorted(DISCREPANCY_COLOURS)}, received {discrepancy!r}"
                )
            discrepancy = DiscrepancyKind(discrepancy).value
            unknown_kind = DiscrepancyKind.UNKNOWN_PRODUCT.value
            if self.sku_code is None and discrepancy != unknown_kind:
                raise ValueError(
                    f"discrepancy: expected None or {unknown_kind!r} for an unrecognised item, received {discrepancy!r}"
                )
            if self.sku_code is not None and discrepancy == unknown_kind:
                raise ValueError(
                    f"discrepancy: {unknown_kind!r} belongs to unrecognised items, received it for "
                    f"sku_code {self.sku_code!r}"
                )

        object.__setattr__(self, "xyxy", (x1, y1, x2, y2))
        object.__setattr__(self, "confidence", confidence)
        object.__setattr__(self, "discrepancy", discrepancy)


def sku_colour(sku_code: str) -> RGB:
    """The outline colour of a recognised SKU, the same in every image and every process.

    The colour comes from BLAKE2b of the code's UTF-8 bytes (not Python's ``hash``, which
    changes between processes): hue in 70..320 degrees (never the reds and oranges of
    :data:`DISCREPANCY_COLOURS`), saturation 0.65..1 and value 0.75..1 (never grey), converted with
    :func:`colorsys.hsv_to_rgb`. Different codes usually get clearly different colours; nothing
    guarantees it for any two codes.

    Args:
        sku_code: the SKU code, as stored (before any ASCII replacement for drawing).

    Returns:
        (R, G, B), each 0..255.
    """
    digest = hashlib.blake2b(sku_code.encode("utf-8"), digest_size=8).digest()
    hue_u = int.from_bytes(digest[0:4], "big") / 2**32
    sat_u = digest[4] / 255
    val_u = digest[5] / 255
    hue_deg = _SKU_HUE_DEG[0] + hue_u * (_SKU_HUE_DEG[1] - _SKU_HUE_DEG[0])
    saturation = _SKU_SATURATION[0] + sat_u * (_SKU_SATURATION[1] - _SKU_SATURATION[0])
    value = _SKU_VALUE[0] + val_u * (_SKU_VALUE[1] - _SKU_VALUE[0])
    r, g, b = colorsys.hsv_to_rgb(hue_deg / 360.0, saturation, value)
    return round(r * 255), round(g * 255), round(b * 255)


def _ascii_code(code: str) -> str:
    """Printable ASCII for ``cv2.putText``: every other character of a SKU code becomes ``?``."""
    return "".join(c if " " <= c <= "~" else "?" for c in code)


def _ascii_text(text: str) -> str:
    """Printable ASCII for free text: common symbols spelled out, accents dropped, the rest ``?``."""
    decomposed = unicodedata.normalize("NFKD", text.translate(_TEXT_REPLACEMENTS))
    return _ascii_code("".join(c for c in decomposed if not unicodedata.combining(c)))


def _text_size(text: str, scale: float, thickness: int) -> tuple[int, int, int]:
    """(width, height above the baseline, descent below it) in pixels."""
    (width, height), baseline = cv2.getTextSize(text, _FONT, scale, thickness)
    return int(width), int(height), int(baseline)


def _fit(text: str, scale: float, thickness: int, max_width: int) -> str:
    """``text``, shortened to end in ``...`` when it is wider than ``max_width`` pixels."""
    if _text_size(text, scale, thickness)[0] <= max_width:
        return text
    low, high = 0, len(text)  # longest prefix that fits with the ellipsis: binary search
    while low < high:
        mid = (low + high + 1) // 2
        if _text_size(text[:mid] + _ELLIPSIS, scale, thickness)[0] <= max_width:
            low = mid
        else:
            high = mid - 1
    return text[:low] + _ELLIPSIS if low else _ELLIPSIS


def _contrast(colour: RGB) -> RGB:
    """Black or white, whichever reads better on ``colour`` (ITU-R BT.601 luma)."""
    luma = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
    return (0, 0, 0) if luma > 140 else (255, 255, 255)


@dataclass(frozen=True)
class _Style:
    """Sizes derived from the drawn picture's size."""

    font_scale: float
    text_thickness: int
    line_px: int
    pad_px: int

    @classmethod
    def for_size(cls, width: int, height: int) -> _Style:
        # 0.4 (capitals about 9 px tall) up to a 640 x 480 picture, 0.9 (about 20 px) from about
        # 1440 x 1440; Hershey simplex capitals are about 22 px tall at scale 1.
        font_scale = min(0.9, max(0.4, math.sqrt(width * height) / 1600.0))
        return cls(
            font_scale=font_scale,
            text_thickness=1 if font_scale < 0.6 else 2,
            line_px=max(1, round(max(width, height) / 700.0)),
            pad_px=max(2, round(4 * font_scale)),
        )


def _outline(image: npt.NDArray[np.uint8], box: tuple[int, int, int, int], colour: RGB, thickness: int) -> None:
    """Solid outline inside the inclusive pixel box (x1, y1, x2, y2), ``thickness`` px wide."""
    x1, y1, x2, y2 = box
    t = max(1, min(thickness, (x2 - x1 + 1 + 1) // 2, (y2 - y1 + 1 + 1) // 2))
    cv2.rectangle(image, (x1, y1), (x2, y1 + t - 1), colour, -1)  # top
    cv2.rectangle(image, (x1, y2 - t + 1), (x2, y2), colour, -1)  # bottom
    cv2.rectangle(image, (x1, y1), (x1 + t - 1, y2), colour, -1)  # left
    cv2.rectangle(image, (x2 - t + 1, y1), (x2, y2), colour, -1)  # right


def _dashed_outline(image: npt.NDArray[np.uint8], box: tuple[int, int, int, int], colour: RGB, dash_px: int) -> None:
    """1 px dashed outline of the inclusive pixel box; dashes start at every corner."""
    x1, y1, x2, y2 = box
    step = 2 * dash_px
    for x in range(x1, x2 + 1, step):
        end = min(x + dash_px - 1, x2)
        cv2.line(image, (x, y1), (end, y1), colour, 1, cv2.LINE_8)
        cv2.line(image, (x2 - (x - x1), y2), (x2 - (end - x1), y2), colour, 1, cv2.LINE_8)
    for y in range(y1, y2 + 1, step):
        end = min(y + dash_px - 1, y2)
        cv2.line(image, (x1, y2 - (y - y1)), (x1, y2 - (end - y1)), colour, 1, cv2.LINE_8)
        cv2.line(image, (x2, y), (x2, end), colour, 1, cv2.LINE_8)


def _tag(image: npt.NDArray[np.uint8], box: tuple[int, int, int, int], text: str, colour: RGB, style: _Style) -> None:
    """Filled tag with ``text`` above the box's top-left corner, kept inside the image."""
    height, width = image.shape[:2]
    pad = style.pad_px
    text = _fit(text, style.font_scale, style.text_thickness, max(1, width - 2 * pad))
    text_w, text_h, descent = _text_size(text, style.font_scale, style.text_thickness)
    tag_w, tag_h = text_w + 2 * pad, text_h + descent + 2 * pad
    x1, y1 = box[0], box[1]
    x = min(max(0, x1), max(0, width - tag_w))
    y = y1 - tag_h if y1 - tag_h >= 0 else y1  # above the box, else inside it under the top edge
    y = min(max(0, y), max(0, height - tag_h))
    cv2.rectangle(image, (x, y), (x + tag_w - 1, y + tag_h - 1), colour, -1)
    cv2.putText(
        image, text, (x + pad, y + pad + text_h), _FONT, style.font_scale, _contrast(colour),
        style.text_thickness, cv2.LINE_AA,
    )


def _pixel_box(
    xyxy: tuple[float, float, float, float], scale_xy: tuple[float, float], width: int, height: int
) -> tuple[int, int, int, int] | None:
    """Inclusive integer pixel box of ``xyxy`` scaled and clipped to the picture, or None when empty."""
    sx, sy = scale_xy
    x1 = min(max(xyxy[0] * sx, 0.0), float(width))
    x2 = min(max(xyxy[2] * sx, 0.0), float(width))
    y1 = min(max(xyxy[1] * sy, 0.0), float(height))
    y2 = min(max(xyxy[3] * sy, 0.0), float(height))
    if x2 <= x1 or y2 <= y1:
        return None  # zero area, or wholly outside the picture
    ix1, iy1 = min(round(x1), width - 1), min(round(y1), height - 1)
    ix2, iy2 = max(ix1, round(x2) - 1), max(iy1, round(y2) - 1)
    return ix1, iy1, ix2, iy2


def _legend() -> list[tuple[RGB | None, str]]:
    red = [k for k, c in DISCREPANCY_COLOURS.items() if c == _RED]
    orange = [k for k, c in DISCREPANCY_COLOURS.items() if c == _ORANGE]
    return [
        (_RED, ", ".join(red)),
        (_ORANGE, ", ".join(orange)),
        (UNKNOWN_COLOUR, "not recognised"),
        (None, "other colours: one per SKU; thick = discrepancy; [text]/[barcode]: named by what it says"),
    ]


def _header(width: int, title: str, summary_lines: Sequence[str], style: _Style) -> npt.NDArray[np.uint8]:
    """The header band: title, legend rows, summary lines; (h, ``width``, 3) uint8 RGB."""
    pad = 2 * style.pad_px
    usable = max(1, width - 2 * pad)
    title_scale = style.font_scale * 1.2
    title_thickness = style.text_thickness + (1 if title_scale >= 0.6 else 0)
    _, cap_h, descent = _text_size("Ag", style.font_scale, style.text_thickness)
    line_h = cap_h + descent + style.pad_px
    _, title_cap, title_descent = _text_size("Ag", title_scale, title_thickness)

    # Legend entries (swatch + text), wrapped onto as many rows as the width needs.
    swatch = cap_h
    rows: list[list[tuple[int, RGB | None, str]]] = [[]]
    x = 0
    for colour, text in _legend():
        offset = swatch + style.pad_px if colour is not None else 0
        text = _fit(text, style.font_scale, style.text_thickness, max(1, usable - offset))
        entry_w = offset + _text_size(text, style.font_scale, style.text_thickness)[0]
        if x > 0 and x + entry_w > usable:
            rows.append([])
            x = 0
        rows[-1].append((x, colour, text))
        x += entry_w + 3 * style.pad_px

    lines = [_fit(_ascii_text(s), style.font_scale, style.text_thickness, usable) for s in summary_lines]
    height = pad + title_cap + title_descent + style.pad_px + line_h * (len(rows) + len(lines)) + pad
    header = np.empty((height, width, 3), np.uint8)
    header[:] = _HEADER_BACKGROUND

    y = pad + title_cap
    title_text = _fit(_ascii_text(title), title_scale, title_thickness, usable)
    cv2.putText(header, title_text, (pad, y), _FONT, title_scale, _HEADER_TEXT, title_thickness, cv2.LINE_AA)
    y += title_descent + style.pad_px
    for row in rows:
        y += line_h
        for x_offset, colour, text in row:
            x = pad + x_offset
            if colour is not None:
                cv2.rectangle(header, (x, y - cap_h), (x + swatch - 1, y - 1), colour, -1)
                x += swatch + style.pad_px
            cv2.putText(
                header, text, (x, y), _FONT, style.font_scale, _HEADER_TEXT, style.text_thickness, cv2.LINE_AA
            )
    for line in lines:
        y += line_h
        cv2.putText(header, line, (pad, y), _FONT, style.font_scale, _HEADER_TEXT, style.text_thickness, cv2.LINE_AA)
    return header


def _check_rgb(pixels: npt.NDArray[np.uint8], name: str) -> None:
    if not isinstance(pixels, np.ndarray):
        raise ValueError(f"{name}: expected a numpy array (H, W, 3) uint8 RGB, received {type(pixels).__name__}")
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.shape[0] < 1 or pixels.shape[1] < 1:
        raise ValueError(f"{name}: expected shape (H, W, 3) with H, W >= 1, received {pixels.shape}")
    if pixels.dtype != np.uint8:
        raise ValueError(f"{name}: expected dtype uint8, received {pixels.dtype}")


def draw_evidence(
    pixels: npt.NDArray[np.uint8],
    items: Sequence[EvidenceItem],
    *,
    title: str,
    summary_lines: Sequence[str] = (),
    max_side_px: int = 1600,
) -> npt.NDArray[np.uint8]:
    """Draw the evidence image of one scan: header band above the picture with every item boxed.

    See the module docstring for what is drawn how. ``pixels`` is never modified.

    Args:
        pixels: (H, W, 3) uint8 RGB, the upright picture the items were detected in.
        items: the items to draw, boxes in pixels of ``pixels``; may be empty. Boxes partly
            outside the picture are clipped, boxes with no area inside it are skipped.
        title: first header line, e.g. ``"scan 17 · A-01-02 · 2026-11-29 12:00 UTC"``.
        summary_lines: further header lines, e.g. ``"SKU-A: 4 counted, book 6 -> shortage"``.
        max_side_px: the longest side, in pixels, of the drawn picture (the header adds to the
            height); a larger picture is downscaled (``cv2.INTER_AREA``), a smaller one is kept.

    Returns:
        (header_h + h, w, 3) uint8 RGB, a new array: w x h is W x H scaled by
        ``min(1, max_side_px / max(W, H))`` (each side rounded, at least 1), header_h is the
        height of the header band, which grows with the number of summary lines and legend rows.

    Raises:
        ValueError: ``pixels`` is not an (H, W, 3) uint8 array, or ``max_side_px`` < 32.
        TypeError: ``items`` holds something that is not an :class:`EvidenceItem`, or
            ``summary_lines`` is a single string.
    """
    _check_rgb(pixels, "pixels")
    if isinstance(max_side_px, bool) or not isinstance(max_side_px, int) or max_side_px < 32:
        raise ValueError(f"max_side_px: expected an integer >= 32, received {max_side_px!r}")
    if isinstance(summary_lines, str):
        raise TypeError("summary_lines: expected a sequence of lines, received a single string")
    for i, item in enumerate(items):
        if not isinstance(item, EvidenceItem):
            raise TypeError(f"items[{i}]: expected EvidenceItem, received {type(item).__name__}")

    src_h, src_w = int(pixels.shape[0]), int(pixels.shape[1])
    scale = min(1.0, max_side_px / max(src_w, src_h))
    if scale < 1.0:
        width, height = max(1, round(src_w * scale)), max(1, round(src_h * scale))
        picture = np.ascontiguousarray(
            cv2.resize(np.ascontiguousarray(pixels), (width, height), interpolation=cv2.INTER_AREA), dtype=np.uint8
        )
    else:
        width, height = src_w, src_h
        picture = np.array(pixels, dtype=np.uint8, order="C", copy=True)
    scale_xy = (width / src_w, height / src_h)
    style = _Style.for_size(width, height)

    def priority(item: EvidenceItem) -> int:
        return 2 if item.discrepancy is not None else (1 if item.sku_code is not None else 0)

    for item in sorted(items, key=priority):  # stable: discrepancies on top, unrecognised below
        box = _pixel_box(item.xyxy, scale_xy, width, height)
        if box is None:
            continue
        code = "(unknown)" if item.sku_code is None else _ascii_code(item.sku_code)
        text = f"{code} {item.confidence:.2f}"
        if item.modality in ("text", "barcode"):
            text += f" [{item.modality}]"
        if item.discrepancy is not None:
            colour = DISCREPANCY_COLOURS[item.discrepancy]
            _outline(picture, box, colour, 2 * style.line_px + 1)
            text += f" {item.discrepancy}"
        elif item.sku_code is not None:
            colour = sku_colour(item.sku_code)
            _outline(picture, box, colour, style.line_px)
        else:
            colour = UNKNOWN_COLOUR
            _dashed_outline(picture, box, colour, max(3, 3 * style.line_px))
        _tag(picture, box, text, colour, style)

    header = _header(width, title, summary_lines, style)
    return np.ascontiguousarray(np.vstack([header, picture]), dtype=np.uint8)


def write_evidence(path: Path, image_rgb: npt.NDArray[np.uint8], *, quality: int = 85) -> Path:
    """Write an evidence image as JPEG, atomically: readers see the old file or the new, never half.

    The pixels are encoded in memory (``cv2.imencode``, RGB converted to BGR first), written to a
    temporary file in the same folder, flushed to disk and renamed over ``path`` with
    :func:`os.replace`. Parent folders are created. The file is opened by Python, never by
    OpenCV, so non-ASCII paths work everywhere. The content is JPEG whatever ``path``'s suffix.

    Args:
        path: where the file goes.
        image_rgb: (H, W, 3) uint8 RGB, e.g. from :func:`draw_evidence`.
        quality: JPEG quality, 1..100.

    Returns:
        ``path``.

    Raises:
        ValueError: ``image_rgb`` is not an (H, W, 3) uint8 array, or ``quality`` is outside 1..100.
        RuntimeError: OpenCV could not encode the image.
        OSError: the folder or file cannot be written (no temporary file is left behind).
    """
    _check_rgb(image_rgb, "image_rgb")
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ValueError(f"quality: expected an integer in 1..100, received {quality!r}")
    bgr = cv2.cvtColor(np.ascontiguousarray(image_rgb), cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {image_rgb.shape} image as JPEG")
    data = encoded.tobytes()

    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    # os.open with mode 0o666 lets the umask decide the permissions, as for any new file.
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return path


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_WINDOWS_DEVICES = frozenset(
    {"CON", "PRN", "AUX", "NUL"} | {f"COM{i}" for i in range(1, 10)} | {f"LPT{i}" for i in range(1, 10)}
)
_MAX_FOLDER_CHARS = 64


def _safe_folder(location_code: str) -> str:
    safe = _UNSAFE.sub("_", location_code)
    if safe.startswith("."):
        safe = "_" + safe[1:]  # no hidden folders, no "." or ".."
    if safe.endswith("."):
        safe = safe[:-1] + "_"  # Windows drops trailing dots
    changed = (
        safe != location_code
        or location_code != location_code.upper()  # case-insensitive file systems (macOS, Windows)
        or location_code.split(".")[0].upper() in _WINDOWS_DEVICES
        or len(location_code) > _MAX_FOLDER_CHARS
    )
    if not changed:
        return safe
    digest = hashlib.blake2b(location_code.encode("utf-8"), digest_size=6).hexdigest()
    return f"{safe[:_MAX_FOLDER_CHARS]}~{digest}"


def evidence_path(root: Path, location_code: str, scan_id: int) -> Path:
    """Where the evidence image of a scan goes: ``root / <folder> / f"scan-{scan_id:08d}.jpg"``.

    The folder is the location code itself when it is already safe everywhere: only
    ``A-Z``, ``0-9``, ``.``, ``_``, ``-``, not starting or ending with ``.``, not a Windows device
    name (``CON``, ``NUL``, ``COM1``, ...), at most 64 characters. Otherwise every character
    outside ``[A-Za-z0-9._-]`` becomes ``_``, a leading or trailing ``.`` becomes ``_``, the
    result is cut to 64 characters, and ``~`` plus 12 hex digits of BLAKE2b of the original code
    (UTF-8) are appended: ``"A/01 ü"`` -> ``"A_01__~<hash>"``. Codes with lower-case letters
    keep them but also get the hash, because macOS and Windows folders ignore case (``"a-01"``
    and ``"A-01"`` are different locations).

    Different codes get different folders, also on case-insensitive file systems: a kept code
    never contains ``~`` while a changed one does, and two changed codes differ in their hash
    (48 bits; a collision is about as likely as two random 12-digit hex strings matching).

    Args:
        root: the evidence folder.
        location_code: the scanned location's code (1 or more characters).
        scan_id: the scan's id, >= 0 (more than 8 digits are written in full).

    Returns:
        The path; nothing is created.

    Raises:
        ValueError: ``location_code`` is empty or ``scan_id`` is negative or not an integer.
    """
    if not isinstance(location_code, str) or not location_code:
        raise ValueError(f"location_code: expected a non-empty string, received {location_code!r}")
    if isinstance(scan_id, bool) or not isinstance(scan_id, int) or scan_id < 0:
        raise ValueError(f"scan_id: expected an integer >= 0, received {scan_id!r}")
    return root / _safe_folder(location_code) / f"scan-{scan_id:08d}.jpg"
