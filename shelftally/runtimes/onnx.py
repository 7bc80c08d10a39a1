"""ONNX Runtime: runs ``model.onnx`` (needs ``pip install 'shelftally[onnx]'``).

Providers: ``device="cpu"`` uses ``CPUExecutionProvider`` only; ``"cuda"``/``"cuda:N"`` puts
``CUDAExecutionProvider`` (that device) first and the CPU provider after it, and falls back to
the CPU with a warning when the installed ONNX Runtime has no CUDA provider (the
``onnxruntime-gpu`` wheel has it). ``threads`` sets ``intra_op_num_threads``; inter-op
parallelism stays at 1 (detector and classifier graphs are sequential). Idle intra-op threads do
not spin (``session.intra_op.allow_spinning=0``): measured with one other busy process on the 2
cores of a development machine, spinning made a 640 px detector picture take 170-190 ms instead
of 95-100 ms; on idle dedicated cores the difference is a few percent.

The batch limit is read from the graph: an integer batch dimension on the input makes
:attr:`~shelftally.runtimes.base.Session.fixed_batch`.
"""

from __future__ import annotations

import logging
from types import ModuleType
from typing import Any

import numpy as np

from shelftally.errors import ConfigurationError
from shelftally.runtimes._imports import import_runtime, onnxruntime_errors
from shelftally.runtimes.base import Batch, Outputs, Session
from shelftally.runtimes.devices import parse_cuda_device

__all__ = ["OnnxSession"]

logger = logging.getLogger(__name__)


class OnnxSession(Session):
    """An ONNX Runtime ``InferenceSession`` on ``model.onnx``; see :class:`~shelftally.runtimes.base.Session`.

    Attributes:
        providers: the execution providers the session runs on, in order.

    Raises:
        spec.errors.load: ``model.onnx`` is missing (reason ``model_file_missing``) or ONNX
            Runtime cannot load it (``model_file_unreadable``), or its input is not
            (B, 3, S, S) with S = ``spec.input_size`` or it lacks the outputs the spec names
            (``invalid_model``).
        spec.errors.missing: onnxruntime is not installed (extra ``shelftally[onnx]``).
        ConfigurationError: a device other than cpu / cuda[:N] (reason ``invalid_device``).
    """

    runtime = "onnx"

    def _providers(self, ort: ModuleType) -> list[str | tuple[str, dict[str, Any]]]:
        device = self.options.device.strip().lower()
        cuda = parse_cuda_device(device)
        if cuda is None:
            if device != "cpu":
                raise ConfigurationError(
                    f"onnx backend: device expected cpu, cuda or cuda:N, received {self.options.device!r}",
                    reason="invalid_device",
                )
            return ["CPUExecutionProvider"]
        if "CUDAExecutionProvider" in ort.get_available_providers():
            return [("CUDAExecutionProvider", {"device_id": cuda}), "CPUExecutionProvider"]
        logger.warning(
            "ONNX Runtime %s has no CUDAExecutionProvider (install onnxruntime-gpu); running %s on the CPU",
            ort.__version__, self.spec.root,
        )
        return ["CPUExecutionProvider"]

    def _open(self) -> None:
        spec = self.spec
        ort = import_runtime("onnxruntime", extra="onnx", purpose=f"the onnx {spec.what} backend",
                             error=spec.errors.missing)
        path = spec.file(spec.onnx_file)
        providers = self._providers(ort)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.options.threads or 0  # 0: ONNX Runtime's default
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except onnxruntime_errors(ort) as error:
            raise spec.errors.load(f"ONNX Runtime cannot load {path}: {error}", reason="model_file_unreadable") \
                from error
        inputs = self._session.get_inputs()
        size = spec.input_size
        shape = list(inputs[0].shape) if len(inputs) == 1 else []
        if len(shape) != 4 or any(
            isinstance(d, int) and d != want for d, want in zip(shape[1:], (3, size, size), strict=True)
        ):
            raise spec.errors.load(
                f"{path}: expected one input (B, 3, {size}, {size}) per preprocess.json, "
                f"received {[i.shape for i in inputs]}",
                reason="invalid_model",
            )
        outputs = {o.name: o.shape for o in self._session.get_outputs()}
        if spec.outputs is not None and not set(spec.outputs) <= set(outputs):
            raise spec.errors.load(
                f"{path}: expected outputs {list(spec.outputs)}, received {sorted(outputs)}", reason="invalid_model"
            )
        self._output_names: list[str] = list(spec.outputs or [self._session.get_outputs()[0].name])
        if isinstance(shape[0], int) and shape[0] > 0:
            self.fixed_batch = shape[0]
            logger.info("%s has a fixed batch of %s; it is fed chunks of that size", path, shape[0])
        widths = [outputs[name][-1] if outputs[name] else None for name in self._output_names]
        self.output_widths = tuple(w if isinstance(w, int) and w > 0 else None for w in widths)
        self._input_name: str = inputs[0].name
        self.providers: list[str] = list(self._session.get_providers())

    def _run(self, batch: Batch) -> Outputs:
        outputs = self._session.run(self._output_names, {self._input_name: batch})
        return tuple(np.asarray(output, dtype=np.float32) for output in outputs)

    def close(self) -> None:
        """Drop the session (ONNX Runtime frees it with the last reference)."""
        self.__dict__.pop("_session", None)
