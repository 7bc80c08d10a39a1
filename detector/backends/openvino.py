"""OpenVINO backend: runs ``openvino/model.xml`` (needs ``pip install 'shelftally[openvino]'``).

The model is compiled with the ``LATENCY`` performance hint (one stream using all of
``threads``, which is what a worker calling :meth:`predict` synchronously needs). On the CPU,
OpenVINO runs in bfloat16 where the CPU supports it natively (AMX / AVX-512 BF16) unless
``INFERENCE_PRECISION_HINT=f32``: ``BackendConfig.openvino_precision`` chooses (``"auto"``,
the default, measured about 2x faster than fp32 here with boxes within IoU 0.99 of the torch
backend on the test detector; ``"f32"`` for the closest agreement with the other backends).
``"int8"`` loads ``openvino-int8/model.xml`` instead when :func:`shelftally.int8.choose_int8`
accepts its recorded accuracy (else ``openvino/model.xml`` with a warning), both with the f32 hint.

Devices: ``"cpu"`` -> ``CPU``, ``"gpu"``/``"gpu.N"`` -> Intel ``GPU``, ``"npu"``, ``"auto"``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import numpy.typing as npt

from detector.backends.base import DetectorBackend, parse_cuda_device
from detector.errors import ModelLoadError
from detector.model_dir import OPENVINO_SOURCE, OPENVINO_XML
from shelftally.errors import ConfigurationError
from shelftally.files import sha256_file
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


def _check_source(root: Path) -> None:
    """Refuse an IR converted from other weights than the directory's current ``model.onnx``.

    Raises:
        ModelLoadError: reason ``stale_openvino``; re-export with ``shelftally detector export DIR --format openvino``.
    """
    record = root / OPENVINO_SOURCE
    if not record.is_file():
        return  # made before sources were recorded (or by hand): nothing to compare
    try:
        source = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot read {record}: {error}", reason="model_file_unreadable") from error
    current = root / str(source.get("source", ""))
    if current.is_file() and sha256_file(current) != source.get("sha256"):
        raise ModelLoadError(
            f"{root / OPENVINO_XML} was converted from an earlier {current.name}; re-export it with "
            f"`shelftally detector export {root} --format openvino`",
            reason="stale_openvino",
        )


class OpenVinoBackend(DetectorBackend):
    """OpenVINO compiled model on ``openvino/model.xml``; see :class:`~detector.backends.base.DetectorBackend`.

    Raises:
        ModelLoadError: ``openvino/model.xml`` (or its ``.bin``) is missing or unreadable, was
            converted from weights other than the directory's current ones (``stale_openvino``),
            or OpenVINO cannot compile it for the device.
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
            max_drop_points=self.config.int8_max_drop_points, what="detector",
        )
        if precision == "fp32":
            _check_source(self.model_dir.path)
        return path, precision

    def _open(self) -> None:
        ov = import_runtime("openvino", extra="openvino", purpose="the openvino detector backend")
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
        if len(model.inputs) != 1 or partial.rank.get_length() != 4:
            raise ModelLoadError(f"{path}: expected one (B, 3, S, S) input, received {partial}", reason="invalid_model")
        if partial[0].is_static:
            self.fixed_batch = int(partial[0].get_length())
            logger.info("%s has a fixed batch of %s; predict() uses chunks of that size", path, self.fixed_batch)
        self._request = self._compiled.create_infer_request()

    def _infer(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        self._request.infer({0: batch})
        # The output tensor's memory is reused by the next call: copy it out.
        return np.array(self._request.get_output_tensor(0).data, dtype=np.float32, copy=True)

    def close(self) -> None:
        """Drop the compiled model and its request."""
        self.__dict__.pop("_request", None)
        self.__dict__.pop("_compiled", None)
