"""Torch backend: the ultralytics checkpoint ``model.pt`` run as a plain ``nn.Module``.

Needs ``pip install 'shelftally[train]'`` (torch + ultralytics). The checkpoint is loaded through
ultralytics (``YOLO(path)``, which rebuilds the ``DetectionModel``), Conv+BatchNorm pairs are fused
as ultralytics' own predictor does, and the module's forward is called on *our* letterboxed
batch; its first output is the same (B, 4 + C, A) tensor the ONNX export produces, so decoding
is shared with every other backend (ultralytics' ``predict`` letterboxes to a minimal rectangle
and runs its own NMS with a time limit, which is why it is not used).

``threads`` calls ``torch.set_num_threads``, which is process-wide.
"""

from __future__ import annotations

import logging
import pickle
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from detector._offline import configure_offline
from detector.backends.base import DetectorBackend, parse_cuda_device
from detector.errors import MissingDependencyError, ModelLoadError
from detector.model_dir import WEIGHTS_PT
from shelftally.errors import ConfigurationError

if TYPE_CHECKING:
    import torch

__all__ = ["TorchBackend"]

logger = logging.getLogger(__name__)


def _import_torch() -> ModuleType:
    try:
        import torch
        import ultralytics  # noqa: F401  (checked here so the error names the extra)
    except ImportError as error:
        raise MissingDependencyError(
            "the torch/ultralytics detector backend needs torch and ultralytics: pip install 'shelftally[train]'"
        ) from error
    return torch


class TorchBackend(DetectorBackend):
    """An ultralytics ``DetectionModel`` from ``model.pt``; see :class:`~detector.backends.base.DetectorBackend`.

    Raises:
        ModelLoadError: ``model.pt`` is missing or not an ultralytics detection checkpoint.
        MissingDependencyError: torch or ultralytics is not installed (extra ``shelftally[train]``).
        ConfigurationError: a device other than cpu / cuda[:N], or CUDA asked for but absent.
    """

    name = "torch"

    def _open(self) -> None:
        torch_module = _import_torch()
        path = self.model_dir.file(WEIGHTS_PT)
        cuda = parse_cuda_device(self.config.device)
        if cuda is None and self.config.device.strip().lower() != "cpu":
            raise ConfigurationError(
                f"torch backend: device expected cpu, cuda or cuda:N, received {self.config.device!r}",
                reason="invalid_device",
            )
        if cuda is not None and not torch_module.cuda.is_available():
            raise ConfigurationError(f"torch backend: {self.config.device} asked for, but CUDA is not available",
                                     reason="invalid_device")
        self._device: torch.device = torch_module.device("cpu" if cuda is None else f"cuda:{cuda}")
        if self.config.threads:
            torch_module.set_num_threads(self.config.threads)
        configure_offline()
        from ultralytics.models.yolo.model import YOLO

        try:
            yolo = YOLO(str(path), task="detect")
            yolo.fuse()
        except (RuntimeError, OSError, ValueError, TypeError, KeyError, AttributeError, EOFError,
                pickle.UnpicklingError) as error:
            raise ModelLoadError(f"ultralytics cannot load {path}: {error}", reason="model_file_unreadable") from error
        module = yolo.model
        if not isinstance(module, torch_module.nn.Module):
            raise ModelLoadError(f"{path} holds no torch module", reason="invalid_model")
        module.eval()
        module.requires_grad_(False)
        self._module: torch.nn.Module = module.to(self._device)
        self._torch = torch_module

    def _infer(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        torch = self._torch
        with torch.inference_mode():
            output = self._module(torch.from_numpy(batch).to(self._device))
        if isinstance(output, (tuple, list)):
            output = output[0]
        if not isinstance(output, torch.Tensor):
            raise ModelLoadError(f"{self.model_dir.path / WEIGHTS_PT}: forward returned {type(output).__name__}, "
                                 "expected a (B, 4 + C, A) tensor", reason="model_output_mismatch")
        return np.asarray(output.float().cpu().numpy(), dtype=np.float32)

    def close(self) -> None:
        """Drop the module (and its CUDA memory, if any)."""
        self.__dict__.pop("_module", None)
