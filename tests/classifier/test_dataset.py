"""Dataset readers on the real Grocery Store dataset and on small made-up datasets with broken files."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from classifier.dataset import (
    DatasetProblem,
    ImageDataset,
    load_image,
    read_grocery_classes,
    read_grocery_store,
    read_image_folder,
    read_list_file,
)
from classifier.errors import DatasetError
from tests.classifier.conftest import GROCERY

needs_grocery = pytest.mark.skipif(
    not (GROCERY / "dataset" / "classes.csv").is_file(),
    reason=f"Grocery Store dataset not found at {GROCERY} (shared/data is not mounted on this machine)",
)


def write_image(path: Path, rgb: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (12, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.full((*size, 3), rgb[::-1], np.uint8)  # OpenCV writes BGR
    assert cv2.imwrite(str(path), image)
    return path


def reasons(dataset: ImageDataset) -> dict[str, str]:
    """Problem reason per file or folder name."""
    return {problem.path.name: problem.reason for problem in dataset.problems}


@needs_grocery
@pytest.mark.parametrize(("split", "items", "classes_present"), [("train", 2640, 81), ("val", 296, 60)])
def test_grocery_store_splits(split: str, items: int, classes_present: int) -> None:
    dataset = read_grocery_store(GROCERY, split)
    assert len(dataset) == items
    assert dataset.num_classes == 81
    assert dataset.problems == []
    assert dataset.class_names[:3] == ["Golden-Delicious", "Granny-Smith", "Pink-Lady"]
    assert dataset.class_names[-1] == "Zucchini"
    assert sum(1 for n in dataset.class_counts().values() if n) == classes_present
    first = dataset.items[0]
    assert first.path == GROCERY / "dataset" / split / "Fruit/Apple/Golden-Delicious/Golden-Delicious_001.jpg"
    assert first.class_index == 0
    # every image lies in the folder named after its SKU code
    assert all(item.path.parent.name == dataset.class_names[item.class_index] for item in dataset.items)
    assert dataset.class_indices.shape == (items,) and dataset.class_indices.dtype == np.int64


@needs_grocery
def test_grocery_store_classes_and_images() -> None:
    classes = read_grocery_classes(GROCERY / "dataset")
    assert len(classes) == 81
    granny = classes[1]
    assert (granny.name, granny.class_id, granny.coarse_name, granny.coarse_id) == ("Granny-Smith", 1, "Apple", 0)
    assert all(c.iconic_image.is_file() and c.description.is_file() for c in classes)
    assert read_grocery_store(GROCERY / "dataset", "val").paths == read_grocery_store(GROCERY, "val").paths
    image = load_image(read_grocery_store(GROCERY, "val").items[0].path)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert sorted(image.shape[:2]) in ([348, 348], [348, 464])
    with pytest.raises(DatasetError) as caught:
        read_grocery_store(GROCERY, "test")  # held out on purpose (shared/data/README.md)
    assert caught.value.reason == "missing_split"


def make_grocery(root: Path) -> Path:
    """A Grocery Store lookalike with 3 classes and a train split with every kind of problem."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.csv").write_text(
        "Class Name (str),Class ID (int),Coarse Class Name (str),Coarse Class ID (int),"
        "Iconic Image Path (str),Product Description Path (str)\n"
        "Granny-Smith,0,Apple,0,/iconic/Granny-Smith_Iconic.jpg,/iconic/Granny-Smith_Description.txt\n"
        "Pink-Lady,1,Apple,0,/iconic/Pink-Lady_Iconic.jpg,/iconic/Pink-Lady_Description.txt\n"
        "Oatly-Oatghurt,2,Oatghurt,1,/iconic/Oatly_Iconic.jpg,/iconic/Oatly_Description.txt"  # no final newline
    )
    write_image(root / "train/Apple/Granny-Smith/g1.jpg")
    write_image(root / "train/Apple/Pink-Lady/p1.png")
    write_image(root / "train/Oatghurt/o1.jpg")
    (root / "train/Oatghurt/notes.jpg").write_text("not a picture")
    (root / "train/Oatghurt/empty.jpg").write_bytes(b"")
    (root / "train/Oatghurt/broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(200))
    (root / "train.txt").write_text(
        "train/Apple/Granny-Smith/g1.jpg, 0, 0\n"
        "train/Apple/Granny-Smith/gone.jpg, 0, 0\n"
        "\n"
        "train/Apple/Pink-Lady/p1.png, 1, 0\n"
        "train/Oatghurt/o1.jpg, 2\n"
        "train/Oatghurt/o1.jpg, 7, 1\n"
        "train/Oatghurt/notes.jpg, 2, 1\n"
        "train/Oatghurt/empty.jpg, 2, 1\n"
        "train/Oatghurt/broken.jpg, 2, 1\n"
        "train/Oatghurt/o1.jpg, 2, 1\n"
    )
    return root


def test_grocery_format_reports_broken_lines_and_images_and_goes_on(tmp_path: Path) -> None:
    root = make_grocery(tmp_path / "grocery")
    dataset = read_grocery_store(root, "train")
    assert dataset.class_names == ["Granny-Smith", "Pink-Lady", "Oatly-Oatghurt"]
    assert [(item.path.name, item.class_index) for item in dataset.items] == [
        ("g1.jpg", 0), ("p1.png", 1), ("broken.jpg", 2), ("o1.jpg", 2)
    ]
    assert dataset.class_counts() == {"Granny-Smith": 1, "Pink-Lady": 1, "Oatly-Oatghurt": 2}
    found = sorted((p.reason, p.path.name, p.detail) for p in dataset.problems)
    assert [(r, n) for r, n, _ in found] == [
        ("malformed_line", "train.txt"), ("missing", "gone.jpg"), ("not_an_image", "empty.jpg"),
        ("not_an_image", "notes.jpg"), ("unknown_class", "o1.jpg"),
    ]
    assert "line 5" in found[0][2] and "fine id 7" in found[4][2]
    decoded = read_grocery_store(root, "train", check="decode")
    assert reasons(decoded)["broken.jpg"] == "undecodable"
    assert len(decoded) == 3
    assert len(read_grocery_store(root, "train", check="exists")) == 6  # the empty and text files exist
    classes = read_grocery_classes(root)
    assert classes[2].iconic_image == root / "iconic" / "Oatly_Iconic.jpg"


@pytest.mark.parametrize(
    ("table", "mentions"),
    [
        ("Class Name (str),Class ID (int)\nA,0,X,0,/a.jpg,/a.txt\nB,2,X,0,/b.jpg,/b.txt\n", "ids must be 0..K-1"),
        ("A,0,X,0,/a.jpg,/a.txt\nA,1,X,0,/b.jpg,/b.txt\n", "names repeated: ['A']"),
        ("A,zero,X,0,/a.jpg,/a.txt\n", "row"),
        ("A,0,X\n", "row"),
        ("", "ids must be 0..K-1"),
    ],
)
def test_bad_class_tables_are_dataset_errors(tmp_path: Path, table: str, mentions: str) -> None:
    (tmp_path / "classes.csv").write_text(table)
    (tmp_path / "train.txt").write_text("")
    with pytest.raises(DatasetError) as caught:
        read_grocery_store(tmp_path, "train")
    assert caught.value.reason == "invalid_class_table"
    assert mentions in str(caught.value)


def test_grocery_format_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as caught:
        read_grocery_store(tmp_path, "train")
    assert caught.value.reason == "missing_class_table"
    make_grocery(tmp_path)
    with pytest.raises(DatasetError) as caught:
        read_grocery_store(tmp_path, "val")
    assert caught.value.reason == "missing_split"
    with pytest.raises(DatasetError) as caught:
        read_grocery_store(tmp_path, "training")
    assert caught.value.reason == "unknown_split" and "train, val, test" in str(caught.value)


def test_image_folder_with_a_missing_image_and_clutter(tmp_path: Path) -> None:
    root = tmp_path / "crops"
    write_image(root / "b-sku/1.jpg")
    write_image(root / "b-sku/session2/2.PNG")  # nested and upper-case suffix
    write_image(root / "a-sku/1.png")
    write_image(root / "a-sku/.thumb.png")  # hidden: skipped
    write_image(root / ".cache/x.png")  # hidden folder: not a class
    (root / "a-sku/readme.txt").write_text("not an image suffix: ignored")
    (root / "a-sku/empty.png").write_bytes(b"")
    os.symlink(root / "a-sku/deleted.png", root / "a-sku/link.png")  # a dangling link: the image is missing
    (root / "c-sku").mkdir()
    (root / "loose.jpg").write_text("files beside the class folders are ignored")
    dataset = read_image_folder(root)
    assert dataset.class_names == ["a-sku", "b-sku", "c-sku"]
    assert [(item.path.relative_to(root).as_posix(), item.class_index) for item in dataset.items] == [
        ("a-sku/1.png", 0), ("b-sku/1.jpg", 1), ("b-sku/session2/2.PNG", 1)
    ]
    assert reasons(dataset) == {"empty.png": "not_an_image", "link.png": "missing", "c-sku": "empty_class"}
    assert dataset.class_counts() == {"a-sku": 1, "b-sku": 2, "c-sku": 0}


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as caught:
        read_image_folder(tmp_path / "nowhere")
    assert caught.value.reason == "missing_dataset"
    write_image(tmp_path / "only-a-file.jpg")
    with pytest.raises(DatasetError) as caught:
        read_image_folder(tmp_path)
    assert caught.value.reason == "no_classes"


def test_list_file_with_a_missing_image(tmp_path: Path) -> None:
    write_image(tmp_path / "shots/a.jpg")
    write_image(tmp_path / "shots/b, with comma.png")
    elsewhere = write_image(tmp_path / "elsewhere/c.jpg")
    list_file = tmp_path / "train.csv"
    list_file.write_text(
        "# path,sku_code\n"
        "shots/a.jpg,07310865071071\n"
        '"shots/b, with comma.png", Granny-Smith\n'
        f"{elsewhere},07310865071071\n"
        "shots/gone.jpg,Granny-Smith\n"
        "shots/a.jpg\n"
        "shots/a.jpg,Granny-Smith,extra\n"
        "\n"
    )
    dataset = read_list_file(list_file)
    assert dataset.class_names == ["07310865071071", "Granny-Smith"]  # strings, sorted; the GTIN keeps its zero
    assert [(item.path.name, item.class_index) for item in dataset.items] == [
        ("a.jpg", 0), ("b, with comma.png", 1), ("c.jpg", 0)
    ]
    assert sorted((p.reason, p.path.name) for p in dataset.problems) == [
        ("malformed_line", "train.csv"), ("malformed_line", "train.csv"), ("missing", "gone.jpg")
    ]


def test_list_file_with_given_class_names(tmp_path: Path) -> None:
    write_image(tmp_path / "a.jpg")
    (tmp_path / "list.csv").write_text("a.jpg,Pink-Lady\na.jpg,Zucchini\n")
    dataset = read_list_file(tmp_path / "list.csv", class_names=["Granny-Smith", "Pink-Lady"], split="val")
    assert dataset.class_names == ["Granny-Smith", "Pink-Lady"] and dataset.split == "val"
    assert [item.class_index for item in dataset.items] == [1]
    assert dataset.problems == [
        DatasetProblem(tmp_path / "a.jpg", "unknown_class", "SKU code 'Zucchini' is not in class_names")
    ]
    other_root = read_list_file(tmp_path / "list.csv", root=tmp_path / "nowhere")
    assert len(other_root) == 0 and {p.reason for p in other_root.problems} == {"missing"}
    with pytest.raises(DatasetError) as caught:
        read_list_file(tmp_path / "missing.csv")
    assert caught.value.reason == "missing_dataset"
    with pytest.raises(DatasetError) as caught:
        read_list_file(tmp_path / "list.csv", class_names=["A", "A"])
    assert caught.value.reason == "invalid_class_table"


def test_load_image_gives_rgb(tmp_path: Path) -> None:
    image = load_image(write_image(tmp_path / "red.png", (200, 30, 10)))
    assert image.shape == (12, 16, 3) and image.dtype == np.uint8
    assert tuple(image[0, 0]) == (200, 30, 10)
    grey = tmp_path / "grey.png"
    cv2.imwrite(str(grey), np.full((5, 7), 90, np.uint8))
    assert load_image(grey).shape == (5, 7, 3)
    with pytest.raises(DatasetError) as caught:
        load_image(tmp_path / "gone.png")
    assert caught.value.reason == "unreadable_image"
