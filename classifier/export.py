"""Export a classifier network to ONNX (and OpenVINO IR), in the model directory layout.

``model.onnx`` has one input and two outputs (see :mod:`classifier.model_dir`)::

    images     (B, 3, S, S) float32, normalised per preprocess.json
    logits     (B, C) float32
    embedding  (B, D) float32, unit L2 norm

B is dynamic by default. ``batch=N`` exports a graph with the batch fixed to N (for runtimes
and accelerators that need static shapes); the backends read B from the graph's input and
split or pad to it (:mod:`classifier.backends`).

The export uses TorchScript tracing (``torch.onnx.export(..., dynamo=False)``): the default
dynamo exporter of torch 2.14 needs ``onnxscript``, which this project does not install
(``shared/ENVIRONMENT.md``). Files are written to a temporary name and renamed, so a failed
export never leaves a half-written ``model.onnx``.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from classifier.errors import MissingDependencyError, ModelLoadError
from classifier.model_dir import ONNX_INPUT, ONNX_OUTPUTS, OPENVINO_XML, WEIGHTS_ONNX, ModelDir, read_model_dir

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "DEFAULT_OPSET",
    "check_onnx",
    "export_model_dir",
    "export_onnx",
    "export_openvino",
]

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 17


def _onnx_target(out: str | Path) -> Path:
    target = Path(out)
    if target.suffix != ".onnx":
        target = target / WEIGHTS_ONNX
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def check_onnx(path: str | Path, *, input_size: int, num_classes: int | None = None) -> int | None:
    """Check an exported graph's inputs and outputs.

    Args:
        path: the ``.onnx`` file.
        input_size: S, the side of the square input the graph must take.
        num_classes: C, when the logits width must be checked.

    Returns:
        The graph's fixed batch size, or None when the batch is dynamic.

    Raises:
        ModelLoadError: the file does not pass ``onnx.checker`` (reason ``model_file_unreadable``),
            or its input is not ``images`` (B, 3, S, S) or its outputs not ``logits`` (B, C) and
            ``embedding`` (B, D) with one B (reason ``invalid_model``).
        MissingDependencyError: onnx is not installed (extra ``shelftally[train]``).
    """
    try:
        import onnx
    except ImportError as error:
        raise MissingDependencyError("checking an ONNX export needs onnx: pip install 'shelftally[train]'") from error
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except (OSError, ValueError, onnx.checker.ValidationError) as error:
        raise ModelLoadError(f"{path} is not a valid ONNX model: {error}", reason="model_file_unreadable") from error

    def dims(value: onnx.ValueInfoProto) -> list[int | str]:
        return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value.type.tensor_type.shape.dim]

    initializers = {i.name for i in model.graph.initializer}
    inputs = [(i.name, dims(i)) for i in model.graph.input if i.name not in initializers]
    outputs = [(o.name, dims(o)) for o in model.graph.output]
    problems = []
    if len(inputs) != 1 or inputs[0][0] != ONNX_INPUT or inputs[0][1][1:] != [3, input_size, input_size]:
        problems.append(f"input expected {ONNX_INPUT} (B, 3, {input_size}, {input_size}), received {inputs}")
    if [name for name, _ in outputs] != list(ONNX_OUTPUTS) or any(len(shape) != 2 for _, shape in outputs):
        problems.append(f"outputs expected logits (B, C) and embedding (B, D), received {outputs}")
    elif num_classes is not None and outputs[0][1][1] != num_classes:
        problems.append(f"logits expected {num_classes} classes, received {outputs[0][1]}")
    batch = inputs[0][1][0] if inputs and inputs[0][1] else None
    if not problems and any(shape[0] != batch for _, shape in outputs):
        problems.append(f"outputs expected the input's batch {batch!r}, received {outputs}")
    if problems:
        raise ModelLoadError(f"{path}: " + "; ".join(problems), reason="invalid_model")
    return batch if isinstance(batch, int) and batch > 0 else None


def export_onnx(
    model: nn.Module,
    out: str | Path,
    *,
    input_size: int,
    batch: int | None = None,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Export a classifier network to ONNX.

    Args:
        model: a :class:`classifier.backbones.EmbeddingClassifier` (any module mapping
            (B, 3, S, S) to ``(logits, embedding)``). It is exported in eval mode and returned
            to its previous mode afterwards.
        out: a model directory (the file becomes ``out/model.onnx``) or a path ending in ``.onnx``.
        input_size: S, pixels (``preprocess.json`` ``input_size``).
        batch: None: dynamic batch; N: batch fixed to N.
        opset: ONNX opset.

    Returns:
        Path of the written ONNX file.

    Raises:
        ValueError: ``batch`` < 1 or ``model`` is not a torch module.
        ModelLoadError: the export fails or the graph is not as described (reason
            ``export_failed`` / ``invalid_model``).
        MissingDependencyError: torch or onnx is not installed (extra ``shelftally[train]``).
    """
    try:
        import torch
    except ImportError as error:
        raise MissingDependencyError("ONNX export needs torch: pip install 'shelftally[train]'") from error
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"model: expected a torch.nn.Module, received {type(model).__name__}")
    if batch is not None and batch < 1:
        raise ValueError(f"batch: expected a positive integer or None (dynamic), received {batch}")
    target = _onnx_target(out)
    dummy = torch.zeros((batch or 2, 3, input_size, input_size), dtype=torch.float32)
    dynamic_axes = None if batch else {name: {0: "batch"} for name in (ONNX_INPUT, *ONNX_OUTPUTS)}
    handle, temporary = tempfile.mkstemp(prefix=".model.", suffix=".onnx", dir=target.parent)
    os.close(handle)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # dynamo=False is deliberate (see the module docstring): silence the exporter's notices about it.
            for notice in (".*legacy TorchScript-based ONNX export", "The feature will be removed"):
                warnings.filterwarnings("ignore", message=notice, category=DeprecationWarning)
            torch.onnx.export(
                model, (dummy,), temporary, input_names=[ONNX_INPUT], output_names=list(ONNX_OUTPUTS),
                dynamic_axes=dynamic_axes, opset_version=opset, do_constant_folding=True, dynamo=False,
            )
        check_onnx(temporary, input_size=input_size)
        os.replace(temporary, target)
    except (RuntimeError, ValueError, TypeError, OSError) as error:
        raise ModelLoadError(f"ONNX export to {target} failed: {error}", reason="export_failed") from error
    finally:
        model.train(was_training)
        Path(temporary).unlink(missing_ok=True)
    logger.info("exported classifier -> %s (input %s px, batch %s, opset %s)", target, input_size, batch or "dynamic",
                opset)
    return target


def export_openvino(onnx_path: str | Path, out_dir: str | Path | None = None) -> Path:
    """Convert an ONNX classifier to OpenVINO IR (``openvino/model.xml`` + ``model.bin``, FP32 weights).

    Args:
        onnx_path: the ``.onnx`` file (its batch, dynamic or fixed, is kept).
        out_dir: the model directory to write into; default the ONNX file's folder.

    Returns:
        Path of ``model.xml``.

    Raises:
        ModelLoadError: the ONNX file is missing (reason ``model_file_missing``) or OpenVINO
            cannot convert it (``export_failed``).
        MissingDependencyError: openvino is not installed (extra ``shelftally[openvino]``).
    """
    source = Path(onnx_path)
    if not source.is_file():
        raise ModelLoadError(f"{source} does not exist", reason="model_file_missing")
    try:
        import openvino as ov
    except ImportError as error:
        raise MissingDependencyError("OpenVINO export needs openvino: pip install 'shelftally[openvino]'") from error
    xml = (Path(out_dir) if out_dir is not None else source.parent) / OPENVINO_XML
    xml.parent.mkdir(parents=True, exist_ok=True)
    try:
        ov.save_model(ov.convert_model(str(source)), str(xml), compress_to_fp16=False)
    except (RuntimeError, OSError) as error:
        raise ModelLoadError(f"OpenVINO cannot convert {source}: {error}", reason="export_failed") from error
    logger.info("exported %s -> %s", source, xml)
    return xml


def export_model_dir(
    model_dir: str | Path | ModelDir, *, batch: int | None = None, openvino: bool = False
) -> Path:
    """Export a model directory's ``model.pt`` to its ``model.onnx`` (and optionally OpenVINO IR).

    Args:
        model_dir: a model directory with ``model.pt`` and ``architecture.json``.
        batch: None: dynamic batch; N: batch fixed to N.
        openvino: also write ``openvino/model.xml`` from the new ONNX file.

    Returns:
        Path of the written ``model.onnx``.

    Raises:
        ModelLoadError: the directory or its weights cannot be read, or the export fails.
        MissingDependencyError: torch/onnx (extra ``train``) or openvino is not installed.
    """
    from classifier.backbones import load_model_dir

    directory = model_dir if isinstance(model_dir, ModelDir) else read_model_dir(model_dir)
    model = load_model_dir(directory)
    path = export_onnx(model, directory.path, input_size=directory.preprocess.input_size, batch=batch)
    check_onnx(path, input_size=directory.preprocess.input_size, num_classes=directory.num_classes)
    if openvino:
        export_openvino(path, directory.path)
    return path
