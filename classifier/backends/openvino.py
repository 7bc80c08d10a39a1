"""OpenVINO backend: runs ``openvino/model.xml`` (needs ``pip install 'shelftally[openvino]'``).

The model is compiled with the ``LATENCY`` performance hint (one stream using all of
``threads``: what a worker calling :meth:`classify` synchronously needs). On the CPU, OpenVINO
runs in bfloat16 where the CPU supports it natively unless ``INFERENCE_PRECISION_HINT=f32``:
``BackendConfig.openvino_precision`` chooses (``"auto"`` or ``"f32"``). ``"int8"`` loads
``openvino-int8/model.xml`` instead when :func:`shelftally.int8.choose_int8` accepts its
recorded accuracy (else ``openvino/model.xml`` with a warning), both with the f32 hint.

Devices: ``"cpu"`` -> ``CPU``, ``"gpu"``/``"gpu.N"`` -> Intel ``GPU``, ``"npu"``, ``"auto"``.
The batch limit is read from the IR: a static batch dimension makes
:attr:`~classifier.backends.base.ClassifierBackend.fixed_batch`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import numpy.typing as npt

from classifier.backends.base import ClassifierBackend, parse_cuda_device
from classifier.errors import ModelLoadError
from classifier.model_dir import ONNX_OUTPUTS, OPENVINO_XML
from shelftally.errors import ConfigurationError
from shelftally.int8 import openvino_model_path
from shelftally.runtimes import import_runtime

__all__ = ["OpenVinoBackend"]

logger = logging.getLogger(__name__)


def _device_name(device: str) -> str:
    name = device.strip()
    if parse_cuda_device(name) is not None:
        raise ConfigurationError(
            f"openvino backend: device {device!r} is a CUDA device; use cpu, gpu, npu or auto", reason="invalid_device"
        )
    return name.upper()


class OpenVinoBackend(ClassifierBackend):
    """OpenVINO compiled model on ``openvino/model.xml``; see :class:`~classifier.backends.base.ClassifierBackend`.

    Raises:
        ModelLoadError: ``openvino/model.xml`` is missing (reason ``model_file_missing``) or
            OpenVINO cannot compile it for the device (``model_file_unreadable``), or its input
            is not (B, 3, S, S) or it lacks the ``logits`` and ``embedding`` outputs
            (``invalid_model``).
        MissingDependencyError: openvino is not installed (extra ``shelftally[openvino]``).
        ConfigurationError: a CUDA device was asked for.
    """

    name = "openvino"

    def _model_path(self) -> tuple[Path, str]:
        """The IR to load and its precision: INT8 only when asked for and :func:`shelftally.int8.choose_int8` allows.

        Raises:
            ModelLoadError: the FP32 ``openvino/model.xml`` is missing (it is also INT8's fallback).
        """
        self.model_dir.file(OPENVINO_XML)
        path, precision = openvino_model_path(
            self.model_dir.path, OPENVINO_XML, precision=self.config.openvino_precision,
            max_drop_points=self.config.int8_max_drop_points, what="classifier",
        )
        return path, precision

    def _open(self) -> None:
        ov = import_runtime("openvino", extra="openvino", purpose="the openvino classifier backend")
        path, self.precision = self._model_path()
        device = _device_name(self.config.device)
        config: dict[str, str | int] = {"PERFORMANCE_HINT": "LATENCY"}
        if self.config.threads:
            config["INFERENCE_NUM_THREADS"] = self.config.threads
        if device == "CPU" and self.config.openvino_precision in ("f32", "int8"):
            # int8: what stays unquantised runs FP32, as when its accuracy was recorded (and so does the fallback)
            config["INFERENCE_PRECISION_HINT"] = "f32"
        core = ov.Core()
        try:
            model = core.read_model(str(path))
            partial = model.input(0).get_partial_shape()
            self._compiled = core.compile_model(model, device, config)
        except RuntimeError as error:
            raise ModelLoadError(
                f"OpenVINO cannot load {path} on {device}: {error}", reason="model_file_unreadable"
            ) from error
        size = self.preprocess.input_size
        if (
            len(model.inputs) != 1
            or partial.rank.is_dynamic
            or partial.rank.get_length() != 4
            or any(partial[i].is_static and partial[i].get_length() != n for i, n in ((1, 3), (2, size), (3, size)))
        ):
            raise ModelLoadError(
                f"{path}: expected one input (B, 3, {size}, {size}) per preprocess.json, received {partial}",
                reason="invalid_model",
            )
        names = [set(output.get_names()) for output in self._compiled.outputs]
        try:
            self._outputs = [next(i for i, n in enumerate(names) if wanted in n) for wanted in ONNX_OUTPUTS]
        except StopIteration:
            raise ModelLoadError(
                f"{path}: expected outputs {list(ONNX_OUTPUTS)}, received {names}", reason="invalid_model"
            ) from None
        if partial[0].is_static:
            self.fixed_batch = int(partial[0].get_length())
            logger.info("%s has a fixed batch of %s; classify() uses chunks of that size", path, self.fixed_batch)
        width = self._compiled.outputs[self._outputs[1]].get_partial_shape()[-1]
        self.embedding_dim = int(width.get_length()) if width.is_static else None
        self._request = self._compiled.create_infer_request()

    def _infer(self, batch: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        self._request.infer({0: batch})
        # The output tensors' memory is reused by the next call: copy them out.
        logits, embedding = (
            np.array(self._request.get_output_tensor(i).data, dtype=np.float32, copy=True) for i in self._outputs
        )
        return logits, embedding

    def close(self) -> None:
        """Drop the compiled model and its request."""
        self.__dict__.pop("_request", None)
        self.__dict__.pop("_compiled", None)
