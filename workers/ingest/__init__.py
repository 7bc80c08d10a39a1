"""Ingestion: the single place a picture (path, bytes or upload stream) becomes pixels.

``pixels`` are (H, W, 3) uint8 RGB, upright; see :mod:`workers.ingest.decode` for the formats,
modes, limits and the ``InvalidImageError`` reasons.

Example:
    >>> from workers.ingest import read_image
    >>> image = read_image("shelf.jpg")  # doctest: +SKIP
    >>> image.pixels.shape, image.format, image.sha256  # doctest: +SKIP
"""

from __future__ import annotations

from shelftally.errors import InvalidImageError
from workers.ingest.decode import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    WHITE,
    DecodedImage,
    decode_image,
    decode_stream,
    read_image,
)

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "WHITE",
    "DecodedImage",
    "InvalidImageError",
    "decode_image",
    "decode_stream",
    "read_image",
]
