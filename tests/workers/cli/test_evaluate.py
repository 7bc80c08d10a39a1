"""``shelftally evaluate classifier``: the shipped model on real Grocery Store photos in each format,
as JSON and as tables, and the errors a user sees."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from classifier.dataset import load_image, read_grocery_store
from classifier.model_dir import read_model_dir
from classifier.recognize import Recognizer
from workers.cli import app

ROOT = Path(__file__).resolve().parents[3]
SHIPPED = ROOT / "models" / "classifier-grocery"
GROCERY = ROOT.parent / "shared" / "data" / "grocerystore"
CLASSES = ("Granny-Smith", "Banana", "Oatly-Oat-Milk")
OUTSIDER = "Flat-Grey-Not-A-Product"  # a SKU code the shipped model does not name
KEYS = {"top1", "top5", "macro_precision", "macro_recall", "macro_f1", "unknown_rate", "per_class_accuracy", "items",
        "model", "backend", "split", "format", "unknown_class_items", "top1_known_classes"}

pytestmark = [
    pytest.mark.skipif(not GROCERY.is_dir(), reason="../shared/data/grocerystore is not on this machine"),
    pytest.mark.skipif(not (SHIPPED / "labels.json").is_file(),
                       reason="models/classifier-grocery is not in this checkout"),
]


def evaluate(*args: str, code: int = 0) -> Any:
    result = CliRunner().invoke(app, ["evaluate", "classifier", "--model", str(SHIPPED), "--threads", "1", *args])
    assert result.exit_code == code, result.output
    return json.loads(result.stdout) if "--json" in args else result


@pytest.fixture(scope="module")
def photos() -> list[tuple[Path, str]]:
    """3 real val photos of each of :data:`CLASSES`, with their SKU codes."""
    val = read_grocery_store(GROCERY, "val")
    chosen: list[tuple[Path, str]] = []
    for code in CLASSES:
        index = val.class_names.index(code)
        chosen += [(item.path, code) for item in val.items if item.class_index == index][:3]
    assert len(chosen) == 9
    return chosen


@pytest.fixture
def list_file(photos: list[tuple[Path, str]], tmp_path: Path) -> Path:
    """A list file: the 9 real photos (absolute paths) and 3 plain grey pictures under :data:`OUTSIDER`."""
    lines = [f"{path},{code}" for path, code in photos]
    for n in range(3):
        grey = np.full((464, 348, 3), 90 + 40 * n, np.uint8)
        cv2.imwrite(str(tmp_path / f"grey-{n}.png"), grey)
        lines.append(f"grey-{n}.png,{OUTSIDER}")
    path = tmp_path / "crops.csv"
    path.write_text("# path,sku_code\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_json_report_of_a_list_file_agrees_with_the_recognizer(list_file: Path) -> None:
    report = evaluate("--data", str(list_file), "--format", "list", "--batch", "5", "--json")
    assert set(report) >= KEYS
    assert report["model"] == {"dir": str(SHIPPED), "version": read_model_dir(SHIPPED).version}
    assert (report["backend"], report["format"], report["split"]) == ("onnx", "list", "")
    assert report["items"] == 12 and report["unknown_class_items"] == 3
    assert set(report["per_class_accuracy"]) == {*CLASSES, OUTSIDER}
    assert report["unknown_classes"] == [OUTSIDER]
    assert 0.0 <= report["top1"] <= report["top5"] <= 1.0
    assert 0.0 <= report["unknown_rate"] <= 1.0
    for key in ("macro_precision", "macro_recall", "macro_f1", "top1_known_classes"):
        assert 0.0 <= report[key] <= 1.0, key
    # The same pictures through the Recognizer a scan uses: unknown is right only for the outsider.
    rows = [line.split(",") for line in list_file.read_text().splitlines()[1:]]
    truth = [code for _, code in rows]
    with Recognizer.from_model_dir(SHIPPED, threads=1) as recognizer:
        named = recognizer.classify([load_image(list_file.parent / path) for path, _ in rows]).sku_code
    right = [n == (None if t == OUTSIDER else t) for n, t in zip(named, truth, strict=True)]
    assert report["top1"] == pytest.approx(sum(right) / 12)
    assert report["top1_known_classes"] == pytest.approx(sum(right[:9]) / 9)
    assert report["unknown_rate"] == pytest.approx(sum(n is None for n in named) / 12)
    assert report["per_class_accuracy"][OUTSIDER] == pytest.approx(sum(right[9:]) / 3)


def test_grocery_format_defaults_to_val_and_prints_tables(photos: list[tuple[Path, str]], tmp_path: Path) -> None:
    """A Grocery Store folder of 9 val photos (the real ``classes.csv``, a ``val.txt`` of absolute paths)."""
    root = tmp_path / "grocery"
    root.mkdir()
    shutil.copy(GROCERY / "dataset" / "classes.csv", root / "classes.csv")
    names = read_grocery_store(GROCERY, "val").class_names
    (root / "val.txt").write_text(
        "".join(f"{path}, {names.index(code)}, 0\n" for path, code in photos), encoding="utf-8")
    report = evaluate("--data", str(root), "--format", "grocery", "--json")
    assert (report["split"], report["format"], report["items"]) == ("val", "grocery", 9)
    assert report["unknown_class_items"] == 0 and report["top1"] == pytest.approx(report["top1_known_classes"])
    assert set(report["per_class_accuracy"]) == set(CLASSES)
    printed = evaluate("--data", str(root), "--format", "grocery").stdout
    assert "Per-class accuracy (worst first)" in printed and "top-1" in printed
    assert all(code in printed for code in CLASSES)


def test_image_folder_format(photos: list[tuple[Path, str]], tmp_path: Path) -> None:
    for path, code in photos:
        (tmp_path / code).mkdir(exist_ok=True)
        shutil.copy(path, tmp_path / code / path.name)
    report = evaluate("--data", str(tmp_path), "--format", "folder", "--split", "holdout", "--json")
    assert (report["format"], report["split"], report["items"]) == ("folder", "holdout", 9)
    assert report["per_class_items"] == dict.fromkeys(sorted(CLASSES), 3)


def test_a_missing_model_directory_exits_1_with_its_reason(list_file: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no-model"
    result = CliRunner().invoke(app, ["evaluate", "classifier", "--model", str(missing), "--data", str(list_file),
                                      "--format", "list", "--json"])
    assert result.exit_code == 1, result.output
    assert json.loads(result.stdout)["reason"] == "model_dir_missing"
    assert "model_dir_missing" in result.stderr and "is not a model directory" in result.stderr
    plain = CliRunner().invoke(app, ["evaluate", "classifier", "--model", str(missing), "--data", str(list_file),
                                     "--format", "list"])
    assert plain.exit_code == 1 and plain.stdout == ""
    assert "error (model_dir_missing)" in plain.stderr


def test_a_missing_data_file_exits_1_with_its_reason(tmp_path: Path) -> None:
    report = evaluate("--data", str(tmp_path / "absent.csv"), "--format", "list", "--json", code=1)
    assert report["reason"] == "missing_dataset"


@pytest.mark.parametrize(("option", "value"), [("--format", "coco"), ("--backend", "tflite")])
def test_an_unknown_format_or_backend_is_a_usage_error(list_file: Path, option: str, value: str) -> None:
    args = {"--format": "list", "--backend": "onnx", option: value}
    result = evaluate("--data", str(list_file), *[x for kv in args.items() for x in kv], code=2)
    assert option in result.output and value in result.output
