"""ONNX export: graph inputs and outputs, dynamic and fixed batch, padding of the last chunk, failures."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from classifier.backends import load
from classifier.errors import ModelLoadError
from classifier.export import check_onnx, export_model_dir, export_onnx
from tests.classifier.conftest import TOY_INPUT, TinyClassifier, toy_crops

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def graph_io(path: Path) -> dict[str, list[int | str]]:
    model = onnx.load(str(path))
    return {
        value.name: [d.dim_value or d.dim_param for d in value.type.tensor_type.shape.dim]
        for value in [*model.graph.input, *model.graph.output]
    }


def test_dynamic_and_fixed_batch_graphs(tiny_classifier: TinyClassifier) -> None:
    assert graph_io(tiny_classifier.dynamic / "model.onnx") == {
        "images": ["batch", 3, TOY_INPUT, TOY_INPUT], "logits": ["batch", 4], "embedding": ["batch", 128]
    }
    assert graph_io(tiny_classifier.fixed_batch_1 / "model.onnx") == {
        "images": [1, 3, TOY_INPUT, TOY_INPUT], "logits": [1, 4], "embedding": [1, 128]
    }
    assert check_onnx(tiny_classifier.dynamic / "model.onnx", input_size=TOY_INPUT, num_classes=4) is None
    assert check_onnx(tiny_classifier.fixed_batch_1 / "model.onnx", input_size=TOY_INPUT) == 1
    with pytest.raises(ModelLoadError) as caught:
        check_onnx(tiny_classifier.dynamic / "model.onnx", input_size=96, num_classes=5)
    assert caught.value.reason == "invalid_model"


def test_fixed_batch_3_pads_the_last_chunk(tiny_classifier: TinyClassifier, tmp_path: Path) -> None:
    copy = tmp_path / "model"
    shutil.copytree(tiny_classifier.dynamic, copy)
    export_model_dir(copy, batch=3, openvino=True)
    crops = toy_crops(np.random.default_rng(9), 20)[0]  # 6 full chunks and one of 2 crops + 1 padding row
    reference = load(tiny_classifier.dynamic, backend="onnx", threads=1).classify(crops)
    for backend in ("onnx", "openvino"):
        fixed = load(copy, backend=backend, threads=1, openvino_precision="f32")
        assert fixed.fixed_batch == 3
        result = fixed.classify(crops)
        assert result.sku_code == reference.sku_code, backend
        assert np.abs(result.embedding - reference.embedding).max() < 1e-4, backend
        assert len(fixed.classify(crops[:1])) == 1 and len(fixed.classify([])) == 0


class OneOutput(torch.nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=(2, 3))


class FlatEmbedding(torch.nn.Module):
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return images.mean(dim=(2, 3)), images.mean(dim=1)  # embedding (B, S, S): not (B, D)


@pytest.mark.parametrize(
    ("module", "reason", "mentions"),
    [(OneOutput(), "export_failed", "ONNX export"),
     (FlatEmbedding(), "invalid_model", "outputs expected logits (B, C) and embedding (B, D)")],
)
def test_a_graph_without_the_two_outputs_is_refused_and_nothing_is_left(
    tmp_path: Path, module: torch.nn.Module, reason: str, mentions: str
) -> None:
    with pytest.raises(ModelLoadError) as caught:
        export_onnx(module, tmp_path, input_size=32)
    assert caught.value.reason == reason
    assert mentions in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="batch"):
        export_onnx(OneOutput(), tmp_path, input_size=32, batch=0)
    with pytest.raises(ValueError, match=r"torch\.nn\.Module"):
        export_onnx(object(), tmp_path, input_size=32)  # type: ignore[arg-type]
