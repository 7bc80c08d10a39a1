"""ONNX Runtime backend: runs ``model.onnx`` (needs ``pip install 'shelftally[onnx]'``).

Providers: ``device="cpu"`` uses ``CPUExecutionProvider`` only; ``"cuda"``/``"cuda:N"`` puts
``CUDAExecutionProvider`` (that device) first and the CPU provider after it, and falls back to
the CPU with a warning when the installed ONNX Runtime has no CUDA provider (the
``onnxruntime-gpu`` wheel has it). ``threads`` sets ``intra_op_num_threads``; inter-op
parallelism stays at 1 (YOLO graphs are sequential). Idle intra-op threads do not spin
(``session.intra_op.allow_spinning=0``): measured here with one other busy process on the 2
cores, spinning made a 640 px picture take 170-190 ms instead of 95-100 ms; on idle dedicated
cores the difference is a few percent.
"""

from __future__ import annotations

import logging
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from detector.backends.base import DetectorBackend, parse_cuda_device
from detector.errors import ModelLoadError
from detector.model_dir import WEIGHTS_ONNX
from shelftally.errors import ConfigurationError
from shelftally.runtimes import import_runtime, onnxruntime_errors

__all__ = ["OnnxBackend"]

logger = logging.getLogger(__name__)


class OnnxBackend(DetectorBackend):
    """ONNX Runtime session on ``model.onnx``; see :class:`~detector.backends.base.DetectorBackend`.

    Raises:
        ModelLoadError: ``model.onnx`` is missing or ONNX Runtime cannot load it, or its input
            is not (B, 3, S, S) float with S = ``preprocess.input_size``.
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
        ort = import_runtime("onnxruntime", extra="onnx", purpose="the onnx detector backend")
        path = self.model_dir.file(WEIGHTS_ONNX)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.config.threads or 0  # 0: ONNX Runtime's default
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(str(path), sess_options=options, providers=self._providers(ort))
        except onnxruntime_errors(ort) as error:
            raise ModelLoadError(f"ONNX Runtime cannot load {path}: {error}", reason="model_file_unreadable") from error
        inputs = self._session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            shapes = [i.shape for i in inputs]
            raise ModelLoadError(f"{path}: expected one (B, 3, S, S) input, received {shapes}", reason="invalid_model")
        shape = inputs[0].shape
        size = self.preprocess.input_size
        if any(isinstance(d, int) and d != want for d, want in zip(shape[1:], (3, size, size), strict=True)):
            raise ModelLoadError(
                f"{path}: input expected (B, 3, {size}, {size}) per preprocess.json, received {shape}",
                reason="invalid_model",
            )
        if isinstance(shape[0], int) and shape[0] > 0:
            self.fixed_batch = shape[0]
            logger.info("%s has a fixed batch of %s; predict() uses chunks of that size", path, shape[0])
        self._input_name: str = inputs[0].name
        self._output_name: str = self._session.get_outputs()[0].name
        self.providers: list[str] = list(self._session.get_providers())

    def _infer(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        outputs = self._session.run([self._output_name], {self._input_name: batch})
        return np.asarray(outputs[0], dtype=np.float32)

    def close(self) -> None:
        """Drop the session (ONNX Runtime frees it with the last reference)."""
        self.__dict__.pop("_session", None)
