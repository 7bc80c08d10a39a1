"""Merge YOLO datasets into one class-agnostic product dataset (real sets plus generated scenes).

A product-agnostic detector learns "is this a product" from every labelled set there is: shelf
photos labelled per product type, pallet photos, parcel photos, generated shelves. Their class
lists differ, so :func:`merge_datasets` prepares each source as for training
(:func:`detector.dataset.prepare_dataset`: polygons become boxes, Roboflow paths resolve) and
rewrites every box to class 0, ``product``.

Splits stay honest: a source's val and test pictures land only in the merged val and test
(never in train), and a source given as ``data.yaml:train`` contributes its train split only
(generated scenes, whose val would say nothing about real photos). Each source keeps its own
sub-folder (``images/{split}/{NN}-{name}/``), so a merged split can still be scored per source.

Output layout under ``out_dir``: ``images/`` (hard links to the sources' images), ``labels/``,
``data.yaml`` (``names: [product]``), ``merge.json`` (the sources, their splits and counts, and
the merged dataset hash for provenance).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped,unused-ignore]

from detector.dataset import SPLIT_ALIASES, dataset_hash, prepare_dataset
from detector.errors import DatasetError

__all__ = ["MergeReport", "MergeSource", "merge_datasets", "parse_source"]

MERGE_FILE = "merge.json"
_SPLITS = tuple(SPLIT_ALIASES)


@dataclass(frozen=True)
class MergeSource:
    """One dataset to merge: its ``data.yaml`` and the splits taken from it (None: every split it has)."""

    data_yaml: Path
    splits: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.splits is None:
            return
        unknown = [s for s in self.splits if s not in _SPLITS]
        if unknown or not self.splits:
            raise DatasetError(f"{self.data_yaml}: splits must be among {', '.join(_SPLITS)}, got "
                               f"{', '.join(self.splits) or 'none'}", reason="invalid_split")


def parse_source(text: str) -> MergeSource:
    """``PATH/data.yaml`` (every split) or ``PATH/data.yaml:train[,val,test]`` (only those).

    Raises:
        DatasetError: unknown split name (``invalid_split``).
    """
    path, sep, splits = text.rpartition(":")
    if not sep or not re.fullmatch(r"[a-z,]+", splits):
        return MergeSource(Path(text))
    return MergeSource(Path(path), tuple(s for s in splits.split(",") if s))


@dataclass
class MergeReport:
    """What :func:`merge_datasets` wrote.

    Attributes:
        data_yaml: the merged ``data.yaml`` (one class, ``product``).
        sources: per source ``{"data_yaml", "folder", "splits": {split: {"images", "boxes"}}}``.
        images: merged pictures per split.
        boxes: merged boxes per split.
        dataset_hash: hex SHA-256 of the merged dataset (:func:`detector.dataset.dataset_hash`).
    """

    data_yaml: str
    sources: list[dict[str, Any]] = field(default_factory=list)
    images: dict[str, int] = field(default_factory=dict)
    boxes: dict[str, int] = field(default_factory=dict)
    dataset_hash: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (what ``merge.json`` holds)."""
        return asdict(self)


def _folder_name(index: int, data_yaml: Path) -> str:
    stem = data_yaml.parent.name or data_yaml.stem
    return f"{index:02d}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', stem)}"


def _agnostic_rows(text: str) -> str:
    rows = [line.split() for line in text.splitlines() if line.strip()]
    return "".join(" ".join(["0", *row[1:]]) + "\n" for row in rows)


def _link(source: Path, target: Path) -> None:
    """Hard link to the source image (the prepared copy's link resolved), else a symbolic link."""
    try:
        target.hardlink_to(source)
    except OSError:
        target.symlink_to(source)


def merge_datasets(sources: Sequence[MergeSource], out_dir: str | Path) -> MergeReport:
    """Merge datasets into one class-agnostic YOLO dataset under ``out_dir`` (replaced if there).

    Args:
        sources: the datasets and the splits taken from each.
        out_dir: the merged dataset's folder; absent, empty, or an earlier output of this function.

    Returns:
        The report (also written to ``out_dir/merge.json``); ``data_yaml`` is the file to train on.

    Raises:
        DatasetError: no source (``no_sources``); a source cannot be prepared (its reason); a
            requested split is missing from a source (``missing_split``); the merged train or val
            split is empty (``split_empty``); ``out_dir`` holds something else (``out_dir_not_empty``).
    """
    if not sources:
        raise DatasetError("give at least one dataset to merge", reason="no_sources")
    out = Path(out_dir).resolve()
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out} exists and is not a folder", reason="out_dir_not_empty")
    if out.exists() and any(out.iterdir()) and not (out / MERGE_FILE).is_file():
        raise DatasetError(f"{out} is not empty and not a merged dataset; choose another folder",
                           reason="out_dir_not_empty")
    out.parent.mkdir(parents=True, exist_ok=True)
    # Built beside out_dir (same file system: hard links hold), moved into place only when complete.
    building = out.with_name(f".{out.name}.partial")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir()
    report = MergeReport(data_yaml=str(out / "data.yaml"), images=dict.fromkeys(_SPLITS, 0),
                         boxes=dict.fromkeys(_SPLITS, 0))
    try:
        with tempfile.TemporaryDirectory(prefix=".shelftally-merge-", dir=out.parent) as work:
            for index, source in enumerate(sources):
                report.sources.append(_merge_one(index, source, Path(work), building, report))
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    for split in ("train", "val"):
        if report.images[split] == 0:
            shutil.rmtree(building, ignore_errors=True)
            raise DatasetError(f"the merged {split} split is empty: give a source with {split} pictures",
                               reason="split_empty")
    data: dict[str, Any] = {"path": str(out)}
    data.update({split: f"images/{split}" for split in _SPLITS if report.images[split]})
    data.update(nc=1, names=["product"])
    (building / "data.yaml").write_text("# merged by detector.merge (every box is class 0, product)\n"
                                        + yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    report.images = {k: v for k, v in report.images.items() if v}
    report.boxes = {k: v for k, v in report.boxes.items() if k in report.images}
    report.dataset_hash = dataset_hash(building)
    (building / MERGE_FILE).write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    building.rename(out)
    return report


def _merge_one(index: int, source: MergeSource, work: Path, out: Path, report: MergeReport) -> dict[str, Any]:
    """Prepare one source under ``work`` and add its splits to ``out`` (counts into ``report``)."""
    prepared = prepare_dataset(source.data_yaml, work / f"{index:02d}")
    folder = _folder_name(index, Path(source.data_yaml))
    entry: dict[str, Any] = {"data_yaml": str(source.data_yaml), "folder": folder, "splits": {}}
    root = Path(prepared.data_yaml).parent
    for split in source.splits or tuple(s for s in _SPLITS if s in prepared.splits):
        if split not in prepared.splits:
            raise DatasetError(f"{source.data_yaml} has no {split!r} split", reason="missing_split")
        images, boxes = 0, 0
        for image in sorted((root / "images" / split).rglob("*")):
            if not image.is_file():
                continue
            rel = image.relative_to(root / "images" / split)
            target = out / "images" / split / folder / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            _link(image.resolve(), target)
            label = (root / "labels" / split / rel).with_suffix(".txt")
            rows = _agnostic_rows(label.read_text(encoding="utf-8")) if label.is_file() else ""
            label_target = (out / "labels" / split / folder / rel).with_suffix(".txt")
            label_target.parent.mkdir(parents=True, exist_ok=True)
            label_target.write_text(rows, encoding="utf-8")
            images += 1
            boxes += rows.count("\n")
        entry["splits"][split] = {"images": images, "boxes": boxes}
        report.images[split] += images
        report.boxes[split] += boxes
    return entry
