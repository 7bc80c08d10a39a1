"""Classifier networks: the four backbones, BatchNorm momentum, freezing, local pretrained weights, model.pt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision

from classifier.backbones import (
    BACKBONES,
    EmbeddingClassifier,
    build_model,
    load_model_dir,
    recalibrate_batchnorm,
    save_model_dir,
)
from classifier.errors import ModelLoadError
from classifier.model_dir import LABELS, Architecture, Preprocess

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def batchnorms(model: torch.nn.Module) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


@pytest.mark.parametrize(
    ("name", "feature_dim"),
    [("mobilenet_v3_small", 576), ("mobilenet_v3_large", 960), ("resnet18", 512), ("efficientnet_b0", 1280),
     ("shufflenet_v2_x1_0", 1024), ("efficientnet_lite0", 1280)],
)
def test_every_backbone_gives_logits_and_unit_embeddings(name: str, feature_dim: int) -> None:
    torch.manual_seed(0)
    model = build_model(Architecture(name, embedding_dim=16), num_classes=3).eval()
    assert model.feature_dim == feature_dim
    with torch.no_grad():
        logits, embedding = model(torch.rand(2, 3, 32, 32))
    assert logits.shape == (2, 3) and embedding.shape == (2, 16)
    assert torch.allclose(embedding.norm(dim=1), torch.ones(2), atol=1e-5)
    assert logits.abs().max() <= 16.0 + 1e-4  # cosine head: |logits| <= logit_scale
    norms = batchnorms(model)
    assert norms and all(bn.momentum == 0.1 for bn in norms)  # ENVIRONMENT.md: 0.01 does not learn in few steps
    assert len(model.stages) >= 5
    assert set(BACKBONES) == {
        "mobilenet_v3_small", "mobilenet_v3_large", "resnet18", "efficientnet_b0", "shufflenet_v2_x1_0",
        "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2",
    }


def test_linear_head_and_custom_momentum() -> None:
    model = build_model(Architecture("resnet18", embedding_dim=8, head="linear"), 5, bn_momentum=0.05)
    assert isinstance(model.head, torch.nn.Linear) and model.head.bias is not None
    assert all(bn.momentum == 0.05 for bn in batchnorms(model))
    logits, embedding = model.eval()(torch.rand(1, 3, 32, 32))
    assert logits.shape == (1, 5) and embedding.shape == (1, 8)


def test_freeze_trains_only_the_head_and_keeps_frozen_statistics() -> None:
    torch.manual_seed(0)
    model = build_model("mobilenet_v3_small", 3, freeze=True)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in [*model.embed.parameters(), *model.head.parameters()])
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    model.train()
    assert all(not bn.training for bn in batchnorms(model.backbone))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    logits, _ = model(torch.rand(4, 3, 32, 32))
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 0])).backward()
    optimizer.step()
    after = model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "frozen weights or BatchNorm statistics changed"

    partly = build_model("resnet18", 3, freeze=True, trainable_stages=2)
    trainable = {name.split(".")[0] for name, p in partly.backbone.named_parameters() if p.requires_grad}
    assert trainable == {"layer3", "layer4"}
    partly.train()
    assert all(bn.training for bn in batchnorms(partly.backbone.layer4))
    assert not partly.backbone.bn1.training
    partly.unfreeze()
    assert all(p.requires_grad for p in partly.parameters()) and partly.backbone.bn1.training


def test_pretrained_torchvision_state_dict_from_a_local_file(tmp_path: Path) -> None:
    torch.manual_seed(1)
    reference = torchvision.models.resnet18(weights=None)
    state = {k: v for k, v in reference.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save({"state_dict": state}, tmp_path / "resnet18.pth")  # wrapped, old-style (no counters)
    model = build_model("resnet18", 3, pretrained=tmp_path / "resnet18.pth")
    assert torch.equal(model.backbone.conv1.weight, reference.conv1.weight)
    assert torch.equal(model.backbone.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var)


def test_pretrained_from_another_classifier_model_pt(tmp_path: Path) -> None:
    torch.manual_seed(2)
    source = build_model("mobilenet_v3_small", 4)
    save_model_dir(source, tmp_path / "old", labels=["a", "b", "c", "d"], preprocess=Preprocess(input_size=32))
    model = build_model("mobilenet_v3_small", 7, pretrained=tmp_path / "old" / "model.pt")  # new SKU list
    assert torch.equal(model.backbone.features[3].block[0][0].weight, source.backbone.features[3].block[0][0].weight)
    assert model.head.weight.shape == (7, 128)


@pytest.mark.parametrize(
    ("make", "reason", "mentions"),
    [
        (lambda: torchvision.models.resnet18(weights=None).state_dict(), "pretrained_mismatch",
         ["do not fit a mobilenet_v3_small backbone", "missing: features.0.0.weight", "unexpected: bn1.bias"]),
        (lambda: {**torchvision.models.mobilenet_v3_small(weights=None).state_dict(),
                  "features.0.0.weight": torch.zeros(8, 3, 3, 3)}, "pretrained_mismatch",
         ["wrong shape: features.0.0.weight (8, 3, 3, 3) (expected (16, 3, 3, 3))"]),
        (lambda: [1, 2, 3], "model_file_unreadable", ["expected a state dict"]),
        (lambda: {"features.0.0.weight": "not a tensor"}, "model_file_unreadable", ["expected a state dict"]),
    ],
    ids=["resnet18 into mobilenet", "wrong shape", "a list", "not tensors"],
)
def test_pretrained_weights_that_do_not_fit_are_reported(
    tmp_path: Path, make: object, reason: str, mentions: list[str]
) -> None:
    path = tmp_path / "weights.pth"
    torch.save(make(), path)  # type: ignore[operator]
    with pytest.raises(ModelLoadError) as caught:
        build_model("mobilenet_v3_small", 3, pretrained=path)
    assert caught.value.reason == reason
    for text in mentions:
        assert text in str(caught.value)


def test_pretrained_file_problems(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as caught:
        build_model("resnet18", 3, pretrained=tmp_path / "nowhere.pth")
    assert caught.value.reason == "model_file_missing"
    (tmp_path / "garbage.pth").write_bytes(b"\x00garbage")
    with pytest.raises(ModelLoadError) as caught:
        build_model("resnet18", 3, pretrained=tmp_path / "garbage.pth")
    assert caught.value.reason == "model_file_unreadable"
    torch.save({"model": Architecture("resnet18")}, tmp_path / "pickled.pth")  # arbitrary objects are refused
    with pytest.raises(ModelLoadError) as caught:
        build_model("resnet18", 3, pretrained=tmp_path / "pickled.pth")
    assert caught.value.reason == "model_file_unreadable"


def test_bad_arguments() -> None:
    with pytest.raises(ModelLoadError) as caught:
        build_model("vit_b_16", 3)
    assert caught.value.reason == "unknown_architecture"
    assert "efficientnet_b0, efficientnet_lite0, efficientnet_lite1, efficientnet_lite2, mobilenet_v3_large" in str(
        caught.value)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("resnet18", 0)
    with pytest.raises(ValueError, match="only meaningful with freeze=True"):
        build_model("resnet18", 3, trainable_stages=1)


def test_model_dir_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = build_model(Architecture("mobilenet_v3_small", embedding_dim=32, head="linear"), 2).eval()
    with pytest.raises(ValueError, match="expected 2 SKU codes"):
        save_model_dir(model, tmp_path / "m", labels=["only-one"], preprocess=Preprocess(input_size=32))
    written = save_model_dir(model, tmp_path / "m", labels=["a", "b"], preprocess=Preprocess(input_size=32))
    assert written.architecture == model.architecture
    loaded = load_model_dir(tmp_path / "m")
    assert isinstance(loaded, EmbeddingClassifier) and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(model(x), loaded(x), strict=True))
    (tmp_path / "m" / LABELS).write_text(json.dumps(["a", "b", "c"]))
    with pytest.raises(ModelLoadError) as caught:
        load_model_dir(tmp_path / "m")
    assert caught.value.reason == "model_output_mismatch"
    assert "head.weight (2, 32) (expected (3, 32))" in str(caught.value)


def test_recalibrate_batchnorm_keeps_frozen_statistics(tmp_path: Path) -> None:
    torch.manual_seed(4)
    model = build_model("resnet18", 3, freeze=True, trainable_stages=1).eval()
    frozen, trainable = model.backbone.bn1, model.backbone.layer4[1].bn2
    frozen.running_mean.fill_(0.5)
    trainable.running_mean.fill_(0.5)
    batches = [torch.rand(4, 3, 32, 32) * 3 + 1 for _ in range(2)]
    assert recalibrate_batchnorm(model, batches) == 5  # the BatchNorm layers of layer4
    assert not model.training and all(bn.momentum == 0.1 for bn in batchnorms(model))
    assert torch.all(frozen.running_mean == 0.5), "frozen statistics were reset"
    assert not torch.allclose(trainable.running_mean, torch.full_like(trainable.running_mean, 0.5))
    assert int(trainable.num_batches_tracked) == 2
    before = trainable.running_mean.clone()
    with pytest.raises(ValueError, match="at least one batch"):
        recalibrate_batchnorm(model, [])
    assert torch.equal(trainable.running_mean, before) and int(trainable.num_batches_tracked) == 2
