"""Picture bytes to upright RGB pixels: the one place ShelfTally decodes an image.

Every route (a path, bytes, an upload stream) ends in :func:`decode_image`, which decodes the
bytes once with Pillow, so the same file gives the same array and the same ``sha256`` whichever
way it arrived. Nothing here calls ``cv2.imread`` on a path (it fails on non-ASCII paths on
Windows, answers a damaged file with ``None`` instead of a reason, and ignores EXIF orientation in
some formats).

What a caller gets is a :class:`DecodedImage` whose ``pixels`` are (H, W, 3) uint8 **RGB**, the
channel order ``detector.preprocess`` and ``classifier.preprocess`` take (a model whose
``preprocess.json`` says BGR is flipped there, not here), upright and C-contiguous:

* **Format** comes from the content, never the file name (a JPEG named ``.png`` is a JPEG).
  Covered: JPEG (MPO, the multi-picture JPEG many cameras write, is reported as ``"JPEG"``),
  PNG, TIFF (including 1-bit CCITT G4 scans), WebP, BMP, GIF, AVIF (Pillow's own plugin), HEIC
  and HEIF through the optional ``heif`` extra (``pip install 'shelftally[heif]'``, pillow-heif,
  registered with Pillow the first time a HEIF picture arrives) and any other format Pillow
  opens.
* **Orientation**: the EXIF Orientation tag (all eight values) is applied with
  :func:`PIL.ImageOps.exif_transpose`. HEIF and AVIF rotations stored in the container
  (``irot``/``imir``) are applied by their decoder; pillow-heif then resets the EXIF tag, and
  ``exif_orientation`` reports the tag the file carried.
* **Modes**: ``RGB`` as is; ``L`` (greyscale) and ``1`` (bilevel) become R = G = B; ``P``
  (palette) through its palette; ``CMYK`` (JPEG CMYK files follow Adobe's inverted convention,
  which Pillow undoes on open; CMYK TIFF is stored plainly) and ``YCbCr`` by Pillow's
  conversion. No ICC colour management is applied (embedded profiles are ignored), so CMYK
  becomes R = (255 - C)(255 - K) / 255 (likewise G from M, B from Y), Pillow's formula, not a
  press-accurate rendering.
* **16-bit samples** (``I;16``, ``I;16B``, ``I;16L`` greyscale PNG, TIFF, PGM) keep their top 8
  bits, ``v >> 8``, computed in numpy (Pillow's own ``convert("RGB")`` clips them to 255 instead).
  That is the rule Pillow applies itself when it opens 16-bit RGB(A) PNG and TIFF, which arrive
  here already as 8-bit ``RGB``/``RGBA`` (``source_mode`` then says ``"RGB"``), so every 16-bit
  picture is reduced the same way. Mode ``I`` (32-bit integer, as Pillow reads 16-bit PGM) is
  read the same way when all its values lie in 0..65535 and refused (``unsupported_image``)
  otherwise; mode ``F`` (32-bit float) has no defined 0..255 scale and is refused. Samples are
  taken as stored: a 16-bit PNG that holds 12-bit data (``sBIT``) comes out dark, not stretched.
* **Transparency** (``RGBA``, ``LA``, ``PA``, ``RGBa``, ``La``, a palette or colour key with
  ``transparency``) is composited over ``background`` (default white, ``(255, 255, 255)``):
  ``out = round((c * a + background * (255 - a)) / 255)`` per channel, so an opaque pixel keeps
  its colour and a fully transparent one becomes ``background``. Transparency of 16-bit
  greyscale pictures is ignored.
* **Several frames** (animated GIF, WebP, APNG, multi-page TIFF, MPO): the first frame only.

Failures raise :class:`~shelftally.errors.InvalidImageError` with one of these reasons:
``empty_file``, ``file_too_large`` (stream routes, more than ``max_bytes``), ``not_an_image``,
``corrupt_image`` (truncated JPEG, a PNG with a damaged IDAT or a wrong chunk CRC, a header that
starts like a known format and breaks), ``image_too_large`` (more pixels than ``max_pixels``)
and ``unsupported_image`` (modes ``F`` and out-of-range ``I``, or a mode Pillow cannot convert).

**Size limit and Pillow's own guard.** The pixel count comes from the header (Pillow's
``Image.open`` is lazy) and is checked before a single pixel is decoded; a larger picture is
rejected without allocating it. This module never changes Pillow's global settings:

* ``PIL.Image.MAX_IMAGE_PIXELS`` (89.5 MP by default) makes Pillow warn above it and raise
  ``DecompressionBombError`` above twice it (179 MP) while opening. The warning is silenced for
  the duration of each decode with :class:`warnings.catch_warnings` (on Python 3.11 that swaps
  the process-wide filter list for the call). Pillow's error becomes ``image_too_large``. So
  with ``max_pixels`` above
  twice Pillow's limit, Pillow's limit still applies; a process that needs larger pictures
  raises ``PIL.Image.MAX_IMAGE_PIXELS`` once at start-up. Caveat of that filter: when threads
  decode concurrently, one thread's exit can restore the list while another's entry is still
  in it, leaving a single "ignore DecompressionBombWarning" filter installed for the process,
  and a filter another thread adds during a decode can be lost. Worker processes that decode
  one picture at a time are not affected.
* ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` must stay False (Pillow's default); with it set, a
  truncated JPEG would decode with a grey bottom instead of failing, so every decode refuses to
  run and raises :class:`~shelftally.errors.ConfigurationError`.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import struct
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import BinaryIO, Final

import numpy as np
import numpy.typing as npt
from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError

from shelftally.errors import ConfigurationError, InvalidImageError, MissingDependencyError

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS: Final[int] = 150_000_000
"""Largest picture decoded by default, in pixels (width x height): 150 MP."""

DEFAULT_MAX_BYTES: Final[int] = 200_000_000
"""Largest upload read from a stream or file by default, in bytes: 200 MB."""

WHITE: Final[tuple[int, int, int]] = (255, 255, 255)
"""The default background that transparent pixels are composited over (RGB)."""

_READ_CHUNK_BYTES: Final[int] = 1 << 20
_COMPOSITE_ROWS: Final[int] = 256  # rows composited at a time, bounds the uint16 temporaries
_ALPHA_MODES: Final[frozenset[str]] = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
# Exceptions Pillow and its plugins raise on damaged data, while opening or decoding.
_DECODE_ERRORS: Final = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)
# ISO BMFF brands of HEIF pictures (ISO/IEC 23008-12), read by pillow-heif.
_HEIF_BRANDS: Final[frozenset[bytes]] = frozenset(
    {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1"}
)
_AVIF_BRANDS: Final[frozenset[bytes]] = frozenset({b"avif", b"avis"})
_BMP_HEADER_SIZES: Final[frozenset[int]] = frozenset({12, 40, 52, 56, 64, 108, 124})


@dataclass(frozen=True, eq=False)
class DecodedImage:
    """One decoded picture, upright, in the form every model of ShelfTally takes.

    Attributes:
        pixels: (H, W, 3) uint8, RGB (not BGR), 0..255, C-contiguous, upright (the EXIF or
            container orientation already applied). Read-only: copy it before drawing on it.
        sha256: Lowercase hex SHA-256 of the original file bytes (64 characters), the picture's
            identity for idempotent tasks.
        format: The file format found from the content, as Pillow names it: ``"JPEG"``,
            ``"PNG"``, ``"TIFF"``, ``"WEBP"``, ``"BMP"``, ``"GIF"``, ``"AVIF"``, ``"HEIF"``, ...
        resolution_wh: (width, height) of ``pixels`` in pixels, i.e. of the upright picture.
        exif_orientation: The EXIF Orientation the file carried, 1..8 (1: absent, invalid or
            already upright); ``pixels`` has it applied.
        source_mode: Pillow's mode of the picture as opened, before conversion to RGB
            (``"RGB"``, ``"L"``, ``"P"``, ``"CMYK"``, ``"I;16"``, ``"RGBA"``, ``"1"``, ...).
        exif_datetime_original: when the camera says the picture was taken: EXIF
            DateTimeOriginal (tag 0x9003; DateTime 0x0132 when it is absent), aware when the
            file also gives OffsetTimeOriginal (0x9011), naive (camera local time) otherwise;
            None when absent or unparsable (EXIF 2.32, CIPA DC-008-2019, 4.6.5).

    Instances compare by identity (``pixels`` is an array); compare ``sha256`` or the arrays.

    Raises:
        ValueError: on construction, when ``pixels`` is not (H, W, 3) uint8 with H, W >= 1,
            ``resolution_wh`` is not its (W, H), ``exif_orientation`` is outside 1..8,
            ``sha256`` is not 64 lowercase hex digits or ``format`` is empty; the message says
            expected and received.
    """

    pixels: npt.NDArray[np.uint8]
    sha256: str
    format: str
    resolution_wh: tuple[int, int]
    exif_orientation: int = 1
    source_mode: str = "RGB"
    exif_datetime_original: datetime | None = None

    def __post_init__(self) -> None:
        pixels = np.asarray(self.pixels)
        if pixels.dtype != np.uint8:
            raise ValueError(f"pixels: expected dtype uint8, received {pixels.dtype}")
        if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.shape[0] < 1 or pixels.shape[1] < 1:
            raise ValueError(f"pixels: expected shape (H, W, 3) with H, W >= 1, received {pixels.shape}")
        height, width = int(pixels.shape[0]), int(pixels.shape[1])
        if tuple(self.resolution_wh) != (width, height):
            raise ValueError(
                f"resolution_wh: expected (width, height) of pixels {(width, height)}, received {self.resolution_wh}"
            )
        if isinstance(self.exif_orientation, bool) or self.exif_orientation not in range(1, 9):
            raise ValueError(f"exif_orientation: expected an integer in 1..8, received {self.exif_orientation!r}")
        if len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256):
            raise ValueError(f"sha256: expected 64 lowercase hex digits, received {self.sha256!r}")
        if not self.format:
            raise ValueError("format: expected a format name, received an empty string")
        view = np.ascontiguousarray(pixels).view()
        view.flags.writeable = False  # a view: the caller's own array stays writable
        object.__setattr__(self, "pixels", view)
        object.__setattr__(self, "resolution_wh", (width, height))


def decode_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    background: Sequence[int] = WHITE,
) -> DecodedImage:
    """Decode a picture's bytes into upright RGB pixels (see the module docstring for the rules).

    Args:
        data: The whole file, as it came from the camera, phone, scanner or upload.
        max_pixels: Largest width x height accepted, checked from the header before decoding
            (default 150 MP). Pillow's own guard still applies above twice
            ``PIL.Image.MAX_IMAGE_PIXELS`` (179 MP by default).
        background: (R, G, B) 0..255 that transparent pixels are composited over (default white).

    Returns:
        The decoded picture; ``pixels`` (H, W, 3) uint8 RGB, upright.

    Raises:
        InvalidImageError: ``empty_file``, ``not_an_image``, ``corrupt_image``,
            ``image_too_large`` or ``unsupported_image`` (the ``reason``).
        MissingDependencyError: a HEIC/HEIF picture while the ``heif`` extra is not installed.
        ConfigurationError: ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` has been set by someone.
        ValueError: ``max_pixels`` < 1 or ``background`` is not three integers in 0..255.
    """
    _check_positive("max_pixels", max_pixels)
    fill = _check_background(background)
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise ConfigurationError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True, so Pillow would decode truncated pictures "
            "with grey rows instead of failing; leave it False (the default) in any process that ingests pictures"
        )
    if not data:
        raise InvalidImageError("the file is empty (0 bytes)", reason="empty_file")
    data = bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    kind = _sniff(data)
    if kind == "HEIF":
        _register_heif_opener()
    with warnings.catch_warnings():
        # Pillow warns above its own MAX_IMAGE_PIXELS; this call enforces max_pixels instead.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        pixels, picture_format, source_mode, orientation, taken = _decode(data, kind, max_pixels, fill)
    decoded = DecodedImage(
        pixels=pixels,
        sha256=digest,
        format=picture_format,
        resolution_wh=(int(pixels.shape[1]), int(pixels.shape[0])),
        exif_orientation=orientation,
        source_mode=source_mode,
        exif_datetime_original=taken,
    )
    logger.debug(
        "decoded sha256=%s format=%s mode=%s orientation=%d resolution_wh=%s",
        digest, picture_format, source_mode, orientation, decoded.resolution_wh,
    )
    return decoded


def decode_stream(
    stream: BinaryIO,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    background: Sequence[int] = WHITE,
) -> DecodedImage:
    """Read an upload (any binary file-like object, seekable or not) and decode it.

    Reads from the stream's current position to its end, never more than ``max_bytes`` + 1
    bytes, and leaves the stream open.

    Args:
        stream: Binary stream (an open file, ``io.BytesIO``, a web framework's upload object).
        max_pixels: As :func:`decode_image`.
        max_bytes: Largest upload accepted, in bytes (default 200 MB).
        background: As :func:`decode_image`.

    Returns:
        The decoded picture, identical to :func:`decode_image` on the same bytes.

    Raises:
        InvalidImageError: ``file_too_large`` when the stream holds more than ``max_bytes``;
            otherwise as :func:`decode_image`.
        MissingDependencyError: as :func:`decode_image`.
        ConfigurationError: as :func:`decode_image`.
        ValueError: a limit < 1 or a bad ``background``.
        OSError: the stream itself fails to read.
    """
    _check_positive("max_bytes", max_bytes)
    return decode_image(_read_at_most(stream, max_bytes), max_pixels=max_pixels, background=background)


def read_image(
    path: str | os.PathLike[str],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    background: Sequence[int] = WHITE,
) -> DecodedImage:
    """Read a picture file with Python's own file API (any Unicode path) and decode its bytes.

    Args:
        path: The picture's path; its name and extension play no part in decoding.
        max_pixels: As :func:`decode_image`.
        max_bytes: Largest file accepted, in bytes (default 200 MB).
        background: As :func:`decode_image`.

    Returns:
        The decoded picture, identical to :func:`decode_image` on the file's bytes.

    Raises:
        FileNotFoundError: no file at ``path`` (a caller's problem, not the picture's, so not an
            :class:`InvalidImageError`); other ``OSError`` subclasses when it cannot be read
            (``IsADirectoryError``, ``PermissionError``).
        InvalidImageError: as :func:`decode_stream`.
        MissingDependencyError: as :func:`decode_image`.
        ConfigurationError: as :func:`decode_image`.
        ValueError: a limit < 1 or a bad ``background``.
    """
    _check_positive("max_bytes", max_bytes)
    with open(path, "rb") as handle:
        return decode_stream(handle, max_pixels=max_pixels, max_bytes=max_bytes, background=background)


def _decode(
    data: bytes, kind: str | None, max_pixels: int, background: tuple[int, int, int]
) -> tuple[npt.NDArray[np.uint8], str, str, int, datetime | None]:
    """Open, check, verify, load, orient and convert; returns (pixels, format, source mode, orientation, taken)."""
    image = _open(data, kind)
    try:
        width, height = image.size
        if width < 1 or height < 1:
            raise InvalidImageError(
                f"the header declares an empty picture ({width} x {height})", reason="corrupt_image"
            )
        if width * height > max_pixels:
            raise InvalidImageError(
                f"the picture is {width} x {height} = {width * height} pixels, more than the limit of {max_pixels}",
                reason="image_too_large",
            )
        picture_format = "JPEG" if image.format == "MPO" else (image.format or kind or "UNKNOWN")
        source_mode = image.mode
        if image.format == "PNG":
            # Every chunk's CRC: Pillow's decoder checks the header chunks but not the IDAT ones.
            _guarded(image.verify)
            image.close()
            image = _open(data, kind)  # verify() leaves the image unusable
        _guarded(image.load)  # the first frame only
        orientation = _exif_orientation(image)
        taken = _exif_datetime_original(image)
        _guarded(lambda: ImageOps.exif_transpose(image, in_place=True))
        return _to_rgb(image, background), picture_format, source_mode, orientation, taken
    finally:
        image.close()


def _pillow_open() -> Callable[[io.BytesIO], ImageFile.ImageFile]:
    """Pillow's own ``Image.open``, also when a library has replaced it.

    Importing ultralytics (training, export) replaces ``PIL.Image.open`` with a wrapper that, on
    a file Pillow cannot identify, tries to pip-install a HEIF plugin and fails offline with
    ``ModuleNotFoundError``; the wrapper keeps the original as ``_image_open`` in its module.
    """
    opener = Image.open
    if getattr(opener, "__module__", "PIL.Image") != "PIL.Image":
        original = getattr(opener, "__globals__", {}).get("_image_open")
        if callable(original) and getattr(original, "__module__", "") == "PIL.Image":
            return original  # type: ignore[no-any-return]
    return opener


def _open(data: bytes, kind: str | None) -> ImageFile.ImageFile:
    """``Image.open`` on the bytes, its failures mapped to a reason."""
    try:
        return _pillow_open()(io.BytesIO(data))
    except Image.DecompressionBombError as error:
        raise InvalidImageError(
            f"the picture is larger than Pillow's own limit: {error} "
            "(raise PIL.Image.MAX_IMAGE_PIXELS at start-up to decode such pictures)",
            reason="image_too_large",
        ) from error
    except UnidentifiedImageError as error:
        if kind is None:
            raise InvalidImageError(
                "the content is not a picture in any format Pillow reads (the file name does not matter)",
                reason="not_an_image",
            ) from error
        if kind == "HEIF" and not _register_heif_opener():
            raise MissingDependencyError(
                "HEIC/HEIF pictures need pillow-heif: pip install 'shelftally[heif]'"
            ) from error
        raise InvalidImageError(
            f"the content starts like {kind} but its header is damaged", reason="corrupt_image"
        ) from error
    except _DECODE_ERRORS as error:
        # A Pillow plugin accepted the first bytes and then failed on the header. Its prefix test
        # can be two bytes ("BM"), so only a known signature makes this a damaged picture.
        if kind is None:
            raise InvalidImageError(
                f"the content is not a picture Pillow can read: {error}", reason="not_an_image"
            ) from error
        raise InvalidImageError(
            f"the {kind} header is damaged or cut short: {error}", reason="corrupt_image"
        ) from error


def _guarded(step: Callable[[], object]) -> None:
    """Run a Pillow step that reads pixel data, mapping failures on damaged data to a reason."""
    try:
        step()
    except Image.DecompressionBombError as error:
        raise InvalidImageError(
            f"the picture is larger than Pillow's own limit: {error}", reason="image_too_large"
        ) from error
    except _DECODE_ERRORS as error:
        raise InvalidImageError(f"the picture is damaged or truncated: {error}", reason="corrupt_image") from error


def _exif_orientation(image: Image.Image) -> int:
    """The EXIF Orientation the file carried (pillow-heif keeps it in ``original_orientation``), 1..8."""
    original = image.info.get("original_orientation")
    if isinstance(original, int):
        value: object = original
    else:
        try:
            value = image.getexif().get(ExifTags.Base.Orientation, 1)
        except _DECODE_ERRORS:
            logger.debug("unreadable EXIF block; orientation taken as 1")
            value = 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


_EXIF_IFD: Final[int] = 0x8769
_DATETIME: Final[int] = 0x0132
_DATETIME_ORIGINAL: Final[int] = 0x9003
_OFFSET_TIME_ORIGINAL: Final[int] = 0x9011


def _exif_datetime_original(image: Image.Image) -> datetime | None:
    """EXIF DateTimeOriginal (else DateTime), with OffsetTimeOriginal when present; None if unusable."""
    try:
        exif = image.getexif()
        sub = exif.get_ifd(_EXIF_IFD)
        text = sub.get(_DATETIME_ORIGINAL) or exif.get(_DATETIME)
        if not isinstance(text, str):
            return None
        taken = datetime.strptime(text.strip().rstrip("\x00")[:19], "%Y:%m:%d %H:%M:%S")
        offset = sub.get(_OFFSET_TIME_ORIGINAL)
        if isinstance(offset, str) and offset.strip():
            taken = taken.replace(tzinfo=datetime.strptime(offset.strip().rstrip("\x00"), "%z").tzinfo)
        return taken
    except (*_DECODE_ERRORS, TypeError, KeyError):  # unparsable metadata never rejects a good picture
        return None


def _to_rgb(image: Image.Image, background: tuple[int, int, int]) -> npt.NDArray[np.uint8]:
    """(H, W, 3) uint8 RGB from a loaded, upright Pillow image of any mode."""
    mode = image.mode
    if mode == "F":
        raise InvalidImageError(
            "32-bit float pictures (mode F) have no defined 0..255 scale", reason="unsupported_image"
        )
    if mode == "I" or mode.startswith("I;16"):
        samples = np.asarray(image)
        if mode == "I" and samples.size and (int(samples.min()) < 0 or int(samples.max()) > 0xFFFF):
            raise InvalidImageError(
                "32-bit integer samples outside 0..65535 (mode I) have no defined 8-bit reading",
                reason="unsupported_image",
            )
        grey = (samples.astype(np.uint32) >> 8).astype(np.uint8)  # top 8 of 16 bits, as Pillow does for RGB
        return np.ascontiguousarray(np.repeat(grey[:, :, np.newaxis], 3, axis=2))
    try:
        if mode in _ALPHA_MODES or "transparency" in image.info:
            return _composite(np.asarray(image.convert("RGBA")), background)
        rgb = image if mode == "RGB" else image.convert("RGB")
    except ValueError as error:
        raise InvalidImageError(
            f"pictures of mode {mode} cannot be converted to RGB", reason="unsupported_image"
        ) from error
    return np.ascontiguousarray(np.asarray(rgb), dtype=np.uint8)


def _composite(rgba: npt.NDArray[np.uint8], background: tuple[int, int, int]) -> npt.NDArray[np.uint8]:
    """(H, W, 3) uint8 of (H, W, 4) uint8 RGBA over an opaque ``background``, rounded to nearest."""
    if bool(np.all(rgba[:, :, 3] == 255)):
        return np.ascontiguousarray(rgba[:, :, :3])
    out = np.empty((*rgba.shape[:2], 3), np.uint8)
    fill = np.asarray(background, np.uint16)
    for top in range(0, rgba.shape[0], _COMPOSITE_ROWS):
        # c * a + fill * (255 - a) + 127 <= 255 * 255 + 127 fits uint16
        block = rgba[top : top + _COMPOSITE_ROWS].astype(np.uint16)
        alpha = block[:, :, 3:4]
        out[top : top + _COMPOSITE_ROWS] = (block[:, :, :3] * alpha + fill * (255 - alpha) + 127) // 255
    return out


def _sniff(data: bytes) -> str | None:
    """The format the first bytes announce (only to tell damaged pictures from non-pictures)."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if data.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
        return "TIFF"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "WEBP"
    if data.startswith(b"BM") and len(data) >= 18 and struct.unpack("<I", data[14:18])[0] in _BMP_HEADER_SIZES:
        return "BMP"
    if data[4:8] == b"ftyp":
        if data[8:12] in _HEIF_BRANDS:
            return "HEIF"
        if data[8:12] in _AVIF_BRANDS:
            return "AVIF"
    return None


@cache
def _register_heif_opener() -> bool:
    """Register pillow-heif's HEIF opener with Pillow once; False when the ``heif`` extra is absent."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        logger.info("pillow-heif is not installed; HEIC/HEIF pictures are refused (pip install 'shelftally[heif]')")
        return False
    register_heif_opener()
    return True


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, received {value!r}")


def _check_background(background: Sequence[int]) -> tuple[int, int, int]:
    values = tuple(background)
    if len(values) != 3 or any(
        isinstance(v, bool) or not isinstance(v, int | np.integer) or not 0 <= v <= 255 for v in values
    ):
        raise ValueError(f"background: expected (R, G, B) integers in 0..255, received {background!r}")
    return (int(values[0]), int(values[1]), int(values[2]))


def _read_at_most(stream: BinaryIO, max_bytes: int) -> bytes:
    """The rest of ``stream``, read in 1 MiB blocks; ``file_too_large`` past ``max_bytes``."""
    blocks: list[bytes] = []
    total = 0
    while True:
        block = stream.read(min(_READ_CHUNK_BYTES, max_bytes + 1 - total))
        if not block:
            break
        blocks.append(block)
        total += len(block)
        if total > max_bytes:
            raise InvalidImageError(f"the file holds more than the limit of {max_bytes} bytes", reason="file_too_large")
    return b"".join(blocks)
