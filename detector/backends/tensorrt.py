"""TensorRT backend: engines built from ``model.onnx`` with the TensorRT Python API, cached per GPU.

Needs an NVIDIA GPU, TensorRT (``pip install 'shelftally[tensorrt]'``, from NVIDIA's package
index) and torch with CUDA (``shelftally[train]``): device buffers and the CUDA stream are torch
tensors and a ``torch.cuda.Stream``, which keeps this module typed end to end.

Building (:meth:`CudaTensorRTRuntime.build`, the path of NVIDIA's "TensorRT Python API" guide):
``Builder`` -> ``NetworkDefinition`` filled by ``OnnxParser`` -> ``BuilderConfig`` with the
workspace limit, the ``FP16`` flag (``fp16`` and ``int8``), the ``INT8`` flag and an
``IInt8EntropyCalibrator2`` (``int8``), and one optimisation profile for the dynamic batch
(min 1, opt ``batch_size``, max ``max_batch``; the spatial size fixed at ``input_size``) ->
``build_serialized_network``. INT8 calibration reads a folder of pictures, letterboxed exactly
as at inference, and writes a calibration cache beside the engines so a rebuild skips it.

Engines live in a :class:`shelftally.engine_cache.EngineCache` (default ``<model dir>/engines``)
keyed by sha256(model.onnx), the TensorRT version, the GPU compute capability, the precision and
the profile. At load:

1. an engine of exactly that key is used;
2. else, with ``build_missing`` (the default), one is built and stored (minutes);
3. else, if engines of the same model were built for another TensorRT version or GPU, the load
   is refused with :class:`~detector.errors.EngineIncompatibleError` naming expected and
   actual values, and :func:`detector.backends.load` falls back to ONNX Runtime with a warning.

``EngineOptions.engine_path`` names a prebuilt engine instead; it is checked the same way and
never rebuilt. The runtime (TensorRT + the GPU) is reached only through :func:`open_runtime`,
the seam the unit tests replace with a fake.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import cv2
import numpy as np
import numpy.typing as npt

from detector.backends.base import DetectorBackend, Precision, parse_cuda_device
from detector.errors import DetectorError, EngineIncompatibleError, MissingDependencyError, ModelLoadError
from detector.model_dir import WEIGHTS_ONNX, Preprocess
from detector.preprocess import letterbox
from shelftally.engine_cache import Detail, EngineCache, EngineKey, EngineRecord, check_compatible, read_record
from shelftally.errors import ConfigurationError, EngineCacheError
from shelftally.errors import EngineIncompatibleError as _SharedEngineIncompatibleError
from shelftally.files import sha256_file

if TYPE_CHECKING:
    import tensorrt as trt
    import torch
    from typing_extensions import Buffer

__all__ = [
    "BuildSpec",
    "CudaTensorEngine",
    "CudaTensorRTRuntime",
    "TensorRTBackend",
    "TensorRTEngine",
    "TensorRTRuntime",
    "calibration_batches",
    "open_runtime",
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
            batches, letterboxed as at inference.
        calibration_batch: pictures per calibration batch.
        calibration_cache: INT8 only: where the calibration table is read from / written to.
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

    @property
    def profile(self) -> str:
        """The optimisation profile as text (part of the engine cache key)."""
        s = self.input_size
        return f"{self.min_batch}x3x{s}x{s}-{self.opt_batch}x3x{s}x{s}-{self.max_batch}x3x{s}x{s}"


class TensorRTEngine(Protocol):
    """A deserialised engine with its execution context."""

    def infer(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Run (B, 3, S, S) float32 -> (B, 4 + C, A) float32."""
        ...

    def close(self) -> None:
        """Free the context and device memory."""
        ...


class TensorRTRuntime(Protocol):
    """TensorRT on one GPU: what the backend needs from it."""

    @property
    def version(self) -> str:
        """TensorRT version, e.g. ``"10.13.0.35"``."""
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

    def deserialize(self, engine: bytes) -> TensorRTEngine:
        """Load a serialised engine."""
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


def _import_tensorrt_and_torch() -> None:
    if not tensorrt_installed():
        raise MissingDependencyError(
            "the tensorrt detector backend needs TensorRT (found none, or only its type stubs): "
            "pip install 'shelftally[tensorrt]' (from https://pypi.nvidia.com)"
        )
    try:
        import torch  # noqa: F401
    except ImportError as error:
        raise MissingDependencyError(
            "the tensorrt detector backend uses torch.cuda for device buffers: pip install 'shelftally[train]'"
        ) from error


def calibration_batches(
    folder: Path, preprocess: Preprocess, *, batch_size: int, limit: int
) -> Iterator[npt.NDArray[np.float32]]:
    """INT8 calibration batches from a folder of pictures, letterboxed as at inference.

    Args:
        folder: pictures (PNG, JPEG, BMP, WebP, TIFF), read in name order, not recursively.
        preprocess: the model's input preparation.
        batch_size: pictures per batch; a last incomplete batch is dropped (TensorRT's
            calibrator takes batches of one size).
        limit: at most this many pictures.

    Yields:
        (batch_size, 3, S, S) float32 batches.

    Raises:
        ConfigurationError: the folder holds fewer than ``batch_size`` readable pictures.
    """
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in PICTURE_SUFFIXES)[:limit]
    pending: list[npt.NDArray[np.uint8]] = []
    produced = 0
    for path in paths:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            logger.warning("calibration: cannot read %s, skipped", path)
            continue
        pending.append(np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), dtype=np.uint8))
        if len(pending) == batch_size:
            batch, _ = letterbox(pending, preprocess)
            pending = []
            produced += 1
            yield batch
    if produced == 0:
        raise ConfigurationError(
            f"INT8 calibration needs at least {batch_size} readable pictures in {folder}", reason="invalid_calibration"
        )


def _entropy_calibrator(
    spec: BuildSpec, device: torch.device
) -> trt.IInt8EntropyCalibrator2:
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
            if cache_path.is_file():
                logger.info("INT8 calibration: reusing %s", cache_path)
                return cache_path.read_bytes()
            return None

        def write_calibration_cache(self, cache: Buffer) -> None:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            cache_path.write_bytes(bytes(memoryview(cache)))
            logger.info("INT8 calibration: %s batches, table written to %s", self.batches_used, cache_path)

    return EntropyCalibrator()


class CudaTensorEngine:
    """A TensorRT engine and execution context; buffers are torch CUDA tensors.

    Args:
        engine: the deserialised engine (one float32 input, one float32 output).
        device: the CUDA device it lives on.

    Raises:
        ModelLoadError: the engine does not have one float32 input and one float32 output.
    """

    def __init__(self, engine: trt.ICudaEngine, device: torch.device) -> None:
        import tensorrt as trt
        import torch

        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelLoadError(f"engine: expected 1 input and 1 output, received {inputs} and {outputs}",
                                 reason="invalid_model")
        for name in (*inputs, *outputs):
            if engine.get_tensor_dtype(name) != trt.DataType.FLOAT:
                dtype = engine.get_tensor_dtype(name)
                raise ModelLoadError(f"engine tensor {name}: expected float32, received {dtype}",
                                     reason="invalid_model")
        self._engine: trt.ICudaEngine | None = engine
        self._context: trt.IExecutionContext | None = engine.create_execution_context()
        self._input, self._output = inputs[0], outputs[0]
        self._device = device
        self._stream = torch.cuda.Stream(device=device)  # type: ignore[no-untyped-call]  # torch leaves it unannotated

    def infer(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Run one batch (B within the optimisation profile).

        Args:
            batch: (B, 3, S, S) float32.

        Returns:
            (B, 4 + C, A) float32 on the host.

        Raises:
            DetectorError: the batch shape is outside the profile, or execution failed.
        """
        import torch

        context = self._context
        if context is None:
            raise DetectorError("TensorRT engine is closed", reason="backend_closed")
        with torch.cuda.device(self._device), torch.cuda.stream(self._stream):
            device_input = torch.from_numpy(np.ascontiguousarray(batch)).to(self._device)
            if not context.set_input_shape(self._input, tuple(batch.shape)):
                raise DetectorError(f"TensorRT: input shape {batch.shape} is outside the engine's profile",
                                    reason="batch_outside_profile")
            dims = context.get_tensor_shape(self._output)
            device_output = torch.empty([dims[i] for i in range(len(dims))], dtype=torch.float32, device=self._device)
            context.set_tensor_address(self._input, int(device_input.data_ptr()))
            context.set_tensor_address(self._output, int(device_output.data_ptr()))
            if not context.execute_async_v3(self._stream.cuda_stream):
                raise DetectorError("TensorRT: execute_async_v3 failed", reason="inference_failed")
            host = device_output.to("cpu")  # ordered on self._stream
        self._stream.synchronize()
        return np.asarray(host.numpy(), dtype=np.float32)

    def close(self) -> None:
        """Free the execution context and the engine."""
        self._context = None
        self._engine = None


class CudaTensorRTRuntime:
    """TensorRT on one CUDA device (the real :class:`TensorRTRuntime`).

    Args:
        device_index: CUDA device ordinal.

    Raises:
        MissingDependencyError: tensorrt or torch is not installed.
        DetectorError: CUDA is not available.
    """

    def __init__(self, device_index: int) -> None:
        _import_tensorrt_and_torch()
        import tensorrt as trt
        import torch

        if not torch.cuda.is_available() or device_index >= torch.cuda.device_count():
            raise DetectorError(f"TensorRT needs CUDA device {device_index}, but torch sees "
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
            ModelLoadError: the ONNX parser or the builder failed (the parser's errors are listed).
            ConfigurationError: INT8 without calibration pictures.
        """
        import tensorrt as trt
        import torch

        builder = trt.Builder(self._logger)
        network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse_from_file(str(spec.onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ModelLoadError(f"TensorRT cannot parse {spec.onnx_path}: {errors}", reason="model_file_unreadable")
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
        logger.info("building a TensorRT %s engine from %s (profile %s) on %s; this takes minutes",
                    spec.precision, spec.onnx_path, spec.profile, self._name)
        with torch.cuda.device(self._device):
            serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise ModelLoadError(f"TensorRT could not build an engine from {spec.onnx_path} (see its log)",
                                 reason="engine_build_failed")
        return bytes(memoryview(serialized))

    def deserialize(self, engine: bytes) -> CudaTensorEngine:
        """Deserialise an engine on this device.

        Raises:
            EngineIncompatibleError: TensorRT refuses the plan (built by another version or for
                another GPU without its metadata saying so).
        """
        import tensorrt as trt
        import torch

        with torch.cuda.device(self._device):
            runtime = trt.Runtime(self._logger)
            cuda_engine = runtime.deserialize_cuda_engine(engine)
        if cuda_engine is None:
            raise EngineIncompatibleError(
                f"TensorRT {self._version} on {self._name} (compute capability {self._capability}) cannot "
                "deserialise this engine"
            )
        return CudaTensorEngine(cuda_engine, self._device)


def open_runtime(device: str) -> TensorRTRuntime:
    """TensorRT on the CUDA device named by ``device`` (``"cuda"`` or ``"cuda:N"``).

    Raises:
        ConfigurationError: ``device`` is not a CUDA device.
        MissingDependencyError: tensorrt or torch is not installed (the message names the extra).
        DetectorError: CUDA is not available.
    """
    index = parse_cuda_device(device)
    if index is None:
        raise ConfigurationError(f"tensorrt backend: device expected cuda or cuda:N, received {device!r}",
                                 reason="invalid_device")
    return CudaTensorRTRuntime(index)


class TensorRTBackend(DetectorBackend):
    """A TensorRT engine of ``model.onnx``; see :class:`~detector.backends.base.DetectorBackend`.

    Attributes:
        engine_record: the cache entry (or ``engine_path``) the engine came from.

    Raises:
        EngineIncompatibleError: the only engines available were built for another TensorRT
            version or GPU and building is off (``EngineOptions.build_missing=False`` or
            ``engine_path`` given); :func:`detector.backends.load` then falls back to ONNX Runtime.
        ModelLoadError: ``model.onnx`` missing, no engine and building off, build failure.
        MissingDependencyError: tensorrt or torch is not installed.
        ConfigurationError: bad engine options, a non-CUDA device.
    """

    name = "tensorrt"

    def _open(self) -> None:
        options = self.config.engine
        if options.precision not in PRECISIONS:
            raise ConfigurationError(f"engine precision expected one of {PRECISIONS}, received {options.precision!r}",
                                     reason="invalid_backend_config")
        max_batch = options.max_batch or self.config.batch_size
        if self.config.batch_size > max_batch:
            raise ConfigurationError(f"batch_size {self.config.batch_size} exceeds the engine's max_batch {max_batch}",
                                     reason="invalid_backend_config")
        runtime = open_runtime(self.config.device)
        onnx_path = self.model_dir.file(WEIGHTS_ONNX)
        model_sha256 = sha256_file(onnx_path)
        cache_dir = options.cache_dir or self.model_dir.path / "engines"
        size = self.preprocess.input_size
        calibration: Callable[[], Iterator[npt.NDArray[np.float32]]] | None = None
        if options.calibration_dir is not None:
            calibration = functools.partial(calibration_batches, options.calibration_dir, self.preprocess,
                                            batch_size=options.calibration_batch, limit=options.calibration_images)
        spec = BuildSpec(
            onnx_path=onnx_path,
            precision=options.precision,
            input_size=size,
            min_batch=1,
            opt_batch=self.config.batch_size,
            max_batch=max_batch,
            workspace_bytes=options.workspace_mib << 20,
            calibration=calibration,
            calibration_batch=options.calibration_batch,
            calibration_cache=cache_dir / f"{model_sha256[:12]}-s{size}-trt{runtime.version}.calib",
        )
        key = EngineKey(model_sha256, runtime.version, runtime.compute_capability, options.precision, spec.profile)
        self.engine_record, data = self._resolve(runtime, key, spec, EngineCache(cache_dir))
        self._engine = runtime.deserialize(data)

    def _check(self, record: EngineRecord, key: EngineKey) -> None:
        try:
            check_compatible(record, runtime_version=key.runtime_version, compute_capability=key.compute_capability)
        except _SharedEngineIncompatibleError as error:
            raise EngineIncompatibleError(str(error)) from error

    def _resolve(
        self, runtime: TensorRTRuntime, key: EngineKey, spec: BuildSpec, cache: EngineCache
    ) -> tuple[EngineRecord, bytes]:
        options = self.config.engine
        if options.engine_path is not None:
            try:
                record = read_record(options.engine_path)
            except EngineCacheError as error:
                raise ModelLoadError(str(error), reason="engine_unreadable") from error
            self._check(record, key)
            if record.key.model_sha256 != key.model_sha256:
                raise ModelLoadError(
                    f"engine {record.path} was built from another model.onnx: sha256 expected {key.model_sha256}, "
                    f"actual {record.key.model_sha256}", reason="engine_model_mismatch")
            try:
                return record, record.read_engine()
            except EngineCacheError as error:
                raise ModelLoadError(str(error), reason="engine_unreadable") from error
        found = cache.find(key)
        if found is not None:
            try:
                return found, found.read_engine()
            except EngineCacheError as error:
                if not options.build_missing:
                    raise ModelLoadError(str(error), reason="engine_unreadable") from error
                logger.warning("rebuilding TensorRT engine: %s", error)
        if not options.build_missing:
            for other in reversed(cache.others(key)):
                self._check(other, key)  # raises: it differs in TensorRT version or GPU
            raise ModelLoadError(
                f"no TensorRT engine in {cache.root} for {key.stem} and build_missing is off", reason="engine_missing"
            )
        for other in cache.others(key):
            logger.info("engine %s is for TensorRT %s / compute capability %s; building one for %s / %s",
                        other.path, other.key.runtime_version, other.key.compute_capability,
                        key.runtime_version, key.compute_capability)
        data = runtime.build(spec)
        details: dict[str, Detail] = {
            "device_name": runtime.device_name,
            "onnx_file": spec.onnx_path.name,
            "input_size": spec.input_size,
            "min_batch": spec.min_batch,
            "opt_batch": spec.opt_batch,
            "max_batch": spec.max_batch,
            "workspace_bytes": spec.workspace_bytes,
            "builder": "detector.backends.tensorrt",
        }
        if spec.precision == "int8" and spec.calibration_cache is not None:
            details["calibration_cache"] = spec.calibration_cache.name
        return cache.store(key, data, details), data

    def _infer(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return self._engine.infer(batch)

    def close(self) -> None:
        """Free the engine and its context."""
        engine = self.__dict__.pop("_engine", None)
        if engine is not None:
            engine.close()
