"""Synthetic shelf pictures from catalogue packshots, with exact boxes.

Cut, paste and learn (Dwibedi, Misra and Hebert, "Cut, Paste and Learn: Surprisingly Easy
Synthesis for Instance Detection", ICCV 2017): cut each product out of its catalogue packshot
(a picture on a plain background), paste many of them on backgrounds with varied scale, lighting,
blur and occlusion, and train a detector on the result. The boxes are exact because the
generator knows which pixel belongs to which pasted object.

Three parts:

- :func:`draw_packshot` draws a plausible packshot procedurally (carton, can, bottle, jar or bag
  in brand colours, with a label band, text and barcode) on a white background, so that demos and
  tests need nothing outside the repository;
- :func:`extract_foreground` cuts a product from a plain-background packshot (flood fill from the
  border with a colour tolerance, then morphological clean-up), e.g. the Grocery Store dataset's
  ``*_Iconic.jpg`` images (Klasson, Zhang and Kjellström, WACV 2019);
- :func:`generate_scene` composes one shelf picture in memory (rows of facings on shelf boards,
  stacked cases, per-shelf scale, lighting changes, blur, mild perspective, occlusion by
  neighbours and by shelf edges, up to hundreds of objects), and :func:`write_synthetic_datasets`
  writes many as two YOLO datasets sharing the same image files: class-agnostic (``product``)
  and per SKU (class names = SKU codes).

Everything is deterministic given the seed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from detector.dataset import IMAGE_SUFFIXES
from detector.errors import DatasetError

logger = logging.getLogger(__name__)

__all__ = [
    "PACKSHOT_KINDS",
    "Packshot",
    "Scene",
    "SceneConfig",
    "SyntheticDatasets",
    "draw_packshot",
    "drawn_packshots",
    "extract_foreground",
    "generate_scene",
    "kind_from_text",
    "load_packshots",
    "write_synthetic_datasets",
]

PACKSHOT_KINDS = ("carton", "can", "bottle", "jar", "bag")
AGNOSTIC_NAME = "product"

_SYLLABLES = (
    "ba", "lo", "ri", "ve", "to", "ma", "su", "ne", "ka", "di", "po", "fe", "zu", "la", "mi", "or",
    "an", "el", "quo", "tri", "vel", "nor", "sal", "gra",
)

Rgb = tuple[int, int, int]


# ----------------------------------------------------------------------------------- packshots


@dataclass(frozen=True)
class Packshot:
    """One product cut out of its packshot, cropped to the product.

    Attributes:
        sku_code: the SKU the packshot shows.
        image: (h, w, 3) uint8 RGB.
        alpha: (h, w) uint8, 255 on the product and 0 elsewhere.

    Raises:
        ValueError: on construction, when shapes or dtypes disagree or the mask is empty.
    """

    sku_code: str
    image: npt.NDArray[np.uint8]
    alpha: npt.NDArray[np.uint8]

    def __post_init__(self) -> None:
        if self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != np.uint8:
            raise ValueError(f"image: expected (h, w, 3) uint8, received {self.image.shape} {self.image.dtype}")
        if self.alpha.shape != self.image.shape[:2] or self.alpha.dtype != np.uint8:
            raise ValueError(
                f"alpha: expected {self.image.shape[:2]} uint8, received {self.alpha.shape} {self.alpha.dtype}"
            )
        if not np.any(self.alpha):
            raise ValueError(f"packshot {self.sku_code!r}: the mask is empty")

    @property
    def aspect(self) -> float:
        """Width / height."""
        return float(self.image.shape[1]) / float(self.image.shape[0])


def _u8(array: object) -> npt.NDArray[np.uint8]:
    """View an OpenCV result as uint8 (no copy when it already is)."""
    return np.asarray(array, dtype=np.uint8)


def _f32(array: object) -> npt.NDArray[np.float32]:
    """View an OpenCV result as float32 (no copy when it already is)."""
    return np.asarray(array, dtype=np.float32)


def _rng_for(*parts: object) -> np.random.Generator:
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _hsv_colour(h: float, s: float, v: float) -> Rgb:
    pixel = np.array([[[h * 179.0, s * 255.0, v * 255.0]]], dtype=np.float32).round().astype(np.uint8)
    r, g, b = (int(c) for c in cv2.cvtColor(pixel, cv2.COLOR_HSV2RGB)[0, 0])
    return r, g, b


def _darker(colour: Rgb, factor: float) -> Rgb:
    r, g, b = (min(255, max(0, round(c * factor))) for c in colour)
    return r, g, b


def _luma(colour: Rgb) -> float:
    return 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]


def kind_from_text(text: str) -> str | None:
    """Guess a packshot kind from a product name or description (``"400 g can"`` -> ``"can"``).

    Returns:
        One of :data:`PACKSHOT_KINDS`, or None when no word matches.
    """
    words = {w.strip(".,;:()") for w in text.lower().split()}
    table = (
        ("can", ("can", "tin", "tinned", "canned")),
        ("bottle", ("bottle", "bottled", "ml", "l", "litre", "liter")),
        ("jar", ("jar", "pot")),
        ("bag", ("bag", "pouch", "sack", "packet")),
        ("carton", ("carton", "box", "boxed", "case", "pack", "tetra")),
    )
    for kind, keys in table:
        if words & set(keys):
            return kind
    return None


def _brand_word(rng: np.random.Generator) -> str:
    n = int(rng.integers(2, 4))
    return "".join(str(rng.choice(_SYLLABLES)) for _ in range(n)).upper()


def _put_text_fit(
    image: npt.NDArray[np.uint8], text: str, box: tuple[int, int, int, int], colour: Rgb, *, bold: bool
) -> None:
    """Write ``text`` centred in ``box`` (x1, y1, x2, y2), scaled to fit."""
    x1, y1, x2, y2 = box
    if x2 - x1 < 6 or y2 - y1 < 6 or not text:
        return
    font = cv2.FONT_HERSHEY_DUPLEX if bold else cv2.FONT_HERSHEY_SIMPLEX
    thickness = 2 if bold else 1
    (tw, th), base = cv2.getTextSize(text, font, 1.0, thickness)
    scale = min((x2 - x1) * 0.9 / max(tw, 1), (y2 - y1) * 0.8 / max(th + base, 1))
    if scale <= 0.15:
        return
    thickness = max(1, round(thickness * scale))
    (tw, th), base = cv2.getTextSize(text, font, scale, thickness)
    org = (x1 + (x2 - x1 - tw) // 2, y1 + (y2 - y1 + th) // 2)
    cv2.putText(image, text, org, font, scale, colour, thickness, cv2.LINE_AA)


def _barcode(image: npt.NDArray[np.uint8], rng: np.random.Generator, box: tuple[int, int, int, int]) -> None:
    x1, y1, x2, y2 = box
    if x2 - x1 < 10 or y2 - y1 < 6:
        return
    cv2.rectangle(image, (x1, y1), (x2 - 1, y2 - 1), (255, 255, 255), -1)
    x = x1 + 2
    while x < x2 - 3:
        w = int(rng.integers(1, 4))
        if rng.random() < 0.55:
            cv2.rectangle(image, (x, y1 + 2), (min(x + w, x2 - 3) - 1, y2 - 3), (15, 15, 15), -1)
        x += w


def _cylinder_shading(
    image: npt.NDArray[np.uint8], mask: npt.NDArray[np.uint8], x1: int, x2: int, strength: float
) -> None:
    """Darken towards the left and right edges of [x1, x2) with a highlight left of centre."""
    width = max(x2 - x1, 1)
    t = (np.arange(image.shape[1], dtype=np.float32) - x1) / width
    t = np.clip(t, 0.0, 1.0)
    profile = 1.0 - strength * (1.0 - np.sin(np.pi * t)) + 0.18 * strength * np.exp(-((t - 0.32) / 0.08) ** 2)
    factor = np.broadcast_to(profile[None, :, None], image.shape)
    inside = mask[:, :, None] > 0
    shaded = np.clip(image.astype(np.float32) * factor, 0, 255).astype(np.uint8)
    np.copyto(image, shaded, where=inside)


def _draw(
    sku_code: str, *, seed: int, kind: str | None, name: str | None, height_px: int
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """The packshot on white and its exact mask."""
    rng = _rng_for("packshot", sku_code, seed)
    kind = kind or str(PACKSHOT_KINDS[int(rng.integers(len(PACKSHOT_KINDS)))])
    if kind not in PACKSHOT_KINDS:
        raise ValueError(f"kind must be one of {PACKSHOT_KINDS}, got {kind!r}")
    aspect = {
        "carton": (0.45, 0.85), "can": (0.48, 0.62), "bottle": (0.28, 0.42), "jar": (0.62, 0.9), "bag": (0.55, 0.8),
    }[kind]
    h = height_px
    w = round(h * rng.uniform(*aspect))
    margin = max(4, h // 24)
    image = np.full((h + 2 * margin, w + 2 * margin, 3), 255, np.uint8)
    mask = np.zeros(image.shape[:2], np.uint8)
    hue = float(rng.random())
    primary = _hsv_colour(hue, rng.uniform(0.55, 1.0), rng.uniform(0.45, 0.95))
    secondary = _hsv_colour((hue + rng.uniform(0.25, 0.75)) % 1.0, rng.uniform(0.1, 0.9), rng.uniform(0.6, 1.0))
    ink = (20, 20, 20) if _luma(secondary) > 140 else (245, 245, 245)
    x0, y0, x1, y1 = margin, margin, margin + w, margin + h

    def fill(points: list[tuple[int, int]], colour: Rgb) -> None:
        pts = np.array(points, np.int32).reshape(-1, 1, 2)
        cv2.fillPoly(image, [pts], colour, cv2.LINE_AA)
        cv2.fillPoly(mask, [pts], 255)

    body_top = y0
    band: tuple[int, int, int, int]
    if kind == "carton":
        depth = int(w * rng.uniform(0.12, 0.22))
        front_r = x1 - depth
        gable = rng.random() < 0.5
        top = y0 + (int(h * 0.12) if gable else depth // 2)
        fill([(x0, top), (front_r, top), (front_r, y1), (x0, y1)], primary)
        fill([(front_r, top), (x1, top - depth // 2), (x1, y1 - depth // 2), (front_r, y1)], _darker(primary, 0.7))
        if gable:
            fill([(x0, top), (front_r, top), ((x0 + front_r) // 2, y0)], _darker(primary, 1.1))
            fill([((x0 + front_r) // 2, y0), (front_r, top), (x1, top - depth // 2), (x1 - depth // 3, y0)],
                 _darker(primary, 0.85))
        else:
            fill([(x0, top), (x0 + depth, top - depth // 2), (x1, top - depth // 2), (front_r, top)],
                 _darker(primary, 1.15))
        body_top = top
        band = (x0, top + int((y1 - top) * rng.uniform(0.25, 0.4)), front_r, top + int((y1 - top) * 0.72))
    elif kind == "can":
        rim = max(3, int(w * 0.12))
        fill([(x0, y0 + rim // 2), (x1, y0 + rim // 2), (x1, y1 - rim // 2), (x0, y1 - rim // 2)], primary)
        cv2.ellipse(image, ((x0 + x1) // 2, y1 - rim // 2), (w // 2, rim // 2), 0, 0, 180, _darker(primary, 0.6), -1)
        cv2.ellipse(mask, ((x0 + x1) // 2, y1 - rim // 2), (w // 2, rim // 2), 0, 0, 180, 255, -1)
        cv2.ellipse(image, ((x0 + x1) // 2, y0 + rim // 2), (w // 2, rim // 2), 0, 0, 360, (190, 190, 195), -1)
        cv2.ellipse(mask, ((x0 + x1) // 2, y0 + rim // 2), (w // 2, rim // 2), 0, 0, 360, 255, -1)
        cv2.ellipse(image, ((x0 + x1) // 2, y0 + rim // 2), (w // 2 - 3, max(rim // 2 - 2, 1)), 0, 0, 360,
                    (150, 150, 158), 1)
        band = (x0, y0 + int(h * rng.uniform(0.28, 0.38)), x1, y0 + int(h * rng.uniform(0.66, 0.76)))
    elif kind == "bottle":
        neck_w = max(4, int(w * rng.uniform(0.3, 0.42)))
        cx = (x0 + x1) // 2
        cap_h = int(h * 0.08)
        shoulder = y0 + int(h * rng.uniform(0.3, 0.4))
        cap_colour = _hsv_colour(float(rng.random()), 0.8, 0.7)
        fill([(cx - neck_w // 2, y0), (cx + neck_w // 2, y0), (cx + neck_w // 2, y0 + cap_h),
              (cx - neck_w // 2, y0 + cap_h)], cap_colour)
        fill([(cx - neck_w // 2, y0 + cap_h), (cx + neck_w // 2, y0 + cap_h), (cx + neck_w // 2, shoulder - h // 10),
              (x1, shoulder), (x1, y1 - 4), (x1 - 4, y1), (x0 + 4, y1), (x0, y1 - 4), (x0, shoulder),
              (cx - neck_w // 2, shoulder - h // 10)], primary)
        body_top = shoulder
        band = (x0, shoulder + int((y1 - shoulder) * 0.2), x1, shoulder + int((y1 - shoulder) * 0.7))
    elif kind == "jar":
        lid_h = int(h * rng.uniform(0.1, 0.16))
        lid_colour = _hsv_colour(float(rng.random()), rng.uniform(0.3, 0.9), rng.uniform(0.3, 0.8))
        radius = max(4, w // 8)
        body = np.array([(x0 + 2, y0 + lid_h), (x1 - 2, y0 + lid_h), (x1 - 2, y1 - radius), (x1 - 2 - radius, y1),
                         (x0 + 2 + radius, y1), (x0 + 2, y1 - radius)], np.int32)
        fill([tuple(p) for p in body.tolist()], primary)
        fill([(x0, y0), (x1, y0), (x1, y0 + lid_h), (x0, y0 + lid_h)], lid_colour)
        for k in range(1, 4):
            yy = y0 + k * lid_h // 4
            cv2.line(image, (x0 + 1, yy), (x1 - 2, yy), _darker(lid_colour, 0.75), 1)
        body_top = y0 + lid_h
        band = (x0 + 2, y0 + lid_h + int(h * 0.15), x1 - 2, y1 - int(h * 0.15))
    else:  # bag
        crimp = max(4, int(h * 0.06))
        bulge = int(w * rng.uniform(0.02, 0.06))
        outline = [(x0 + bulge, y0 + crimp), (x1 - bulge, y0 + crimp), (x1, y0 + h // 2), (x1 - bulge, y1 - crimp),
                   (x0 + bulge, y1 - crimp), (x0, y0 + h // 2)]
        fill(outline, primary)
        teeth = max(4, w // 8)
        for top, sign in ((y0 + crimp, -1), (y1 - crimp, 1)):
            pts: list[tuple[int, int]] = [(x0 + bulge, top)]
            for k in range(teeth + 1):
                xx = x0 + bulge + (w - 2 * bulge) * k // teeth
                pts.append((xx, top + sign * (crimp if k % 2 else crimp // 3)))
            pts.append((x1 - bulge, top))
            fill(pts, _darker(primary, 0.8))
        body_top = y0 + crimp
        band = (x0 + bulge, y0 + int(h * rng.uniform(0.25, 0.35)), x1 - bulge, y0 + int(h * rng.uniform(0.6, 0.7)))
    # The label band, clipped to the body's mask.
    bx1, by1, bx2, by2 = band
    band_mask = np.zeros_like(mask)
    cv2.rectangle(band_mask, (bx1, by1), (bx2 - 1, by2 - 1), 255, -1)
    band_mask &= mask
    np.copyto(image, np.array(secondary, np.uint8), where=band_mask[:, :, None] > 0)
    if rng.random() < 0.6:
        stripe = max(2, (by2 - by1) // 10)
        cv2.rectangle(image, (bx1, by1), (bx2 - 1, by1 + stripe), _darker(primary, 0.55), -1)
        cv2.rectangle(image, (bx1, by2 - stripe), (bx2 - 1, by2 - 1), _darker(primary, 0.55), -1)
        image[mask == 0] = 255
    brand = name or _brand_word(rng)
    text_x1, text_x2 = bx1 + (bx2 - bx1) // 12, bx2 - (bx2 - bx1) // 12
    mid = by1 + (by2 - by1) * 6 // 10
    _put_text_fit(image, brand, (text_x1, by1 + (by2 - by1) // 8, text_x2, mid), ink, bold=True)
    _put_text_fit(image, sku_code, (text_x1, mid, text_x2, by2 - (by2 - by1) // 8), ink, bold=False)
    # Decorative emblem above the band and a barcode below it.
    if by1 - body_top > h // 8:
        cy = (body_top + by1) // 2
        radius = max(3, min((by1 - body_top) // 3, (bx2 - bx1) // 6))
        cv2.circle(image, ((bx1 + bx2) // 2, cy), radius, secondary, -1, cv2.LINE_AA)
        cv2.circle(image, ((bx1 + bx2) // 2, cy), max(radius // 2, 1), _darker(primary, 0.6), -1, cv2.LINE_AA)
    bar_h = max(6, h // 12)
    if y1 - by2 > bar_h + 6:
        bw = max(12, (bx2 - bx1) // 3)
        bar_x = bx2 - bw - max(2, (bx2 - bx1) // 10)
        _barcode(image, rng, (bar_x, by2 + 4, bar_x + bw, by2 + 4 + bar_h))
    if kind in ("can", "bottle", "jar"):
        _cylinder_shading(image, mask, x0, x1, strength=0.35)
    # A thin darker outline, as printed packshots have, then white outside the product.
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(image, contours, -1, _darker(primary, 0.5), 1, cv2.LINE_AA)
    image[mask == 0] = 255
    return image, mask


def draw_packshot(
    sku_code: str, *, seed: int = 0, kind: str | None = None, name: str | None = None, height_px: int = 256
) -> npt.NDArray[np.uint8]:
    """Draw a plausible product packshot on a plain white background.

    The product's look (shape, brand colours, proportions, brand word, barcode) is a pure
    function of ``(sku_code, seed)``: the same SKU always looks the same, different SKUs differ.

    Args:
        sku_code: the SKU; printed on the label.
        seed: varies the look of every SKU at once.
        kind: ``"carton"``, ``"can"``, ``"bottle"``, ``"jar"`` or ``"bag"``; default chosen from
            the SKU (see :func:`kind_from_text` to pick one from a product description).
        name: the big word on the label; default a made-up brand.
        height_px: product height in pixels (the picture adds a white margin of ``height_px // 24``).

    Returns:
        (height_px + 2 * margin, w, 3) uint8 RGB, white (255) around the product.

    Raises:
        ValueError: ``kind`` is not one of :data:`PACKSHOT_KINDS`, or ``height_px < 32``.
    """
    if height_px < 32:
        raise ValueError(f"height_px must be at least 32, got {height_px}")
    image, _mask = _draw(sku_code, seed=seed, kind=kind, name=name, height_px=height_px)
    return image


def _crop_to_mask(sku_code: str, image: npt.NDArray[np.uint8], alpha: npt.NDArray[np.uint8]) -> Packshot:
    ys, xs = np.nonzero(alpha)
    if ys.size == 0:
        raise DatasetError(f"packshot {sku_code!r}: no product found on the background", reason="empty_packshot")
    y1, y2, x1, x2 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    return Packshot(sku_code, np.ascontiguousarray(image[y1:y2, x1:x2]), np.ascontiguousarray(alpha[y1:y2, x1:x2]))


def drawn_packshots(
    sku_codes: Sequence[str],
    *,
    seed: int = 0,
    kinds: Sequence[str | None] | None = None,
    names: Sequence[str | None] | None = None,
    height_px: int = 256,
) -> list[Packshot]:
    """Drawn packshots (see :func:`draw_packshot`) with their exact masks, cropped to the product.

    Args:
        sku_codes: one packshot per code, in this order (the order defines SKU class ids).
        seed: passed to :func:`draw_packshot`.
        kinds: optional kind per SKU (None entries: chosen from the SKU).
        names: optional label word per SKU.
        height_px: product height in pixels.

    Raises:
        ValueError: duplicate SKU codes, or ``kinds`` / ``names`` of another length.
    """
    if len(set(sku_codes)) != len(sku_codes):
        raise ValueError("sku_codes must be unique")
    kinds = list(kinds) if kinds is not None else [None] * len(sku_codes)
    names = list(names) if names is not None else [None] * len(sku_codes)
    if len(kinds) != len(sku_codes) or len(names) != len(sku_codes):
        raise ValueError("kinds and names must have one entry per SKU code")
    out = []
    for code, kind, name in zip(sku_codes, kinds, names, strict=True):
        image, mask = _draw(code, seed=seed, kind=kind, name=name, height_px=height_px)
        out.append(_crop_to_mask(code, image, mask))
    return out


def extract_foreground(
    image: npt.NDArray[np.uint8],
    *,
    tolerance: int = 24,
    edge_low: int = 8,
    edge_high: int = 24,
    open_px: int = 3,
    close_px: int = 5,
    min_component_fraction: float = 0.05,
) -> npt.NDArray[np.uint8]:
    """Cut a product from a packshot on a plain background.

    The background colour is the median of the border pixels. Pixels within ``tolerance`` of it
    (max over channels, 0-255 levels) that connect to the border (8-connectivity) are background:
    a flood fill seeded at every border pixel with a fixed colour range. Canny edges (slightly
    dilated) are walls the fill cannot cross, so a white product on white keeps its faint outline
    and is not flooded. Everything else is the product, so white areas inside the product
    (labels, highlights) stay. Clean-up: an opening
    removes specks of JPEG noise, a closing joins thin parts, holes are filled, and components
    smaller than ``min_component_fraction`` of the largest are dropped.

    Args:
        image: (H, W, 3) uint8, RGB or BGR (only distances are used).
        tolerance: colour distance still counted as background.
        edge_low: lower Canny threshold of the edges that stop the fill (0: no edge walls).
        edge_high: upper Canny threshold.
        open_px: side of the square opening kernel (0: none).
        close_px: side of the square closing kernel (0: none).
        min_component_fraction: smallest component kept, relative to the largest.

    Returns:
        (H, W) uint8 alpha: 255 product, 0 background (all zero if nothing stands out).

    Raises:
        ValueError: ``image`` is not (H, W, 3) uint8.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image: expected (H, W, 3) uint8, received {image.shape} {image.dtype}")
    h, w = image.shape[:2]
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]).astype(np.int16)
    background = np.median(border, axis=0)
    distance = np.abs(image.astype(np.int16) - background.astype(np.int16)).max(axis=2)
    # Edges are walls for the fill: a white carton on white keeps a faint outline that a colour
    # tolerance alone leaks through.
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    edges = cv2.Canny(cv2.GaussianBlur(gray, (3, 3), 0), edge_low, edge_high) if edge_low > 0 else np.zeros_like(gray)
    if edge_low > 0:
        edges = cv2.dilate(edges, np.ones((3, 3), np.uint8))
    candidate = ((distance <= tolerance) & (edges == 0)).astype(np.uint8)
    _n, labels = cv2.connectedComponents(candidate, connectivity=8)
    edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    edge_labels = np.unique(edge[np.concatenate([candidate[0], candidate[-1], candidate[:, 0], candidate[:, -1]]) > 0])
    background_mask = (np.isin(labels, edge_labels) & (candidate > 0)).astype(np.uint8)
    if edge_low > 0:  # give back the pixel of edge dilation on the background side
        near = cv2.dilate(background_mask, np.ones((3, 3), np.uint8))
        background_mask = np.where((near > 0) & (distance <= tolerance), 1, background_mask).astype(np.uint8)
    foreground = np.where(background_mask > 0, 0, 255).astype(np.uint8)
    if open_px > 1:
        foreground = _u8(cv2.morphologyEx(foreground, cv2.MORPH_OPEN, np.ones((open_px, open_px), np.uint8)))
    if close_px > 1:
        padded = cv2.copyMakeBorder(foreground, close_px, close_px, close_px, close_px, cv2.BORDER_CONSTANT, value=0)
        padded = cv2.morphologyEx(padded, cv2.MORPH_CLOSE, np.ones((close_px, close_px), np.uint8))
        foreground = _u8(padded[close_px:-close_px, close_px:-close_px])
    # Fill holes: background regions that do not reach the border.
    inverse = (foreground == 0).astype(np.uint8)
    _n, labels = cv2.connectedComponents(inverse, connectivity=4)
    edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    outside = np.unique(edge[edge > 0])
    foreground = np.where(np.isin(labels, outside) & (inverse > 0), 0, 255).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(foreground, connectivity=8)
    if n <= 1:
        return np.zeros((h, w), np.uint8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = 1 + np.flatnonzero(areas >= min_component_fraction * areas.max())
    return np.where(np.isin(labels, keep), 255, 0).astype(np.uint8)


def _sku_from_stem(stem: str) -> str:
    for suffix in ("_iconic", "-iconic", "_packshot", "-packshot"):
        if stem.lower().endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def load_packshots(folder: str | Path, *, pattern: str = "*", tolerance: int = 24) -> list[Packshot]:
    """Read packshots from a folder (recursively) and cut the products out.

    The SKU code is the file name's stem without a trailing ``_Iconic`` / ``_packshot`` (the
    Grocery Store dataset names its catalogue images ``<class>_Iconic.jpg``). Images with an
    alpha channel (PNG, WebP) use it; others go through :func:`extract_foreground`.

    Args:
        folder: where the packshots are.
        pattern: glob pattern of the file names, e.g. ``"*_Iconic.jpg"``.
        tolerance: background tolerance for :func:`extract_foreground`.

    Returns:
        Packshots sorted by SKU code.

    Raises:
        DatasetError: the folder does not exist, holds no readable image, two files give the
            same SKU code, or a product cannot be separated from its background.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DatasetError(f"packshot folder {root} does not exist", reason="packshots_missing")
    files = sorted(p for p in root.rglob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    packshots: dict[str, Packshot] = {}
    for path in files:
        raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if raw is None:
            logger.warning("packshot %s cannot be decoded; skipped", path)
            continue
        if raw.ndim == 2:
            raw = cv2.cvtColor(raw, cv2.COLOR_GRAY2BGR)
        if raw.dtype != np.uint8:
            raw = cv2.convertScaleAbs(raw, alpha=255.0 / max(float(raw.max()), 1.0))
        if raw.shape[2] == 4 and raw[:, :, 3].min() < 255:
            alpha = np.where(raw[:, :, 3] >= 128, 255, 0).astype(np.uint8)
            rgb = _u8(cv2.cvtColor(raw[:, :, :3], cv2.COLOR_BGR2RGB))
        else:
            rgb = _u8(cv2.cvtColor(raw[:, :, :3], cv2.COLOR_BGR2RGB))
            alpha = extract_foreground(rgb, tolerance=tolerance)
        code = _sku_from_stem(path.stem)
        if code in packshots:
            raise DatasetError(f"two packshots give SKU code {code!r} (e.g. {path})", reason="duplicate_sku")
        packshots[code] = _crop_to_mask(code, rgb, alpha)
    if not packshots:
        raise DatasetError(f"no packshot images matching {pattern!r} under {root}", reason="packshots_missing")
    return [packshots[k] for k in sorted(packshots)]


# -------------------------------------------------------------------------------------- scenes


@dataclass(frozen=True)
class SceneConfig:
    """How shelf scenes are composed.

    Attributes:
        size_wh: picture (width, height) in pixels.
        min_objects: fewest products painted per picture (fewer when the shelves are full).
        max_objects: most products painted per picture; the layout (number of shelves, product
            size) follows the number drawn between the two, so hundreds give dense small facings.
        max_occlusion: an object hidden by more than this fraction (by neighbours, shelf edges or
            the picture border) is painted but not labelled.
        min_box_px: visible boxes narrower or lower than this are not labelled.
        overlap: (min, max) fraction of a facing's width covered by the next one (crowding).
        gap_probability: chance that a facing slot is left empty (out of stock).
        stack_probability: chance that a shelf holds cases stacked two or three high.
        shelf_fill: (min, max) product height as a fraction of the free height of its shelf.
        perspective: corner displacement of the mild perspective warp, fraction of the size.
        lighting: strength of the brightness gradients, colour casts and per-object brightness.
        blur_probability: chance of Gaussian or motion blur.
        max_blur_sigma: largest Gaussian blur sigma in pixels.
        noise_sigma: largest sensor noise sigma in 0-255 levels.
        background_dir: optional folder of background photos (e.g. empty shelves); used instead
            of the procedural wall with ``background_photo_probability``.
        background_photo_probability: see ``background_dir``.

    Raises:
        ValueError: on construction, for values out of range.
    """

    size_wh: tuple[int, int] = (1280, 960)
    min_objects: int = 20
    max_objects: int = 80
    max_occlusion: float = 0.6
    min_box_px: int = 4
    overlap: tuple[float, float] = (0.0, 0.12)
    gap_probability: float = 0.05
    stack_probability: float = 0.2
    shelf_fill: tuple[float, float] = (0.6, 0.92)
    perspective: float = 0.03
    lighting: float = 0.25
    blur_probability: float = 0.3
    max_blur_sigma: float = 1.2
    noise_sigma: float = 4.0
    background_dir: Path | None = None
    background_photo_probability: float = 0.5

    def __post_init__(self) -> None:
        w, h = self.size_wh
        if w < 32 or h < 32:
            raise ValueError(f"size_wh must be at least 32x32, got {self.size_wh}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(f"need 1 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}")
        if not 0.0 <= self.max_occlusion < 1.0:
            raise ValueError(f"max_occlusion must be in [0, 1), got {self.max_occlusion}")
        lo, hi = self.overlap
        if not 0.0 <= lo <= hi < 0.9:
            raise ValueError(f"overlap must satisfy 0 <= min <= max < 0.9, got {self.overlap}")
        lo, hi = self.shelf_fill
        if not 0.1 <= lo <= hi <= 1.0:
            raise ValueError(f"shelf_fill must satisfy 0.1 <= min <= max <= 1, got {self.shelf_fill}")
        for name in ("gap_probability", "stack_probability", "blur_probability", "background_photo_probability"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.perspective < 0 or self.perspective > 0.2:
            raise ValueError(f"perspective must be in [0, 0.2], got {self.perspective}")


@dataclass(frozen=True)
class Scene:
    """One generated shelf picture and the objects labelled in it.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        xyxy: (N, 4) float32, boxes of the visible part of each labelled object, pixels of
            ``image`` (x2, y2 exclusive pixel edges).
        sku_index: (N,) int64, index into the packshot list the scene was made from.
        visible_fraction: (N,) float32, share of each object's area left visible.
    """

    image: npt.NDArray[np.uint8]
    xyxy: npt.NDArray[np.float32]
    sku_index: npt.NDArray[np.int64]
    visible_fraction: npt.NDArray[np.float32]

    def __post_init__(self) -> None:
        n = self.xyxy.shape[0]
        if self.xyxy.shape != (n, 4) or self.sku_index.shape != (n,) or self.visible_fraction.shape != (n,):
            raise ValueError(
                f"expected xyxy (N, 4), sku_index (N,), visible_fraction (N,); received {self.xyxy.shape}, "
                f"{self.sku_index.shape}, {self.visible_fraction.shape}"
            )


@dataclass
class _Placed:
    index: int
    sku: int
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 of the pasted packshot (may leave the picture)
    area: int  # product pixels of the pasted packshot, in or out of the picture


def _smooth_noise(rng: np.random.Generator, w: int, h: int, cells: int) -> npt.NDArray[np.float32]:
    small = rng.standard_normal((max(2, cells * h // max(w, 1)), max(2, cells))).astype(np.float32)
    return _f32(cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC))


def _background_photo(rng: np.random.Generator, files: Sequence[Path], w: int, h: int) -> npt.NDArray[np.uint8] | None:
    path = files[int(rng.integers(len(files)))]
    raw = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if raw is None:
        logger.warning("background %s cannot be decoded; using a drawn wall", path)
        return None
    ph, pw = raw.shape[:2]
    scale = max(w / pw, h / ph) * rng.uniform(1.0, 1.3)
    resized = cv2.resize(raw, (max(w, math.ceil(pw * scale)), max(h, math.ceil(ph * scale))),
                         interpolation=cv2.INTER_AREA)
    y = int(rng.integers(0, resized.shape[0] - h + 1))
    x = int(rng.integers(0, resized.shape[1] - w + 1))
    return np.ascontiguousarray(cv2.cvtColor(resized[y : y + h, x : x + w], cv2.COLOR_BGR2RGB))


def _wall(rng: np.random.Generator, w: int, h: int, photos: Sequence[Path], photo_p: float) -> npt.NDArray[np.uint8]:
    if photos and rng.random() < photo_p:
        photo = _background_photo(rng, photos, w, h)
        if photo is not None:
            return photo
    base = np.array(_hsv_colour(float(rng.random()), rng.uniform(0.0, 0.35), rng.uniform(0.35, 0.9)), np.float32)
    gradient = np.linspace(rng.uniform(0.8, 1.1), rng.uniform(0.8, 1.1), h, dtype=np.float32)[:, None]
    wall = base[None, None, :] * gradient[:, :, None] * np.ones((1, w, 1), np.float32)
    wall *= (1.0 + 0.06 * _smooth_noise(rng, w, h, 6))[:, :, None]
    if rng.random() < 0.4:  # pegboard
        step = int(rng.integers(max(6, w // 80), max(8, w // 30)))
        for yy in range(step // 2, h, step):
            wall[yy : yy + 2, step // 2 :: step] *= 0.55
    wall += rng.normal(0.0, 3.0, wall.shape).astype(np.float32)
    image: npt.NDArray[np.uint8] = np.clip(wall, 0, 255).astype(np.uint8)
    return image


def _board_colour(rng: np.random.Generator) -> Rgb:
    choices: list[Rgb] = [(200, 200, 205), (235, 235, 235), (60, 60, 66), (185, 140, 95), (210, 120, 40),
                          (40, 80, 160)]
    base = choices[int(rng.integers(len(choices)))]
    jitter = rng.uniform(0.85, 1.1)
    return _darker(base, jitter)


def _draw_board(
    image: npt.NDArray[np.uint8], ids: npt.NDArray[np.int32], y_top: int, y_bottom: int, colour: Rgb,
    rng: np.random.Generator, *, price_tags: bool,
) -> None:
    h, w = image.shape[:2]
    y_top, y_bottom = max(0, y_top), min(h, y_bottom)
    if y_bottom <= y_top:
        return
    shade = np.linspace(1.15, 0.75, y_bottom - y_top, dtype=np.float32)[:, None, None]
    band = np.clip(np.array(colour, np.float32)[None, None, :] * shade * np.ones((1, w, 1), np.float32), 0, 255)
    image[y_top:y_bottom] = band.astype(np.uint8)
    ids[y_top:y_bottom] = 0
    if price_tags and y_bottom - y_top >= 6:
        x = int(rng.integers(0, max(1, w // 8)))
        tag_w = max(8, w // 24)
        while x < w:
            tag = (x, y_top + 1, min(w, x + tag_w), y_bottom - 1)
            cv2.rectangle(image, tag[:2], (tag[2] - 1, tag[3] - 1), (250, 250, 240), -1)
            if tag[3] - tag[1] >= 6:
                cv2.line(image, (tag[0] + 2, (tag[1] + tag[3]) // 2), (tag[2] - 3, (tag[1] + tag[3]) // 2),
                         (30, 30, 30), 1)
            x += int(rng.integers(tag_w * 2, tag_w * 8))


def _uprights(image: npt.NDArray[np.uint8], rng: np.random.Generator) -> list[tuple[int, int]]:
    """Rack uprights at the left/right edges; returns their x ranges (products avoid nothing)."""
    h, w = image.shape[:2]
    if rng.random() < 0.4:
        return []
    colour = _board_colour(rng)
    width = max(3, int(w * rng.uniform(0.012, 0.03)))
    spans = []
    for x in (int(rng.integers(0, max(1, w // 20))), w - width - int(rng.integers(0, max(1, w // 20)))):
        image[:, x : x + width] = colour
        for yy in range(4, h, max(6, width * 2)):
            cv2.rectangle(image, (x + width // 3, yy), (x + 2 * width // 3, yy + max(2, width // 3)),
                          _darker(colour, 0.5), -1)
        spans.append((x, x + width))
    return spans


def _resize_packshot(
    packshot: Packshot, width: int, height: int
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.bool_]]:
    interp = cv2.INTER_AREA if height < packshot.image.shape[0] else cv2.INTER_LINEAR
    rgb = _u8(cv2.resize(packshot.image, (width, height), interpolation=interp))
    alpha = cv2.resize(packshot.alpha, (width, height), interpolation=cv2.INTER_AREA) >= 128
    return rgb, alpha


def _paste(
    canvas: npt.NDArray[np.uint8],
    ids: npt.NDArray[np.int32],
    rgb: npt.NDArray[np.uint8],
    alpha: npt.NDArray[np.bool_],
    x: int,
    y: int,
    object_id: int,
    shadow: float,
) -> None:
    h, w = canvas.shape[:2]
    ph, pw = alpha.shape
    x1, y1, x2, y2 = max(x, 0), max(y, 0), min(x + pw, w), min(y + ph, h)
    if x2 <= x1 or y2 <= y1:
        return
    crop_alpha = alpha[y1 - y : y2 - y, x1 - x : x2 - x]
    if shadow > 0:
        dx, dy = max(1, pw // 25), max(1, ph // 40)
        sx1, sy1, sx2, sy2 = max(x + dx, 0), max(y + dy, 0), min(x + dx + pw, w), min(y + dy + ph, h)
        if sx2 > sx1 and sy2 > sy1:
            blurred = _f32(cv2.GaussianBlur(alpha.astype(np.float32), (0, 0), max(1.0, pw / 30)))
            soft = blurred[sy1 - y - dy : sy2 - y - dy, sx1 - x - dx : sx2 - x - dx]
            shaded = canvas[sy1:sy2, sx1:sx2].astype(np.float32) * (1.0 - shadow * soft)[:, :, None]
            canvas[sy1:sy2, sx1:sx2] = shaded.astype(np.uint8)
    np.copyto(canvas[y1:y2, x1:x2], rgb[y1 - y : y2 - y, x1 - x : x2 - x], where=crop_alpha[:, :, None])
    ids[y1:y2, x1:x2][crop_alpha] = object_id


def _homography(rng: np.random.Generator, w: int, h: int, strength: float) -> npt.NDArray[np.float64]:
    src = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
    jitter = rng.uniform(-strength, strength, (4, 2)).astype(np.float32) * np.array([w, h], np.float32)
    matrix: npt.NDArray[np.float64] = cv2.getPerspectiveTransform(src, src + jitter).astype(np.float64)
    return matrix


def _apply_h(matrix: npt.NDArray[np.float64], points: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    homogeneous = np.concatenate([points, np.ones((points.shape[0], 1))], axis=1) @ matrix.T
    result: npt.NDArray[np.float64] = homogeneous[:, :2] / homogeneous[:, 2:3]
    return result


def _area_scale(matrix: npt.NDArray[np.float64], x: float, y: float) -> float:
    """|det J| of the homography at (x, y): how much it scales a small area there."""
    p = _apply_h(matrix, np.array([[x, y], [x + 1.0, y], [x, y + 1.0]]))
    jac = np.stack([p[1] - p[0], p[2] - p[0]], axis=1)
    return float(abs(np.linalg.det(jac)))


def _lighting(
    rng: np.random.Generator, image: npt.NDArray[np.uint8], strength: float
) -> npt.NDArray[np.uint8]:
    h, w = image.shape[:2]
    if strength <= 0:
        return image
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    xx, yy = xx / w - 0.5, yy / h - 0.5
    field_ = 1.0 + strength * (rng.uniform(-0.6, 0.6) * xx + rng.uniform(-0.6, 0.6) * yy)
    field_ -= strength * rng.uniform(0.0, 0.8) * (xx**2 + yy**2)
    field_ *= rng.uniform(1.0 - 0.6 * strength, 1.0 + 0.4 * strength)
    gains = 1.0 + rng.uniform(-0.3 * strength, 0.3 * strength, 3).astype(np.float32)
    lit = image.astype(np.float32) * field_[:, :, None] * gains[None, None, :]
    result: npt.NDArray[np.uint8] = np.clip(lit, 0, 255).astype(np.uint8)
    return result


def _blur(rng: np.random.Generator, image: npt.NDArray[np.uint8], max_sigma: float) -> npt.NDArray[np.uint8]:
    if rng.random() < 0.7:
        sigma = rng.uniform(0.3, max(0.31, max_sigma))
        return _u8(cv2.GaussianBlur(image, (0, 0), sigma))
    length = int(rng.integers(3, max(4, int(3 * max_sigma) + 3)))
    kernel = np.zeros((length, length), np.float32)
    kernel[length // 2, :] = 1.0 / length
    angle = rng.uniform(-30, 30)
    rotation = cv2.getRotationMatrix2D((length / 2 - 0.5, length / 2 - 0.5), angle, 1.0)
    kernel = _f32(cv2.warpAffine(kernel, rotation, (length, length)))
    kernel /= max(float(kernel.sum()), 1e-6)
    return _u8(cv2.filter2D(image, -1, kernel))


def _seed_sequence(seed: int | Sequence[int]) -> np.random.SeedSequence:
    return np.random.SeedSequence(seed if isinstance(seed, int) else list(seed))


def _background_files(folder: Path | None) -> list[Path]:
    if folder is None:
        return []
    if not folder.is_dir():
        raise DatasetError(f"background folder {folder} does not exist", reason="backgrounds_missing")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def generate_scene(
    packshots: Sequence[Packshot],
    *,
    seed: int | Sequence[int],
    config: SceneConfig | None = None,
    _backgrounds: Sequence[Path] | None = None,
) -> Scene:
    """Compose one shelf picture from packshots, in memory.

    Layout: the number of products N is drawn from ``[min_objects, max_objects]``; the number of
    shelves R follows from N (R ~ sqrt(N * aspect * fill * H / W), so that N facings fill R
    shelves). Each shelf gets its own product height (``shelf_fill`` of its free height, with a
    little jitter per product), runs of 1-6 facings of a SKU, neighbours overlapping by
    ``overlap`` of a width, empty slots, and sometimes cases stacked two or three high. Products
    are pasted in random order within a shelf (so a facing may hide either neighbour), with a
    soft shadow; the shelf's front edge with price tags is drawn over the product feet. Then a
    lighting field and colour cast, a mild perspective warp, optional blur and sensor noise.

    Labels come from an object-id map painted with the products and warped with the picture:
    each object's box is the extent of its pixels still visible; its visible fraction is that
    pixel count over its full pasted area (scaled by the warp). Objects hidden more than
    ``max_occlusion`` or smaller than ``min_box_px`` are not labelled.

    Args:
        packshots: the products; ``sku_index`` refers to this order.
        seed: an int or a sequence of ints (e.g. ``(seed, picture_index)``).
        config: the scene settings (default :class:`SceneConfig`).

    Returns:
        The picture and its labels.

    Raises:
        ValueError: no packshots.
        DatasetError: ``config.background_dir`` does not exist.
    """
    if not packshots:
        raise ValueError("generate_scene needs at least one packshot")
    cfg = config or SceneConfig()
    backgrounds = list(_backgrounds) if _backgrounds is not None else _background_files(cfg.background_dir)
    rng = np.random.default_rng(_seed_sequence(seed))
    w, h = cfg.size_wh
    target = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    canvas = _wall(rng, w, h, backgrounds, cfg.background_photo_probability)
    uprights = _uprights(canvas, rng)
    ids = np.zeros((h, w), np.int32)
    aspect = float(np.mean([p.aspect for p in packshots]))
    fill_mean = float(np.mean(cfg.shelf_fill))
    overlap_mean = float(np.mean(cfg.overlap))
    rows_f = math.sqrt(target * aspect * fill_mean * (1.0 - overlap_mean) * h / w)
    rows = int(np.clip(round(rows_f * rng.uniform(0.85, 1.15)), 1, max(1, h // 40)))
    top = int(h * rng.uniform(-0.04, 0.05))
    heights = rng.uniform(0.85, 1.15, rows)
    heights = heights / heights.sum() * (h - top) * rng.uniform(1.0, 1.06)
    board_colour = _board_colour(rng)
    placed: list[_Placed] = []
    boards: list[tuple[int, int]] = []
    x_min = uprights[0][1] if uprights else 0
    x_max = uprights[1][0] if uprights else w
    y = float(top)
    for row in range(rows):
        gap = float(heights[row])
        thickness = int(np.clip(gap * rng.uniform(0.06, 0.12), 3, 40))
        base = round(y + gap - thickness)
        free = base - round(y)
        y += gap
        boards.append((base, base + thickness))
        if free < 8 or len(placed) >= target:
            continue
        # This shelf's share of the products left sets its product size (smaller when crowded),
        # capped by the shelf's free height. A shelf of stacked cases fills its width.
        quota = (target - len(placed)) / (rows - row) * rng.uniform(0.85, 1.2)
        from_quota = (x_max - x_min) / max(quota, 1.0) / (aspect * (1.0 - overlap_mean) + 0.02)
        fill = free * rng.uniform(*cfg.shelf_fill)
        levels = int(rng.integers(2, 4)) if rng.random() < cfg.stack_probability else 1
        while levels > 1 and fill / levels < 0.6 * from_quota:
            levels -= 1
        if levels > 1:
            product_h = fill / levels
            row_limit = target
        else:
            product_h = min(fill, from_quota)
            row_limit = len(placed) + math.ceil(quota)
        row_order: list[tuple[int, int, int, int, int]] = []  # sku, x, y, w, h
        x = float(x_min - rng.uniform(0.0, 0.3) * product_h * aspect)
        while x < x_max and len(placed) + len(row_order) < min(target, row_limit):
            sku = int(rng.integers(len(packshots)))
            run = int(rng.integers(1, 7))
            packshot = packshots[sku]
            ph = max(4, round(product_h * rng.uniform(0.93, 1.05)))
            pw = max(3, round(ph * packshot.aspect))
            if pw > 0.6 * w:
                pw = int(0.6 * w)
                ph = max(4, round(pw / packshot.aspect))
            for _ in range(run):
                if x >= x_max or len(placed) + len(row_order) >= min(target, row_limit):
                    break
                if rng.random() < cfg.gap_probability:
                    x += pw * rng.uniform(0.8, 1.2)
                    continue
                for level in range(levels):
                    if len(placed) + len(row_order) >= target:
                        break
                    yy = base - ph - round(level * ph * rng.uniform(0.96, 1.0))
                    if yy < base - free - ph // 3:
                        break
                    row_order.append((sku, round(x), yy, pw, ph))
                x += pw * (1.0 - rng.uniform(*cfg.overlap)) + rng.uniform(0.0, 0.04) * pw
        for k in rng.permutation(len(row_order)):
            sku, px, py, pw, ph = row_order[int(k)]
            rgb, alpha = _resize_packshot(packshots[sku], pw, ph)
            if cfg.lighting > 0:
                gain = rng.uniform(1.0 - 0.4 * cfg.lighting, 1.0 + 0.2 * cfg.lighting)
                rgb = np.clip(rgb.astype(np.float32) * gain, 0, 255).astype(np.uint8)
            index = len(placed)
            _paste(canvas, ids, rgb, alpha, px, py, index + 1, shadow=float(rng.uniform(0.15, 0.35)))
            placed.append(_Placed(index, sku, (px, py, px + pw, py + ph), int(alpha.sum())))
    price_tags = rng.random() < 0.7
    lip = rng.uniform(0.0, 0.35)
    for base, bottom in boards:
        _draw_board(canvas, ids, base - round(lip * (bottom - base)), bottom, board_colour, rng,
                    price_tags=price_tags)
    canvas = _lighting(rng, canvas, cfg.lighting)
    matrix = np.eye(3)
    if cfg.perspective > 0:
        matrix = _homography(rng, w, h, cfg.perspective)
        canvas = _u8(cv2.warpPerspective(canvas, matrix, (w, h), flags=cv2.INTER_LINEAR,
                                         borderMode=cv2.BORDER_REFLECT))
        ids = cv2.warpPerspective(ids.astype(np.float32), matrix, (w, h), flags=cv2.INTER_NEAREST,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=0).astype(np.int32)
    if rng.random() < cfg.blur_probability:
        canvas = _blur(rng, canvas, cfg.max_blur_sigma)
    sigma = rng.uniform(0.0, cfg.noise_sigma)
    if sigma > 0.2:
        canvas = np.clip(canvas.astype(np.float32) + rng.normal(0.0, sigma, canvas.shape), 0, 255).astype(np.uint8)
    boxes: list[tuple[float, float, float, float]] = []
    skus: list[int] = []
    visible: list[float] = []
    for obj in placed:
        x1, y1, x2, y2 = obj.box
        corners = _apply_h(matrix, np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], np.float64))
        rx1 = int(np.clip(math.floor(corners[:, 0].min()) - 2, 0, w))
        rx2 = int(np.clip(math.ceil(corners[:, 0].max()) + 2, 0, w))
        ry1 = int(np.clip(math.floor(corners[:, 1].min()) - 2, 0, h))
        ry2 = int(np.clip(math.ceil(corners[:, 1].max()) + 2, 0, h))
        if rx2 <= rx1 or ry2 <= ry1:
            continue
        mine = ids[ry1:ry2, rx1:rx2] == obj.index + 1
        count = int(mine.sum())
        if count == 0:
            continue
        full = obj.area * _area_scale(matrix, (x1 + x2) / 2, (y1 + y2) / 2)
        fraction = min(1.0, count / max(full, 1.0))
        if fraction < 1.0 - cfg.max_occlusion:
            continue
        ys, xs = np.nonzero(mine)
        bx1, bx2 = float(rx1 + xs.min()), float(rx1 + xs.max() + 1)
        by1, by2 = float(ry1 + ys.min()), float(ry1 + ys.max() + 1)
        if bx2 - bx1 < cfg.min_box_px or by2 - by1 < cfg.min_box_px:
            continue
        boxes.append((bx1, by1, bx2, by2))
        skus.append(obj.sku)
        visible.append(fraction)
    return Scene(
        image=canvas,
        xyxy=np.array(boxes, np.float32).reshape(-1, 4),
        sku_index=np.array(skus, np.int64),
        visible_fraction=np.array(visible, np.float32),
    )


# ------------------------------------------------------------------------------------ datasets


@dataclass
class SyntheticDatasets:
    """What :func:`write_synthetic_datasets` wrote.

    Attributes:
        root: the output folder.
        agnostic_yaml: ``data.yaml`` of the class-agnostic dataset (one class, ``product``).
        per_sku_yaml: ``data.yaml`` of the per-SKU dataset (class names = SKU codes).
        sku_codes: class names of the per-SKU dataset.
        images: pictures per split.
        boxes: labelled objects per split.
    """

    root: Path
    agnostic_yaml: Path
    per_sku_yaml: Path
    sku_codes: list[str]
    images: dict[str, int] = field(default_factory=dict)
    boxes: dict[str, int] = field(default_factory=dict)


def _yolo_rows(scene: Scene, classes: npt.NDArray[np.int64]) -> str:
    h, w = scene.image.shape[:2]
    lines = []
    for (x1, y1, x2, y2), cls in zip(scene.xyxy.tolist(), classes.tolist(), strict=True):
        lines.append(f"{cls} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}")
    return "".join(line + "\n" for line in lines)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def write_synthetic_datasets(
    out_dir: str | Path,
    packshots: Sequence[Packshot],
    *,
    n_images: int,
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    seed: int = 0,
    config: SceneConfig | None = None,
    jpeg_quality: int = 92,
    progress: Callable[[int, int], None] | None = None,
) -> SyntheticDatasets:
    """Generate ``n_images`` scenes and write them as two YOLO datasets sharing the image files.

    Layout::

        out_dir/agnostic/images/{train,val[,test]}/000000.jpg   the pictures
        out_dir/agnostic/labels/{split}/000000.txt              "0 cx cy w h" (normalised)
        out_dir/agnostic/data.yaml                              names: [product]
        out_dir/sku/images/{split}/000000.jpg                   hard links to the same files
        out_dir/sku/labels/{split}/000000.txt                   "<sku index> cx cy w h"
        out_dir/sku/data.yaml                                   names: SKU codes
        out_dir/synth.json                                      seed, config, counts, SKU codes

    Picture ``i`` is :func:`generate_scene` with seed ``(seed, i)``; the first pictures are
    ``train``, then ``val``, then ``test``. The two label files of a picture have the same rows
    in the same order, differing only in the class.

    Args:
        out_dir: output folder: absent, empty, or an earlier output of this function (replaced).
        packshots: the products; their SKU codes are the per-SKU class names in this order.
        n_images: number of pictures, all splits.
        val_fraction: share of pictures in ``val`` (at least one).
        test_fraction: share of pictures in ``test`` (none when 0).
        seed: base seed.
        config: scene settings.
        jpeg_quality: JPEG quality of the pictures (1-100).
        progress: called with (pictures done, total) after each picture.

    Returns:
        Paths and counts.

    Raises:
        ValueError: fewer than two pictures, fractions out of range, duplicate SKU codes.
        DatasetError: ``out_dir`` holds something else; ``config.background_dir`` is missing.
    """
    if n_images < 2:
        raise ValueError(f"n_images must be at least 2 (train and val), got {n_images}")
    if not 0.0 < val_fraction < 1.0 or not 0.0 <= test_fraction < 1.0 or val_fraction + test_fraction >= 1.0:
        raise ValueError(f"bad split fractions: val {val_fraction}, test {test_fraction}")
    codes = [p.sku_code for p in packshots]
    if len(set(codes)) != len(codes):
        raise ValueError("packshots must have unique SKU codes")
    cfg = config or SceneConfig()
    backgrounds = _background_files(cfg.background_dir)
    root = Path(out_dir)
    n_val = max(1, round(n_images * val_fraction))
    n_test = round(n_images * test_fraction)
    n_train = n_images - n_val - n_test
    if n_train < 1:
        raise ValueError(f"no training pictures left of {n_images}")
    splits = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    datasets = {"agnostic": root / "agnostic", "sku": root / "sku"}
    if root.is_dir() and any(root.iterdir()):
        if not (root / "synth.json").is_file():
            raise DatasetError(
                f"{root} is not empty and was not written by write_synthetic_datasets; choose an empty folder",
                reason="work_dir_unusable",
            )
        for ds in datasets.values():
            if ds.is_dir():
                shutil.rmtree(ds)
        (root / "synth.json").unlink()
    for ds in datasets.values():
        for split in sorted(set(splits)):
            (ds / "images" / split).mkdir(parents=True, exist_ok=True)
            (ds / "labels" / split).mkdir(parents=True, exist_ok=True)
    result = SyntheticDatasets(root, datasets["agnostic"] / "data.yaml", datasets["sku"] / "data.yaml", codes)
    for i, split in enumerate(splits):
        scene = generate_scene(packshots, seed=(seed, i), config=cfg, _backgrounds=backgrounds)
        name = f"{i:06d}"
        image_path = datasets["agnostic"] / "images" / split / f"{name}.jpg"
        ok = cv2.imwrite(str(image_path), cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR),
                         [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        if not ok:
            raise OSError(f"cannot write {image_path}")
        twin = datasets["sku"] / "images" / split / f"{name}.jpg"
        twin.unlink(missing_ok=True)
        _link_or_copy(image_path, twin)
        zeros = np.zeros_like(scene.sku_index)
        (datasets["agnostic"] / "labels" / split / f"{name}.txt").write_text(_yolo_rows(scene, zeros), encoding="utf-8")
        (datasets["sku"] / "labels" / split / f"{name}.txt").write_text(
            _yolo_rows(scene, scene.sku_index), encoding="utf-8"
        )
        result.images[split] = result.images.get(split, 0) + 1
        result.boxes[split] = result.boxes.get(split, 0) + len(scene.sku_index)
        if progress is not None:
            progress(i + 1, n_images)
    for key, names in (("agnostic", [AGNOSTIC_NAME]), ("sku", codes)):
        lines = [f"path: {datasets[key].resolve()}"]
        lines += [f"{split}: images/{split}" for split in ("train", "val", "test") if split in result.images]
        lines.append(f"nc: {len(names)}")
        lines.append("names: " + json.dumps(names))
        (datasets[key] / "data.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config_dict = asdict(cfg)
    config_dict["background_dir"] = str(cfg.background_dir) if cfg.background_dir else None
    (root / "synth.json").write_text(
        json.dumps(
            {"seed": seed, "n_images": n_images, "config": config_dict, "sku_codes": codes,
             "images": result.images, "boxes": result.boxes,
             "method": "cut-paste synthesis (Dwibedi et al., ICCV 2017), detector/synth.py"},
            indent=2,
        ) + "\n",
        encoding="utf-8",
    )
    logger.info("wrote %s synthetic pictures (%s boxes) to %s", n_images, sum(result.boxes.values()), root)
    return result
