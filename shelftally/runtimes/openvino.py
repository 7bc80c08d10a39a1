"""OpenVINO: runs ``openvino/model.xml`` (needs ``pip install 'shelftally[openvino]'``).

The model is compiled with the ``LATENCY`` performance hint (one stream using all of
``threads``, which is what a worker calling synchronously needs). On the CPU, OpenVINO runs in
bfloat16 where the CPU supports it natively (AMX / AVX-512 BF16) unless
``INFERENCE_PRECISION_HINT=f32``: ``RuntimeOptions.openvino_precision`` chooses (``"auto"``, the
default, measured about 2x faster than fp32 with the test detector's boxes within IoU 0.99 of
the torch backend; ``"f32"`` for the closest agreement with the other runtimes). ``"int8"``
loads ``openvino-int8/model.xml`` instead when :func:`shelftally.runtimes.int8.choose_int8`
accepts its recorded accuracy (else ``openvino/model.xml`` with a warning), both with the f32 hint.

Devices: ``"cpu"`` -> ``CPU``, ``"gpu"``/``"gpu.N"`` -> Intel ``GPU``, ``"npu"``, ``"auto"``.
The batch limit is read from the IR: a static batch dimension makes
:attr:`~shelftally.runtimes.base.Session.fixed_batch`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from shelftally.errors import ConfigurationError
from shelftally.files import sha256_file
from shelftally.runtimes._imports import import_runtime
from shelftally.runtimes.base import Batch, Outputs, Session, SessionSpec
from shelftally.runtimes.devices import parse_cuda_device
from shelftally.runtimes.int8 import openvino_model_path

__all__ = ["OpenVinoSession"]

logger = logging.getLogger(__name__)


def _device_name(device: str) -> str:
    name = device.strip()
    if parse_cuda_device(name) is not None:
        raise ConfigurationError(
            f"openvino backend: device {device!r} is a CUDA device; use cpu, gpu, npu or auto", reason="invalid_device"
        )
    return name.upper()


VIRTUAL_DEVICES = frozenset({"AUTO", "MULTI", "HETERO", "BATCH"})
"""OpenVINO's devices that choose among or combine the real ones (``"AUTO:GPU,CPU"``)."""


def _check_available(device: str, available: list[str]) -> None:
    """Refuse a device this machine's OpenVINO does not have (before any file is read).

    Raises:
        ConfigurationError: reason ``invalid_device``; the message lists the available devices.
    """
    base = device.split(":", 1)[0].split(".", 1)[0]
    if base in VIRTUAL_DEVICES:
        return
    if device not in available and not any(name.split(".", 1)[0] == base for name in available):
        raise ConfigurationError(
            f"openvino backend: device {device!r} is not available here; OpenVINO has {', '.join(available)} "
            "(or AUTO)",
            reason="invalid_device",
        )


def check_source(spec: SessionSpec) -> None:
    """Refuse an IR converted from other weights than the directory's current ``model.onnx``.

    Raises:
        spec.errors.load: reason ``stale_openvino`` (re-export with ``shelftally <kind> export DIR
            --format openvino``), or ``model_file_unreadable`` for an unreadable record.
    """
    record = spec.root / spec.openvino_source
    if not record.is_file():
        return  # made before sources were recorded (or by hand): nothing to compare
    try:
        source = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise spec.errors.load(f"cannot read {record}: {error}", reason="model_file_unreadable") from error
    current = spec.root / str(source.get("source", ""))
    if current.is_file() and sha256_file(current) != source.get("sha256"):
        raise spec.errors.load(
            f"{spec.root / spec.openvino_xml} was converted from an earlier {current.name}; re-export it with "
            f"`shelftally {spec.what} export {spec.root} --format openvino`",
            reason="stale_openvino",
        )


class OpenVinoSession(Session):
    """An OpenVINO compiled model on ``openvino/model.xml``; see :class:`~shelftally.runtimes.base.Session`.

    Raises:
        spec.errors.load: ``openvino/model.xml`` is missing (reason ``model_file_missing``), was
            converted from weights other than the directory's current ones (``stale_openvino``),
            OpenVINO cannot compile it for the device (``model_file_unreadable``), or its input is
            not (B, 3, S, S) or it lacks the outputs the spec names (``invalid_model``).
        spec.errors.missing: openvino is not installed (extra ``shelftally[openvino]``).
        ConfigurationError: a CUDA device was asked for (reason ``invalid_device``).
    """

    runtime = "openvino"

    def _model_path(self) -> tuple[Path, str]:
        """The IR to load, and its precision: INT8 only when asked and the gate (``choose_int8``) allows.

        Raises:
            spec.errors.load: the FP32 ``openvino/model.xml`` is missing (it is also INT8's fallback).
        """
        spec = self.spec
        if spec.int8_candidate is not None:
            return spec.file(spec.int8_candidate), "int8"
        if not (spec.root / spec.openvino_xml).is_file():
            raise spec.errors.load(
                f"model directory {spec.root} has no {spec.openvino_xml}; convert its model.onnx with "
                f"`shelftally {spec.what} export {spec.root} --format openvino`",
                reason="model_file_missing",
            )
        path, precision = openvino_model_path(
            spec.root, spec.openvino_xml, precision=self.options.openvino_precision,
            max_drop_points=self.options.int8_max_drop_points, what=spec.what,
        )
        if precision == "fp32":
            check_source(spec)
        return path, precision

    def _open(self) -> None:
        spec = self.spec
        ov = import_runtime("openvino", extra="openvino", purpose=f"the openvino {spec.what} backend",
                            error=spec.errors.missing)
        device = _device_name(self.options.device)
        core = ov.Core()
        _check_available(device, list(core.available_devices))
        path, self.precision = self._model_path()
        config: dict[str, str | int] = {"PERFORMANCE_HINT": "LATENCY"}
        if self.options.threads:
            config["INFERENCE_NUM_THREADS"] = self.options.threads
        if device == "CPU" and self.options.openvino_precision in ("f32", "int8"):
            # int8: what stays unquantised runs FP32, as when its accuracy was recorded (and so does the fallback)
            config["INFERENCE_PRECISION_HINT"] = "f32"
        try:
            model = core.read_model(str(path))
            partial = model.input(0).get_partial_shape()
            self._compiled = core.compile_model(model, device, config)
        except RuntimeError as error:
            raise spec.errors.load(
                f"OpenVINO cannot load {path} on {device}: {error}", reason="model_file_unreadable"
            ) from error
        size = spec.input_size
        if (
            len(model.inputs) != 1
            or partial.rank.is_dynamic
            or partial.rank.get_length() != 4
            or any(partial[i].is_static and partial[i].get_length() != n for i, n in ((1, 3), (2, size), (3, size)))
        ):
            raise spec.errors.load(
                f"{path}: expected one input (B, 3, {size}, {size}) per preprocess.json, received {partial}",
                reason="invalid_model",
            )
        if spec.outputs is None:
            self._outputs = [0]
        else:
            names = [set(output.get_names()) for output in self._compiled.outputs]
            try:
                self._outputs = [next(i for i, n in enumerate(names) if wanted in n) for wanted in spec.outputs]
            except StopIteration:
                raise spec.errors.load(
                    f"{path}: expected outputs {list(spec.outputs)}, received {names}", reason="invalid_model"
                ) from None
        if partial[0].is_static:
            self.fixed_batch = int(partial[0].get_length())
            logger.info("%s has a fixed batch of %s; it is fed chunks of that size", path, self.fixed_batch)
        widths = [self._compiled.outputs[i].get_partial_shape()[-1] for i in self._outputs]
        self.output_widths = tuple(int(w.get_length()) if w.is_static else None for w in widths)
        self._request = self._compiled.create_infer_request()

    def _run(self, batch: Batch) -> Outputs:
        self._request.infer({0: batch})
        # The output tensors' memory is reused by the next call: copy them out.
        return tuple(
            np.array(self._request.get_output_tensor(i).data, dtype=np.float32, copy=True) for i in self._outputs
        )

    def close(self) -> None:
        """Drop the compiled model and its request."""
        self.__dict__.pop("_request", None)
        self.__dict__.pop("_compiled", None)
