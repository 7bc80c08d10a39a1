"""Classifier model directories: metadata round-trip, and what is refused with which reason."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from classifier.errors import ModelLoadError
from classifier.model_dir import (
    ARCHITECTURE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    LABELS,
    METRICS,
    PREPROCESS,
    Architecture,
    ModelDir,
    Preprocess,
    read_model_dir,
    write_metadata,
)
from shelftally.errors import ShelfTallyError


def test_metadata_round_trips(tmp_path: Path) -> None:
    preprocess = Preprocess(input_size=96, resize="center_crop", crop_pct=0.9, channel_order="BGR")
    architecture = Architecture("resnet18", embedding_dim=64, head="linear")
    write_metadata(
        tmp_path / "m", labels=["07310865071071", "Granny-Smith"], preprocess=preprocess, architecture=architecture,
        metrics={"top1": 0.91}, provenance={"dataset_sha256": "abc"},
    )
    model_dir = read_model_dir(tmp_path / "m")
    assert model_dir.labels == ["07310865071071", "Granny-Smith"]  # a GTIN keeps its leading zero
    assert model_dir.num_classes == 2
    assert model_dir.preprocess == preprocess
    assert model_dir.architecture == architecture
    assert model_dir.metrics == {"top1": 0.91} and model_dir.provenance == {"dataset_sha256": "abc"}
    assert model_dir.version == "m@unknown"
    (tmp_path / "m" / "model.onnx").write_bytes(b"weights")
    assert read_model_dir(tmp_path / "m").version == "m@" + hashlib.sha256(b"weights").hexdigest()[:12]


def test_defaults_are_imagenet_letterbox(tmp_path: Path) -> None:
    write_metadata(tmp_path, labels=["a"], preprocess=Preprocess())
    written = json.loads((tmp_path / PREPROCESS).read_text())
    assert written["mean"] == list(IMAGENET_MEAN) and written["std"] == list(IMAGENET_STD)
    assert written["resize"] == "letterbox" and written["channel_order"] == "RGB" and written["layout"] == "NCHW"
    model_dir = read_model_dir(tmp_path)
    assert model_dir.architecture is None and model_dir.metrics == {} and model_dir.provenance == {}


def _write(root: Path, labels: Any = ("a", "b"), preprocess: Any = None, architecture: Any = None) -> None:
    root.mkdir(parents=True, exist_ok=True)
    if labels is not None:
        (root / LABELS).write_text(labels if isinstance(labels, str) else json.dumps(list(labels)))
    (root / PREPROCESS).write_text(json.dumps(preprocess if preprocess is not None else {"input_size": 64}))
    if architecture is not None:
        (root / ARCHITECTURE).write_text(json.dumps(architecture))


@pytest.mark.parametrize(
    ("setup", "reason", "mentions"),
    [
        ({"labels": None}, "model_file_missing", "labels.json"),
        ({"labels": "[not json"}, "model_file_unreadable", "labels.json"),
        ({"labels": []}, "invalid_labels", "non-empty"),
        ({"labels": ["a", ""]}, "invalid_labels", "non-empty"),
        ({"labels": ["a", "b", "a"]}, "invalid_labels", "repeated: ['a']"),
        ({"labels": '{"0": "a"}'}, "invalid_labels", "list"),
        ({"preprocess": {"input_size": 64, "resize": "squash"}}, "invalid_preprocess", "resize"),
        ({"preprocess": {"input_size": 4}}, "invalid_preprocess", "input_size"),
        ({"preprocess": {"input_size": 64, "mean": [0.5, 0.5]}}, "invalid_preprocess", "mean"),
        ({"preprocess": {"input_size": 64, "std": [0.2, 0.0, 0.2]}}, "invalid_preprocess", "std"),
        ({"preprocess": {"input_size": 64, "crop_pct": 1.5}}, "invalid_preprocess", "crop_pct"),
        ({"preprocess": {"input_size": 64, "channel_order": "RGBA"}}, "invalid_preprocess", "channel_order"),
        ({"preprocess": {"input_size": 64, "letterbox": True}}, "invalid_preprocess", "unknown keys ['letterbox']"),
        ({"preprocess": [64]}, "invalid_preprocess", "JSON object"),
        ({"architecture": {"name": "resnet18", "head": "arcface"}}, "invalid_architecture", "head"),
        ({"architecture": {"name": "resnet18", "embedding_dim": 0}}, "invalid_architecture", "embedding_dim"),
        ({"architecture": {"embedding_dim": 128}}, "invalid_architecture", "name"),
    ],
)
def test_invalid_model_dirs_are_refused_with_a_reason(
    tmp_path: Path, setup: dict[str, Any], reason: str, mentions: str
) -> None:
    _write(tmp_path / "m", **setup)
    with pytest.raises(ModelLoadError) as caught:
        read_model_dir(tmp_path / "m")
    assert caught.value.reason == reason
    assert mentions in str(caught.value)
    assert isinstance(caught.value, ShelfTallyError)


def test_missing_directory_and_unreadable_metrics(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as caught:
        read_model_dir(tmp_path / "nowhere")
    assert caught.value.reason == "model_dir_missing"
    _write(tmp_path / "m")
    (tmp_path / "m" / METRICS).write_text("[1, 2]")
    with pytest.raises(ModelLoadError) as caught:
        read_model_dir(tmp_path / "m")
    assert caught.value.reason == "model_file_unreadable"
    with pytest.raises(ModelLoadError) as caught:
        ModelDir(tmp_path / "m", ["a"], Preprocess()).file("model.onnx")
    assert caught.value.reason == "model_file_missing"


def test_write_refuses_repeated_labels_and_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as caught:
        write_metadata(tmp_path / "m", labels=["a", "a"], preprocess=Preprocess())
    assert caught.value.reason == "invalid_labels"
    assert not (tmp_path / "m").exists()
