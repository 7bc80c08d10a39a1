"""``shelftally scan`` end to end: files, folders and globs, bad pictures, duplicates, JSON and tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.workers.conftest import SHELF, encode, toy_scene
from workers.cli import app
from workers.scan.run import collect_pictures

GOOD_SEEDS = (1, 2, 3)


def shelftally(db_url: str, *args: str, code: int = 0, env: dict[str, str] | None = None) -> Any:
    result = CliRunner().invoke(app, ["--database-url", db_url, *args],
                                env={"SHELFTALLY_ALERTS__CHANNELS": '["log"]', **(env or {})})
    assert result.exit_code == code, result.output
    return json.loads(result.stdout) if "--json" in args else result.output


@pytest.fixture
def warehouse(db_url: str, tmp_path: Path) -> str:
    shelftally(db_url, "db", "upgrade")
    (tmp_path / "skus.csv").write_text("sku_code,name\nSKU-RED,Red box\nSKU-BLUE,Blue box\nSKU-GREEN,Green box\n")
    (tmp_path / "locations.csv").write_text(
        f"location_code,level,parent_code\nWH1,warehouse,\n{SHELF},shelf,WH1\n")
    (tmp_path / "stock.csv").write_text(
        f"location_code,sku_code,quantity\n{SHELF},SKU-RED,3\n{SHELF},SKU-BLUE,2\n{SHELF},SKU-GREEN,4\n")
    for kind in ("skus", "locations", "stock"):
        shelftally(db_url, "import", kind, str(tmp_path / f"{kind}.csv"))
    return db_url


@pytest.fixture
def pictures(tmp_path: Path) -> Path:
    """A folder ``Regal Ä/`` with 3 toy shelf pictures, a text file and a picture cut short."""
    folder = tmp_path / "Regal Ä"
    folder.mkdir()
    for seed in GOOD_SEEDS:
        (folder / f"shelf-{seed}.png").write_bytes(encode(toy_scene(seed)[0]))
    (folder / "notes.txt").write_text("not taken from a folder: no picture suffix")
    jpeg = encode(toy_scene(9)[0], ".jpg")
    (folder / "zz-cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    return folder


def test_collect_pictures_takes_files_folders_and_globs(pictures: Path, tmp_path: Path) -> None:
    text = pictures / "notes.txt"
    found, missing = collect_pictures([pictures, text, Path(str(pictures / "shelf-1.*")), tmp_path / "nothing-*.jpg",
                                       tmp_path / "absent.jpg"])
    names = [p.name for p in found]
    assert names == ["shelf-1.png", "shelf-2.png", "shelf-3.png", "zz-cut.jpg", "notes.txt"]  # each once
    assert missing == [str(tmp_path / "nothing-*.jpg"), str(tmp_path / "absent.jpg")]


@pytest.mark.slow
def test_scan_counts_good_pictures_reports_bad_ones_and_exits_1(
    warehouse: str, pictures: Path, tmp_path: Path, tiny_detector: Path, toy_classifier: Path
) -> None:
    common = ["--location", SHELF, "--detector", str(tiny_detector), "--classifier", str(toy_classifier),
              "--evidence-dir", str(tmp_path / "evidence")]
    data = shelftally(warehouse, "scan", str(pictures), "--captured-at", "2026-11-29T08:00:00Z", *common, "--json",
                      code=1)
    by_name = {Path(p["source"]).name: p for p in data["pictures"]}
    assert sorted(by_name) == ["shelf-1.png", "shelf-2.png", "shelf-3.png", "zz-cut.jpg"]
    assert (by_name["zz-cut.jpg"]["status"], by_name["zz-cut.jpg"]["reason"]) == ("rejected", "corrupt_image")
    for seed in GOOD_SEEDS:
        entry = by_name[f"shelf-{seed}.png"]
        assert entry["status"] == "processed"
        assert entry["counts"] == toy_scene(seed)[1]
        assert Path(entry["evidence"]).is_file()
    # Same pictures, same capture time: already scanned, nothing counted twice; the table names them.
    output = shelftally(warehouse, "scan", str(pictures / "shelf-1.png"), "--captured-at", "2026-11-29T08:00:00Z",
                        *common)
    assert "already scanned" in output and "1 picture(s): 0 scanned, 1 already scanned before, 0 rejected" in output
    # The human report: per picture, then the open discrepancies at the shelf (SKU-GREEN is never seen).
    output = shelftally(warehouse, "scan", str(pictures / "shelf-2.png"), "--captured-at", "2026-11-29T09:00:00Z",
                        *common)
    assert "out_of_stock" in output and "SKU-GREEN" in output and "processed" in output


@pytest.mark.slow
def test_scan_without_models_or_with_a_bad_location_fails_cleanly(
    warehouse: str, pictures: Path, tiny_detector: Path, toy_classifier: Path
) -> None:
    data = shelftally(warehouse, "scan", str(pictures / "shelf-1.png"), "--location", SHELF, "--json", code=1)
    assert data["reason"] == "models_not_configured"
    data = shelftally(warehouse, "scan", str(pictures / "shelf-1.png"), "--location", "NOWHERE", "--json", code=1,
                      env={"SHELFTALLY_MODELS__DETECTOR_DIR": str(tiny_detector),
                           "SHELFTALLY_MODELS__CLASSIFIER_DIR": str(toy_classifier)})
    assert data["reason"] == "unknown_location"


def test_scan_refuses_paths_that_name_nothing(warehouse: str, tmp_path: Path) -> None:
    output = shelftally(warehouse, "scan", str(tmp_path / "typo.jpg"), "--location", SHELF, code=2)
    assert "typo.jpg" in output
