"""Torch backend: the state dict ``model.pt`` rebuilt from ``architecture.json`` and run eagerly.

Needs ``pip install 'shelftally[train]'`` (torch, torchvision). The network is rebuilt by
:func:`classifier.backbones.load_model_dir` (no download; weights loaded with
``weights_only=True``) and called on the shared preprocessing's batch; its batch is always
dynamic. ``threads`` calls ``torch.set_num_threads``, which is process-wide.
"""

from __future__ import annotations

import logging
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from classifier.backends.base import ClassifierBackend, parse_cuda_device
from classifier.errors import MissingDependencyError
from shelftally.errors import ConfigurationError

if TYPE_CHECKING:
    import torch

__all__ = ["TorchBackend"]

logger = logging.getLogger(__name__)


def _import_torch() -> ModuleType:
    try:
        import torch
        import torchvision  # noqa: F401  (checked here so the error names the extra)
    except ImportError as error:
        raise MissingDependencyError(
            "the torch classifier backend needs torch and torchvision: pip install 'shelftally[train]'"
        ) from error
    return torch


class TorchBackend(ClassifierBackend):
    """An :class:`~classifier.backbones.EmbeddingClassifier` from ``model.pt``; see
    :class:`~classifier.backends.base.ClassifierBackend`.

    Raises:
        ModelLoadError: ``model.pt`` or ``architecture.json`` is missing or does not fit
            ``labels.json`` (see :func:`classifier.backbones.load_model_dir`).
        MissingDependencyError: torch or torchvision is not installed (extra ``shelftally[train]``).
        ConfigurationError: a device other than cpu / cuda[:N], or CUDA asked for but absent.
    """

    name = "torch"

    def _open(self) -> None:
        torch_module = _import_torch()
        from classifier.backbones import load_model_dir

        cuda = parse_cuda_device(self.config.device)
        if cuda is None and self.config.device.strip().lower() != "cpu":
            raise ConfigurationError(
                f"torch backend: device expected cpu, cuda or cuda:N, received {self.config.device!r}",
                reason="invalid_device",
            )
        if cuda is not None and not torch_module.cuda.is_available():
            raise ConfigurationError(
                f"torch backend: {self.config.device} asked for, but CUDA is not available", reason="invalid_device"
            )
        self._device: torch.device = torch_module.device("cpu" if cuda is None else f"cuda:{cuda}")
        if self.config.threads:
            torch_module.set_num_threads(self.config.threads)
        model = load_model_dir(self.model_dir)
        self.embedding_dim = model.embedding_dim
        self._module: torch.nn.Module = model.to(self._device)
        self._torch = torch_module

    def _infer(self, batch: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        torch = self._torch
        with torch.inference_mode():
            logits, embedding = self._module(torch.from_numpy(batch).to(self._device))
        return (
            np.asarray(logits.float().cpu().numpy(), dtype=np.float32),
            np.asarray(embedding.float().cpu().numpy(), dtype=np.float32),
        )

    def close(self) -> None:
        """Drop the module (and its CUDA memory, if any)."""
        self.__dict__.pop("_module", None)
