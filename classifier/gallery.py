"""Few-shot enrollment: a versioned gallery of SKU prototypes in the model directory.

Layout::

    gallery/v0001.npz   sku_code (K,) str, prototype (K, D) float32 unit rows, pictures (K,) int64
    gallery/v0002.npz   every version holds the whole gallery, written once and made read-only
    gallery/current     the file name of the current version ("v0002.npz"), replaced atomically

:func:`enroll` embeds 1-10 reference pictures of a SKU with the model (no retraining), averages
and re-normalises their embeddings into a prototype, and writes a new version holding the
previous entries plus this one (enrolling a code again replaces its prototype); then the
``current`` pointer moves to it. Old versions stay, so a pointer can be moved back
(:func:`set_current`). How predictions use the gallery: :mod:`classifier.recognize`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from classifier.dataset import load_image
from classifier.errors import ClassifierError
from classifier.model_dir import ModelDir, read_model_dir
from classifier.types import Classifications

__all__ = [
    "GALLERY",
    "MAX_PICTURES",
    "Gallery",
    "GalleryError",
    "current_version",
    "enroll",
    "list_versions",
    "prototype_from_embeddings",
    "read_gallery",
    "set_current",
]

GALLERY = "gallery"
MAX_PICTURES = 10
_CURRENT = "current"
_VERSION = re.compile(r"^v(\d{4,})\.npz$")


class GalleryError(ClassifierError):
    """A gallery cannot be read or changed.

    Reasons: ``invalid_pictures`` (not 1-10 usable pictures), ``invalid_sku_code``,
    ``unknown_version``, ``gallery_unreadable``, ``embedding_mismatch`` (the gallery's width
    differs from the model's embedding).
    """

    reason = "gallery_error"


@dataclass(frozen=True)
class Gallery:
    """One version of the gallery.

    Attributes:
        version: file name of the version (``"v0003.npz"``), or ``""`` for the empty gallery.
        sku_codes: K enrolled SKU codes.
        prototypes: (K, D) float32 unit rows.
        pictures: (K,) int64, reference pictures averaged into each prototype.
    """

    version: str
    sku_codes: list[str]
    prototypes: npt.NDArray[np.float32]
    pictures: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.sku_codes)


def _folder(model_dir: str | Path | ModelDir) -> Path:
    root = model_dir.path if isinstance(model_dir, ModelDir) else Path(model_dir)
    return root / GALLERY


def list_versions(model_dir: str | Path | ModelDir) -> list[str]:
    """Version file names, oldest first (empty when nothing was enrolled)."""
    folder = _folder(model_dir)
    if not folder.is_dir():
        return []
    names = [p.name for p in folder.iterdir() if _VERSION.match(p.name)]
    return sorted(names, key=lambda n: int(_VERSION.match(n).group(1)))  # type: ignore[union-attr]


def current_version(model_dir: str | Path | ModelDir) -> str:
    """The current version's file name, ``""`` when nothing was enrolled.

    Raises:
        GalleryError: the pointer names a missing version (reason ``gallery_unreadable``).
    """
    pointer = _folder(model_dir) / _CURRENT
    if not pointer.is_file():
        return ""
    name = pointer.read_text(encoding="utf-8").strip()
    if not _VERSION.match(name) or not (pointer.parent / name).is_file():
        raise GalleryError(f"{pointer} names {name!r}, which is not a gallery version", reason="gallery_unreadable")
    return name


def read_gallery(model_dir: str | Path | ModelDir, version: str | None = None) -> Gallery:
    """Read one version of the gallery (default the current one; empty when nothing was enrolled).

    Raises:
        GalleryError: unknown version (reason ``unknown_version``) or unreadable file
            (``gallery_unreadable``).
    """
    name = current_version(model_dir) if version is None else version
    if not name:
        return Gallery("", [], np.zeros((0, 0), np.float32), np.zeros(0, np.int64))
    path = _folder(model_dir) / name
    if not _VERSION.match(name) or not path.is_file():
        raise GalleryError(
            f"no gallery version {name!r}; versions: {', '.join(list_versions(model_dir)) or 'none'}",
            reason="unknown_version",
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            codes = [str(c) for c in data["sku_code"].tolist()]
            prototypes = data["prototype"].astype(np.float32)
            pictures = data["pictures"].astype(np.int64)
    except (OSError, KeyError, ValueError) as error:
        raise GalleryError(f"cannot read {path}: {error}", reason="gallery_unreadable") from error
    return Gallery(name, codes, prototypes, pictures)


def set_current(model_dir: str | Path | ModelDir, version: str) -> None:
    """Point ``gallery/current`` at an existing version (atomic rename).

    Raises:
        GalleryError: no such version (reason ``unknown_version``).
    """
    folder = _folder(model_dir)
    if not _VERSION.match(version) or not (folder / version).is_file():
        raise GalleryError(f"no gallery version {version!r}", reason="unknown_version")
    temporary = folder / f".{_CURRENT}.{os.getpid()}"
    temporary.write_text(version + "\n", encoding="utf-8")
    os.replace(temporary, folder / _CURRENT)


def _write_version(folder: Path, gallery: Gallery) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    versions = list_versions(folder.parent)
    number = int(_VERSION.match(versions[-1]).group(1)) + 1 if versions else 1  # type: ignore[union-attr]
    while True:
        name = f"v{number:04d}.npz"
        try:
            handle = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:  # another process enrolled at the same time
            number += 1
            continue
        with os.fdopen(handle, "wb") as file:
            np.savez(
                file, sku_code=np.array(gallery.sku_codes, dtype=np.str_),
                prototype=gallery.prototypes.astype(np.float32), pictures=gallery.pictures.astype(np.int64),
            )
        os.chmod(folder / name, 0o444)
        return name


def prototype_from_embeddings(embedding: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    """One SKU's prototype: the mean of its reference pictures' embeddings, re-normalised.

    Args:
        embedding: (K, D) embeddings of K >= 1 reference pictures (unit rows).

    Returns:
        (D,) float32 with unit L2 norm (a zero mean stays zero).

    Raises:
        ValueError: ``embedding`` is not (K, D) with K >= 1.
    """
    rows = np.asarray(embedding, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[0] < 1:
        raise ValueError(f"embedding: expected (K, D) with K >= 1, received {rows.shape}")
    mean = rows.mean(axis=0)
    prototype: npt.NDArray[np.float32] = (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)
    return prototype


def enroll(
    model_dir: str | Path | ModelDir,
    sku_code: str,
    pictures: Sequence[str | Path | npt.NDArray[np.uint8]],
    *,
    backend: str = "onnx",
    embed: Classifications | None = None,
) -> Gallery:
    """Add (or replace) a SKU in the gallery from 1-10 reference pictures, without retraining.

    Args:
        model_dir: the model directory.
        sku_code: the SKU's code.
        pictures: image files or (h, w, 3) uint8 RGB crops, tight around the product.
        backend: the runtime that embeds the pictures (:func:`classifier.backends.load`).
        embed: the pictures' classifications when already computed (skips the backend).

    Returns:
        The new current version.

    Raises:
        GalleryError: no SKU code (reason ``invalid_sku_code``), not 1-10 pictures
            (``invalid_pictures``), or the model's embedding width differs from the gallery's
            (``embedding_mismatch``).
        DatasetError: a picture file cannot be decoded (reason ``unreadable_image``).
        ModelLoadError, MissingDependencyError: the backend cannot be loaded.
    """
    code = sku_code.strip()
    if not code:
        raise GalleryError("sku_code: expected a non-empty SKU code", reason="invalid_sku_code")
    if not 1 <= len(pictures) <= MAX_PICTURES:
        raise GalleryError(
            f"pictures: expected 1 to {MAX_PICTURES} reference pictures, received {len(pictures)}",
            reason="invalid_pictures",
        )
    directory = model_dir if isinstance(model_dir, ModelDir) else read_model_dir(model_dir)
    if embed is None:
        from classifier.backends import load

        crops = [p if isinstance(p, np.ndarray) else load_image(p) for p in pictures]
        with load(directory, backend=backend, warmup=False) as classifier:
            embed = classifier.classify(crops)
    prototype = prototype_from_embeddings(embed.embedding)
    previous = read_gallery(directory)
    if len(previous) and previous.prototypes.shape[1] != prototype.shape[0]:
        raise GalleryError(
            f"gallery {previous.version} has {previous.prototypes.shape[1]}-D prototypes, the model "
            f"{prototype.shape[0]}-D embeddings (retrained model?)",
            reason="embedding_mismatch",
        )
    keep = [i for i, c in enumerate(previous.sku_codes) if c != code]
    prototypes = np.concatenate([previous.prototypes[keep].reshape(len(keep), prototype.shape[0]), prototype[None]])
    gallery = Gallery(
        "", [previous.sku_codes[i] for i in keep] + [code], prototypes.astype(np.float32),
        np.concatenate([previous.pictures[keep], np.array([len(pictures)], np.int64)]),
    )
    folder = _folder(directory)
    name = _write_version(folder, gallery)
    set_current(directory, name)
    return Gallery(name, gallery.sku_codes, gallery.prototypes, gallery.pictures)
