"""``workers.ingest``: every picture a camera, phone or scanner writes becomes upright RGB pixels.

All pictures are made here with Pillow, numpy and OpenCV (OpenCV only writes 16-bit RGB files
and serves as an independent decoder to compare against); a few real photos are read from
``../shared/data/grocerystore`` when it is present.
"""

from __future__ import annotations

import hashlib
import io
import json
import resource
import struct
import subprocess
import sys
import time
import tracemalloc
import warnings
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, cast

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image, ImageFile

from shelftally.errors import ConfigurationError, InvalidImageError
from workers.ingest import (
    DEFAULT_MAX_PIXELS,
    DecodedImage,
    decode_image,
    decode_stream,
    read_image,
)

GROCERY = Path(__file__).resolve().parents[3] / "shared" / "data" / "grocerystore" / "dataset" / "train"

RED, GREEN, BLUE, WHITE_RGB = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def quadrants() -> npt.NDArray[np.uint8]:
    """(32, 64, 3) uint8: red, green / blue, white quadrants; no flip or rotation maps it to itself."""
    image = np.zeros((32, 64, 3), np.uint8)
    image[:16, :32], image[:16, 32:], image[16:, :32], image[16:, 32:] = RED, GREEN, BLUE, WHITE_RGB
    return image


def noise(height: int = 24, width: int = 40, channels: int = 3, seed: int = 0) -> npt.NDArray[np.uint8]:
    """(H, W, C) uint8 random pixels: any channel swap, flip or rounding shows."""
    shape = (height, width, channels) if channels > 1 else (height, width)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def encode(image: Image.Image | npt.NDArray[np.uint8], fmt: str, **options: object) -> bytes:
    """The file Pillow writes for ``image`` in ``fmt``."""
    picture = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buffer = io.BytesIO()
    picture.save(buffer, fmt, **options)
    return buffer.getvalue()


def opencv_rgb(data: bytes) -> npt.NDArray[np.uint8]:
    """The same file decoded by OpenCV (libjpeg / libpng, EXIF orientation applied), as RGB."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert bgr is not None
    return np.ascontiguousarray(bgr[:, :, ::-1])


def png_chunks(data: bytes) -> list[tuple[bytes, int, int]]:
    """(type, offset of the length field, data length) of every chunk of a PNG."""
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        chunks.append((data[pos + 4 : pos + 8], pos, length))
        pos += 12 + length
    return chunks


def flip_byte(data: bytes, offset: int) -> bytes:
    damaged = bytearray(data)
    damaged[offset] ^= 0xFF
    return bytes(damaged)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def blank_bilevel_png(width: int, height: int) -> bytes:
    """A valid 1-bit greyscale PNG of zeros, compressed row by row (never held uncompressed)."""
    row = b"\x00" * (1 + (width + 7) // 8)
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def reason_of(call: Callable[[], object]) -> str:
    with pytest.raises(InvalidImageError) as caught:
        call()
    assert str(caught.value)  # a message a person can read, not just the reason
    return caught.value.reason


# --- bad input: one kind per row, the exact reason ---------------------------------------------


def _png() -> bytes:
    return encode(noise(), "PNG")


def _jpeg() -> bytes:
    return encode(noise(), "JPEG", quality=90)


def _png_with_damaged(chunk: bytes, where: str) -> bytes:
    data = _png()
    _, pos, length = next(c for c in png_chunks(data) if c[0] == chunk)
    offset = pos + 8 + length if where == "crc" else pos + 8 + length // 2
    return flip_byte(data, offset)


BAD_INPUTS: list[tuple[str, Callable[[], bytes], str]] = [
    ("empty file", lambda: b"", "empty_file"),
    ("plain text", lambda: "Regal A01: 12 Kartons Äpfel\n".encode(), "not_an_image"),
    (
        "HTML login page",
        lambda: b'<!DOCTYPE html><html><body><form action="/login"><input name="user"></form></body></html>',
        "not_an_image",
    ),
    ("random bytes", lambda: np.random.default_rng(1).bytes(4096), "not_an_image"),
    ("PDF", lambda: b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n", "not_an_image"),
    ("text starting with BM", lambda: b"BMW parts list: 4 boxes\n", "not_an_image"),
    ("JPEG cut in half", lambda: _jpeg()[: len(_jpeg()) // 2], "corrupt_image"),
    ("JPEG without its last bytes", lambda: _jpeg()[:-200], "corrupt_image"),
    ("JPEG header only", lambda: _jpeg()[:10], "corrupt_image"),
    ("PNG cut in half", lambda: _png()[: len(_png()) // 2], "corrupt_image"),
    ("PNG signature only", lambda: _png()[:8], "corrupt_image"),
    ("PNG with damaged IDAT data", lambda: _png_with_damaged(b"IDAT", "data"), "corrupt_image"),
    ("PNG with a wrong IDAT CRC", lambda: _png_with_damaged(b"IDAT", "crc"), "corrupt_image"),
    ("PNG with a wrong IHDR CRC", lambda: _png_with_damaged(b"IHDR", "crc"), "corrupt_image"),
    ("GIF cut short", lambda: encode(noise(), "GIF")[:60], "corrupt_image"),
    ("WebP cut short", lambda: encode(noise(), "WEBP", quality=80)[:40], "corrupt_image"),
    ("TIFF cut short", lambda: encode(noise(), "TIFF")[:200], "corrupt_image"),
    (
        "32-bit float TIFF (mode F)",
        lambda: encode(Image.fromarray(np.full((4, 4), 0.5, np.float32)), "TIFF"),
        "unsupported_image",
    ),
    (
        "32-bit integer TIFF beyond 16 bits (mode I)",
        lambda: encode(Image.fromarray(np.full((4, 4), 70_000, np.int32)), "TIFF"),
        "unsupported_image",
    ),
]


@pytest.mark.parametrize(("data", "reason"), [(f, r) for _, f, r in BAD_INPUTS], ids=[n for n, _, _ in BAD_INPUTS])
def test_bad_input_is_refused_with_its_reason(data: Callable[[], bytes], reason: str, tmp_path: Path) -> None:
    content = data()
    assert reason_of(lambda: decode_image(content)) == reason
    path = tmp_path / "upload.jpg"  # the name claims a picture; only the content counts
    path.write_bytes(content)
    assert reason_of(lambda: read_image(path)) == reason
    assert reason_of(lambda: decode_stream(io.BytesIO(content))) == reason


def test_load_truncated_images_set_elsewhere_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """With Pillow's LOAD_TRUNCATED_IMAGES a cut JPEG would come back half grey; decoding refuses to run."""
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # importing workers.ingest leaves it alone
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ConfigurationError, match="LOAD_TRUNCATED_IMAGES"):
        decode_image(_jpeg())


# --- orientation ---------------------------------------------------------------------------------

# The stored (sensor) frame for each EXIF Orientation value (EXIF 2.32, tag 0x0112), built with
# numpy from the upright picture; a viewer that honours the tag shows the upright picture.
STORED_FOR_ORIENTATION: dict[int, Callable[[npt.NDArray[np.uint8]], npt.NDArray[np.uint8]]] = {
    1: lambda u: u,
    2: lambda u: u[:, ::-1],  # mirrored left-right
    3: lambda u: u[::-1, ::-1],  # rotated 180
    4: lambda u: u[::-1],  # mirrored top-bottom
    5: lambda u: u.transpose(1, 0, 2),  # transposed
    6: lambda u: np.rot90(u, 1),  # camera turned clockwise: stored rotated counter-clockwise
    7: lambda u: np.rot90(u, 2).transpose(1, 0, 2),  # transversed
    8: lambda u: np.rot90(u, -1),  # camera turned counter-clockwise
}


def oriented_file(orientation: int, fmt: str) -> bytes:
    stored = np.ascontiguousarray(STORED_FOR_ORIENTATION[orientation](quadrants()))
    exif = Image.Exif()
    exif[0x0112] = orientation
    options: dict[str, object] = {"exif": exif}
    if fmt == "JPEG":
        options |= {"quality": 95, "subsampling": 0}
    return encode(stored, fmt, **options)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_decodes_upright(orientation: int, fmt: str) -> None:
    data = oriented_file(orientation, fmt)
    decoded = decode_image(data)
    upright = quadrants()
    assert decoded.pixels.shape == upright.shape
    assert decoded.resolution_wh == (64, 32)
    assert decoded.exif_orientation == orientation
    diff = np.abs(decoded.pixels.astype(np.int16) - upright)
    if fmt == "PNG":
        assert not diff.any()
    else:
        assert diff.mean() < 3
        for (y, x), colour in zip([(8, 16), (8, 48), (24, 16), (24, 48)], [RED, GREEN, BLUE, WHITE_RGB], strict=True):
            assert np.abs(decoded.pixels[y, x].astype(int) - colour).max() <= 8
    if fmt == "JPEG":  # OpenCV (libjpeg + its own EXIF handling) agrees
        reference = opencv_rgb(data)
        assert np.abs(reference.astype(np.int16) - decoded.pixels).max() <= 2


# --- colour modes --------------------------------------------------------------------------------

CMYK_PATCHES = [  # (C, M, Y, K) ink -> the RGB it shows
    ((0, 255, 255, 0), RED),
    ((255, 0, 255, 0), GREEN),
    ((255, 255, 0, 0), BLUE),
    ((0, 0, 255, 0), (255, 255, 0)),
    ((0, 0, 0, 255), (0, 0, 0)),
    ((0, 0, 0, 0), WHITE_RGB),
]


@pytest.mark.parametrize(("fmt", "tolerance"), [("JPEG", 10), ("TIFF", 0)])
def test_cmyk_patches_are_neither_inverted_nor_swapped(fmt: str, tolerance: int) -> None:
    """Pillow writes CMYK JPEGs the way Photoshop does: an Adobe APP14 marker and inverted
    samples (CMYK TIFF stores them plainly). The patches must come back in their colours, and
    OpenCV (libjpeg's own Adobe handling) must agree on the JPEG."""
    cmyk = Image.new("CMYK", (32 * 3, 32 * 2))
    for i, (ink, _) in enumerate(CMYK_PATCHES):
        x, y = 32 * (i % 3), 32 * (i // 3)
        cmyk.paste(ink, (x, y, x + 32, y + 32))
    data = encode(cmyk, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    decoded = decode_image(data)
    assert decoded.source_mode == "CMYK" and decoded.format == fmt
    for i, (_, rgb) in enumerate(CMYK_PATCHES):
        x, y = 32 * (i % 3) + 16, 32 * (i // 3) + 16
        assert np.abs(decoded.pixels[y - 4 : y + 4, x - 4 : x + 4].astype(int) - rgb).max() <= tolerance, (i, rgb)
    if fmt == "JPEG":
        assert data.index(b"Adobe") == data.index(b"\xff\xee") + 4  # APP14 "Adobe" segment: inverted CMYK
        assert np.abs(opencv_rgb(data).astype(np.int16) - decoded.pixels).mean() < 2


GREY16_RAMP = np.arange(65536, dtype=np.uint16).reshape(256, 256)  # every 16-bit level once


def _pgm16(samples: npt.NDArray[np.uint16]) -> bytes:
    height, width = samples.shape
    return f"P5 {width} {height} 65535\n".encode() + samples.astype(">u2").tobytes()


@pytest.mark.parametrize(
    ("make", "source_mode"),
    [
        (lambda: encode(Image.fromarray(GREY16_RAMP), "PNG"), "I;16"),
        (lambda: encode(Image.fromarray(GREY16_RAMP), "TIFF"), "I;16"),
        (lambda: encode(Image.frombytes("I;16B", (256, 256), GREY16_RAMP.astype(">u2").tobytes()), "TIFF"), "I;16B"),
        (lambda: _pgm16(GREY16_RAMP), "I"),
        (lambda: cv2.imencode(".png", GREY16_RAMP)[1].tobytes(), "I;16"),
    ],
    ids=["png-I;16", "tiff-I;16", "tiff-I;16B", "pgm-I", "png-opencv"],
)
def test_16bit_greyscale_keeps_its_levels(make: Callable[[], bytes], source_mode: str) -> None:
    decoded = decode_image(make())
    assert decoded.source_mode == source_mode
    grey = decoded.pixels[:, :, 0].ravel()
    assert (decoded.pixels == decoded.pixels[:, :, :1]).all()  # R = G = B
    np.testing.assert_array_equal(grey, (GREY16_RAMP.ravel() >> 8).astype(np.uint8))  # not clipped at 255
    assert grey.min() == 0 and grey.max() == 255
    assert (np.diff(grey.astype(int)) >= 0).all()
    assert len(np.unique(grey)) == 256


@pytest.mark.parametrize("ext", [".png", ".tiff"])
@pytest.mark.parametrize("alpha", [False, True])
def test_16bit_rgb_keeps_its_levels(ext: str, alpha: bool) -> None:
    """16-bit RGB(A) from OpenCV: Pillow reads it as 8-bit already; the result must be v >> 8 per channel."""
    ramp = np.arange(0, 65536, 64, dtype=np.uint16).reshape(32, 32)
    rgb16 = np.dstack([ramp, ramp[::-1], ramp.T])  # three different ramps: a channel swap shows
    planes = [rgb16[:, :, 2], rgb16[:, :, 1], rgb16[:, :, 0]] + ([np.full_like(ramp, 65535)] if alpha else [])
    ok, encoded = cv2.imencode(ext, np.dstack(planes))  # OpenCV writes BGR(A)
    assert ok
    decoded = decode_image(encoded.tobytes())
    np.testing.assert_array_equal(decoded.pixels, (rgb16 >> 8).astype(np.uint8))


def _rgba_with(alpha: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    return np.dstack([noise(), alpha])


def _over(rgba: npt.NDArray[np.uint8], background: tuple[int, int, int]) -> npt.NDArray[np.uint8]:
    """Alpha compositing over an opaque background, rounded to nearest (float reference)."""
    a = rgba[:, :, 3:4] / 255.0
    return np.floor(rgba[:, :, :3] * a + np.array(background) * (1 - a) + 0.5).astype(np.uint8)


def test_opaque_alpha_decodes_like_its_rgb_twin() -> None:
    rgba = _rgba_with(np.full((24, 40), 255, np.uint8))
    for fmt in ["PNG", "TIFF"]:  # (Pillow's WebP writer drops an alpha that is opaque everywhere)
        decoded = decode_image(encode(rgba, fmt))
        twin = decode_image(encode(np.ascontiguousarray(rgba[:, :, :3]), fmt))
        assert decoded.source_mode == "RGBA"
        np.testing.assert_array_equal(decoded.pixels, twin.pixels)
        np.testing.assert_array_equal(decoded.pixels, rgba[:, :, :3])


@pytest.mark.parametrize("background", [None, (0, 128, 255)])
def test_transparency_is_composited_over_the_background(background: tuple[int, int, int] | None) -> None:
    fill = background or (255, 255, 255)

    def decode(data: bytes) -> DecodedImage:  # the default background when none is given
        return decode_image(data) if background is None else decode_image(data, background=background)

    alpha = np.random.default_rng(2).integers(0, 256, (24, 40), dtype=np.uint8)
    alpha[0, 0], alpha[0, 1] = 0, 255
    rgba = _rgba_with(alpha)
    for fmt, fmt_options in [("PNG", {}), ("TIFF", {}), ("WEBP", {"lossless": True, "exact": True})]:
        decoded = decode(encode(rgba, fmt, **fmt_options))
        assert decoded.source_mode == "RGBA", fmt
        assert tuple(decoded.pixels[0, 0]) == fill, fmt  # fully transparent: the background
        assert tuple(decoded.pixels[0, 1]) == tuple(rgba[0, 1, :3]), fmt  # opaque: its own colour
        np.testing.assert_array_equal(decoded.pixels, _over(rgba, fill), err_msg=fmt)

    la = np.dstack([noise(channels=1), alpha])
    expected_la = _over(np.dstack([la[:, :, 0]] * 3 + [alpha]), fill)
    np.testing.assert_array_equal(decode(encode(Image.fromarray(la, "LA"), "PNG")).pixels, expected_la)


def test_tall_transparent_picture_is_composited_in_every_row() -> None:
    rgba = np.random.default_rng(4).integers(0, 256, (700, 3, 4), dtype=np.uint8)  # several row blocks
    decoded = decode_image(encode(rgba, "PNG"), background=(9, 99, 199))
    np.testing.assert_array_equal(decoded.pixels, _over(rgba, (9, 99, 199)))


def _palette(seed: int = 3) -> Image.Image:
    return Image.fromarray(noise(seed=seed)).quantize(16)


@pytest.mark.parametrize(
    ("make", "transparent_at"),
    [
        (lambda: encode(_palette(), "PNG", transparency=int(np.asarray(_palette())[0, 0])), (0, 0)),
        (lambda: encode(_palette(), "GIF", transparency=int(np.asarray(_palette())[0, 0])), (0, 0)),
        (lambda: encode(noise(), "PNG", transparency=tuple(int(v) for v in noise()[0, 0])), (0, 0)),
        (lambda: encode(noise(channels=1), "PNG", transparency=int(noise(channels=1)[0, 0])), (0, 0)),
    ],
    ids=["P-png-tRNS", "P-gif-transparency", "RGB-png-colour-key", "L-png-grey-key"],
)
def test_transparent_palette_and_colour_keys_become_background(
    make: Callable[[], bytes], transparent_at: tuple[int, int]
) -> None:
    decoded = decode_image(make(), background=(1, 2, 3))
    assert tuple(decoded.pixels[transparent_at]) == (1, 2, 3)
    assert (decoded.pixels != (1, 2, 3)).any(axis=2).mean() > 0.5  # the rest keeps its colours


def test_palette_and_greyscale_decode_like_their_rgb_twins() -> None:
    palette = _palette()
    twin = np.asarray(palette.convert("RGB"))
    for fmt in ["PNG", "GIF", "BMP", "TIFF"]:
        decoded = decode_image(encode(palette, fmt))
        assert decoded.source_mode == "P", fmt
        np.testing.assert_array_equal(decoded.pixels, twin, err_msg=fmt)
    grey = noise(channels=1)
    for fmt in ["PNG", "TIFF", "BMP", "JPEG"]:
        decoded = decode_image(encode(grey, fmt, **({"quality": 100} if fmt == "JPEG" else {})))
        assert decoded.source_mode == "L", fmt
        assert (decoded.pixels == decoded.pixels[:, :, :1]).all(), fmt  # R = G = B
        tolerance = 2 if fmt == "JPEG" else 0
        assert np.abs(decoded.pixels[:, :, 0].astype(int) - grey).max() <= tolerance, fmt


@pytest.mark.parametrize(("fmt", "options"), [("PNG", {}), ("TIFF", {"compression": "group4"}), ("BMP", {})])
def test_bilevel_pictures_become_black_and_white(fmt: str, options: dict[str, object]) -> None:
    bits = noise(channels=1) > 127
    decoded = decode_image(encode(Image.fromarray(bits), fmt, **options))
    assert decoded.source_mode == "1"
    np.testing.assert_array_equal(decoded.pixels, np.repeat(np.where(bits, 255, 0)[:, :, None], 3, axis=2))


# --- formats: found from the content ------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "options", "expected", "tolerance"),
    [
        ("JPEG", {"quality": 100, "subsampling": 0}, "JPEG", 3),
        ("PNG", {}, "PNG", 0),
        ("TIFF", {"compression": "tiff_lzw"}, "TIFF", 0),
        ("WEBP", {"lossless": True}, "WEBP", 0),
        ("BMP", {}, "BMP", 0),
        ("AVIF", {"quality": 100}, "AVIF", 40),
    ],
)
def test_format_is_found_from_the_content(
    fmt: str, options: dict[str, object], expected: str, tolerance: int, tmp_path: Path
) -> None:
    rgb = quadrants()
    data = encode(rgb, fmt, **options)
    path = tmp_path / "picture.png" if fmt != "PNG" else tmp_path / "picture.jpg"  # a name that lies
    path.write_bytes(data)
    decoded = read_image(path)
    assert decoded.format == expected
    assert decoded.resolution_wh == (64, 32)
    assert np.abs(decoded.pixels.astype(int) - rgb).mean() <= max(tolerance / 10, 0)
    assert np.abs(decoded.pixels[4:12, 4:28].astype(int) - RED).max() <= tolerance


def test_heic_decodes_upright_through_the_heif_extra() -> None:
    pillow_heif = pytest.importorskip("pillow_heif", reason="the heif extra (pillow-heif) is not installed")
    assert pillow_heif.__version__ == "1.8.1"
    pillow_heif.register_heif_opener()  # for the test's own HEIF writer; decoding registers it lazily
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = np.ascontiguousarray(STORED_FOR_ORIENTATION[6](quadrants()))
    data = encode(stored, "HEIF", quality=95, exif=exif.tobytes())  # pillow-heif writes the rotation as irot
    assert data[4:12] == b"ftypheic"
    decoded = decode_image(data)
    assert decoded.format == "HEIF"
    assert decoded.resolution_wh == (64, 32)
    assert decoded.exif_orientation == 6
    assert np.abs(decoded.pixels.astype(int) - quadrants()).mean() < 3


LAZY_HEIF_SCRIPT = """
import json, sys
from pathlib import Path
block = sys.argv[2] == "without-heif"
if block:
    sys.modules["pillow_heif"] = None  # as if the heif extra were not installed
from shelftally.errors import MissingDependencyError
from workers.ingest import read_image
folder = Path(sys.argv[1])
read_image(folder / "a.png")
result = {"loaded_for_png": "pillow_heif" in sys.modules and not block}
try:
    result["heic_format"] = read_image(folder / "a.heic").format
except MissingDependencyError as error:
    result["error"] = [error.reason, str(error)]
print(json.dumps(result))
"""


@pytest.mark.parametrize("variant", ["with-heif", "without-heif"])
def test_heif_opener_is_registered_lazily_and_its_absence_named(variant: str, tmp_path: Path) -> None:
    """In a fresh interpreter: pillow-heif is not imported for a PNG, is registered by the first
    HEIC, and without it a HEIC is refused with the extra to install."""
    pillow_heif = pytest.importorskip("pillow_heif", reason="the heif extra (pillow-heif) is not installed")
    pillow_heif.register_heif_opener()
    (tmp_path / "a.png").write_bytes(encode(quadrants(), "PNG"))
    (tmp_path / "a.heic").write_bytes(encode(quadrants(), "HEIF", quality=90))
    run = subprocess.run(
        [sys.executable, "-c", LAZY_HEIF_SCRIPT, str(tmp_path), variant],
        capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[2], timeout=60,
    )
    result = json.loads(run.stdout)
    assert result["loaded_for_png"] is False
    if variant == "with-heif":
        assert result["heic_format"] == "HEIF"
    else:
        assert result["error"][0] == "missing_dependency" and "shelftally[heif]" in result["error"][1]


def test_multi_frame_files_give_their_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), colour) for colour in (RED, BLUE, GREEN)]
    for fmt, options in [("GIF", {}), ("TIFF", {}), ("WEBP", {"lossless": True}), ("PNG", {})]:
        buffer = io.BytesIO()
        frames[0].save(buffer, fmt, save_all=True, append_images=frames[1:], **options)
        decoded = decode_image(buffer.getvalue())
        assert (decoded.pixels == RED).all(), fmt
    buffer = io.BytesIO()
    frames[0].save(buffer, "MPO", save_all=True, append_images=frames[1:], quality=95)
    decoded = decode_image(buffer.getvalue())
    assert decoded.format == "JPEG"  # an MPO file is a JPEG with more pictures appended
    assert np.abs(decoded.pixels.astype(int) - RED).max() <= 3


# --- routes: path, bytes and stream agree ---------------------------------------------------------


class OneWayStream(io.RawIOBase):
    """A non-seekable upload that counts what is read from it."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        chunk = self._data.read(len(buffer))
        buffer[: len(chunk)] = chunk
        self.bytes_read += len(chunk)
        return len(chunk)


@pytest.mark.parametrize(
    "make",
    [
        lambda: oriented_file(6, "JPEG"),
        lambda: encode(_rgba_with(np.arange(960, dtype=np.uint8).reshape(24, 40)), "PNG"),
    ],
    ids=["jpeg-rotated", "png-rgba"],
)
def test_path_bytes_and_stream_give_the_same_picture(make: Callable[[], bytes], tmp_path: Path) -> None:
    data = make()
    path = tmp_path / "ascii.img"
    path.write_bytes(data)
    unicode_dir = tmp_path / "Lager ü"
    unicode_dir.mkdir()
    unicode_path = unicode_dir / "Regal-Äpfel 棚 🍎.jpg"
    unicode_path.write_bytes(data)
    with path.open("rb") as handle:
        from_handle = decode_stream(handle)
    results = {
        "bytes": decode_image(data),
        "path": read_image(path),
        "str path": read_image(str(path)),
        "unicode path": read_image(unicode_path),
        "BytesIO": decode_stream(io.BytesIO(data)),
        "open file": from_handle,
        "non-seekable": decode_stream(io.BufferedReader(OneWayStream(data))),
    }
    reference = results["bytes"]
    assert reference.sha256 == hashlib.sha256(data).hexdigest()
    for route, decoded in results.items():
        assert decoded.sha256 == reference.sha256, route
        assert decoded.format == reference.format and decoded.exif_orientation == reference.exif_orientation, route
        np.testing.assert_array_equal(decoded.pixels, reference.pixels, err_msg=route)


@pytest.mark.parametrize(
    ("size", "max_bytes", "reason"),
    [(1000, 1000, None), (1000, 999, "file_too_large"), (1000, 1, "file_too_large")],
)
def test_uploads_are_read_up_to_max_bytes(size: int, max_bytes: int, reason: str | None, tmp_path: Path) -> None:
    data = encode(quadrants(), "PNG")
    data += b"\x00" * (size - len(data))  # trailing bytes after IEND are ignored by PNG readers
    stream = OneWayStream(data)
    path = tmp_path / "upload.png"
    path.write_bytes(data)
    if reason is None:
        assert decode_stream(cast(BinaryIO, stream), max_bytes=max_bytes).sha256 == hashlib.sha256(data).hexdigest()
        assert read_image(path, max_bytes=max_bytes).resolution_wh == (64, 32)
    else:
        assert reason_of(lambda: decode_stream(cast(BinaryIO, stream), max_bytes=max_bytes)) == reason
        assert stream.bytes_read <= max_bytes + 1  # stopped reading, did not slurp the upload
        assert reason_of(lambda: read_image(path, max_bytes=max_bytes)) == reason


def test_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_image(tmp_path / "Lager ü" / "fehlt.jpg")
    with pytest.raises(IsADirectoryError):
        read_image(tmp_path)


# --- size limit ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("width", "height", "who"),
    [(12_000, 13_000, "this module (156 MP > 150 MP)"), (20_000, 20_000, "Pillow's own guard (400 MP > 179 MP)")],
)
def test_huge_picture_is_refused_from_its_header_without_decoding(width: int, height: int, who: str) -> None:
    data = blank_bilevel_png(width, height)  # a real, valid picture: ~50 KB that inflate to width x height
    assert len(data) < 100_000
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    started = time.perf_counter()
    try:
        reason = reason_of(lambda: decode_image(data))
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    rss_growth_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert reason == "image_too_large", who
    assert peak < 2_000_000  # Python-side allocations: the file, never its pixels
    assert rss_growth_kib < 50_000  # decoding would need >= 156 MB (1 byte per pixel) before converting
    assert elapsed < 0.5


def test_blank_bilevel_png_helper_makes_a_real_picture() -> None:
    decoded = decode_image(blank_bilevel_png(70, 30))
    assert decoded.resolution_wh == (70, 30) and decoded.source_mode == "1"
    assert not decoded.pixels.any()


def test_pixel_limit_is_configurable() -> None:
    data = encode(quadrants(), "PNG")  # 64 x 32 = 2048 pixels
    assert decode_image(data, max_pixels=2048).resolution_wh == (64, 32)
    assert reason_of(lambda: decode_image(data, max_pixels=2047)) == "image_too_large"
    assert reason_of(lambda: decode_stream(io.BytesIO(data), max_pixels=2047)) == "image_too_large"
    assert DEFAULT_MAX_PIXELS == 150_000_000


def test_pillow_global_limit_neither_warns_nor_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow warns above its MAX_IMAGE_PIXELS and fails above twice it; here max_pixels decides
    (up to Pillow's hard limit) and Pillow's settings and the warning filters stay as they were."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # as if a 1,600-pixel picture were 144 MP
    filters_before = list(warnings.filters)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        assert decode_image(blank_bilevel_png(40, 40)).resolution_wh == (40, 40)
        assert reason_of(lambda: decode_image(blank_bilevel_png(50, 50))) == "image_too_large"  # > 2 x 1000
    assert Image.MAX_IMAGE_PIXELS == 1000
    assert warnings.filters == filters_before


# --- the result type -----------------------------------------------------------------------------

SHA = "0" * 64


@pytest.mark.parametrize(
    ("pixels", "resolution_wh", "orientation", "sha256", "fmt", "message"),
    [
        (np.zeros((2, 3, 3), np.uint8), (3, 2), 1, SHA, "PNG", None),
        (np.zeros((0, 3, 3), np.uint8), (3, 0), 1, SHA, "PNG", "shape"),
        (np.zeros((2, 3), np.uint8), (3, 2), 1, SHA, "PNG", "shape"),
        (np.zeros((2, 3, 4), np.uint8), (3, 2), 1, SHA, "PNG", "shape"),
        (np.zeros((2, 3, 3), np.float32), (3, 2), 1, SHA, "PNG", "dtype"),
        (np.zeros((2, 3, 3), np.uint8), (2, 3), 1, SHA, "PNG", "resolution_wh"),
        (np.zeros((2, 3, 3), np.uint8), (3, 2), 0, SHA, "PNG", "exif_orientation"),
        (np.zeros((2, 3, 3), np.uint8), (3, 2), 9, SHA, "PNG", "exif_orientation"),
        (np.zeros((2, 3, 3), np.uint8), (3, 2), 1, "ABC", "PNG", "sha256"),
        (np.zeros((2, 3, 3), np.uint8), (3, 2), 1, SHA, "", "format"),
    ],
)
def test_decoded_image_checks_its_fields(
    pixels: npt.NDArray[np.generic],
    resolution_wh: tuple[int, int],
    orientation: int,
    sha256: str,
    fmt: str,
    message: str | None,
) -> None:
    def build() -> DecodedImage:
        return DecodedImage(pixels, sha256, fmt, resolution_wh, orientation)  # type: ignore[arg-type]

    if message is None:
        assert build().resolution_wh == resolution_wh
    else:
        with pytest.raises(ValueError, match=message):
            build()


def test_decoded_pixels_are_contiguous_and_read_only() -> None:
    strided = np.zeros((4, 6, 3), np.uint8)[:, ::2]
    image = DecodedImage(strided, SHA, "PNG", (3, 4))
    assert image.pixels.flags.c_contiguous and not image.pixels.flags.writeable
    own = np.zeros((4, 6, 3), np.uint8)
    DecodedImage(own, SHA, "PNG", (6, 4))
    assert own.flags.writeable  # the caller's array is left alone
    decoded = decode_image(encode(quadrants(), "PNG"))
    assert decoded.pixels.flags.c_contiguous and decoded.pixels.dtype == np.uint8


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_pixels": 0}, "max_pixels"),
        ({"max_pixels": True}, "max_pixels"),
        ({"background": (256, 0, 0)}, "background"),
        ({"background": (0, 0)}, "background"),
    ],
)
def test_bad_options_are_value_errors(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_image(encode(quadrants(), "PNG"), **options)  # type: ignore[arg-type]


# --- real photos ---------------------------------------------------------------------------------


@pytest.mark.skipif(not GROCERY.is_dir(), reason="../shared/data/grocerystore is not on this machine")
def test_real_photos_match_opencv() -> None:
    photos = sorted(GROCERY.rglob("*.jpg"))[::500][:6]
    assert photos
    for photo in photos:
        decoded = read_image(photo)
        reference = opencv_rgb(photo.read_bytes())
        assert decoded.format == "JPEG" and decoded.pixels.shape == reference.shape, photo.name
        assert np.abs(decoded.pixels.astype(np.int16) - reference).mean() < 1, photo.name


def _jpeg_with_exif(tags: dict[int, str], sub: dict[int, str]) -> bytes:
    exif = Image.Exif()
    for tag, value in tags.items():
        exif[tag] = value
    ifd = exif.get_ifd(0x8769)
    for tag, value in sub.items():
        ifd[tag] = value
    out = io.BytesIO()
    Image.new("RGB", (16, 8), (10, 20, 30)).save(out, "JPEG", exif=exif)
    return out.getvalue()


@pytest.mark.parametrize(
    ("tags", "sub", "expected"),
    [
        ({}, {}, None),
        ({0x0132: "2024:05:06 07:08:09"}, {}, datetime(2024, 5, 6, 7, 8, 9)),  # DateTime, naive
        ({0x0132: "2020:01:01 00:00:00"}, {0x9003: "2026:11:28 09:15:30", 0x9011: "+01:00"},
         datetime(2026, 11, 28, 8, 15, 30, tzinfo=UTC)),  # DateTimeOriginal wins, with its offset
        ({}, {0x9003: "2026:11:28 09:15:30"}, datetime(2026, 11, 28, 9, 15, 30)),
        ({0x0132: "0000:00:00 00:00:00"}, {}, None),  # cameras write zeros for "unknown"
        ({0x0132: "garbage"}, {}, None),
    ],
)
def test_exif_capture_time(tags: dict[int, str], sub: dict[int, str], expected: datetime | None) -> None:
    taken = decode_image(_jpeg_with_exif(tags, sub)).exif_datetime_original
    assert taken == expected
    if expected is not None:
        assert (taken.tzinfo is None) == (expected.tzinfo is None)  # type: ignore[union-attr]


def test_not_an_image_even_after_ultralytics_replaced_pillows_open(monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing ultralytics wraps PIL.Image.open with a pip-installing HEIF retry; decoding ignores it."""
    patches = pytest.importorskip("ultralytics.utils.patches")
    monkeypatch.setattr(Image, "open", patches.image_open)  # as right after `import ultralytics`
    monkeypatch.setattr(patches, "_pil_plugins_registered", False)
    with pytest.raises(InvalidImageError) as caught:
        decode_image(b"<!DOCTYPE html><html><body>Login</body></html>")
    assert caught.value.reason == "not_an_image"
