"""torch: a model kind's ``nn.Module`` run eagerly (needs ``pip install 'shelftally[train]'``).

The module is built by the model kind (:attr:`SessionSpec.torch_module`: the detector rebuilds
ultralytics' ``DetectionModel`` from ``model.pt`` and fuses it; the classifier rebuilds its
network from ``architecture.json``), because only the kind knows its checkpoint format. This
module owns the rest: importing torch, the device, threads (``torch.set_num_threads``, which is
process-wide), inference mode, and turning the forward's tensors into float32 arrays. The batch
is always dynamic.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from shelftally.errors import ConfigurationError
from shelftally.runtimes.base import Batch, Outputs, Session
from shelftally.runtimes.devices import parse_cuda_device

if TYPE_CHECKING:
    import torch

__all__ = ["TorchSession"]

logger = logging.getLogger(__name__)


class TorchSession(Session):
    """The model kind's ``nn.Module`` on a torch device; see :class:`~shelftally.runtimes.base.Session`.

    Attributes:
        module: the module, in eval mode, on the device.

    Raises:
        spec.errors.missing: torch (or a module of ``spec.torch_requires``) is not installed
            (extra ``shelftally[train]``).
        spec.errors.load: the spec has no ``torch_module``, or building it failed (as the kind
            raises it), or the module is not an ``nn.Module`` (reason ``invalid_model``).
        ConfigurationError: a device other than cpu / cuda[:N], or CUDA asked for but absent
            (reason ``invalid_device``).
    """

    runtime = "torch"

    def _import(self) -> Any:
        spec = self.spec
        needed = ("torch", *spec.torch_requires)
        try:
            modules = [importlib.import_module(name) for name in needed]
        except ImportError as error:
            raise spec.errors.missing(
                f"the torch {spec.what} backend needs {' and '.join(needed)}: pip install 'shelftally[train]'"
            ) from error
        return modules[0]

    def _open(self) -> None:
        spec = self.spec
        torch_module = self._import()
        device = self.options.device
        cuda = parse_cuda_device(device)
        if cuda is None and device.strip().lower() != "cpu":
            raise ConfigurationError(
                f"torch backend: device expected cpu, cuda or cuda:N, received {device!r}", reason="invalid_device"
            )
        if cuda is not None and not torch_module.cuda.is_available():
            raise ConfigurationError(f"torch backend: {device} asked for, but CUDA is not available",
                                     reason="invalid_device")
        self._device: torch.device = torch_module.device("cpu" if cuda is None else f"cuda:{cuda}")
        if self.options.threads:
            torch_module.set_num_threads(self.options.threads)
        if spec.torch_module is None:
            raise spec.errors.load(f"the {spec.what} in {spec.root} cannot be built for torch", reason="invalid_model")
        module = spec.torch_module()
        if not isinstance(module, torch_module.nn.Module):
            raise spec.errors.load(f"{spec.root / spec.torch_file} holds no torch module", reason="invalid_model")
        module.eval()
        module.requires_grad_(False)
        self.module: torch.nn.Module = module.to(self._device)
        self._torch = torch_module

    def _run(self, batch: Batch) -> Outputs:
        torch = self._torch
        with torch.inference_mode():
            output = self.module(torch.from_numpy(batch).to(self._device))
        tensors = [t for t in output if isinstance(t, torch.Tensor)] if isinstance(output, (tuple, list)) else [output]
        count = self.spec.output_count
        if len(tensors) < count or not all(isinstance(t, torch.Tensor) for t in tensors[:count]):
            raise self.spec.errors.load(
                f"{self.spec.root / self.spec.torch_file}: forward returned {type(output).__name__}, expected "
                f"{count} tensor(s)", reason="model_output_mismatch",
            )
        return tuple(np.asarray(t.float().cpu().numpy(), dtype=np.float32) for t in tensors[:count])

    def close(self) -> None:
        """Drop the module (and its CUDA memory, if any)."""
        self.__dict__.pop("module", None)
