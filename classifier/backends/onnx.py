"""ONNX Runtime backend: runs ``model.onnx`` (needs ``pip install 'shelftally[onnx]'``).

Providers: ``device="cpu"`` uses ``CPUExecutionProvider`` only; ``"cuda"``/``"cuda:N"`` puts
``CUDAExecutionProvider`` (that device) first and the CPU provider after it, and falls back to
the CPU with a warning when the installed ONNX Runtime has no CUDA provider (the
``onnxruntime-gpu`` wheel has it). ``threads`` sets ``intra_op_num_threads``; inter-op
parallelism stays at 1 and idle intra-op threads do not spin (the detector backend measured
spinning nearly doubling latency on 2 shared cores, ``detector/backends/onnx.py``).

The batch limit is read from the graph: an integer batch dimension on the ``images`` input
makes :attr:`~classifier.backends.base.ClassifierBackend.fixed_batch`.
"""

from __future__ import annotations

import logging
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from classifier.backends.base import ClassifierBackend, parse_cuda_device
from classifier.errors import ModelLoadError
from classifier.model_dir import ONNX_OUTPUTS, WEIGHTS_ONNX
from shelftally.errors import ConfigurationError
from shelftally.runtimes import import_runtime, onnxruntime_errors

__all__ = ["OnnxBackend"]

logger = logging.getLogger(__name__)


class OnnxBackend(ClassifierBackend):
    """ONNX Runtime session on ``model.onnx``; see :class:`~classifier.backends.base.ClassifierBackend`.

    Raises:
        ModelLoadError: ``model.onnx`` is missing (reason ``model_file_missing``) or ONNX
            Runtime cannot load it (``model_file_unreadable``), or its input is not
            (B, 3, S, S) with S = ``preprocess.input_size`` or it lacks the ``logits`` and
            ``embedding`` outputs (``invalid_model``).
        MissingDependencyError: onnxruntime is not installed (extra ``shelftally[onnx]``).
        ConfigurationError: a device other than cpu / cuda[:N].
    """

    name = "onnx"

    def _providers(self, ort: ModuleType) -> list[str | tuple[str, dict[str, Any]]]:
        device = self.config.device.strip().lower()
        cuda = parse_cuda_device(device)
        if cuda is None:
            if device != "cpu":
                raise ConfigurationError(
                    f"onnx backend: device expected cpu, cuda or cuda:N, received {self.config.device!r}",
                    reason="invalid_device",
                )
            return ["CPUExecutionProvider"]
        if "CUDAExecutionProvider" in ort.get_available_providers():
            return [("CUDAExecutionProvider", {"device_id": cuda}), "CPUExecutionProvider"]
        logger.warning(
            "ONNX Runtime %s has no CUDAExecutionProvider (install onnxruntime-gpu); running %s on the CPU",
            ort.__version__, self.model_dir.path,
        )
        return ["CPUExecutionProvider"]

    def _open(self) -> None:
        ort = import_runtime("onnxruntime", extra="onnx", purpose="the onnx classifier backend")
        path = self.model_dir.file(WEIGHTS_ONNX)
        providers = self._providers(ort)
        options = ort.SessionOptions()
        if self.config.threads:
            options.intra_op_num_threads = self.config.threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except onnxruntime_errors(ort) as error:
            raise ModelLoadError(f"ONNX Runtime cannot load {path}: {error}", reason="model_file_unreadable") from error
        inputs = self._session.get_inputs()
        size = self.preprocess.input_size
        shape = list(inputs[0].shape) if len(inputs) == 1 else []
        if len(shape) != 4 or any(
            isinstance(d, int) and d != want for d, want in zip(shape[1:], (3, size, size), strict=True)
        ):
            raise ModelLoadError(
                f"{path}: expected one input (B, 3, {size}, {size}) per preprocess.json, "
                f"received {[i.shape for i in inputs]}",
                reason="invalid_model",
            )
        outputs = {o.name: o.shape for o in self._session.get_outputs()}
        if not set(ONNX_OUTPUTS) <= set(outputs):
            raise ModelLoadError(
                f"{path}: expected outputs {list(ONNX_OUTPUTS)}, received {sorted(outputs)}", reason="invalid_model"
            )
        if isinstance(shape[0], int) and shape[0] > 0:
            self.fixed_batch = shape[0]
            logger.info("%s has a fixed batch of %s; classify() uses chunks of that size", path, shape[0])
        width = outputs["embedding"][-1] if outputs["embedding"] else None
        self.embedding_dim = width if isinstance(width, int) and width > 0 else None
        self._input_name: str = inputs[0].name
        self.providers: list[str] = list(self._session.get_providers())

    def _infer(self, batch: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        logits, embedding = self._session.run(list(ONNX_OUTPUTS), {self._input_name: batch})
        return np.asarray(logits, dtype=np.float32), np.asarray(embedding, dtype=np.float32)

    def close(self) -> None:
        """Drop the session (ONNX Runtime frees it with the last reference)."""
        self.__dict__.pop("_session", None)
