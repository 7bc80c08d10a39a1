"""Prepare a YOLO-format dataset for training: resolve its splits, clean its labels, hash it.

Datasets exported by Roboflow and similar tools have real-world quirks that ultralytics either
mishandles or handles silently (see ``shared/data/README.md``):

- split entries such as ``train: ../train/images`` that are relative to a root one level above
  the ``data.yaml``, ``path:`` entries that point to a folder that does not exist on this machine
  (``path: datasets/pallet``), and split folders called ``valid`` instead of ``val``;
- segmentation polygons (``class x1 y1 x2 y2 ... xn yn``, normalised) where boxes are expected;
- label files without an image (skipped and reported) and images without a label file
  (background pictures: kept, with an empty label file, and reported);
- read-only source folders (ultralytics writes its ``labels.cache`` beside the labels).

:func:`prepare_dataset` writes a clean copy under a work directory: images are hard links to the
originals (symbolic links where a hard link is not possible, e.g. across file systems), never
copies; label files are rewritten as boxes ``class cx cy w h`` (normalised, clipped to [0, 1]);
a generated ``data.yaml`` names the splits ``train``, ``val`` and ``test``. The returned
:class:`DatasetReport` (also written as ``report.json``) counts what was found and carries the
dataset hash used for provenance.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import yaml  # type: ignore[import-untyped,unused-ignore]

from detector.errors import DatasetError

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGE_SUFFIXES",
    "DatasetReport",
    "LabelRows",
    "SplitReport",
    "dataset_hash",
    "labels_xyxy",
    "parse_label_text",
    "prepare_dataset",
    "read_data_yaml",
    "read_rgb",
    "require_split",
    "resolve_splits",
    "split_pictures",
]

#: File name suffixes read as images (lower case; the subset of ultralytics' ``IMG_FORMATS``
#: that OpenCV decodes everywhere).
IMAGE_SUFFIXES = frozenset({".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"})

#: Canonical split names and the folder / key names that mean them.
SPLIT_ALIASES: dict[str, tuple[str, ...]] = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation"),
    "test": ("test", "testing"),
}

REPORT_FILE = "report.json"


@dataclass
class SplitReport:
    """What was found in one split.

    Attributes:
        split: ``"train"``, ``"val"`` or ``"test"``.
        image_dirs: source folders (or list files) the images came from.
        images: images kept (labelled + background).
        background_images: images without a label file (kept as negatives), relative paths.
        orphan_labels: label files without an image (skipped), source paths.
        boxes: box rows written (from box and polygon rows).
        polygons: polygon rows converted to boxes (min/max of the points, clipped to [0, 1]).
        invalid_rows: rows dropped: wrong number of values, non-numeric values, class id out
            of range.
        degenerate_rows: rows dropped because the box had zero width or height after clipping.
    """

    split: str
    image_dirs: list[str] = field(default_factory=list)
    images: int = 0
    background_images: list[str] = field(default_factory=list)
    orphan_labels: list[str] = field(default_factory=list)
    boxes: int = 0
    polygons: int = 0
    invalid_rows: int = 0
    degenerate_rows: int = 0


@dataclass
class DatasetReport:
    """The result of :func:`prepare_dataset`.

    Attributes:
        source: the ``data.yaml`` that was read.
        data_yaml: the generated ``data.yaml`` of the prepared copy (pass it to training).
        names: class names; index = class id.
        splits: per-split reports, keyed ``train`` / ``val`` / ``test`` (``test`` only when the
            source has a test split).
        dataset_hash: hex SHA-256 over the prepared dataset (see :func:`dataset_hash`).
        link_mode: ``"hardlink"``, ``"symlink"`` or ``"mixed"``: how images were placed.
    """

    source: str
    data_yaml: str
    names: list[str]
    splits: dict[str, SplitReport]
    dataset_hash: str
    link_mode: str

    @property
    def orphan_labels(self) -> int:
        """Label files without an image, all splits."""
        return sum(len(s.orphan_labels) for s in self.splits.values())

    @property
    def background_images(self) -> int:
        """Images without a label file, all splits."""
        return sum(len(s.background_images) for s in self.splits.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (what ``report.json`` holds)."""
        return asdict(self)


@dataclass(frozen=True)
class LabelRows:
    """Label rows of one file, parsed and cleaned.

    Attributes:
        rows: kept rows as text lines ``"class cx cy w h"`` (normalised, 6 decimals).
        boxes: rows that were boxes (5 values).
        polygons: rows that were polygons (class + 3 or more x y pairs).
        invalid: rows dropped as malformed or with a class id out of range.
        degenerate: rows dropped because the clipped box has no area.
    """

    rows: tuple[str, ...]
    boxes: int
    polygons: int
    invalid: int
    degenerate: int


def parse_label_text(text: str, num_classes: int) -> LabelRows:
    """Clean the rows of one YOLO label file.

    A row of 5 values ``class cx cy w h`` is a box; a row of ``1 + 2k`` values with ``k >= 3`` is a
    polygon ``class x1 y1 ... xk yk`` (the YOLO segmentation format) whose box is the min/max of
    its points. Coordinates are normalised to the image size; boxes are clipped to [0, 1].

    Args:
        text: the file's content.
        num_classes: number of classes; rows with a class id outside ``[0, num_classes)`` are dropped.

    Returns:
        The kept rows as ``"class cx cy w h"`` lines and counts of what was seen.
    """
    rows: list[str] = []
    boxes = polygons = invalid = degenerate = 0
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        try:
            values = [float(p) for p in parts]
        except ValueError:
            invalid += 1
            continue
        if not all(math.isfinite(v) for v in values):
            invalid += 1
            continue
        cls_value = values[0]
        if cls_value != int(cls_value) or not 0 <= cls_value < num_classes:
            invalid += 1
            continue
        coords = values[1:]
        if len(coords) == 4:
            cx, cy, w, h = coords
            x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
            boxes += 1
        elif len(coords) >= 6 and len(coords) % 2 == 0:
            xs, ys = coords[0::2], coords[1::2]
            x1, y1, x2, y2 = min(xs), min(ys), max(xs), max(ys)
            polygons += 1
        else:
            invalid += 1
            continue
        x1, x2 = min(max(x1, 0.0), 1.0), min(max(x2, 0.0), 1.0)
        y1, y2 = min(max(y1, 0.0), 1.0), min(max(y2, 0.0), 1.0)
        if x2 - x1 <= 0.0 or y2 - y1 <= 0.0:
            degenerate += 1
            continue
        rows.append(
            f"{int(cls_value)} {(x1 + x2) / 2:.6f} {(y1 + y2) / 2:.6f} {x2 - x1:.6f} {y2 - y1:.6f}"
        )
    return LabelRows(tuple(rows), boxes, polygons, invalid, degenerate)


def read_data_yaml(data_yaml: str | Path) -> dict[str, Any]:
    """Read a ``data.yaml`` into a dictionary.

    Raises:
        DatasetError: the file is missing, not YAML, or not a mapping.
    """
    path = Path(data_yaml)
    if not path.is_file():
        raise DatasetError(f"{path} does not exist", reason="data_yaml_missing")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise DatasetError(f"cannot read {path}: {error}", reason="data_yaml_unreadable") from error
    if not isinstance(data, dict):
        raise DatasetError(f"{path} is not a YAML mapping", reason="data_yaml_unreadable")
    return data


def _class_names(data: dict[str, Any], source: Path) -> list[str]:
    names = data.get("names")
    if isinstance(names, dict):
        try:
            keys = sorted(int(k) for k in names)
        except (TypeError, ValueError) as error:
            raise DatasetError(f"{source}: names keys must be integers", reason="invalid_names") from error
        if keys != list(range(len(keys))):
            raise DatasetError(f"{source}: names keys must be 0..n-1, got {keys}", reason="invalid_names")
        names = [names[k] if k in names else names[str(k)] for k in keys]
    if not isinstance(names, list) or not names:
        raise DatasetError(f"{source} has no class names (names: [...])", reason="invalid_names")
    out = [str(n) for n in names]
    nc = data.get("nc")
    if nc is not None and int(nc) != len(out):
        raise DatasetError(f"{source}: nc is {nc} but names has {len(out)} entries", reason="invalid_names")
    return out


def _candidate_roots(data: dict[str, Any], yaml_dir: Path) -> list[Path]:
    roots: list[Path] = []
    declared = data.get("path")
    if isinstance(declared, str) and declared:
        p = Path(declared)
        roots.append(p if p.is_absolute() else yaml_dir / p)
    roots.append(yaml_dir)
    return roots


def _strip_parents(entry: str) -> str:
    parts = [p for p in Path(entry).parts if p not in ("..", ".")]
    return str(Path(*parts)) if parts else ""


def _resolve_entry(entry: str, roots: Sequence[Path]) -> Path | None:
    """First existing folder or list file for one split entry, trying the known quirks."""
    candidates: list[Path] = []
    p = Path(entry)
    if p.is_absolute():
        candidates.append(p)
    for root in roots:
        candidates.append(root / entry)
        stripped = _strip_parents(entry)
        if stripped:
            candidates.append(root / stripped)
    for candidate in candidates:
        if candidate.is_dir() or (candidate.is_file() and candidate.suffix == ".txt"):
            return candidate.resolve()
    return None


def resolve_splits(data_yaml: str | Path, required: tuple[str, ...] = ("train", "val")) -> dict[str, list[Path]]:
    """Find the image folders (or image list files) of each split of a ``data.yaml``.

    Each split entry (a string or a list) is tried as given (absolute), relative to the declared
    ``path:`` when that exists, relative to the YAML's folder, and with leading ``../``
    removed (Roboflow's ``../train/images``). A split whose entry resolves to nothing, or that has
    no entry, falls back to the conventional folders beside the YAML: ``<alias>/images``,
    ``images/<alias>`` or ``<alias>`` for the aliases of the split (``valid`` for ``val``).

    Args:
        data_yaml: path of the dataset's YAML.
        required: the splits that must have images (training needs train and val; evaluating
            one split needs only that one).

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}`` with the splits found (those not
        required may be absent); paths are absolute.

    Raises:
        DatasetError: the YAML is unreadable, or a required split has no images
            (``split_missing``).
    """
    source = Path(data_yaml).resolve()
    data = read_data_yaml(source)
    roots = _candidate_roots(data, source.parent)
    found: dict[str, list[Path]] = {}
    for split, aliases in SPLIT_ALIASES.items():
        entries: list[str] = []
        for key in aliases:
            value = data.get(key)
            if isinstance(value, str) and value:
                entries = [value]
            elif isinstance(value, list):
                entries = [str(v) for v in value if v]
            if entries:
                break
        paths: list[Path] = []
        for entry in entries:
            resolved = _resolve_entry(entry, roots)
            if resolved is None:
                logger.warning("data.yaml %s: %s entry %r not found; trying the usual folders", source, split, entry)
            else:
                paths.append(resolved)
        if not paths:
            for alias in aliases:
                for rel in (Path(alias) / "images", Path("images") / alias, Path(alias)):
                    candidate = source.parent / rel
                    if candidate.is_dir() and any(_iter_images(candidate)):
                        paths = [candidate.resolve()]
                        break
                if paths:
                    break
            if paths and entries:
                logger.warning("data.yaml %s: using %s for split %s", source, paths[0], split)
        if paths:
            found[split] = paths
    for split in required:
        if split not in found:
            raise DatasetError(f"{source}: no {split} images found", reason="split_missing")
    return found


def _iter_images(folder: Path) -> Iterable[Path]:
    for dirpath, _dirnames, filenames in os.walk(folder, followlinks=True):
        for name in filenames:
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                yield Path(dirpath) / name


def _images_of(entry: Path) -> list[tuple[Path, Path]]:
    """(image path, path relative to the split root) of every image of a folder or list file."""
    if entry.is_dir():
        return sorted(((p, p.relative_to(entry)) for p in _iter_images(entry)), key=lambda t: str(t[1]))
    images: list[tuple[Path, Path]] = []
    for line in entry.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        p = Path(line)
        p = p if p.is_absolute() else (entry.parent / p)
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
            images.append((p.resolve(), Path(p.name)))
    return sorted(images, key=lambda t: str(t[1]))


def _label_path(image: Path) -> Path:
    """ultralytics' rule: the last ``/images/`` of the path becomes ``/labels/``; suffix ``.txt``.

    Falls back to a ``.txt`` beside the image when the path has no ``images`` folder.
    """
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image.with_suffix(".txt")


def _label_dirs(entry: Path) -> list[Path]:
    """Folders where the label files of a split folder live (to find orphans)."""
    if not entry.is_dir():
        return []
    probe = _label_path(entry / "x.jpg").parent
    return [probe] if probe.is_dir() else []


def _place(source: Path, target: Path) -> str:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
        return "hardlink"
    except OSError:
        os.symlink(source, target)
        return "symlink"


def dataset_hash(root: str | Path) -> str:
    """SHA-256 identifying a prepared dataset's content.

    The digest runs over the class names, then over every split's image and label files in sorted
    order of their relative paths: each file contributes its relative path and the SHA-256 of its
    bytes (images are read through links). Renaming the work directory does not change it.

    Args:
        root: a folder written by :func:`prepare_dataset` (or any folder with ``data.yaml``,
            ``images/`` and ``labels/``).

    Returns:
        64 hex digits.
    """
    base = Path(root)
    digest = hashlib.sha256()
    data_yaml = base / "data.yaml"
    if data_yaml.is_file():
        names = read_data_yaml(data_yaml).get("names", [])
        digest.update(json.dumps(names, sort_keys=True).encode())
    files = [p for sub in ("images", "labels") if (base / sub).is_dir() for p in (base / sub).rglob("*")]
    for path in sorted((p for p in files if p.is_file()), key=lambda p: p.relative_to(base).as_posix()):
        digest.update(path.relative_to(base).as_posix().encode())
        file_digest = hashlib.sha256()
        with path.open("rb") as handle:
            while block := handle.read(1 << 20):
                file_digest.update(block)
        digest.update(file_digest.digest())
    return digest.hexdigest()


def _clear_previous(out: Path) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise DatasetError(f"{out} exists and is not a folder", reason="work_dir_unusable")
    entries = list(out.iterdir())
    if not entries:
        return
    if not (out / REPORT_FILE).is_file():
        raise DatasetError(
            f"{out} is not empty and was not written by prepare_dataset; choose an empty work directory",
            reason="work_dir_unusable",
        )
    for name in ("images", "labels"):
        if (out / name).is_dir():
            shutil.rmtree(out / name)
    for name in ("data.yaml", REPORT_FILE):
        (out / name).unlink(missing_ok=True)


def prepare_dataset(
    data_yaml: str | Path, out_dir: str | Path, required: tuple[str, ...] = ("train", "val")
) -> DatasetReport:
    """Write a clean, trainable copy of a YOLO dataset and report what was found.

    Output layout under ``out_dir``: ``images/{train,val,test}/...`` (links to the source images,
    relative sub-folders kept), ``labels/{train,val,test}/....txt`` (boxes ``class cx cy w h``,
    normalised; an empty file for a background image), ``data.yaml`` (absolute ``path``, the
    splits, ``names``), ``report.json`` (:meth:`DatasetReport.to_dict`). Running it again on the
    same ``out_dir`` replaces the previous copy.

    Args:
        data_yaml: the source dataset's YAML (ultralytics / Roboflow format).
        out_dir: work directory for the prepared copy; must be empty, absent, or a previous
            output of this function. Never inside the source dataset.
        required: the splits that must have images (:func:`resolve_splits`).

    Returns:
        The report; ``report.data_yaml`` is the file to train on.

    Raises:
        DatasetError: the YAML is unreadable or has no class names; a required split has no images;
            ``out_dir`` holds something else.
    """
    source = Path(data_yaml).resolve()
    data = read_data_yaml(source)
    names = _class_names(data, source)
    splits = resolve_splits(source, required)
    out = Path(out_dir).resolve()
    _clear_previous(out)
    out.mkdir(parents=True, exist_ok=True)
    modes: set[str] = set()
    reports: dict[str, SplitReport] = {}
    for split, entries in splits.items():
        report = SplitReport(split=split, image_dirs=[str(e) for e in entries])
        seen_labels: set[Path] = set()
        used_targets: set[Path] = set()
        for index, entry in enumerate(entries):
            prefix = Path(f"{index:02d}") if len(entries) > 1 else Path()
            for image, rel in _images_of(entry):
                target_rel = prefix / rel
                target = out / "images" / split / target_rel
                if target in used_targets:
                    continue
                used_targets.add(target)
                label = _label_path(image)
                modes.add(_place(image, target))
                label_target = (out / "labels" / split / target_rel).with_suffix(".txt")
                label_target.parent.mkdir(parents=True, exist_ok=True)
                report.images += 1
                if label.is_file():
                    seen_labels.add(label.resolve())
                    parsed = parse_label_text(label.read_text(encoding="utf-8", errors="replace"), len(names))
                    report.boxes += len(parsed.rows)
                    report.polygons += parsed.polygons
                    report.invalid_rows += parsed.invalid
                    report.degenerate_rows += parsed.degenerate
                    if parsed.invalid or parsed.degenerate:
                        logger.info(
                            "label %s: dropped %s invalid and %s degenerate rows",
                            label, parsed.invalid, parsed.degenerate,
                        )
                    label_target.write_text("".join(r + "\n" for r in parsed.rows), encoding="utf-8")
                else:
                    report.background_images.append(target_rel.as_posix())
                    label_target.write_text("", encoding="utf-8")
            for label_dir in _label_dirs(entry):
                for label in sorted(label_dir.rglob("*.txt")):
                    if label.resolve() not in seen_labels:
                        report.orphan_labels.append(str(label))
        if report.orphan_labels:
            logger.warning(
                "dataset %s split %s: %s label files have no image (skipped), e.g. %s",
                source, split, len(report.orphan_labels), report.orphan_labels[0],
            )
        if report.background_images:
            logger.warning(
                "dataset %s split %s: %s images have no label file (kept as background), e.g. %s",
                source, split, len(report.background_images), report.background_images[0],
            )
        if report.polygons:
            logger.info("dataset %s split %s: %s polygons converted to boxes", source, split, report.polygons)
        if report.images == 0:
            raise DatasetError(f"{source}: split {split} has no images", reason="split_empty")
        reports[split] = report
    generated: dict[str, Any] = {"path": str(out)}
    for split in reports:
        generated[split] = f"images/{split}"
    generated["nc"] = len(names)
    generated["names"] = names
    (out / "data.yaml").write_text(
        f"# prepared by detector.dataset from {source}\n" + yaml.safe_dump(generated, sort_keys=False),
        encoding="utf-8",
    )
    link_mode = modes.pop() if len(modes) == 1 else "mixed"
    result = DatasetReport(
        source=str(source),
        data_yaml=str(out / "data.yaml"),
        names=names,
        splits=reports,
        dataset_hash=dataset_hash(out),
        link_mode=link_mode,
    )
    (out / REPORT_FILE).write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    logger.info(
        "prepared %s -> %s: %s, hash %s",
        source, out, ", ".join(f"{k} {v.images} images / {v.boxes} boxes" for k, v in reports.items()),
        result.dataset_hash[:12],
    )
    return result


def split_pictures(prepared_root: Path, split: str) -> list[tuple[Path, Path]]:
    """``(image, label)`` pairs of a split prepared by :func:`detector.dataset.prepare_dataset`, sorted by path."""
    images = prepared_root / "images" / split
    pairs = []
    for image in sorted(p for p in images.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        label = (prepared_root / "labels" / split / image.relative_to(images)).with_suffix(".txt")
        pairs.append((image, label))
    return pairs


def read_rgb(path: Path) -> npt.NDArray[np.uint8]:
    """A labelled picture as (H, W, 3) uint8 RGB, upright (OpenCV applies EXIF orientation, as
    ultralytics' loader does).

    Raises:
        DatasetError: the file cannot be decoded (``image_unreadable``).
    """
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetError(f"cannot decode {path}", reason="image_unreadable")
    return np.ascontiguousarray(image[:, :, ::-1])


def labels_xyxy(label: Path, width: int, height: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """A prepared label file's boxes: (N, 4) float32 xyxy in pixels of a ``width`` x ``height``
    picture, and (N,) int64 class ids. A missing or empty file is a background picture (N = 0)."""
    rows = [line.split() for line in label.read_text(encoding="utf-8").splitlines() if line.strip()] \
        if label.is_file() else []
    if not rows:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    data = np.array(rows, dtype=np.float64)
    cx, cy, w, h = data[:, 1] * width, data[:, 2] * height, data[:, 3] * width, data[:, 4] * height
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1).astype(np.float32)
    return boxes, data[:, 0].astype(np.int64)


def require_split(report: DatasetReport, split: str) -> None:
    """Refuse a prepared dataset without pictures in ``split``.

    Raises:
        DatasetError: ``missing_split``; the message lists the splits that have pictures.
    """
    if split not in report.splits or report.splits[split].images == 0:
        available = ", ".join(s for s, r in report.splits.items() if r.images) or "none"
        raise DatasetError(f"{report.source} has no {split!r} pictures (splits with pictures: {available})",
                           reason="missing_split")
