"""Read labelled crops for training and evaluating the classifier, in three formats.

Every reader returns an :class:`ImageDataset`: a list of (image path, class index) items and the
class names, which are SKU codes (index = ``class_id`` of the trained model). An image that is
missing or unreadable, or a line that cannot be parsed, is not fatal: it is left out, recorded in
:attr:`ImageDataset.problems` and logged as a warning; only a dataset that cannot be read at all
raises :class:`~classifier.errors.DatasetError`.

Formats:

- **Grocery Store** (Klasson, Zhang, Kjellström, WACV 2019; ``shared/data/grocerystore``), read
  by :func:`read_grocery_store`: ``classes.csv`` (header, then ``name, class id, coarse name,
  coarse id, iconic image path, description path``; the paths start with ``/`` but are relative
  to the dataset folder) and one file per split, ``train.txt`` / ``val.txt`` / ``test.txt``,
  with lines ``path, fine_id, coarse_id`` relative to the dataset folder. Class names are the
  fine-grained names (``Granny-Smith``), ordered by fine id.
- **Image folder** (torchvision's ``ImageFolder`` layout), :func:`read_image_folder`:
  ``root/<sku_code>/**/<image>``; classes are the sorted sub-folder names.
- **List file**, :func:`read_list_file`: CSV lines ``path,sku_code`` (path relative to the list
  file's folder unless absolute; ``#`` starts a comment line). SKU codes are strings, also when
  they are digits (a GTIN such as ``07310865071071`` keeps its leading zero).

How much of each image is checked (``check``): ``"exists"`` (a regular file), ``"header"`` (the
default: the file opens and starts with a JPEG, PNG, BMP, WebP or TIFF signature, about 0.1 ms
per file) or ``"decode"`` (OpenCV decodes it; about 2 ms per 348 x 464 JPEG).
"""

from __future__ import annotations

import csv
import logging
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import cv2
import numpy as np
import numpy.typing as npt

from classifier.errors import DatasetError

__all__ = [
    "GROCERY_SPLITS",
    "IMAGE_SUFFIXES",
    "Check",
    "DatasetItem",
    "DatasetProblem",
    "GroceryClass",
    "ImageDataset",
    "check_image",
    "load_image",
    "read_grocery_classes",
    "read_grocery_store",
    "read_image_folder",
    "read_list_file",
]

logger = logging.getLogger(__name__)

Check = Literal["exists", "header", "decode"]

#: File name suffixes the image-folder reader takes as images (lower case).
IMAGE_SUFFIXES = frozenset({".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"})

#: Split names of the Grocery Store dataset (``test.txt`` is held out of this project's copy).
GROCERY_SPLITS = ("train", "val", "test")

_GROCERY_CLASSES = "classes.csv"

# Leading bytes of the image formats OpenCV decodes everywhere.
_SIGNATURES: tuple[tuple[int, bytes], ...] = (
    (0, b"\xff\xd8\xff"),  # JPEG
    (0, b"\x89PNG\r\n\x1a\n"),  # PNG
    (0, b"BM"),  # BMP
    (0, b"II*\x00"),  # TIFF, little-endian
    (0, b"MM\x00*"),  # TIFF, big-endian
    (8, b"WEBP"),  # WebP (after b"RIFF" + size)
)


@dataclass(frozen=True)
class DatasetItem:
    """One labelled image.

    Attributes:
        path: the image file (absolute, or as given joined to the dataset folder).
        class_index: index into :attr:`ImageDataset.class_names`.
    """

    path: Path
    class_index: int


@dataclass(frozen=True)
class DatasetProblem:
    """Something of a dataset that was left out.

    Attributes:
        path: the image, list file or folder concerned.
        reason: ``missing``, ``unreadable`` (cannot be opened), ``not_an_image`` (no known
            image signature, or empty), ``undecodable`` (OpenCV cannot decode it),
            ``malformed_line``, ``unknown_class`` or ``empty_class`` (a class folder without
            images; the class is kept).
        detail: human-readable detail (the line number and text for list files).
    """

    path: Path
    reason: str
    detail: str = ""


@dataclass(frozen=True)
class ImageDataset:
    """Labelled images of one split.

    Attributes:
        root: the dataset folder (or the list file).
        split: split name (``"train"``, ``"val"``; ``""`` when the format has none).
        class_names: SKU codes, index = class index; may include classes without items.
        items: the usable images, in file order.
        problems: what was left out (see :class:`DatasetProblem`).
    """

    root: Path
    split: str
    class_names: list[str]
    items: list[DatasetItem]
    problems: list[DatasetProblem] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def num_classes(self) -> int:
        """Number of classes (also those without items in this split)."""
        return len(self.class_names)

    def class_counts(self) -> dict[str, int]:
        """Items per SKU code, every class included (0 for a class without items)."""
        counts = Counter(item.class_index for item in self.items)
        return {name: counts.get(i, 0) for i, name in enumerate(self.class_names)}

    @property
    def paths(self) -> list[Path]:
        """Image paths, in item order."""
        return [item.path for item in self.items]

    @property
    def class_indices(self) -> npt.NDArray[np.int64]:
        """(N,) int64 class index of each item."""
        return np.array([item.class_index for item in self.items], dtype=np.int64)


@dataclass(frozen=True)
class GroceryClass:
    """One row of the Grocery Store ``classes.csv``.

    Attributes:
        name: fine-grained class name, used as the SKU code (``"Granny-Smith"``).
        class_id: fine-grained id (0-80).
        coarse_name: coarse class (``"Apple"``).
        coarse_id: coarse id.
        iconic_image: the catalogue packshot of the class.
        description: the text file describing the product.
    """

    name: str
    class_id: int
    coarse_name: str
    coarse_id: int
    iconic_image: Path
    description: Path


def _check_mode(check: str) -> None:
    if check not in get_args(Check):
        raise ValueError(f"check: expected one of {get_args(Check)}, received {check!r}")


def check_image(path: Path, check: Check = "header") -> DatasetProblem | None:
    """Check one image file.

    Args:
        path: the image file.
        check: ``"exists"``, ``"header"`` or ``"decode"`` (see the module docstring).

    Returns:
        None when the image is usable, else the problem (reason ``missing``, ``unreadable``,
        ``not_an_image`` or ``undecodable``).

    Raises:
        ValueError: unknown ``check``.
    """
    _check_mode(check)
    if not path.is_file():
        return DatasetProblem(path, "missing", "no such file")
    if check == "exists":
        return None
    try:
        with path.open("rb") as handle:
            head = handle.read(16)
    except OSError as error:
        return DatasetProblem(path, "unreadable", str(error))
    if not any(head[offset : offset + len(magic)] == magic for offset, magic in _SIGNATURES):
        return DatasetProblem(path, "not_an_image", "empty file" if not head else f"starts with {head[:8]!r}")
    if check == "decode" and cv2.imread(str(path), cv2.IMREAD_COLOR) is None:
        return DatasetProblem(path, "undecodable", "OpenCV cannot decode it")
    return None


def load_image(path: str | Path) -> npt.NDArray[np.uint8]:
    """Decode an image as (H, W, 3) uint8 RGB, upright (OpenCV applies the EXIF orientation).

    Grey images are repeated to three channels; an alpha channel is dropped.

    Raises:
        DatasetError: the file is missing or cannot be decoded (reason ``unreadable_image``).
    """
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetError(f"cannot read image {path}", reason="unreadable_image")
    return np.asarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), dtype=np.uint8)


def _report(problems: list[DatasetProblem], where: Path, items: int) -> None:
    if not problems:
        return
    reasons = Counter(problem.reason for problem in problems)
    logger.warning(
        "dataset %s: %s items kept, %s left out (%s); first: %s %s",
        where, items, len(problems), ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())),
        problems[0].path, problems[0].reason,
    )


def _collect(
    candidates: Iterable[tuple[Path, int]], check: Check, problems: list[DatasetProblem]
) -> list[DatasetItem]:
    items: list[DatasetItem] = []
    for path, index in candidates:
        problem = check_image(path, check)
        if problem is None:
            items.append(DatasetItem(path, index))
        else:
            problems.append(problem)
    return items


def _grocery_root(root: str | Path) -> Path:
    folder = Path(root)
    if not (folder / _GROCERY_CLASSES).is_file() and (folder / "dataset" / _GROCERY_CLASSES).is_file():
        return folder / "dataset"  # the repository folder was given; the data lives in dataset/
    return folder


def _int(text: str) -> int | None:
    value = text.strip()
    return int(value) if value.lstrip("-").isdigit() else None


def read_grocery_classes(root: str | Path) -> list[GroceryClass]:
    """Read the Grocery Store ``classes.csv``.

    Args:
        root: the dataset folder (holding ``classes.csv``), or the folder above it holding
            ``dataset/``.

    Returns:
        One entry per fine-grained class, ordered by ``class_id`` (which runs 0, 1, ..., K - 1).

    Raises:
        DatasetError: ``classes.csv`` is missing (reason ``missing_class_table``) or malformed:
            a row without 6 fields, a non-integer id, ids that are not 0..K-1 each once, or a
            repeated name (reason ``invalid_class_table``).
    """
    folder = _grocery_root(root)
    table = folder / _GROCERY_CLASSES
    try:
        text = table.read_text(encoding="utf-8-sig")
    except OSError as error:
        raise DatasetError(f"cannot read {table}: {error}", reason="missing_class_table") from error
    rows = [row for row in csv.reader(text.splitlines()) if any(cell.strip() for cell in row)]
    if rows and rows[0][0].strip().lower().startswith("class name"):
        rows = rows[1:]  # the header: "Class Name (str),Class ID (int),..."
    classes: list[GroceryClass] = []
    for number, row in enumerate(rows, start=2):
        cells = [cell.strip() for cell in row]
        fine, coarse = (_int(cells[1]), _int(cells[3])) if len(cells) == 6 else (None, None)
        if fine is None or coarse is None or not cells[0]:
            raise DatasetError(
                f"{table} row {number}: expected 'name, class id, coarse name, coarse id, iconic image, "
                f"description' with integer ids, received {row}",
                reason="invalid_class_table",
            )
        classes.append(GroceryClass(
            name=cells[0], class_id=fine, coarse_name=cells[2], coarse_id=coarse,
            iconic_image=folder / cells[4].lstrip("/"), description=folder / cells[5].lstrip("/"),
        ))
    classes.sort(key=lambda c: c.class_id)
    ids = [c.class_id for c in classes]
    if not classes or ids != list(range(len(classes))):
        raise DatasetError(f"{table}: class ids must be 0..K-1 each once, received {ids}", reason="invalid_class_table")
    repeated = sorted(name for name, count in Counter(c.name for c in classes).items() if count > 1)
    if repeated:
        raise DatasetError(f"{table}: class names repeated: {repeated}", reason="invalid_class_table")
    return classes


def read_grocery_store(root: str | Path, split: str = "train", *, check: Check = "header") -> ImageDataset:
    """Read one split of the Grocery Store dataset.

    Args:
        root: the dataset folder (holding ``classes.csv`` and ``<split>.txt``), or the folder
            above it holding ``dataset/`` (``shared/data/grocerystore``).
        split: ``"train"``, ``"val"`` or ``"test"``.
        check: how much of each image to check (see the module docstring).

    Returns:
        Items ``(path, fine_id)``; class names are the fine-grained names of ``classes.csv``
        ordered by id (all 81 classes, also in a split where some have no image). Left out and
        reported: missing or unreadable images (their reasons), lines that are not
        ``path, fine_id, coarse_id`` (``malformed_line``), fine ids not in ``classes.csv``
        (``unknown_class``).

    Raises:
        DatasetError: unknown split (reason ``unknown_split``), no ``<split>.txt`` (reason
            ``missing_split``), or ``classes.csv`` missing or malformed (see
            :func:`read_grocery_classes`).
        ValueError: unknown ``check``.
    """
    _check_mode(check)
    if split not in GROCERY_SPLITS:
        raise DatasetError(
            f"unknown Grocery Store split {split!r}; valid: {', '.join(GROCERY_SPLITS)}", reason="unknown_split"
        )
    folder = _grocery_root(root)
    classes = read_grocery_classes(folder)
    split_file = folder / f"{split}.txt"
    try:
        lines = split_file.read_text(encoding="utf-8-sig").splitlines()
    except OSError as error:
        raise DatasetError(f"cannot read split file {split_file}: {error}", reason="missing_split") from error
    problems: list[DatasetProblem] = []
    candidates: list[tuple[Path, int]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        cells = [cell.strip() for cell in line.split(",")]
        fine = _int(cells[1]) if len(cells) == 3 and cells[0] else None
        if fine is None or _int(cells[2]) is None:
            problems.append(DatasetProblem(split_file, "malformed_line", f"line {number}: {line!r}"))
            continue
        path = folder / cells[0]
        if not 0 <= fine < len(classes):
            problems.append(DatasetProblem(path, "unknown_class", f"line {number}: fine id {fine}"))
            continue
        candidates.append((path, fine))
    items = _collect(candidates, check, problems)
    _report(problems, split_file, len(items))
    return ImageDataset(folder, split, [c.name for c in classes], items, problems)


def read_image_folder(root: str | Path, *, check: Check = "header", split: str = "") -> ImageDataset:
    """Read a folder with one sub-folder of images per SKU (torchvision ``ImageFolder`` layout).

    Sub-folders and files whose names start with ``.`` are skipped; images are found at any
    depth below a class folder (symbolic links followed) and taken in sorted path order. Files
    whose suffix is not in :data:`IMAGE_SUFFIXES` are ignored.

    Args:
        root: the folder; each sub-folder name is a SKU code.
        check: how much of each image to check (see the module docstring).
        split: recorded in the result.

    Returns:
        Class names = the sorted sub-folder names; a class folder without images is kept and
        reported as ``empty_class``; unusable images are reported.

    Raises:
        DatasetError: ``root`` is not a folder (reason ``missing_dataset``) or has no class
            sub-folder (reason ``no_classes``).
        ValueError: unknown ``check``.
    """
    _check_mode(check)
    folder = Path(root)
    if not folder.is_dir():
        raise DatasetError(f"{folder} is not a folder", reason="missing_dataset")
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DatasetError(f"{folder} has no class sub-folders (one per SKU code)", reason="no_classes")
    problems: list[DatasetProblem] = []
    candidates: list[tuple[Path, int]] = []
    for index, class_dir in enumerate(class_dirs):
        found: list[Path] = []
        for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            found.extend(
                Path(dirpath) / name
                for name in filenames
                if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES
            )
        if not found:
            problems.append(DatasetProblem(class_dir, "empty_class", "no image files"))
        candidates.extend((path, index) for path in sorted(found))
    items = _collect(candidates, check, problems)
    _report(problems, folder, len(items))
    return ImageDataset(folder, split, [d.name for d in class_dirs], items, problems)


def read_list_file(
    path: str | Path,
    *,
    class_names: list[str] | None = None,
    root: str | Path | None = None,
    check: Check = "header",
    split: str = "",
) -> ImageDataset:
    """Read a list file of ``path,sku_code`` lines.

    The file is CSV (fields may be quoted; spaces around fields are stripped); blank lines and
    lines starting with ``#`` are skipped.

    Args:
        path: the list file.
        class_names: the SKU codes in class-index order (e.g. an existing model's
            ``labels.json``); lines with another SKU code are reported as ``unknown_class``.
            Default: the sorted set of SKU codes in the file.
        root: folder that relative image paths start from; default the list file's folder.
        check: how much of each image to check (see the module docstring).
        split: recorded in the result.

    Returns:
        The usable items; lines without exactly two non-empty fields are ``malformed_line``.

    Raises:
        DatasetError: the list file cannot be read (reason ``missing_dataset``), or
            ``class_names`` has repeated names (reason ``invalid_class_table``).
        ValueError: unknown ``check``.
    """
    _check_mode(check)
    list_file = Path(path)
    base = Path(root) if root is not None else list_file.parent
    try:
        text = list_file.read_text(encoding="utf-8-sig")
    except OSError as error:
        raise DatasetError(f"cannot read list file {list_file}: {error}", reason="missing_dataset") from error
    problems: list[DatasetProblem] = []
    rows: list[tuple[Path, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        cells = [cell.strip() for cell in next(csv.reader([line]))]
        if len(cells) != 2 or not all(cells):
            problems.append(DatasetProblem(list_file, "malformed_line", f"line {number}: {line!r}"))
            continue
        rows.append((base / cells[0], cells[1]))  # an absolute path replaces base
    names = sorted({sku for _, sku in rows}) if class_names is None else list(class_names)
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)
    if repeated:
        raise DatasetError(f"class_names: SKU codes repeated: {repeated}", reason="invalid_class_table")
    index = {name: i for i, name in enumerate(names)}
    candidates: list[tuple[Path, int]] = []
    for image, sku in rows:
        if sku in index:
            candidates.append((image, index[sku]))
        else:
            problems.append(DatasetProblem(image, "unknown_class", f"SKU code {sku!r} is not in class_names"))
    items = _collect(candidates, check, problems)
    _report(problems, list_file, len(items))
    return ImageDataset(list_file, split, names, items, problems)
