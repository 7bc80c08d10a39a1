"""``shelftally detector synth|train|export`` as an engineer types them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from workers.cli import app

runner = CliRunner()


def shelftally(tmp_path: Path, *args: str, code: int = 0) -> str:
    result = runner.invoke(app, ["--database-url", f"sqlite:///{tmp_path}/unused.db", *args])
    assert result.exit_code == code, result.output
    return result.output


def test_synth_writes_two_datasets(tmp_path: Path) -> None:
    out = shelftally(tmp_path, "detector", "synth", "--packshots", "drawn", "--out", str(tmp_path / "synth"),
                     "--images", "5", "--size", "320x240", "--max-objects", "30", "--skus", "4", "--seed", "3")
    assert "5 pictures" in out and "4 SKUs" in out
    per_sku = yaml.safe_load((tmp_path / "synth" / "sku" / "data.yaml").read_text())
    agnostic = yaml.safe_load((tmp_path / "synth" / "agnostic" / "data.yaml").read_text())
    assert per_sku["names"] == ["SKU-0001", "SKU-0002", "SKU-0003", "SKU-0004"]
    assert agnostic["names"] == ["product"]
    meta = json.loads((tmp_path / "synth" / "synth.json").read_text())
    assert meta["seed"] == 3 and meta["config"]["size_wh"] == [320, 240] and meta["config"]["max_objects"] == 30


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--size", "wide"], "WIDTHxHEIGHT"),
        (["--max-objects", "0"], "min_objects"),
        (["--images", "1"], "n_images"),
    ],
)
def test_synth_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["detector", "synth", "--packshots", "drawn", "--out", str(tmp_path / "o"), *args])
    assert result.exit_code == 2 and message in result.output


def test_synth_missing_packshot_folder_reports_reason(tmp_path: Path) -> None:
    out = shelftally(tmp_path, "detector", "synth", "--packshots", str(tmp_path / "none"), "--out",
                     str(tmp_path / "o"), "--images", "2", code=1)
    assert "packshots_missing" in out


def test_train_refuses_a_model_it_would_have_to_download(tmp_path: Path) -> None:
    data = tmp_path / "data.yaml"
    data.write_text("train: images/train\nval: images/val\nnames: [product]\n")
    out = shelftally(tmp_path, "detector", "train", "--data", str(data), "--model", "yolo11n.pt", "--out",
                     str(tmp_path / "m"), code=1)
    assert "model_not_local" in out and "never downloads" in out


def test_train_rejects_malformed_set(tmp_path: Path) -> None:
    data = tmp_path / "data.yaml"
    data.write_text("names: [product]\n")
    result = runner.invoke(app, ["detector", "train", "--data", str(data), "--out", str(tmp_path / "m"),
                                 "--set", "lr0"])
    assert result.exit_code == 2 and "KEY=VALUE" in result.output


@pytest.mark.slow
def test_train_and_export_end_to_end(tmp_path: Path) -> None:
    shelftally(tmp_path, "detector", "synth", "--packshots", "drawn", "--out", str(tmp_path / "synth"),
               "--images", "12", "--size", "256x192", "--max-objects", "4", "--min-objects", "2")
    out = shelftally(tmp_path, "detector", "train", "--data", str(tmp_path / "synth" / "agnostic" / "data.yaml"),
                     "--out", str(tmp_path / "model"), "--imgsz", "64", "--epochs", "1", "--batch", "4",
                     "--set", "lr0=0.002", "--set", "patience=5")
    assert "mAP50" in out and "epoch" in out
    provenance = json.loads((tmp_path / "model" / "provenance.json").read_text())
    assert provenance["recipe"]["requested"]["lr0"] == 0.002 and provenance["recipe"]["requested"]["patience"] == 5
    out = shelftally(tmp_path, "detector", "export", str(tmp_path / "model"), "--format", "openvino")
    assert (tmp_path / "model" / "openvino" / "model.xml").is_file() and "model.xml" in out
    result = runner.invoke(app, ["detector", "export", str(tmp_path / "model"), "--format", "tflite"])
    assert result.exit_code == 2


@pytest.mark.slow
def test_quantize_json_is_clean_and_usage_errors_are_typed(tiny_detector: Path, tmp_path: Path) -> None:
    """`detector quantize --json` prints only the JSON (NNCF's log and bars go to stderr); a bad --eval is a
    usage error found before any work."""
    import shutil
    import subprocess
    import sys

    from tests.detector.conftest import write_toy_dataset

    pytest.importorskip("nncf", reason="INT8 quantisation needs nncf (extra shelftally[int8])")
    model = tmp_path / "model"
    shutil.copytree(tiny_detector, model)
    data = write_toy_dataset(tmp_path / "toy", n_train=12, n_val=8, seed=5)
    command = [str(Path(sys.executable).with_name("shelftally")), "detector", "quantize", str(model),
               "--data", str(data)]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    bad = subprocess.run([*command, "--eval", f"{data}:valid"], capture_output=True, text=True, cwd=tmp_path, env=env,
                         timeout=300)
    assert bad.returncode == 2 and "unknown split 'valid'" in bad.stderr
    assert not (model / "openvino-int8").exists()
    run = subprocess.run([*command, "--eval", f"{data}:val", "--calibration", "12", "--json"], capture_output=True,
                         text=True, cwd=tmp_path, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout)
    assert report["metric"] == "mAP50" and set(report["evaluations"]) == {"toy/val"}
    assert report["calibration"]["pictures"] == 12 and report["within_margin"] == (report["worst_drop_points"] <= 1.0)
