"""A cache of compiled inference engines (TensorRT plans), shared by the detector and the classifier.

A compiled engine only runs on the runtime version and GPU architecture it was built for, so
each one is stored under a key made of everything it depends on (:class:`EngineKey`): the
SHA-256 of the source model file, the runtime version, the GPU compute capability, the
precision and the optimisation profile. Beside each ``<stem>.engine`` lies ``<stem>.json`` with
the key, the engine's own SHA-256, its creation time and free-form details (GPU name, input
names), so an engine copied to another machine can be checked before it is deserialised.

Layout of a cache directory::

    engines/
      3f2a9c1b0d4e-fp16-sm90-trt10.13.0.35-5d41402abc4b2a76.engine
      3f2a9c1b0d4e-fp16-sm90-trt10.13.0.35-5d41402abc4b2a76.json

Writes are atomic (temporary file + :func:`os.replace`), the engine before its metadata, so a
reader never sees metadata without its engine; concurrent builders of the same key simply
replace each other's identical result. Standard library only: this module knows nothing of any
runtime.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from shelftally.errors import EngineCacheError, EngineIncompatibleError

__all__ = [
    "METADATA_FORMAT",
    "EngineCache",
    "EngineKey",
    "EngineRecord",
    "calibration_cache_path",
    "check_compatible",
    "read_calibration_cache",
    "read_record",
    "resolve_engine",
    "write_calibration_cache",
]

logger = logging.getLogger(__name__)

METADATA_FORMAT = 1
"""Version of the metadata JSON layout written beside each engine."""

Detail = str | int | float | bool


@dataclass(frozen=True)
class EngineKey:
    """Everything a compiled engine depends on.

    Attributes:
        model_sha256: hex SHA-256 of the source model file (e.g. ``model.onnx``).
        runtime_version: version of the runtime that built it, e.g. TensorRT ``"10.13.0.35"``.
        compute_capability: GPU compute capability ``"major.minor"``, e.g. ``"9.0"`` (H100/H200).
        precision: ``"fp32"``, ``"fp16"`` or ``"int8"``.
        profile: the optimisation profile and anything else that changes the plan, e.g.
            ``"images:1x3x640x640-8x3x640x640-8x3x640x640"``; empty when there is none.
    """

    model_sha256: str
    runtime_version: str
    compute_capability: str
    precision: str
    profile: str = ""

    def __post_init__(self) -> None:
        for name in ("model_sha256", "runtime_version", "compute_capability", "precision"):
            if not getattr(self, name):
                raise ValueError(f"EngineKey.{name}: expected a non-empty string")

    @property
    def digest(self) -> str:
        """Hex SHA-256 of all fields (the identity of the key)."""
        payload = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    @property
    def stem(self) -> str:
        """File name stem: readable prefix plus 16 hex digits of :attr:`digest`."""
        capability = "".join(ch for ch in self.compute_capability if ch.isalnum())
        version = "".join(ch for ch in self.runtime_version if ch.isalnum() or ch in "._-")
        return f"{self.model_sha256[:12]}-{self.precision}-sm{capability}-trt{version}-{self.digest[:16]}"


@dataclass(frozen=True)
class EngineRecord:
    """An engine in a cache and its metadata.

    Attributes:
        path: the engine file.
        key: what it was built from and for.
        engine_sha256: hex SHA-256 of the engine file's bytes.
        created_at: when it was stored, ISO 8601 UTC.
        details: free-form facts (GPU name, input name, builder settings).
    """

    path: Path
    key: EngineKey
    engine_sha256: str
    created_at: str
    details: Mapping[str, Detail] = field(default_factory=dict)

    @property
    def metadata_path(self) -> Path:
        """The JSON beside the engine."""
        return self.path.with_suffix(".json")

    def read_engine(self) -> bytes:
        """Read the engine and check it against the recorded SHA-256.

        Raises:
            EngineCacheError: the file is missing, unreadable or its hash differs.
        """
        try:
            data = self.path.read_bytes()
        except OSError as error:
            raise EngineCacheError(f"cannot read engine {self.path}: {error}") from error
        actual = hashlib.sha256(data).hexdigest()
        if actual != self.engine_sha256:
            raise EngineCacheError(
                f"engine {self.path} is corrupt: sha256 expected {self.engine_sha256}, actual {actual}"
            )
        return data


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_record(engine_path: str | Path) -> EngineRecord:
    """Read the metadata JSON beside an engine file.

    Args:
        engine_path: the ``.engine`` file; its metadata is the ``.json`` of the same stem.

    Raises:
        EngineCacheError: the engine or its metadata is missing, unreadable or malformed.
    """
    path = Path(engine_path)
    meta_path = path.with_suffix(".json")
    if not path.is_file():
        raise EngineCacheError(f"engine file {path} does not exist")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        key = EngineKey(**meta["key"])
        record = EngineRecord(
            path=path,
            key=key,
            engine_sha256=str(meta["engine_sha256"]),
            created_at=str(meta["created_at"]),
            details=dict(meta.get("details", {})),
        )
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise EngineCacheError(f"engine metadata {meta_path} is missing or malformed: {error}") from error
    if meta.get("format") != METADATA_FORMAT:
        raise EngineCacheError(
            f"engine metadata {meta_path}: format expected {METADATA_FORMAT}, actual {meta.get('format')}"
        )
    return record


def check_compatible(record: EngineRecord, *, runtime_version: str, compute_capability: str) -> None:
    """Refuse an engine built for another runtime version or GPU architecture.

    Args:
        record: the engine's metadata.
        runtime_version: the running runtime's version (e.g. ``tensorrt.__version__``).
        compute_capability: the running GPU's ``"major.minor"``.

    Raises:
        EngineIncompatibleError: a recorded value differs; the message names expected (running)
            and actual (recorded) values.
    """
    problems = []
    if record.key.runtime_version != runtime_version:
        problems.append(f"runtime version expected {runtime_version}, actual {record.key.runtime_version}")
    if record.key.compute_capability != compute_capability:
        problems.append(
            f"compute capability expected {compute_capability}, actual {record.key.compute_capability}"
        )
    if problems:
        raise EngineIncompatibleError(f"engine {record.path} is incompatible: " + "; ".join(problems))


class EngineCache:
    """Compiled engines in one directory, keyed by :class:`EngineKey`.

    Args:
        root: the cache directory (created on the first :meth:`store`).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path_for(self, key: EngineKey) -> Path:
        """Where the engine of ``key`` is (or would be) stored."""
        return self.root / f"{key.stem}.engine"

    def store(self, key: EngineKey, engine: bytes, details: Mapping[str, Detail] | None = None) -> EngineRecord:
        """Write an engine and its metadata atomically, replacing any entry of the same key.

        Args:
            key: what the engine was built from and for.
            engine: the serialised engine.
            details: extra facts to record (JSON scalars).

        Returns:
            The stored record.
        """
        path = self.path_for(key)
        record = EngineRecord(
            path=path,
            key=key,
            engine_sha256=hashlib.sha256(engine).hexdigest(),
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            details=dict(details or {}),
        )
        meta = {
            "format": METADATA_FORMAT,
            "key": asdict(key),
            "engine_sha256": record.engine_sha256,
            "engine_bytes": len(engine),
            "created_at": record.created_at,
            "details": dict(record.details),
        }
        _write_atomic(path, engine)
        _write_atomic(record.metadata_path, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode("utf-8"))
        logger.info("stored engine %s (%s bytes)", path, len(engine))
        return record

    def records(self) -> list[EngineRecord]:
        """Every readable entry, oldest first; unreadable ones are logged and skipped."""
        found: list[EngineRecord] = []
        if not self.root.is_dir():
            return found
        for engine_path in sorted(self.root.glob("*.engine")):
            try:
                found.append(read_record(engine_path))
            except EngineCacheError as error:
                logger.warning("skipping engine cache entry %s: %s", engine_path, error)
        return sorted(found, key=lambda record: record.created_at)

    def find(self, key: EngineKey) -> EngineRecord | None:
        """The entry stored for exactly ``key``, or None.

        An entry whose metadata disagrees with its file name (copied or renamed by hand) is not
        returned.
        """
        path = self.path_for(key)
        if not path.is_file():
            return None
        try:
            record = read_record(path)
        except EngineCacheError as error:
            logger.warning("ignoring engine cache entry %s: %s", path, error)
            return None
        if record.key != key:
            logger.warning("ignoring engine cache entry %s: its metadata records another key", path)
            return None
        return record

    def remove(self, record: EngineRecord) -> None:
        """Delete an entry (its engine and its metadata); a missing file is not an error."""
        record.metadata_path.unlink(missing_ok=True)
        record.path.unlink(missing_ok=True)
        logger.info("removed engine %s", record.path)

    def others(self, key: EngineKey) -> list[EngineRecord]:
        """Entries for the same model, precision and profile but another runtime version or GPU."""
        return [
            record
            for record in self.records()
            if record.key != key
            and (record.key.model_sha256, record.key.precision, record.key.profile)
            == (key.model_sha256, key.precision, key.profile)
        ]


def resolve_engine(
    cache: EngineCache,
    key: EngineKey,
    *,
    build: Callable[[], tuple[bytes, Mapping[str, Detail]]],
    build_missing: bool = True,
    engine_path: Path | None = None,
) -> tuple[EngineRecord, bytes]:
    """Find, check or build the engine of ``key`` (the policy every TensorRT backend follows).

    1. ``engine_path`` given: that engine is checked against the running runtime and GPU
       (:func:`check_compatible`) and against ``key.model_sha256``, and used; never rebuilt.
    2. An entry of exactly ``key`` in ``cache`` is used (a corrupt one is rebuilt when
       ``build_missing``).
    3. ``build_missing``: ``build()`` is called and its engine stored in ``cache``.
    4. Otherwise, entries of the same model built for another runtime version or GPU make the
       load fail with :class:`EngineIncompatibleError` naming expected and actual values.

    Args:
        cache: where engines are looked up and stored.
        key: the engine wanted (running runtime version and GPU).
        build: builds the engine; returns the serialised engine and details to record.
        build_missing: whether a missing engine may be built.
        engine_path: a prebuilt engine file (metadata JSON beside it) to use instead of the cache.

    Returns:
        The cache record and the engine's bytes.

    Raises:
        EngineIncompatibleError: the engine available was built for another runtime version or
            GPU (and building is off, or ``engine_path`` names it).
        EngineCacheError: reason ``engine_unreadable`` (unreadable or corrupt file or metadata),
            ``engine_model_mismatch`` (``engine_path`` built from another model) or
            ``engine_missing`` (nothing cached and ``build_missing`` off).
    """
    if engine_path is not None:
        try:
            record = read_record(engine_path)
        except EngineCacheError as error:
            raise EngineCacheError(str(error), reason="engine_unreadable") from error
        check_compatible(record, runtime_version=key.runtime_version, compute_capability=key.compute_capability)
        if record.key.model_sha256 != key.model_sha256:
            raise EngineCacheError(
                f"engine {record.path} was built from another model: sha256 expected {key.model_sha256}, "
                f"actual {record.key.model_sha256}",
                reason="engine_model_mismatch",
            )
        try:
            return record, record.read_engine()
        except EngineCacheError as error:
            raise EngineCacheError(str(error), reason="engine_unreadable") from error
    found = cache.find(key)
    if found is not None:
        try:
            return found, found.read_engine()
        except EngineCacheError as error:
            if not build_missing:
                raise EngineCacheError(str(error), reason="engine_unreadable") from error
            logger.warning("rebuilding engine: %s", error)
    if not build_missing:
        for other in reversed(cache.others(key)):
            check_compatible(other, runtime_version=key.runtime_version, compute_capability=key.compute_capability)
        raise EngineCacheError(f"no engine in {cache.root} for {key.stem} and building is off", reason="engine_missing")
    for other in cache.others(key):
        logger.info("engine %s is for runtime %s / compute capability %s; building one for %s / %s",
                    other.path, other.key.runtime_version, other.key.compute_capability,
                    key.runtime_version, key.compute_capability)
    data, details = build()
    return cache.store(key, data, details), data


def calibration_cache_path(cache_dir: Path, *, model_sha256: str, input_size: int, runtime_version: str) -> Path:
    """Where the INT8 calibration table of a model is kept: beside its engines.

    The table depends on the model, its input size and the TensorRT version (TensorRT refuses a
    table written by another version), not on the GPU or the batch profile, so one table serves
    every engine of the model on that version.
    """
    version = "".join(ch for ch in runtime_version if ch.isalnum() or ch in "._-")
    return cache_dir / f"{model_sha256[:12]}-s{input_size}-trt{version}.calib"


def read_calibration_cache(path: Path) -> bytes | None:
    """The calibration table at ``path``, or None when there is none (calibration then runs)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:
        logger.warning("cannot read calibration cache %s, calibrating again: %s", path, error)
        return None
    logger.info("INT8 calibration: reusing %s", path)
    return data or None


def write_calibration_cache(path: Path, data: bytes) -> None:
    """Write a calibration table atomically (a concurrent reader never sees half of it)."""
    _write_atomic(path, data)
    logger.info("INT8 calibration table written to %s (%s bytes)", path, len(data))
