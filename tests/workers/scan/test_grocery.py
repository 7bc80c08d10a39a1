"""End-to-end evaluation on Grocery Store-format pictures (made here: one held product, a shelf behind)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from tests.detector.conftest import TOY_COLOURS
from tests.workers.conftest import SKU_OF_CLASS
from workers.cli import app
from workers.scan.grocery import evaluate_grocery
from workers.scan.pipeline import load_models


def held_up(rng: np.random.Generator, cls: int) -> np.ndarray:
    """A 128 px picture: a big rectangle of class ``cls`` in the middle, two small ones of the other class."""
    image = cv2.GaussianBlur(rng.integers(90, 170, (128, 128, 3), dtype=np.uint8), (5, 5), 0)
    cv2.rectangle(image, (42, 40), (85, 86), TOY_COLOURS[cls], -1)
    for x in (4, 100):
        cv2.rectangle(image, (x, 6), (x + 20, 30), TOY_COLOURS[1 - cls], -1)
    return image


@pytest.fixture(scope="module")
def grocery_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("grocery")
    rng = np.random.default_rng(3)
    rows = ["Class Name (str),Class ID (int),Coarse Class Name (str),Coarse Class ID (int),"
            "Iconic Image Path (str),Product Description Path (str)"]
    lines = []
    for cls, code in enumerate(SKU_OF_CLASS):
        rows.append(f"{code},{cls},Box,0,/iconic/{code}.png,/iconic/{code}.txt")
        (root / "val" / code).mkdir(parents=True)
        for n in range(4):
            cv2.imwrite(str(root / "val" / code / f"{n}.png"), cv2.cvtColor(held_up(rng, cls), cv2.COLOR_RGB2BGR))
            lines.append(f"val/{code}/{n}.png, {cls}, 0")
    (root / "classes.csv").write_text("\n".join(rows) + "\n")
    (root / "val.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.slow
def test_main_box_names_the_held_product_and_the_shelf_is_counted(
    grocery_root: Path, tiny_detector: Path, toy_classifier: Path
) -> None:
    detector, recognizer = load_models(tiny_detector, toy_classifier, threads=1)
    report = evaluate_grocery(grocery_root, detector, recognizer)
    assert report.pictures == 8
    assert report.main_box_accuracy >= 0.75
    assert report.main_box_off_product <= 0.25
    hits = [p for p in report.per_picture if p.main_hit]
    assert all(p.main_centred for p in hits)
    # Two small boxes of the other SKU behind each held product.
    assert sum(report.background_counts.values()) >= 12
    assert set(report.background_counts) <= {*SKU_OF_CLASS, "unknown"}
    assert report.to_dict()["pictures"] == 8 and "per_picture" not in report.to_dict()


@pytest.mark.slow
def test_cli_writes_the_report(grocery_root: Path, tiny_detector: Path, toy_classifier: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    result = CliRunner().invoke(app, ["evaluate", "grocery", "--data", str(grocery_root), "--detector",
                                      str(tiny_detector), "--classifier", str(toy_classifier), "--limit", "3",
                                      "--json", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["pictures"] == 3
    assert len(json.loads(out.read_text())["per_picture"]) == 3
