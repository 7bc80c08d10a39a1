"""The INT8 gate (shelftally.runtimes.int8.choose_int8): which recorded accuracy lets an INT8 model run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shelftally.errors import ConfigurationError
from shelftally.files import sha256_file
from shelftally.runtimes.int8 import (
    INT8_RECORD,
    INT8_XML,
    Int8Record,
    choose_int8,
    head_scope_patterns,
    install,
    read_record,
    write_record,
)


def model_with_int8(root: Path, fp32: float, int8: float, *, second: tuple[float, float] | None = None) -> Path:
    """A model directory with a model.onnx, an INT8 IR (xml + bin) and a record of the given accuracies."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "model.onnx").write_bytes(b"fp32 weights")
    (root / INT8_XML).parent.mkdir(parents=True, exist_ok=True)
    (root / INT8_XML).write_text("<net/>")
    (root / INT8_XML).with_suffix(".bin").write_bytes(b"weights")
    evaluations = {"set-a/test": {"fp32": fp32, "int8": int8, "pictures": 10}}
    if second is not None:
        evaluations["set-b/val"] = {"fp32": second[0], "int8": second[1], "pictures": 5}
    write_record(root, Int8Record(source="model.onnx", source_sha256=sha256_file(root / "model.onnx"),
                                  method="test", calibration={"pictures": 3}, metric="mAP50", evaluations=evaluations))
    return root


def test_within_margin_is_used(tmp_path: Path) -> None:
    root = model_with_int8(tmp_path / "m", 0.800, 0.795)
    choice = choose_int8(root, source="model.onnx", max_drop_points=1.0)
    assert (choice.use, choice.reason) == (True, "int8_within_margin")
    assert choice.record is not None and choice.record.delta_points() == {"set-a/test": -0.5}


def test_a_gain_counts_as_no_loss(tmp_path: Path) -> None:
    root = model_with_int8(tmp_path / "m", 0.50, 0.52)
    assert read_record(root).worst_drop_points() == 0.0
    assert choose_int8(root, source="model.onnx", max_drop_points=0.0).use


def test_the_worst_set_decides(tmp_path: Path) -> None:
    root = model_with_int8(tmp_path / "m", 0.80, 0.80, second=(0.70, 0.68))
    choice = choose_int8(root, source="model.onnx", max_drop_points=1.0)
    assert (choice.use, choice.reason) == (False, "int8_accuracy_outside_margin")
    assert "2.00 points" in choice.detail
    assert choose_int8(root, source="model.onnx", max_drop_points=2.0).use


def test_missing_stale_and_unreadable_are_refused(tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    assert choose_int8(bare, source="model.onnx", max_drop_points=1.0).reason == "int8_missing"
    stale = model_with_int8(tmp_path / "stale", 0.8, 0.8)
    (stale / "model.onnx").write_bytes(b"retrained weights")
    assert choose_int8(stale, source="model.onnx", max_drop_points=1.0).reason == "int8_stale"
    broken = model_with_int8(tmp_path / "broken", 0.8, 0.8)
    (broken / "openvino-int8" / "int8.json").write_text('{"source": "model.onnx"}')
    assert choose_int8(broken, source="model.onnx", max_drop_points=1.0).reason == "int8_record_invalid"
    empty = model_with_int8(tmp_path / "empty", 0.8, 0.8)
    record = read_record(empty)
    write_record(empty, Int8Record(**{**record.__dict__, "evaluations": {}}))
    assert choose_int8(empty, source="model.onnx", max_drop_points=1.0).reason == "int8_record_invalid"


@pytest.mark.parametrize(
    "evaluations",
    [
        {"a": {"fp32": float("nan"), "int8": 0.5, "pictures": 3}, "b": {"fp32": 0.8, "int8": 0.75, "pictures": 3}},
        {"a": {"fp32": 0.8, "pictures": 3}},
        {"a": {"fp32": 80.0, "int8": 79.0, "pictures": 3}},  # percentages, not fractions
        {"a": {"fp32": "0.8", "int8": 0.8, "pictures": 3}},
        [{"fp32": 0.8, "int8": 0.8}],
    ],
    ids=["nan", "missing-int8", "percent", "string", "list"],
)
def test_malformed_records_are_refused_not_crashed_on(tmp_path: Path, evaluations: object) -> None:
    root = model_with_int8(tmp_path / "m", 0.8, 0.8)
    data = json.loads((root / INT8_RECORD).read_text())
    data["evaluations"] = evaluations
    (root / INT8_RECORD).write_text(json.dumps(data))  # json writes NaN as NaN, which json.loads accepts
    choice = choose_int8(root, source="model.onnx", max_drop_points=1.0)
    assert (choice.use, choice.reason) == (False, "int8_record_invalid")
    with pytest.raises(ValueError):
        read_record(root)


def test_a_zero_fp32_baseline_proves_nothing(tmp_path: Path) -> None:
    root = model_with_int8(tmp_path / "m", 0.0, 0.0)
    assert choose_int8(root, source="model.onnx", max_drop_points=1.0).reason == "int8_record_invalid"


def test_a_missing_weights_file_is_missing(tmp_path: Path) -> None:
    root = model_with_int8(tmp_path / "m", 0.8, 0.8)
    (root / INT8_XML).with_suffix(".bin").unlink()
    assert choose_int8(root, source="model.onnx", max_drop_points=1.0).reason == "int8_missing"


def test_install_replaces_model_and_record_together(tmp_path: Path) -> None:
    root = model_with_int8(tmp_path / "m", 0.8, 0.8)
    staged = tmp_path / "m" / "openvino-int8.staged"
    staged.mkdir()
    (staged / "model.xml").write_text("<net new/>")
    install(root, staged)
    assert (root / INT8_XML).read_text() == "<net new/>" and not staged.exists()
    assert not (root / INT8_RECORD).exists()  # the old record went with the old model


@pytest.mark.parametrize("margin", [-0.1, float("nan"), float("inf")])
def test_invalid_margin_is_a_configuration_error(tmp_path: Path, margin: float) -> None:
    with pytest.raises(ConfigurationError) as raised:
        choose_int8(tmp_path, source="model.onnx", max_drop_points=margin)
    assert raised.value.reason == "invalid_int8_margin"


def test_head_scope_keeps_only_the_last_blocks_decoding() -> None:
    import re

    names = ["/model.0/conv/Conv", "/model.22/cv2.0/cv2.0.0/conv/Conv", "/model.22/cv3.1/cv3.1.2/Conv",
             "/model.22/dfl/conv/Conv", "/model.22/Sigmoid", "/model.22/Concat_7", "/model.21/Concat"]
    patterns = head_scope_patterns(names)
    ignored = {n for n in names if any(re.match(p, n) for p in patterns)}  # NNCF's IgnoredScope uses re.match
    assert ignored == {"/model.22/dfl/conv/Conv", "/model.22/Sigmoid", "/model.22/Concat_7"}
    assert head_scope_patterns(["images", "output0"]) == []
    assert not any(re.match(p, "/model.220/x") for p in head_scope_patterns(["/model.22/a"]))
