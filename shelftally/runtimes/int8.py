"""INT8 post-training quantisation for the CPU, and the accuracy gate that decides whether it is used.

Shared by :mod:`detector.quantize` and :mod:`classifier.quantize`. A model directory's INT8
variant is an OpenVINO IR quantised with NNCF (``nncf.quantize``, ``MIXED`` preset: 8-bit
per-channel symmetric weights, 8-bit asymmetric activations whose ranges are calibrated on real
pictures).
It lives beside the FP32 files::

    openvino-int8/model.xml, model.bin   the quantised network (same inputs and outputs as model.onnx)
    openvino-int8/int8.json              its record: source hash, calibration, FP32 and INT8 accuracy

Both run with OpenVINO's ``INFERENCE_PRECISION_HINT=f32`` (the layers left unquantised stay
FP32, also on CPUs with bfloat16), when scored and when deployed. The record holds the accuracy
of FP32 and INT8 measured by the same code on the same labelled pictures (detector: mAP50 per
evaluation set; classifier: top-1), so a deployment can refuse an INT8 model that lost too
much: :func:`choose_int8` uses the INT8 file only when every recorded delta is within
``max_drop_points`` percentage points and the record was made from the directory's current
``model.onnx``.

Why OpenVINO + NNCF rather than ONNX Runtime's ``quantize_static``: in a one-off comparison
while choosing (2-core AMD EPYC, AVX2, no AVX-512 or VNNI, a training job sharing the cores; not
a command in this repository), the product-agnostic detector at 320 px ran about 2.6x faster
than FP32 as an NNCF model under OpenVINO and about 1.4x as an ONNX Runtime QDQ model under ONNX
Runtime. ``bench/int8.py`` measures the chosen path.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import shutil
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from shelftally.errors import ConfigurationError, QuantizationError
from shelftally.files import sha256_file
from shelftally.runtimes._imports import import_runtime

__all__ = [
    "INT8_DIR",
    "INT8_RECORD",
    "INT8_XML",
    "STAGED_DIR",
    "STAGED_XML",
    "Int8Choice",
    "Int8Record",
    "choose_int8",
    "head_scope_patterns",
    "install",
    "openvino_model_path",
    "quantize_openvino",
    "read_record",
    "stage_progress",
    "summarize",
    "write_record",
]

logger = logging.getLogger(__name__)

INT8_DIR = "openvino-int8"
INT8_XML = f"{INT8_DIR}/model.xml"
INT8_RECORD = f"{INT8_DIR}/int8.json"
STAGED_DIR = f"{INT8_DIR}.staged"  # a new INT8 model and its record, before :func:`install`


@dataclass(frozen=True)
class Int8Record:
    """What an INT8 model was made from and how much accuracy it kept.

    Attributes:
        source: the FP32 file it was quantised from, relative to the model directory (``model.onnx``).
        source_sha256: that file's SHA-256 when it was quantised.
        method: how (tool, preset, ignored scope), for people.
        calibration: where the calibration pictures came from and how many (``{"source", "pictures"}``).
        metric: the accuracy measure, ``"mAP50"`` (detector) or ``"top1"`` (classifier), in [0, 1].
        evaluations: per labelled set, ``{"fp32": float, "int8": float, "pictures": int}``.
        created: UTC time, ISO 8601.
        command: the command that made it.
    """

    source: str
    source_sha256: str
    method: str
    calibration: dict[str, Any]
    metric: str
    evaluations: dict[str, dict[str, Any]]
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    command: str = ""

    def delta_points(self) -> dict[str, float]:
        """INT8 minus FP32 per evaluation set, in percentage points (negative: INT8 lost accuracy)."""
        return {name: round((float(e["int8"]) - float(e["fp32"])) * 100, 2) for name, e in self.evaluations.items()}

    def worst_drop_points(self) -> float:
        """The largest accuracy loss over the evaluation sets, in points (0 when INT8 lost nothing anywhere).

        Raises:
            ValueError: the record has no evaluation (nothing says INT8 is accurate).
        """
        deltas = self.delta_points()
        if not deltas:
            raise ValueError("the INT8 record has no evaluation")
        return max(0.0, -min(deltas.values()))


def write_record(model_root: Path, record: Int8Record, *, folder: Path | None = None) -> Path:
    """Write ``openvino-int8/int8.json`` (with the per-set deltas, for people reading it) and return its path.

    ``folder``: write ``int8.json`` there instead (a staged INT8 folder, see :func:`install`).
    """
    path = (folder / "int8.json") if folder is not None else model_root / INT8_RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    data = asdict(record) | {"delta_points": record.delta_points()}
    path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path


def read_record(model_root: Path) -> Int8Record:
    """Read and check ``openvino-int8/int8.json``.

    Raises:
        FileNotFoundError: there is none.
        ValueError: it is not a valid record: not JSON, a missing or extra field, no evaluation,
            or an accuracy that is not a finite number in [0, 1] (NaN included).
    """
    path = model_root / INT8_RECORD
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object")
        data.pop("delta_points", None)
        record = Int8Record(**data)
        if not isinstance(record.evaluations, dict) or not record.evaluations:
            raise ValueError("no evaluation")
        for name, scores in record.evaluations.items():
            for key in ("fp32", "int8"):
                value = scores[key]
                if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
                        or not 0.0 <= value <= 1.0:
                    raise ValueError(f"evaluation {name!r}: {key} {value!r} is not an accuracy in [0, 1]")
    except (TypeError, KeyError, AttributeError, ValueError) as error:
        problem = f"missing field {error}" if isinstance(error, KeyError) else str(error)
        raise ValueError(f"{path}: not a valid INT8 record: {problem}") from error
    return record


@dataclass(frozen=True)
class Int8Choice:
    """The gate's answer (:func:`choose_int8`).

    Attributes:
        use: True when the INT8 model is to be used.
        reason: machine-readable: ``int8_within_margin`` (used), ``int8_missing``,
            ``int8_record_invalid``, ``int8_stale`` (made from other weights) or
            ``int8_accuracy_outside_margin``.
        detail: a sentence for the log.
        record: the record when one was read.
    """

    use: bool
    reason: str
    detail: str
    record: Int8Record | None = None


def choose_int8(model_root: Path, *, source: str, max_drop_points: float) -> Int8Choice:
    """Decide whether a model directory's INT8 variant may be used.

    Args:
        model_root: the model directory.
        source: the FP32 file the INT8 model must have been made from (``"model.onnx"``).
        max_drop_points: the most accuracy the INT8 model may have lost against FP32 on any
            recorded evaluation set, in percentage points (1.0: 1 point of mAP50 or top-1).

    Returns:
        An :class:`Int8Choice`; never raises for a missing or bad INT8 model (the caller falls
        back to FP32 and logs ``detail``).

    Raises:
        ConfigurationError: ``max_drop_points`` is negative (reason ``invalid_int8_margin``).
    """
    if not math.isfinite(max_drop_points) or max_drop_points < 0:
        raise ConfigurationError(
            f"int8 accuracy margin: expected >= 0 points, received {max_drop_points}", reason="invalid_int8_margin"
        )
    if not (model_root / INT8_XML).is_file() or not (model_root / INT8_XML).with_suffix(".bin").is_file():
        return Int8Choice(False, "int8_missing", f"{model_root} has no {INT8_XML} (+ .bin); make it with `quantize`")
    try:
        record = read_record(model_root)
    except (OSError, ValueError) as error:
        return Int8Choice(False, "int8_record_invalid", str(error))
    current = model_root / source
    if record.source != source or not current.is_file() or sha256_file(current) != record.source_sha256:
        return Int8Choice(False, "int8_stale", f"{model_root / INT8_XML} was made from other weights than the "
                          f"current {source}; quantise again", record)
    if any(float(scores["fp32"]) <= 0.0 for scores in record.evaluations.values()):
        return Int8Choice(False, "int8_record_invalid", f"{model_root / INT8_RECORD}: an evaluation has an FP32 "
                          "accuracy of 0, which proves nothing about INT8; score on labelled pictures", record)
    drop = record.worst_drop_points()
    deltas = ", ".join(f"{name} {delta:+.2f}" for name, delta in record.delta_points().items())
    if drop > max_drop_points:
        return Int8Choice(False, "int8_accuracy_outside_margin", f"INT8 lost {drop:.2f} points of {record.metric} "
                          f"({deltas}), more than the allowed {max_drop_points:g}", record)
    return Int8Choice(True, "int8_within_margin", f"INT8 {record.metric} delta {deltas} points, "
                      f"within {max_drop_points:g}", record)


def openvino_model_path(
    model_root: Path, fp32_xml: str, *, precision: str, max_drop_points: float, what: str
) -> tuple[Path, str]:
    """The OpenVINO IR a backend loads, and the precision that is: the INT8 one only when asked and the gate allows.

    Args:
        model_root: the model directory.
        fp32_xml: the FP32 IR, relative to it (``openvino/model.xml``).
        precision: the backend's ``openvino_precision`` (``"int8"`` asks for INT8; anything else is FP32).
        max_drop_points: see :func:`choose_int8`.
        what: ``"detector"`` or ``"classifier"``, for the log.

    Returns:
        ``(path, "int8" | "fp32")``. When INT8 was asked for and refused, a warning names the
        reason (see :class:`Int8Choice`) and the FP32 IR is returned.

    Raises:
        ConfigurationError: ``max_drop_points`` is negative.
    """
    if precision != "int8":
        return model_root / fp32_xml, "fp32"
    choice = choose_int8(model_root, source="model.onnx", max_drop_points=max_drop_points)
    if choice.use:
        logger.info("%s %s: running INT8 (%s)", what, model_root, choice.detail)
        return model_root / INT8_XML, "int8"
    logger.warning("%s %s: INT8 not used, running FP32 (%s): %s", what, model_root, choice.reason, choice.detail)
    return model_root / fp32_xml, "fp32"


def head_scope_patterns(node_names: Iterable[str]) -> list[str]:
    """NNCF ignored-scope patterns that keep a YOLOv8-style detection head's box decoding in FP32.

    The exported head is the highest-numbered ``/model.N/`` block; its ``cv2`` / ``cv3``
    convolution branches are quantised, everything after them (distribution focal loss,
    anchor arithmetic, sigmoid, concatenation) is not: those produce the box coordinates in
    pixels, where 8-bit steps would move boxes by whole pixels.

    Returns:
        Regular expressions over node names; empty when no ``/model.N/`` node exists.
    """
    blocks = [int(m.group(1)) for name in node_names if (m := re.match(r"/model\.(\d+)/", name))]
    if not blocks:
        return []
    head = max(blocks)
    return [rf"/model\.{head}/(?!cv2|cv3)"]


def quantize_openvino(
    source_onnx: Path,
    out_dir: Path,
    calibration: Sequence[npt.NDArray[np.float32]],
    *,
    ignored_patterns: Sequence[str] | Callable[[list[str]], Sequence[str]] = (),
) -> tuple[Path, list[str]]:
    """Quantise an FP32 ONNX model to an INT8 OpenVINO IR with NNCF.

    NNCF's own log lines and progress bar go to stderr (stdout stays clean for ``--json``).

    Args:
        source_onnx: the FP32 model.
        out_dir: where ``model.xml`` / ``model.bin`` are written (created).
        calibration: network input batches exactly as the runtime gets them, each
            (B, 3, S, S) float32 (already resized, normalised); 100-300 pictures is NNCF's guidance.
        ignored_patterns: node-name regular expressions (matched from the start of the name, as
            NNCF's ``IgnoredScope`` does with ``re.match``) left in FP32, or a function of the
            model's node names that returns them (:func:`head_scope_patterns`).

    Returns:
        ``(path of model.xml, names of the nodes the patterns kept in FP32)``.

    Raises:
        MissingDependencyError: nncf or openvino is not installed (extra ``shelftally[int8]``).
        QuantizationError: no calibration batch (reason ``no_calibration_pictures``), or
            OpenVINO / NNCF refused the model (``quantization_failed``).
    """
    if not calibration:
        raise QuantizationError("INT8 calibration needs at least one picture", reason="no_calibration_pictures")
    ov = import_runtime("openvino", extra="int8", purpose="INT8 quantisation")
    nncf = import_runtime("nncf", extra="int8", purpose="INT8 quantisation")
    try:
        model = ov.Core().read_model(str(source_onnx))
        names = [op.get_friendly_name() for op in model.get_ops()]
        patterns = list(ignored_patterns(names) if callable(ignored_patterns) else ignored_patterns)
        kept = [name for name in names if any(re.match(pattern, name) for pattern in patterns)]
        scope = None
        if patterns:
            scope = nncf.IgnoredScope(patterns=patterns, validate=False)
        subset = sum(int(batch.shape[0]) for batch in calibration)
        nncf.set_log_level(logging.WARNING)
        with contextlib.redirect_stdout(sys.stderr):
            quantized = nncf.quantize(
                model, nncf.Dataset(list(calibration)), preset=nncf.QuantizationPreset.MIXED,
                subset_size=subset, ignored_scope=scope,
            )
        out_dir.mkdir(parents=True, exist_ok=True)
        xml = out_dir / "model.xml"
        ov.save_model(quantized, str(xml), compress_to_fp16=False)
    except (RuntimeError, ValueError, TypeError) as error:
        raise QuantizationError(f"cannot quantise {source_onnx}: {error}") from error
    logger.info("quantised %s to %s with %d calibration pictures; %d nodes kept in FP32 by %s",
                source_onnx, xml, subset, len(kept), patterns)
    return xml, kept


STAGED_XML = f"{STAGED_DIR}/model.xml"
"""The staged INT8 IR, relative to the model directory: sessions load it with
``SessionSpec.int8_candidate`` (the gate bypassed on purpose, since the record that would let it
pass is what the scoring produces)."""


def stage_progress(
    progress: Callable[[str, int, int], None] | None, stage: str
) -> Callable[[int, int], None] | None:
    """``progress(stage, done, total)`` as a ``(done, total)`` callback for one stage (None stays None)."""
    if progress is None:
        return None
    report = progress
    return lambda done, total: report(stage, done, total)


def install(model_root: Path, staged: Path) -> Path:
    """Replace ``model_root/openvino-int8`` by the staged folder (model and its record) in one rename.

    Until this call the previous INT8 model and record, if any, stay as they were; its record
    never vouches for a model it was not measured on.
    """
    target = model_root / INT8_DIR
    old = model_root / f"{INT8_DIR}.old"
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        target.rename(old)
    staged.rename(target)
    if old.exists():
        shutil.rmtree(old)
    return target


def summarize(record: Int8Record, max_drop_points: float) -> Mapping[str, Any]:
    """The record as a dict with its deltas and whether the gate would accept it at ``max_drop_points``."""
    return asdict(record) | {
        "delta_points": record.delta_points(),
        "worst_drop_points": record.worst_drop_points(),
        "max_drop_points": max_drop_points,
        "within_margin": record.worst_drop_points() <= max_drop_points,
    }
