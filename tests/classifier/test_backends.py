"""Classifier backends on the tiny trained classifier: agreement, batch limits, input checks, registry, errors."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from classifier.backends import BACKENDS, ClassifierBackend, load, softmax
from classifier.errors import MissingDependencyError, ModelLoadError
from classifier.model_dir import LABELS, read_model_dir
from classifier.types import Classifications
from shelftally.errors import ConfigurationError
from tests.classifier.conftest import TOY_LABELS, TinyClassifier, toy_crops

ToySet = tuple[list[np.ndarray], np.ndarray]


@pytest.fixture(scope="module")
def toy_set() -> ToySet:
    """40 fresh toy crops (not seen in training) and their class ids."""
    return toy_crops(np.random.default_rng(123), 40)


@pytest.fixture(scope="module")
def backends(tiny_classifier: TinyClassifier) -> dict[str, ClassifierBackend]:
    return {
        "torch": load(tiny_classifier.dynamic, backend="torch", threads=1),
        "onnx": load(tiny_classifier.dynamic, backend="onnx", threads=1),
        "openvino f32": load(tiny_classifier.dynamic, backend="openvino", threads=1, openvino_precision="f32"),
        "onnx fixed batch 1": load(tiny_classifier.fixed_batch_1, backend="onnx", threads=1),
    }


def test_every_backend_names_the_toy_skus(
    backends: dict[str, ClassifierBackend], toy_set: ToySet
) -> None:
    crops, truth = toy_set
    for name, backend in backends.items():
        result = backend.classify(crops)
        accuracy = float(np.mean(result.class_id == truth))
        assert accuracy >= 0.8, f"{name}: {accuracy:.2f} of toy crops named right"
        assert result.sku_code == [TOY_LABELS[i] for i in result.class_id]


def test_onnx_agrees_with_torch(
    backends: dict[str, ClassifierBackend], toy_set: ToySet
) -> None:
    crops, _ = toy_set
    torch_logits, torch_embedding = backends["torch"].outputs(crops)
    for name in ("onnx", "onnx fixed batch 1", "openvino f32"):
        logits, embedding = backends[name].outputs(crops)
        assert np.array_equal(logits.argmax(axis=1), torch_logits.argmax(axis=1)), f"{name}: top-1 differs"
        assert np.abs(softmax(logits) - softmax(torch_logits)).max() < 1e-4, f"{name}: probabilities differ"
        assert np.abs(embedding - torch_embedding).max() < 1e-4, f"{name}: embeddings differ"
    reference = backends["torch"].classify(crops)
    result = backends["onnx"].classify(crops)
    assert result.sku_code == reference.sku_code
    assert np.allclose(result.confidence, reference.confidence, atol=1e-4)


def test_fixed_batch_1_model_classifies_20_crops_in_order(
    backends: dict[str, ClassifierBackend], toy_set: ToySet
) -> None:
    fixed = backends["onnx fixed batch 1"]
    assert fixed.fixed_batch == 1 and fixed.chunk_size == 1
    assert backends["onnx"].fixed_batch is None
    crops = toy_set[0][:20]
    together = fixed.classify(crops)
    one_by_one = [fixed.classify([crop]) for crop in crops]
    assert len(together) == 20
    assert together.sku_code == [r.sku_code[0] for r in one_by_one]
    assert np.allclose(together.confidence, [r.confidence[0] for r in one_by_one], atol=1e-6)
    assert np.allclose(together.embedding, np.concatenate([r.embedding for r in one_by_one]), atol=1e-6)
    dynamic = backends["onnx"].classify(crops)
    assert together.sku_code == dynamic.sku_code


def test_dynamic_model_gives_the_same_answers_for_any_batch_size(
    tiny_classifier: TinyClassifier, backends: dict[str, ClassifierBackend], toy_set: ToySet
) -> None:
    crops = toy_set[0][:11]
    reference = backends["onnx"].classify(crops)
    small = load(tiny_classifier.dynamic, backend="onnx", batch_size=3, threads=1)
    assert small.chunk_size == 3
    result = small.classify(crops)
    assert result.sku_code == reference.sku_code
    assert np.allclose(result.embedding, reference.embedding, atol=1e-5)


@pytest.mark.parametrize("name", ["torch", "onnx", "onnx fixed batch 1", "openvino f32"])
def test_no_crops_gives_an_empty_result(backends: dict[str, ClassifierBackend], name: str) -> None:
    result = backends[name].classify([])
    assert isinstance(result, Classifications)
    assert len(result) == 0
    assert result.class_id.shape == (0,) and result.confidence.shape == (0,)
    assert result.embedding.shape == (0, 128)
    assert result.sku_code == []


def test_embeddings_are_unit_vectors_and_confidence_a_probability(
    backends: dict[str, ClassifierBackend], toy_set: ToySet
) -> None:
    result = backends["onnx"].classify(toy_set[0])
    assert result.embedding.dtype == np.float32 and result.embedding.shape == (40, 128)
    assert np.allclose(np.linalg.norm(result.embedding, axis=1), 1.0, atol=1e-5)
    assert result.confidence.dtype == np.float32
    assert np.all((result.confidence >= 1 / len(TOY_LABELS) - 1e-6) & (result.confidence <= 1))


def test_crops_of_any_size_and_layout_are_accepted(backends: dict[str, ClassifierBackend]) -> None:
    rng = np.random.default_rng(5)
    crops = [
        rng.integers(0, 255, (1, 1, 3), dtype=np.uint8),  # one pixel
        rng.integers(0, 255, (3, 500, 3), dtype=np.uint8),  # a sliver
        rng.integers(0, 255, (640, 480, 3), dtype=np.uint8)[::2, ::3],  # a non-contiguous view
        np.asfortranarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)),
    ]
    result = backends["onnx"].classify(crops)
    assert len(result) == 4
    assert result.sku_code == backends["torch"].classify(crops).sku_code


@pytest.mark.parametrize(
    ("crops", "message"),
    [
        ([np.zeros((32, 32, 3), np.float32)], "crops[0]: expected dtype uint8"),
        ([np.zeros((32, 32, 3), np.uint8), np.zeros((32, 32), np.uint8)], "crops[1]: expected shape (h, w, 3)"),
        ([np.zeros((32, 32, 4), np.uint8)], "crops[0]: expected shape (h, w, 3) RGB, received (32, 32, 4)"),
        ([np.zeros((0, 32, 3), np.uint8)], "crops[0]: expected h >= 1 and w >= 1"),
        ([[[0, 0, 0]]], "crops[0]: expected a numpy array"),
        (np.zeros((32, 32, 3), np.uint8), "wrap a single crop in a list"),
    ],
    ids=["float32", "grey", "rgba", "empty crop", "nested list", "one array"],
)
def test_wrong_crops_raise_a_clear_value_error(
    backends: dict[str, ClassifierBackend], crops: list[np.ndarray], message: str
) -> None:
    for name in ("onnx", "onnx fixed batch 1"):
        with pytest.raises(ValueError) as caught:
            backends[name].classify(crops)
        assert message in str(caught.value)


def test_min_confidence_makes_unsure_crops_unknown(
    tiny_classifier: TinyClassifier, backends: dict[str, ClassifierBackend], toy_set: ToySet
) -> None:
    crops = toy_set[0]
    plain = backends["onnx"].classify(crops)
    threshold = float(np.median(plain.confidence))
    strict = load(tiny_classifier.dynamic, backend="onnx", min_confidence=threshold, threads=1).classify(crops)
    unsure = plain.confidence < threshold
    assert unsure.any() and not unsure.all()
    assert np.all(strict.class_id[unsure] == -1)
    assert all(strict.sku_code[i] is None for i in np.flatnonzero(unsure))
    assert np.array_equal(strict.class_id[~unsure], plain.class_id[~unsure])
    assert np.array_equal(strict.known, ~unsure)


def test_unknown_backend_lists_the_valid_names(tiny_classifier: TinyClassifier) -> None:
    with pytest.raises(ConfigurationError) as caught:
        load(tiny_classifier.dynamic, backend="tensorflow")
    assert caught.value.reason == "unknown_backend"
    for name in BACKENDS:
        assert name in str(caught.value)
    assert load(tiny_classifier.dynamic, backend="onnx").name == "onnx"


@pytest.mark.parametrize(
    ("settings", "mentions"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"threads": 0}, "threads"),
        ({"min_confidence": 1.5}, "min_confidence"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_invalid_settings_are_refused(
    tiny_classifier: TinyClassifier, settings: dict[str, object], mentions: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        load(tiny_classifier.dynamic, backend="onnx", **settings)  # type: ignore[arg-type]
    assert mentions in str(caught.value)


@pytest.mark.parametrize(
    ("backend", "module", "extra"),
    [("onnx", "onnxruntime", "shelftally[onnx]"), ("openvino", "openvino", "shelftally[openvino]"),
     ("torch", "torchvision", "shelftally[train]")],
)
def test_missing_runtime_names_the_extra(
    tiny_classifier: TinyClassifier, monkeypatch: pytest.MonkeyPatch, backend: str, module: str, extra: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes "import <module>" raise ImportError
    with pytest.raises(MissingDependencyError) as caught:
        load(tiny_classifier.dynamic, backend=backend)
    assert extra in str(caught.value)
    assert caught.value.reason == "missing_dependency"


@pytest.mark.parametrize(
    ("backend", "remove", "reason"),
    [("onnx", "model.onnx", "model_file_missing"), ("openvino", "openvino", "model_file_missing"),
     ("torch", "model.pt", "model_file_missing"), ("torch", "architecture.json", "model_file_missing")],
)
def test_missing_weights_are_a_model_load_error(
    tiny_classifier: TinyClassifier, tmp_path: Path, backend: str, remove: str, reason: str
) -> None:
    copy = tmp_path / "model"
    shutil.copytree(tiny_classifier.dynamic, copy)
    target = copy / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(ModelLoadError) as caught:
        load(copy, backend=backend)
    assert caught.value.reason == reason
    assert remove in str(caught.value)


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_labels_of_another_model_are_refused(tiny_classifier: TinyClassifier, tmp_path: Path, backend: str) -> None:
    copy = tmp_path / "model"
    shutil.copytree(tiny_classifier.dynamic, copy)
    (copy / LABELS).write_text(json.dumps([*TOY_LABELS, "purple-star"]))
    with pytest.raises(ModelLoadError) as caught:
        load(copy, backend=backend)
    assert caught.value.reason == "model_output_mismatch"


def test_onnx_input_size_must_match_preprocess(tiny_classifier: TinyClassifier, tmp_path: Path) -> None:
    copy = tmp_path / "model"
    shutil.copytree(tiny_classifier.dynamic, copy)
    preprocess = json.loads((copy / "preprocess.json").read_text())
    preprocess["input_size"] = 96
    (copy / "preprocess.json").write_text(json.dumps(preprocess))
    with pytest.raises(ModelLoadError) as caught:
        load(copy, backend="onnx")
    assert caught.value.reason == "invalid_model"
    assert "(B, 3, 96, 96)" in str(caught.value)


def test_version_is_a_content_hash_of_the_weights(backends: dict[str, ClassifierBackend]) -> None:
    assert backends["onnx"].version == read_model_dir(backends["onnx"].model_dir.path).version
    assert backends["onnx"].version != backends["onnx fixed batch 1"].version
    assert backends["onnx"].version.startswith("dynamic@")
