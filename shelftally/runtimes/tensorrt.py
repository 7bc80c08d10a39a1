"""TensorRT: FP32 / FP16 / INT8 engines built from ``model.onnx`` with the TensorRT Python API, cached per GPU.

Needs an NVIDIA GPU, TensorRT (``pip install 'shelftally[tensorrt]'``, from NVIDIA's package
index) and torch with CUDA (``shelftally[train]``): device buffers and the CUDA stream are torch
tensors and a ``torch.cuda.Stream``, which keeps this module typed end to end.

Building (:meth:`CudaTensorRTRuntime.build`, the path of NVIDIA's "TensorRT Python API" guide):
``Builder`` -> ``NetworkDefinition`` filled by ``OnnxParser`` -> ``BuilderConfig`` with the
workspace limit, the ``FP16`` flag (``fp16`` and ``int8``), the ``INT8`` flag and an
``IInt8EntropyCalibrator2`` (``int8``), and one optimisation profile for the dynamic batch of the
input (min 1, opt ``batch_size``, max ``max_batch``; the spatial size fixed at the spec's
``input_size``) -> ``build_serialized_network``. INT8 calibration reads a folder of pictures
prepared exactly as at inference by the model kind (:attr:`SessionSpec.calibration`, through
:func:`calibration_batches`) and writes a calibration table beside the engines, so a rebuild
skips calibration.

Engines live in a :class:`shelftally.runtimes.engine_cache.EngineCache` (default
``<model dir>/engines``) keyed by sha256(model.onnx), the TensorRT version, the GPU compute
capability, the precision and the profile; which engine is used, built or refused is decided by
:func:`shelftally.runtimes.engine_cache.resolve_engine`. An engine built for another TensorRT
version or GPU is refused with the spec's ``errors.incompatible`` naming expected and actual
values, and :func:`shelftally.runtimes.open_session` then falls back to ONNX Runtime with a warning.

The runtime (TensorRT + the GPU) is reached only through :func:`open_runtime` or
:attr:`SessionSpec.tensorrt_runtime`, the seams the unit tests replace with fakes.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

from shelftally.errors import ConfigurationError, EngineCacheError
from shelftally.errors import EngineIncompatibleError as SharedEngineIncompatibleError
from shelftally.files import sha256_file
from shelftally.runtimes.base import Batch, ErrorKinds, Outputs, Precision, Session
from shelftally.runtimes.devices import parse_cuda_device
from shelftally.runtimes.engine_cache import (
    Detail,
    EngineCache,
    EngineKey,
    calibration_cache_path,
    read_calibration_cache,
    resolve_engine,
    write_calibration_cache,
)

if TYPE_CHECKING:
    import tensorrt as trt
    import torch
    from typing_extensions import Buffer

__all__ = [
    "PICTURE_SUFFIXES",
    "PRECISIONS",
    "BuildSpec",
    "CudaTensorEngine",
    "CudaTensorRTRuntime",
    "TensorRTEngine",
    "TensorRTRuntime",
    "TensorRTSession",
    "calibration_batches",
    "open_runtime",
    "read_picture",
    "tensorrt_installed",
]

logger = logging.getLogger(__name__)

PICTURE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})
PRECISIONS: tuple[Precision, ...] = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class BuildSpec:
    """What to build an engine from.

    Attributes:
        onnx_path: ``model.onnx`` (dynamic batch).
        precision: ``"fp32"``, ``"fp16"`` or ``"int8"``.
        input_size: S of the (B, 3, S, S) input, pixels.
        min_batch: smallest batch of the optimisation profile.
        opt_batch: batch TensorRT tunes kernels for.
        max_batch: largest batch of the optimisation profile.
        workspace_bytes: builder workspace memory limit.
        calibration: INT8 only: returns a fresh iterator of (calibration_batch, 3, S, S) float32
            batches, prepared as at inference.
        calibration_batch: pictures per calibration batch.
        calibration_cache: INT8 only: where the calibration table is read from / written to.
        what: the model kind, for the log.
    """

    onnx_path: Path
    precision: Precision
    input_size: int
    min_batch: int
    opt_batch: int
    max_batch: int
    workspace_bytes: int
    calibration: Callable[[], Iterator[npt.NDArray[np.float32]]] | None = None
    calibration_batch: int = 8
    calibration_cache: Path | None = None
    what: str = "model"

    @property
    def profile(self) -> str:
        """The optimisation profile as text (part of the engine cache key)."""
        s = self.input_size
        return f"{self.min_batch}x3x{s}x{s}-{self.opt_batch}x3x{s}x{s}-{self.max_batch}x3x{s}x{s}"


class TensorRTEngine(Protocol):
    """A deserialised engine with its execution context."""

    def infer(self, batch: npt.NDArray[np.float32]) -> Outputs:
        """Run (B, 3, S, S) float32 -> the outputs, float32, in the order the session asked for."""
        ...

    def close(self) -> None:
        """Free the context and device memory."""
        ...


class TensorRTRuntime(Protocol):
    """TensorRT on one GPU: what the session needs from it."""

    @property
    def version(self) -> str:
        """TensorRT version, e.g. ``"10.13.3.9"``."""
        ...

    @property
    def compute_capability(self) -> str:
        """The GPU's ``"major.minor"``, e.g. ``"9.0"``."""
        ...

    @property
    def device_name(self) -> str:
        """The GPU's name."""
        ...

    def build(self, spec: BuildSpec) -> bytes:
        """Build and serialise an engine."""
        ...

    def deserialize(self, engine: bytes, outputs: Sequence[str] | None = None) -> TensorRTEngine:
        """Load a serialised engine whose outputs are ``outputs`` (None: its one output)."""
        ...


def tensorrt_installed() -> bool:
    """Whether the real TensorRT bindings import.

    ``tensorrt-stubs`` installs a ``tensorrt/`` folder holding only ``__init__.pyi``, which
    Python imports as an empty namespace package: ``import tensorrt`` then succeeds with no
    ``Builder`` in it. That counts as not installed.
    """
    try:
        import tensorrt
    except ImportError:
        return False
    return hasattr(tensorrt, "Builder")


def _import_tensorrt_and_torch(what: str, errors: ErrorKinds) -> None:
    if not tensorrt_installed():
        raise errors.missing(
            f"the tensorrt {what} backend needs TensorRT (found none, or only its type stubs): "
            "pip install 'shelftally[tensorrt]' (from https://pypi.nvidia.com)"
        )
    try:
        import torch  # noqa: F401
    except ImportError as error:
        raise errors.missing(
            f"the tensorrt {what} backend uses torch.cuda for device buffers: pip install 'shelftally[train]'"
        ) from error


def read_picture(path: Path) -> npt.NDArray[np.uint8] | None:
    """A picture file as (h, w, 3) uint8 RGB (OpenCV ``imread``), or None when OpenCV cannot read it."""
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return None if bgr is None else np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), dtype=np.uint8)


def calibration_batches(
    folder: Path,
    prepare: Callable[[list[npt.NDArray[np.uint8]]], npt.NDArray[np.float32]],
    read: Callable[[Path], npt.NDArray[np.uint8] | None],
    *,
    batch_size: int,
    limit: int,
    unit: str = "pictures",
) -> Iterator[npt.NDArray[np.float32]]:
    """INT8 calibration batches from a folder of pictures, prepared exactly as at inference.

    Args:
        folder: pictures (PNG, JPEG, BMP, WebP, TIFF), read in name order, not recursively.
        prepare: the model kind's preprocessing: ``batch_size`` (h, w, 3) uint8 RGB pictures ->
            (batch_size, 3, S, S) float32.
        read: decodes one file to (h, w, 3) uint8 RGB, or None when it cannot (it is skipped
            with a warning).
        batch_size: pictures per batch; a last incomplete batch is dropped (TensorRT's
            calibrator takes batches of one size).
        limit: at most this many pictures.
        unit: what the pictures are, for messages (``"pictures"``, ``"crops"``).

    Yields:
        (batch_size, 3, S, S) float32 batches.

    Raises:
        ConfigurationError: the folder is missing or holds fewer than ``batch_size`` readable
            pictures (reason ``invalid_calibration``).
    """
    if not folder.is_dir():
        raise ConfigurationError(f"INT8 calibration folder {folder} does not exist", reason="invalid_calibration")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in PICTURE_SUFFIXES)[:limit]
    pending: list[npt.NDArray[np.uint8]] = []
    produced = 0
    for path in paths:
        image = read(path)
        if image is None:
            logger.warning("calibration: cannot read %s, skipped", path)
            continue
        pending.append(image)
        if len(pending) == batch_size:
            batch = prepare(pending)
            pending = []
            produced += 1
            yield batch
    if produced == 0:
        raise ConfigurationError(
            f"INT8 calibration needs at least {batch_size} readable {unit} in {folder}", reason="invalid_calibration"
        )


def _entropy_calibrator(spec: BuildSpec, device: torch.device) -> trt.IInt8EntropyCalibrator2:
    """An ``IInt8EntropyCalibrator2`` fed from ``spec.calibration`` through one device buffer."""
    import tensorrt as trt
    import torch

    if spec.calibration is None or spec.calibration_cache is None:
        raise ConfigurationError("INT8 needs calibration pictures (EngineOptions.calibration_dir)",
                                 reason="invalid_calibration")
    batches = spec.calibration()
    cache_path = spec.calibration_cache
    shape = (spec.calibration_batch, 3, spec.input_size, spec.input_size)

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.buffer = torch.empty(shape, dtype=torch.float32, device=device)
            self.batches_used = 0

        def get_batch_size(self) -> int:
            return spec.calibration_batch

        def get_batch(self, names: list[str]) -> list[int]:
            batch = next(batches, None)
            if batch is None:
                return []  # no more data
            self.buffer.copy_(torch.from_numpy(batch))
            torch.cuda.synchronize(device)
            self.batches_used += 1
            return [int(self.buffer.data_ptr())]

        # None means "no cache" (the binding's docstring); the stub says Buffer.
        def read_calibration_cache(self) -> bytes | None:
            return read_calibration_cache(cache_path)

        def write_calibration_cache(self, cache: Buffer) -> None:
            write_calibration_cache(cache_path, bytes(memoryview(cache)))
            logger.info("INT8 calibration: %s batches", self.batches_used)

    return EntropyCalibrator()


class CudaTensorEngine:
    """A TensorRT engine and execution context; buffers are torch CUDA tensors.

    Args:
        engine: the deserialised engine: one float32 input and float32 outputs.
        device: the CUDA device it lives on.
        outputs: the output names to return, in order; None: the engine must have exactly one.
        errors: the error classes to raise.

    Raises:
        errors.load: the engine's inputs and outputs are not those (reason ``invalid_model``).
    """

    def __init__(self, engine: trt.ICudaEngine, device: torch.device, outputs: Sequence[str] | None = None,
                 errors: ErrorKinds | None = None) -> None:
        import tensorrt as trt
        import torch

        self._errors = errors or ErrorKinds()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        found = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        wanted = list(outputs) if outputs else found[:1]
        if len(inputs) != 1 or (sorted(found) != sorted(wanted) if outputs else len(found) != 1):
            raise self._errors.load(
                f"engine: expected 1 input and outputs {wanted or ['one output']}, received {inputs} and {found}",
                reason="invalid_model",
            )
        for name in (*inputs, *found):
            if engine.get_tensor_dtype(name) != trt.DataType.FLOAT:
                dtype = engine.get_tensor_dtype(name)
                raise self._errors.load(f"engine tensor {name}: expected float32, received {dtype}",
                                        reason="invalid_model")
        self._engine: trt.ICudaEngine | None = engine
        self._context: trt.IExecutionContext | None = engine.create_execution_context()
        self._input = inputs[0]
        self._outputs = wanted
        self._device = device
        self._stream = torch.cuda.Stream(device=device)  # type: ignore[no-untyped-call]  # torch leaves it unannotated

    def infer(self, batch: npt.NDArray[np.float32]) -> Outputs:
        """Run one batch (B within the optimisation profile).

        Args:
            batch: (B, 3, S, S) float32.

        Returns:
            The outputs, float32 on the host, in the order asked for.

        Raises:
            errors.failure: the batch is outside the profile (reason ``batch_outside_profile``),
                execution failed (``inference_failed``) or the engine is closed (``backend_closed``).
        """
        import torch

        context = self._context
        if context is None:
            raise self._errors.failure("TensorRT engine is closed", reason="backend_closed")
        with torch.cuda.device(self._device), torch.cuda.stream(self._stream):
            device_input = torch.from_numpy(np.ascontiguousarray(batch)).to(self._device)
            if not context.set_input_shape(self._input, tuple(batch.shape)):
                raise self._errors.failure(f"TensorRT: input shape {batch.shape} is outside the engine's profile",
                                           reason="batch_outside_profile")
            context.set_tensor_address(self._input, int(device_input.data_ptr()))
            device_outputs: list[torch.Tensor] = []
            for name in self._outputs:
                dims = context.get_tensor_shape(name)
                tensor = torch.empty([dims[i] for i in range(len(dims))], dtype=torch.float32, device=self._device)
                context.set_tensor_address(name, int(tensor.data_ptr()))
                device_outputs.append(tensor)
            if not context.execute_async_v3(self._stream.cuda_stream):
                raise self._errors.failure("TensorRT: execute_async_v3 failed", reason="inference_failed")
            hosts = [tensor.to("cpu") for tensor in device_outputs]  # ordered on self._stream
        self._stream.synchronize()
        return tuple(np.asarray(host.numpy(), dtype=np.float32) for host in hosts)

    def close(self) -> None:
        """Free the execution context and the engine."""
        self._context = None
        self._engine = None


class CudaTensorRTRuntime:
    """TensorRT on one CUDA device (the real :class:`TensorRTRuntime`).

    Args:
        device_index: CUDA device ordinal.
        what: the model kind, for messages.
        errors: the error classes to raise.

    Raises:
        errors.missing: tensorrt or torch is not installed.
        ConfigurationError: CUDA device ``device_index`` is not available (reason ``cuda_unavailable``).
    """

    def __init__(self, device_index: int, *, what: str = "model", errors: ErrorKinds | None = None) -> None:
        self._errors = errors or ErrorKinds()
        _import_tensorrt_and_torch(what, self._errors)
        import tensorrt as trt
        import torch

        if not torch.cuda.is_available() or device_index >= torch.cuda.device_count():
            raise ConfigurationError(f"TensorRT needs CUDA device {device_index}, but torch sees "
                                     f"{torch.cuda.device_count()} CUDA devices", reason="cuda_unavailable")
        self._device = torch.device("cuda", device_index)
        self._logger = trt.Logger(trt.Logger.WARNING)
        major, minor = torch.cuda.get_device_capability(self._device)
        self._version = str(trt.__version__)
        self._capability = f"{major}.{minor}"
        self._name = str(torch.cuda.get_device_name(self._device))

    @property
    def version(self) -> str:
        """TensorRT version."""
        return self._version

    @property
    def compute_capability(self) -> str:
        """The GPU's ``"major.minor"``."""
        return self._capability

    @property
    def device_name(self) -> str:
        """The GPU's name."""
        return self._name

    def build(self, spec: BuildSpec) -> bytes:
        """Build an engine from ONNX (see the module docstring for the steps).

        Raises:
            errors.load: the ONNX parser (reason ``model_file_unreadable``, the parser's errors
                listed) or the builder (``engine_build_failed``) failed.
            ConfigurationError: INT8 without calibration pictures.
        """
        import tensorrt as trt
        import torch

        builder = trt.Builder(self._logger)
        network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse_from_file(str(spec.onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise self._errors.load(f"TensorRT cannot parse {spec.onnx_path}: {errors}",
                                    reason="model_file_unreadable")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, spec.workspace_bytes)
        name = network.get_input(0).name
        s = spec.input_size
        profile = builder.create_optimization_profile()
        profile.set_shape(name, trt.Dims([spec.min_batch, 3, s, s]), trt.Dims([spec.opt_batch, 3, s, s]),
                          trt.Dims([spec.max_batch, 3, s, s]))
        config.add_optimization_profile(profile)
        if spec.precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)  # INT8 layers fall back to FP16, not FP32
        calibrator: trt.IInt8EntropyCalibrator2 | None = None
        if spec.precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
            calibration_profile = builder.create_optimization_profile()
            fixed = trt.Dims([spec.calibration_batch, 3, s, s])
            calibration_profile.set_shape(name, fixed, fixed, fixed)
            config.set_calibration_profile(calibration_profile)
            calibrator = _entropy_calibrator(spec, self._device)
            config.int8_calibrator = calibrator
        logger.info("building a TensorRT %s %s engine from %s (profile %s) on %s; this takes minutes",
                    spec.precision, spec.what, spec.onnx_path, spec.profile, self._name)
        with torch.cuda.device(self._device):
            serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise self._errors.load(f"TensorRT could not build an engine from {spec.onnx_path} (see its log)",
                                    reason="engine_build_failed")
        return bytes(memoryview(serialized))

    def deserialize(self, engine: bytes, outputs: Sequence[str] | None = None) -> CudaTensorEngine:
        """Deserialise an engine on this device.

        Raises:
            errors.incompatible: TensorRT refuses the plan (built by another version or for
                another GPU without its metadata saying so).
        """
        import tensorrt as trt
        import torch

        with torch.cuda.device(self._device):
            runtime = trt.Runtime(self._logger)
            cuda_engine = runtime.deserialize_cuda_engine(engine)
        if cuda_engine is None:
            raise self._errors.incompatible(
                f"TensorRT {self._version} on {self._name} (compute capability {self._capability}) cannot "
                "deserialise this engine"
            )
        return CudaTensorEngine(cuda_engine, self._device, outputs, self._errors)


def open_runtime(device: str, *, what: str = "model", errors: ErrorKinds | None = None) -> TensorRTRuntime:
    """TensorRT on the CUDA device named by ``device`` (``"cuda"`` or ``"cuda:N"``).

    Raises:
        ConfigurationError: ``device`` is not a CUDA device (reason ``invalid_device``) or CUDA
            is not available (``cuda_unavailable``).
        errors.missing: tensorrt or torch is not installed (the message names the extra).
    """
    index = parse_cuda_device(device)
    if index is None:
        raise ConfigurationError(f"tensorrt backend: device expected cuda or cuda:N, received {device!r}",
                                 reason="invalid_device")
    return CudaTensorRTRuntime(index, what=what, errors=errors)


class TensorRTSession(Session):
    """A TensorRT engine of ``model.onnx``; see :class:`~shelftally.runtimes.base.Session`.

    Attributes:
        engine_record: the cache entry (or ``engine_path``) the engine came from.
        cache: the engine cache (``EngineOptions.cache_dir``, default ``<model dir>/engines``).

    Raises:
        spec.errors.incompatible: the only engines available were built for another TensorRT
            version or GPU and building is off (``EngineOptions.build_missing=False`` or
            ``engine_path`` given); :func:`shelftally.runtimes.open_session` then falls back to ONNX Runtime.
        spec.errors.load: ``model.onnx`` missing, no engine and building off (reason
            ``engine_missing``), an unreadable engine (``engine_unreadable``), an engine of
            another model (``engine_model_mismatch``), a build failure.
        spec.errors.missing: tensorrt or torch is not installed.
        ConfigurationError: bad engine options (``invalid_backend_config``), INT8 to build without
            calibration pictures (``invalid_calibration``), a non-CUDA device (``invalid_device``).
    """

    runtime = "tensorrt"

    def _open(self) -> None:
        spec = self.spec
        options = spec.options.engine
        batch_size = spec.options.batch_size
        if options.precision not in PRECISIONS:
            raise ConfigurationError(f"engine precision expected one of {PRECISIONS}, received {options.precision!r}",
                                     reason="invalid_backend_config")
        max_batch = options.max_batch or batch_size
        if batch_size > max_batch:
            raise ConfigurationError(f"batch_size {batch_size} exceeds the engine's max_batch {max_batch}",
                                     reason="invalid_backend_config")
        if options.precision == "int8" and options.calibration_dir is None and options.engine_path is None:
            raise ConfigurationError(
                f"int8 precision needs EngineOptions.calibration_dir (a folder of {spec.what} input pictures)",
                reason="invalid_calibration",
            )
        runtime: TensorRTRuntime = spec.tensorrt_runtime or open_runtime(
            spec.options.device, what=spec.what, errors=spec.errors
        )
        onnx_path = spec.file(spec.onnx_file)
        model_sha256 = sha256_file(onnx_path)
        cache_dir = options.cache_dir or spec.root / "engines"
        size = spec.input_size
        calibration: Callable[[], Iterator[npt.NDArray[np.float32]]] | None = None
        if options.calibration_dir is not None and spec.prepare is not None:
            calibration = functools.partial(
                calibration_batches, options.calibration_dir, spec.prepare, spec.read or read_picture,
                batch_size=options.calibration_batch, limit=options.calibration_images, unit=spec.unit,
            )
        build_spec = BuildSpec(
            onnx_path=onnx_path,
            precision=options.precision,
            input_size=size,
            min_batch=1,
            opt_batch=batch_size,
            max_batch=max_batch,
            workspace_bytes=options.workspace_mib << 20,
            calibration=calibration,
            calibration_batch=options.calibration_batch,
            calibration_cache=calibration_cache_path(cache_dir, model_sha256=model_sha256, input_size=size,
                                                     runtime_version=runtime.version),
            what=spec.what,
        )
        key = EngineKey(model_sha256, runtime.version, runtime.compute_capability, options.precision,
                        build_spec.profile)
        self.cache = EngineCache(cache_dir)

        def build() -> tuple[bytes, Mapping[str, Detail]]:
            details: dict[str, Detail] = {
                "device_name": runtime.device_name,
                "onnx_file": build_spec.onnx_path.name,
                "input_size": build_spec.input_size,
                "min_batch": build_spec.min_batch,
                "opt_batch": build_spec.opt_batch,
                "max_batch": build_spec.max_batch,
                "workspace_bytes": build_spec.workspace_bytes,
                "builder": "shelftally.runtimes.tensorrt",
                "model_kind": spec.what,
            }
            if build_spec.precision == "int8" and build_spec.calibration_cache is not None:
                details["calibration_cache"] = build_spec.calibration_cache.name
            return runtime.build(build_spec), details

        try:
            self.engine_record, data = resolve_engine(
                self.cache, key, build=build, build_missing=options.build_missing and options.engine_path is None,
                engine_path=options.engine_path,
            )
        except SharedEngineIncompatibleError as error:
            if isinstance(error, spec.errors.incompatible):
                raise
            raise spec.errors.incompatible(str(error)) from error
        except EngineCacheError as error:
            raise spec.errors.load(str(error), reason=error.reason) from error
        self._engine = runtime.deserialize(data, spec.outputs)

    def _run(self, batch: Batch) -> Outputs:
        outputs = self._engine.infer(batch)
        if len(outputs) != self.spec.output_count:
            raise self.spec.errors.failure(
                f"TensorRT engine gave {len(outputs)} outputs, expected {self.spec.output_count}",
                reason="model_output_mismatch",
            )
        return tuple(outputs)

    def close(self) -> None:
        """Free the engine and its context."""
        engine = self.__dict__.pop("_engine", None)
        if engine is not None:
            engine.close()

