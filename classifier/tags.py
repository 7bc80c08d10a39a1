"""Drawn shelf-edge labels with known prices and barcodes, to measure price reading honestly.

There is no set of real price-tag photos in ``../shared/data``, so the labels are generated here
and say so wherever they are measured. Each label is drawn by OpenCV (Hershey fonts, which are
not the fonts of any retailer) on a white or yellow card: the product name on top, the price in
large digits with a decimal comma or point (or the ``29:-`` form), an optional comparison price
and article number in small print, and an EAN-13 of the SKU drawn by zxing-cpp. Then it is made
to look photographed: a small random perspective tilt, scale, Gaussian blur, sensor noise and
JPEG compression.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import cv2
import numpy as np
import numpy.typing as npt

from shelftally.gtin import check_digit

__all__ = ["DrawnTag", "draw_tag", "ean13"]

_FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_COMPLEX)


def ean13(body: str) -> str:
    """``body`` (12 digits) with its GS1 check digit appended (:func:`shelftally.gtin.check_digit`).

    Raises:
        ValueError: ``body`` is not 12 digits.
    """
    if len(body) != 12 or not body.isdigit():
        raise ValueError(f"body: expected 12 digits, received {body!r}")
    return body + str(check_digit(body))


@dataclass(frozen=True)
class DrawnTag:
    """A generated label and what is printed on it.

    Attributes:
        image: (h, w, 3) uint8 RGB, after the photographic degradations.
        price: the printed price.
        printed: the price as printed (``"12,90"``, ``"29:-"``).
        gtin: the EAN-13 drawn.
        name: the product name printed.
    """

    image: npt.NDArray[np.uint8]
    price: Decimal
    printed: str
    gtin: str
    name: str


def draw_tag(rng: np.random.Generator, name: str, gtin: str, *, degrade: bool = True) -> DrawnTag:
    """One label for ``name`` / ``gtin`` with a random price (see the module docstring)."""
    import zxingcpp

    cents = int(rng.integers(50, 100_000))
    price = Decimal(cents) / 100
    style = int(rng.integers(0, 3))
    if style == 2:  # whole amounts in the Scandinavian form
        price = Decimal(cents // 100 or 1)
        printed = f"{price}:-"
    else:
        printed = f"{price:.2f}".replace(".", "," if style == 0 else ".")
    font = _FONTS[int(rng.integers(0, len(_FONTS)))]
    background = (255, 255, 255) if rng.random() < 0.6 else (255, 236, 90)
    code = np.asarray(zxingcpp.create_barcode(gtin, zxingcpp.BarcodeFormat.EAN13).to_image(scale=2,
                                                                                           add_quiet_zones=True))
    width = max(460, code.shape[1] + 24)
    height = 150 + code.shape[0]
    card = np.full((height, width, 3), background, np.uint8)
    cv2.putText(card, name[:28], (12, 32), font, 0.8, (20, 20, 20), 2, cv2.LINE_AA)
    cv2.putText(card, printed, (12, 112), font, 2.2, (0, 0, 0), 4, cv2.LINE_AA)
    if rng.random() < 0.5:
        per = (price * Decimal(int(rng.integers(2, 9))) / 2).quantize(Decimal("0.01"))
        cv2.putText(card, f"Jmf {per}/kg", (width - 170, 140), font, 0.5, (40, 40, 40), 1, cv2.LINE_AA)
    if rng.random() < 0.5:
        cv2.putText(card, f"Art.nr {int(rng.integers(10_000, 999_999))}", (12, 140), font, 0.5, (40, 40, 40), 1,
                    cv2.LINE_AA)
    top = 150
    card[top : top + code.shape[0], 12 : 12 + code.shape[1]] = code[:, :, None]
    image = card
    if degrade:
        h, w = card.shape[:2]
        jitter = rng.uniform(-0.04, 0.04, (4, 2)) * np.array([w, h])
        corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
        warp = cv2.getPerspectiveTransform(corners, (corners + jitter).astype(np.float32))
        image = cv2.warpPerspective(card, warp, (w, h), borderValue=(128, 128, 128))
        scale = float(rng.uniform(0.6, 1.0))
        image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        sigma = float(rng.uniform(0.0, 1.2))
        if sigma > 0.2:
            image = cv2.GaussianBlur(image, (0, 0), sigma)
        noise = rng.normal(0, rng.uniform(0, 6), image.shape)
        image = np.clip(image.astype(np.float64) + noise, 0, 255).astype(np.uint8)
        quality = int(rng.integers(60, 92))
        ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
        decoded = cv2.imdecode(encoded, cv2.IMREAD_COLOR) if ok else None
        if decoded is not None:
            image = cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
    return DrawnTag(np.ascontiguousarray(image), price, printed, gtin, name)
