"""Dataset preparation: Roboflow path quirks, polygons, missing images and labels, hashing.

Small fixtures are written here; the real sets in ``../shared/data`` (CC BY 4.0 Roboflow exports
and a public-domain one, see ``shared/data/README.md``) are read in place and skipped if absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from detector.dataset import dataset_hash, parse_label_text, prepare_dataset, resolve_splits
from detector.errors import DatasetError

SHARED_DATA = Path(__file__).parents[2].parent / "shared" / "data"


@pytest.mark.parametrize(
    ("text", "num_classes", "rows", "counts"),
    [
        ("", 2, [], (0, 0, 0, 0)),
        ("\n\n", 2, [], (0, 0, 0, 0)),
        ("1 0.5 0.5 0.2 0.4\n", 2, ["1 0.500000 0.500000 0.200000 0.400000"], (1, 0, 0, 0)),
        # A triangle: the box is the min/max of its points.
        ("0 0.1 0.2 0.5 0.2 0.3 0.6\n", 2, ["0 0.300000 0.400000 0.400000 0.400000"], (0, 1, 0, 0)),
        # A polygon leaving the picture is clipped to [0, 1].
        ("0 -0.1 0.5 0.5 -0.2 0.4 1.3\n", 1, ["0 0.250000 0.500000 0.500000 1.000000"], (0, 1, 0, 0)),
        # A box leaving the picture is clipped too.
        ("0 0.95 0.5 0.2 0.2\n", 1, ["0 0.925000 0.500000 0.150000 0.200000"], (1, 0, 0, 0)),
        # Malformed rows: two points only, non-numeric, an odd count of coordinates, class out of range.
        ("0 0.1 0.1 0.2 0.2 0.3\n", 1, [], (0, 0, 1, 0)),
        ("0 a b c d\n", 1, [], (0, 0, 1, 0)),
        ("0 0.1 0.1 0.2 0.2 0.3 0.3 0.4\n", 1, [], (0, 0, 1, 0)),
        ("3 0.5 0.5 0.1 0.1\n", 3, [], (0, 0, 1, 0)),
        ("1.5 0.5 0.5 0.1 0.1\n", 3, [], (0, 0, 1, 0)),
        # Zero area after clipping.
        ("0 1.2 0.5 0.1 0.1\n", 1, [], (1, 0, 0, 1)),
        ("0 0.2 0.2 0.2 0.5 0.2 0.9\n", 1, [], (0, 1, 0, 1)),
    ],
)
def test_parse_label_text(text: str, num_classes: int, rows: list[str], counts: tuple[int, int, int, int]) -> None:
    parsed = parse_label_text(text, num_classes)
    assert list(parsed.rows) == rows
    assert (parsed.boxes, parsed.polygons, parsed.invalid, parsed.degenerate) == counts


def _image(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((32, 48, 3), value, np.uint8))


def _roboflow_like(root: Path) -> Path:
    """A Roboflow-style export: ``../train/images`` entries, a ``path:`` that points nowhere,
    ``valid`` for val, polygons, a label file without an image, an image without a label file."""
    _image(root / "train" / "images" / "a.jpg", 10)
    _image(root / "train" / "images" / "b.jpg", 20)
    _image(root / "train" / "images" / "background.jpg", 30)
    (root / "train" / "labels").mkdir(parents=True)
    (root / "train" / "labels" / "a.txt").write_text("0 0.1 0.1 0.4 0.1 0.4 0.5 0.1 0.5\n")
    (root / "train" / "labels" / "b.txt").write_text("1 0.5 0.5 0.2 0.2\n1 0.5 0.5 0.0 0.2\n")
    (root / "train" / "labels" / "orphan.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    _image(root / "valid" / "images" / "c.png", 40)
    (root / "valid" / "labels").mkdir(parents=True)
    (root / "valid" / "labels" / "c.txt").write_text("1 0.2 0.2 0.6 0.2 0.6 0.7\n")
    data = root / "data.yaml"
    data.write_text(
        "path: datasets/elsewhere\ntrain: ../train/images\nval: ../valid/images\n"
        "nc: 2\nnames: ['can', 'box']\n"
    )
    return data


def test_prepare_handles_roboflow_quirks(tmp_path: Path) -> None:
    data = _roboflow_like(tmp_path / "export")
    report = prepare_dataset(data, tmp_path / "work")

    assert report.names == ["can", "box"]
    assert set(report.splits) == {"train", "val"}
    train, val = report.splits["train"], report.splits["val"]
    assert (train.images, train.boxes, train.polygons, train.degenerate_rows) == (3, 2, 1, 1)
    assert train.background_images == ["background.jpg"]
    assert [Path(p).name for p in train.orphan_labels] == ["orphan.txt"]
    assert (val.images, val.boxes, val.polygons) == (1, 1, 1)
    assert report.orphan_labels == 1 and report.background_images == 1

    work = tmp_path / "work"
    generated = yaml.safe_load(Path(report.data_yaml).read_text())
    assert generated["path"] == str(work.resolve())
    assert (generated["train"], generated["val"], generated["names"]) == ("images/train", "images/val", ["can", "box"])
    assert "test" not in generated
    assert (work / "labels" / "train" / "a.txt").read_text() == "0 0.250000 0.300000 0.300000 0.400000\n"
    assert (work / "labels" / "train" / "b.txt").read_text() == "1 0.500000 0.500000 0.200000 0.200000\n"
    assert (work / "labels" / "train" / "background.txt").read_text() == ""
    assert not (work / "labels" / "train" / "orphan.txt").exists()
    assert not (work / "images" / "train" / "orphan.jpg").exists()
    # Images are links to the originals, never copies.
    for name in ("a.jpg", "b.jpg", "background.jpg"):
        placed = work / "images" / "train" / name
        assert os.path.samefile(placed, tmp_path / "export" / "train" / "images" / name)
    assert report.link_mode in ("hardlink", "symlink")
    assert (work / "report.json").is_file()


def test_dataset_hash_tracks_content_not_location(tmp_path: Path) -> None:
    data = _roboflow_like(tmp_path / "export")
    first = prepare_dataset(data, tmp_path / "one")
    second = prepare_dataset(data, tmp_path / "two")
    assert first.dataset_hash == second.dataset_hash == dataset_hash(tmp_path / "one")
    assert len(first.dataset_hash) == 64

    (tmp_path / "export" / "valid" / "labels" / "c.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    again = prepare_dataset(data, tmp_path / "one")  # replaces its own earlier output
    assert again.dataset_hash != first.dataset_hash


def test_split_fallbacks_and_test_split(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    for split in ("train", "valid", "test"):
        _image(root / split / "images" / "x.jpg", 50)
        (root / split / "labels").mkdir(parents=True)
        (root / split / "labels" / "x.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    # Entries that resolve nowhere fall back to the usual folders beside the YAML.
    (root / "data.yaml").write_text("train: /nowhere/train\nval: missing/images\ntest: ../test/images\nnames: [p]\n")
    splits = resolve_splits(root / "data.yaml")
    assert splits == {
        "train": [(root / "train" / "images").resolve()],
        "val": [(root / "valid" / "images").resolve()],
        "test": [(root / "test" / "images").resolve()],
    }
    report = prepare_dataset(root / "data.yaml", tmp_path / "work")
    assert {k: v.images for k, v in report.splits.items()} == {"train": 1, "val": 1, "test": 1}
    assert yaml.safe_load(Path(report.data_yaml).read_text())["test"] == "images/test"


def test_names_as_mapping(tmp_path: Path) -> None:
    data = _roboflow_like(tmp_path / "export")
    data.write_text("train: ../train/images\nval: ../valid/images\nnames: {0: can, 1: box}\n")
    assert prepare_dataset(data, tmp_path / "work").names == ["can", "box"]


@pytest.mark.parametrize(
    ("yaml_text", "reason"),
    [
        (None, "data_yaml_missing"),
        ("- just\n- a list\n", "data_yaml_unreadable"),
        ("train: ../train/images\nval: ../valid/images\n", "invalid_names"),
        ("train: ../train/images\nval: ../valid/images\nnc: 3\nnames: [a, b]\n", "invalid_names"),
        ("train: ../train/images\nval: nowhere\nnames: [a, b]\n", "split_missing"),
    ],
)
def test_unusable_datasets(tmp_path: Path, yaml_text: str | None, reason: str) -> None:
    root = tmp_path / "export"
    data = _roboflow_like(root)
    if yaml_text is None:
        data.unlink()
    else:
        data.write_text(yaml_text)
        if reason == "split_missing":
            (root / "valid" / "images" / "c.png").unlink()
    with pytest.raises(DatasetError) as caught:
        prepare_dataset(data, tmp_path / "work")
    assert caught.value.reason == reason


def test_refuses_a_foreign_work_directory(tmp_path: Path) -> None:
    data = _roboflow_like(tmp_path / "export")
    work = tmp_path / "work"
    work.mkdir()
    (work / "precious.txt").write_text("not ours")
    with pytest.raises(DatasetError) as caught:
        prepare_dataset(data, work)
    assert caught.value.reason == "work_dir_unusable"
    assert (work / "precious.txt").read_text() == "not ours"


# ---------------------------------------------------------------------------- real datasets


def _real(name: str, yaml_name: str) -> Path:
    path = SHARED_DATA / name / yaml_name
    if not path.is_file():
        pytest.skip(f"{path} is absent (real datasets live in ../shared/data)")
    return path


def _label_rows(work: Path) -> list[list[float]]:
    rows = []
    for label in (work / "labels").rglob("*.txt"):
        rows += [[float(v) for v in line.split()] for line in label.read_text().splitlines()]
    return rows


def test_real_shelf_testing_polygons(tmp_path: Path) -> None:
    report = prepare_dataset(_real("shelf-testing-ccby", "data.yaml"), tmp_path / "work")
    assert report.names == ["AlcoholSpray", "CameraBox1", "CameraBox2", "Pledge", "StarSpray"]
    assert {k: v.images for k, v in report.splits.items()} == {"train": 535, "val": 23, "test": 11}
    assert sum(v.polygons for v in report.splits.values()) == 575  # every row is a polygon
    assert sum(v.boxes for v in report.splits.values()) == 575
    assert report.orphan_labels == 0 and report.background_images == 0
    rows = np.array(_label_rows(tmp_path / "work"))
    assert rows.shape == (575, 5)
    assert np.all(rows[:, 1:] >= 0) and np.all(rows[:, 1:] <= 1) and np.all(rows[:, 3:] > 0)
    assert set(rows[:, 0].astype(int)) <= set(range(5))


def test_real_pallets_orphan_labels_and_odd_yaml(tmp_path: Path) -> None:
    # repo_data.yaml: "path: datasets/pallet" points nowhere on this machine.
    report = prepare_dataset(_real("pallets-ccby", "repo_data.yaml"), tmp_path / "work")
    assert report.names == ["Wooden-Pallet"]
    assert {k: v.images for k, v in report.splits.items()} == {"train": 222, "val": 24, "test": 13}
    assert len(report.splits["train"].orphan_labels) == 30
    assert report.orphan_labels == 30
    labels = list((tmp_path / "work" / "labels" / "train").glob("*.txt"))
    assert len(labels) == 222  # the orphans are not carried over


def test_real_packages_plain_boxes(tmp_path: Path) -> None:
    report = prepare_dataset(_real("packages-public-domain", "data.yaml"), tmp_path / "work")
    assert {k: (v.images, v.boxes, v.polygons) for k, v in report.splits.items()} == {
        "train": (19, 31, 0), "val": (4, 6, 0), "test": (3, 5, 0),
    }
    assert report.dataset_hash == prepare_dataset(_real("packages-public-domain", "data.yaml"),
                                                  tmp_path / "again").dataset_hash
