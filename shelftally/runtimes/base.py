"""What every runtime session is and takes: :class:`Session`, :class:`SessionSpec`, the shared options.

A session runs one network file of a model directory on one runtime. It knows nothing of what
the network means: it takes a (B, 3, S, S) float32 batch and gives back the network's outputs,
in the order :attr:`SessionSpec.outputs` names them. Everything about the task (letterbox and
YOLO decoding for the detector; crop resizing, softmax and embeddings for the classifier) stays
in ``detector/`` and ``classifier/``, which describe their model to the session with a
:class:`SessionSpec`.

What the layer owns, for every model kind:

- opening the runtime (imported only now, a missing one named with its pip extra);
- devices and providers, intra-op threads (:func:`threads_per_process`), warm-up;
- the batch limit read from the model (:attr:`Session.fixed_batch`);
- OpenVINO's INT8 variant selection (:mod:`shelftally.runtimes.int8`) and TensorRT's engine
  cache (:mod:`shelftally.runtimes.engine_cache`) with its fallback to ONNX Runtime;
- the typed load errors, raised as the classes the task names in :class:`ErrorKinds` (so a
  detector caller still catches :class:`detector.errors.ModelLoadError`).
"""

from __future__ import annotations

import logging
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Literal, Self, TypedDict

import numpy as np
import numpy.typing as npt

from shelftally.errors import (
    ConfigurationError,
    EngineIncompatibleError,
    MissingDependencyError,
    ModelLoadError,
    ShelfTallyError,
)

__all__ = [
    "Batch",
    "Closable",
    "EngineOptions",
    "ErrorKinds",
    "ModelLoadError",
    "Outputs",
    "Precision",
    "RunArgs",
    "RuntimeArgs",
    "RuntimeOptions",
    "Session",
    "SessionSpec",
    "split_engine",
    "threads_per_process",
]

logger = logging.getLogger(__name__)

Precision = Literal["fp32", "fp16", "int8"]
Batch = npt.NDArray[np.float32]
Outputs = tuple[npt.NDArray[np.float32], ...]


@dataclass(frozen=True)
class ErrorKinds:
    """The error classes a session raises, so each model kind keeps its own error tree.

    Attributes:
        load: a file is missing or unreadable, or the graph does not fit the spec (called as
            ``load(message, reason=...)``).
        incompatible: a TensorRT engine was built for another TensorRT version or GPU (called
            with the message only); must derive from :class:`shelftally.errors.EngineIncompatibleError`.
        failure: a run failed after loading (a closed session, a batch outside the TensorRT
            profile), called as ``failure(message, reason=...)``.
        missing: a runtime is not installed (called with the message only).
    """

    load: type[ShelfTallyError] = ModelLoadError
    incompatible: type[EngineIncompatibleError] = EngineIncompatibleError
    failure: type[ShelfTallyError] = ShelfTallyError
    missing: type[MissingDependencyError] = MissingDependencyError


def threads_per_process(processes: int) -> int:
    """Intra-op threads for each of ``processes`` worker processes sharing this machine's cores.

    Returns:
        ``max(1, usable_cores // processes)``, where usable cores are this process's CPU
        affinity (``os.sched_getaffinity``) where available, else ``os.cpu_count()``.

    Raises:
        ValueError: ``processes < 1``.
    """
    if processes < 1:
        raise ValueError(f"processes: expected a positive integer, received {processes}")
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // processes)


@dataclass(frozen=True)
class EngineOptions:
    """How the TensorRT session finds or builds its engine (ignored by the other runtimes).

    Attributes:
        precision: ``"fp16"`` (default), ``"int8"`` (needs ``calibration_dir``) or ``"fp32"``.
        cache_dir: the engine cache; default ``<model dir>/engines``.
        build_missing: build (and cache) an engine when none matches this GPU and TensorRT
            version; when False, only cached engines are used.
        engine_path: a prebuilt engine file (with its metadata JSON beside it) to use instead
            of the cache; it is checked, never rebuilt.
        max_batch: largest batch of the optimisation profile; default the session's ``batch_size``.
        calibration_dir: folder of pictures (PNG/JPEG) for INT8 entropy calibration, prepared
            exactly as at inference by the model kind (:attr:`SessionSpec.calibration`).
        calibration_images: at most this many calibration pictures are used.
        calibration_batch: pictures per calibration batch.
        workspace_mib: builder workspace memory limit in MiB.

    A model kind may subclass this to change the last three defaults (the classifier does:
    crops are small, so more of them in bigger batches).
    """

    precision: Precision = "fp16"
    cache_dir: Path | None = None
    build_missing: bool = True
    engine_path: Path | None = None
    max_batch: int | None = None
    calibration_dir: Path | None = None
    calibration_images: int = 512
    calibration_batch: int = 8
    workspace_mib: int = 4096


@dataclass(frozen=True)
class RuntimeOptions:
    """Settings of how a model runs, shared by every model kind (each adds its own task settings).

    Attributes:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``; OpenVINO also takes its device names
            (``"gpu"``, ``"npu"``, ``"auto"``).
        threads: intra-op threads (None: the runtime's default, about one per core). With
            several worker processes on one machine, give each ``cores // processes``
            (:func:`threads_per_process`); otherwise they oversubscribe the cores and all slow down.
        batch_size: inputs per network call when the model's batch is dynamic.
        warmup: run one batch at load (allocations, kernel selection) and check the outputs.
        openvino_precision: OpenVINO on the CPU: ``"auto"`` lets OpenVINO pick (bfloat16 on CPUs
            with native bf16, AMX / AVX-512 BF16), ``"f32"`` forces float32 (closest to the other
            runtimes). ``"int8"``: the directory's NNCF INT8 model (``openvino-int8/``) when its
            recorded accuracy loss is within ``int8_max_drop_points``, else FP32 with a warning
            (:func:`shelftally.runtimes.int8.choose_int8`).
        int8_max_drop_points: the most accuracy (percentage points on the recorded evaluation
            sets) an INT8 model may have lost against FP32 to be used.
        engine: TensorRT engine options.

    Raises:
        ConfigurationError: an invalid value (reason ``invalid_backend_config``); every problem
            is named in one message.
    """

    device: str = "cpu"
    threads: int | None = None
    batch_size: int = 8
    warmup: bool = True
    openvino_precision: Literal["auto", "f32", "int8"] = "auto"
    int8_max_drop_points: float = 1.0
    engine: EngineOptions = field(default_factory=EngineOptions)

    def problems(self) -> list[str]:
        """What is wrong with these settings, one message each (empty when they are valid)."""
        problems = []
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            problems.append(f"batch_size: expected a positive integer, received {self.batch_size!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            problems.append(f"threads: expected a positive integer or None, received {self.threads!r}")
        if self.openvino_precision not in ("auto", "f32", "int8"):
            problems.append(
                f"openvino_precision: expected 'auto', 'f32' or 'int8', received {self.openvino_precision!r}"
            )
        if not math.isfinite(self.int8_max_drop_points) or self.int8_max_drop_points < 0:
            problems.append(f"int8_max_drop_points: expected >= 0, received {self.int8_max_drop_points}")
        return problems

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigurationError("; ".join(problems), reason="invalid_backend_config")


class RunArgs(TypedDict, total=False):
    """:class:`RuntimeArgs` but the TensorRT engine options."""

    device: str
    threads: int | None
    batch_size: int
    warmup: bool
    openvino_precision: Literal["auto", "f32", "int8"]
    int8_max_drop_points: float


class RuntimeArgs(RunArgs, total=False):
    """The keyword arguments a model kind's ``load()`` takes for how it runs: :class:`RuntimeOptions`' fields.

    Each is optional; one not given takes the model kind's default (its ``BackendConfig``), and
    so does ``engine=None`` (:func:`split_engine`).
    """

    engine: EngineOptions | None


def split_engine(runtime: RuntimeArgs) -> tuple[RunArgs, EngineOptions | None]:
    """``runtime`` without its ``engine``, and the engine options given (None: not given, or None)."""
    engine = runtime.get("engine")
    rest: RunArgs = {key: value for key, value in runtime.items() if key != "engine"}  # type: ignore[assignment]
    return rest, engine


@dataclass(frozen=True)
class SessionSpec:
    """A model directory's network, described by its model kind for a session.

    Attributes:
        root: the model directory.
        what: the model kind, for messages and logs (``"detector"``, ``"classifier"``).
        input_size: S of the (B, 3, S, S) float32 input, pixels (``preprocess.json``).
        options: device, threads, batch, warm-up, OpenVINO precision, TensorRT engine.
        outputs: the graph outputs to return, by name, in this order; None: the first output only.
        errors: the error classes to raise.
        onnx_file, openvino_xml, openvino_source, torch_file: the files in ``root`` each runtime
            reads (``openvino_source`` records which ONNX file the IR was converted from).
        int8_candidate: OpenVINO only: an INT8 IR (relative to ``root``) to load as it is, the
            gate of :func:`~shelftally.runtimes.int8.choose_int8` bypassed: the staged model that
            quantisation is about to score (the record that would let it pass is what the scoring
            produces).
        torch_module: torch only: builds the ``nn.Module`` (eval mode, on the CPU) from the
            directory; its forward takes the batch and returns a tensor or a tuple whose tensors
            are the outputs in order.
        torch_requires: modules the torch runtime needs besides torch (named in the error).
        prepare: TensorRT INT8 calibration: the kind's preprocessing, a list of (h, w, 3) uint8
            RGB pictures -> (B, 3, S, S) float32, exactly as at inference.
        read: TensorRT INT8 calibration: decodes one file to (h, w, 3) uint8 RGB, or None when
            it cannot (skipped with a warning); default OpenCV's ``imread``.
        unit: what the kind's inputs are called in messages (``"pictures"``, ``"crops"``).
        tensorrt_runtime: TensorRT only: the runtime to use instead of opening one on
            ``options.device`` (:class:`shelftally.runtimes.tensorrt.TensorRTRuntime`; tests pass fakes).
    """

    root: Path
    what: str
    input_size: int
    options: RuntimeOptions = field(default_factory=RuntimeOptions)
    outputs: tuple[str, ...] | None = None
    errors: ErrorKinds = field(default_factory=ErrorKinds)
    onnx_file: str = "model.onnx"
    openvino_xml: str = "openvino/model.xml"
    openvino_source: str = "openvino/source.json"
    torch_file: str = "model.pt"
    int8_candidate: str | None = None
    torch_module: Callable[[], Any] | None = None
    torch_requires: tuple[str, ...] = ()
    prepare: Callable[[list[npt.NDArray[np.uint8]]], Batch] | None = None
    read: Callable[[Path], npt.NDArray[np.uint8] | None] | None = None
    unit: str = "pictures"
    tensorrt_runtime: Any = None

    def file(self, name: str) -> Path:
        """Path of a file in the model directory.

        Raises:
            errors.load: it does not exist (reason ``model_file_missing``).
        """
        path = self.root / name
        if not path.exists():
            raise self.errors.load(f"model directory {self.root} has no {name}", reason="model_file_missing")
        return path

    @property
    def output_count(self) -> int:
        """How many outputs :meth:`Session.run` returns."""
        return len(self.outputs) if self.outputs else 1


class Closable:
    """A resource released by :meth:`close`, also as a context manager (``with ... as x:``)."""

    def close(self) -> None:
        """Release the resource (the default does nothing)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


class Session(Closable, ABC):
    """One network file of a model directory, loaded into one runtime.

    A runtime is one subclass in one module, registered in :data:`shelftally.runtimes.RUNTIMES`;
    it implements :meth:`_open` (load the runtime and the file; set :attr:`fixed_batch` when the
    graph's batch dimension is static, :attr:`output_widths` when the graph tells them) and
    :meth:`_run`.

    Args:
        spec: what to load and how.

    Attributes:
        runtime: the registered name (``"onnx"``, ``"openvino"``, ``"torch"``, ``"tensorrt"``).
        fixed_batch: the graph's static batch, or None when it is dynamic.
        output_widths: the static last dimension of each output, None where unknown.
        precision: what runs: ``"fp32"``, or ``"int8"`` when OpenVINO loaded the INT8 model.

    Raises:
        spec.errors.load: a file is missing or unreadable, or the graph does not fit the spec.
        spec.errors.missing: the runtime is not installed (the message names the pip extra).
        ConfigurationError: the device is not one the runtime offers (reason ``invalid_device``).
    """

    runtime: ClassVar[str] = "base"

    def __init__(self, spec: SessionSpec) -> None:
        self.spec = spec
        self.fixed_batch: int | None = None
        self.output_widths: tuple[int | None, ...] = (None,) * spec.output_count
        self.precision: str = "fp32"
        self._open()

    @property
    def options(self) -> RuntimeOptions:
        """The spec's runtime options."""
        return self.spec.options

    @property
    def chunk_size(self) -> int:
        """Inputs per network call: the graph's fixed batch, else ``options.batch_size``."""
        return self.fixed_batch or self.options.batch_size

    @abstractmethod
    def _open(self) -> None:
        """Load the runtime and the network file."""

    @abstractmethod
    def _run(self, batch: Batch) -> Outputs:
        """Run one batch; return exactly :attr:`SessionSpec.output_count` float32 arrays."""

    def run(self, batch: Batch) -> Outputs:
        """Run the network on one batch.

        Args:
            batch: (B, 3, S, S) float32, C-contiguous; B is :attr:`fixed_batch` when that is set.

        Returns:
            The outputs named by :attr:`SessionSpec.outputs` (or the first one), float32, in
            that order, as the network gives them (the caller checks their shapes).
        """
        return self._run(batch)

    def warmup(self, fill: float = 0.0) -> Outputs:
        """Run one blank batch of :attr:`chunk_size` filled with ``fill`` (allocations, kernel selection).

        Returns:
            Its outputs, for the model kind to check against its labels.
        """
        size = self.spec.input_size
        return self.run(np.full((self.chunk_size, 3, size, size), fill, np.float32))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec.root}, device={self.options.device!r})"
