"""Export a trained detector to ONNX and OpenVINO IR, in the model directory layout.

``model.onnx``: ultralytics' ONNX export (``torch.onnx``, simplified by onnxslim, no NMS in the
graph), input ``images`` (B, 3, H, W) float32 RGB in [0, 1] with dynamic batch and size, output
(B, 4 + C, A): cx, cy, w, h in input pixels, then C class scores (see :mod:`detector.model_dir`).

``openvino/model.xml`` + ``model.bin``: OpenVINO IR of the same graph, either converted from the
ONNX file by ``openvino.convert_model`` / ``openvino.save_model`` (FP32 weights), or exported from
the ``.pt`` by ultralytics. Ultralytics' leftover folders are removed.

Nothing here touches the network: :func:`detector._offline.configure_offline` runs before
ultralytics is imported.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from detector._offline import configure_offline
from detector.errors import MissingDependencyError, ModelLoadError
from detector.model_dir import OPENVINO_SOURCE, OPENVINO_XML, WEIGHTS_ONNX, WEIGHTS_PT, read_model_dir
from shelftally.files import sha256_file

logger = logging.getLogger(__name__)

__all__ = ["export_model_dir", "export_onnx", "export_openvino", "pt_imgsz", "store_weights_fp16"]

FORMATS = ("onnx", "openvino")


def load_checkpoint(yolo: Any, local: Path, shown: Path) -> Any:
    """``yolo(local)``, with an unreadable checkpoint reported as :class:`ModelLoadError` naming ``shown``.

    Raises:
        ModelLoadError: the file is not a loadable ultralytics checkpoint (reason ``model_file_unreadable``).
    """
    from detector.backbones import register_modules

    register_modules()  # a checkpoint with a pretrained backbone names it in its YAML
    try:
        return yolo(str(local))
    except (TypeError, ValueError, RuntimeError, EOFError, KeyError, AttributeError, OSError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        first = first.replace(str(local), str(shown))
        raise ModelLoadError(f"{shown} is not a loadable ultralytics checkpoint: {first}",
                             reason="model_file_unreadable") from error


def _require_pt(pt: Path) -> None:
    if not pt.is_file() or pt.suffix != ".pt":
        raise ModelLoadError(f"{pt} is not an ultralytics .pt checkpoint", reason="model_file_missing")


def pt_imgsz(pt: str | Path) -> int | None:
    """The training image size recorded in an ultralytics checkpoint, if any."""
    configure_offline()
    import torch

    checkpoint = torch.load(str(pt), map_location="cpu", weights_only=False)
    args = checkpoint.get("train_args") if isinstance(checkpoint, dict) else None
    value = args.get("imgsz") if isinstance(args, dict) else None
    return int(value) if isinstance(value, int) else None


def _check_onnx(path: Path) -> None:
    try:
        import onnx
    except ImportError as error:
        raise MissingDependencyError("onnx is not installed: pip install 'shelftally[train]'") from error
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    inputs = [i for i in model.graph.input if i.name not in {x.name for x in model.graph.initializer}]
    if len(inputs) != 1 or inputs[0].name != "images" or len(inputs[0].type.tensor_type.shape.dim) != 4:
        raise ModelLoadError(f"{path}: expected one input 'images' (B, 3, H, W)", reason="unexpected_graph")
    outputs = model.graph.output
    if len(outputs) != 1 or len(outputs[0].type.tensor_type.shape.dim) != 3:
        raise ModelLoadError(f"{path}: expected one output (B, 4 + C, A)", reason="unexpected_graph")


def export_onnx(
    pt: str | Path, out: str | Path, imgsz: int, *, dynamic: bool = True, opset: int = 17, simplify: bool = True
) -> Path:
    """Export an ultralytics checkpoint to ONNX.

    The export runs on a copy of the checkpoint in a temporary folder, so nothing is written
    beside ``pt``.

    Args:
        pt: the ``.pt`` checkpoint.
        out: a model directory (the file becomes ``out/model.onnx``) or a path ending in ``.onnx``.
        imgsz: input side in pixels used for tracing (a multiple of 32); with ``dynamic`` the graph
            accepts other sizes (multiples of 32) and any batch.
        dynamic: dynamic batch, height and width.
        opset: ONNX opset.
        simplify: simplify the graph with onnxslim.

    Returns:
        Path of the written ONNX file.

    Raises:
        ModelLoadError: ``pt`` is not a checkpoint, or the exported graph does not have the
            expected input/output.
        MissingDependencyError: ultralytics or onnx is not installed (extra ``train``).
    """
    source = Path(pt)
    _require_pt(source)
    target = Path(out)
    if target.suffix != ".onnx":
        target = target / WEIGHTS_ONNX
    target.parent.mkdir(parents=True, exist_ok=True)
    configure_offline()
    try:
        from ultralytics.models.yolo.model import YOLO
    except ImportError as error:
        raise MissingDependencyError("ultralytics is not installed: pip install 'shelftally[train]'") from error
    with tempfile.TemporaryDirectory(prefix="shelftally-export-") as tmp:
        local = Path(tmp) / "model.pt"
        shutil.copyfile(source, local)
        exported = load_checkpoint(YOLO, local, source).export(
            format="onnx", imgsz=imgsz, dynamic=dynamic, simplify=simplify, opset=opset, device="cpu",
            half=False, nms=False, verbose=False,
        )
        produced = Path(str(exported))
        if not produced.is_file():
            raise ModelLoadError(f"ultralytics export produced no ONNX file for {source}", reason="export_failed")
        _check_onnx(produced)
        shutil.move(str(produced), target)
    logger.info("exported %s -> %s (imgsz %s, dynamic %s, opset %s)", source, target, imgsz, dynamic, opset)
    return target


def export_openvino(source: str | Path, out_dir: str | Path | None = None, *, imgsz: int | None = None) -> Path:
    """Export a detector to OpenVINO IR (``openvino/model.xml`` and ``model.bin``).

    Args:
        source: an ONNX file (converted with ``openvino.convert_model``, weights kept FP32), an
            ultralytics ``.pt`` (exported by ultralytics, dynamic shapes), or a model directory
            (its ``model.onnx`` when present, else its ``model.pt``).
        out_dir: the model directory to write into; default: the source's directory.
        imgsz: tracing size for a ``.pt`` source; default the size it was trained at, else 640.

    Returns:
        Path of ``model.xml``.

    Raises:
        ModelLoadError: the source is missing or of an unknown kind.
        MissingDependencyError: openvino (extra ``openvino``) or, for a ``.pt``, ultralytics
            (extra ``train``) is not installed.
    """
    path = Path(source)
    if path.is_dir():
        if (path / WEIGHTS_ONNX).is_file():
            path = path / WEIGHTS_ONNX
        elif (path / WEIGHTS_PT).is_file():
            path = path / WEIGHTS_PT
        else:
            raise ModelLoadError(f"{source} has neither {WEIGHTS_ONNX} nor {WEIGHTS_PT}", reason="model_file_missing")
    if not path.is_file():
        raise ModelLoadError(f"{path} does not exist", reason="model_file_missing")
    root = Path(out_dir) if out_dir is not None else path.parent
    xml = root / OPENVINO_XML
    xml.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".onnx":
        configure_offline(ultralytics=False)
        try:
            import openvino as ov
        except ImportError as error:
            raise MissingDependencyError("openvino is not installed: pip install 'shelftally[openvino]'") from error
        try:
            model = ov.convert_model(str(path))
        except (RuntimeError, ValueError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ModelLoadError(f"OpenVINO cannot convert {path}: {first}", reason="model_file_unreadable") from error
        ov.save_model(model, str(xml), compress_to_fp16=False)
    elif path.suffix == ".pt":
        configure_offline()
        try:
            from ultralytics.models.yolo.model import YOLO
        except ImportError as error:
            raise MissingDependencyError("ultralytics is not installed: pip install 'shelftally[train]'") from error
        size = imgsz or pt_imgsz(path) or 640
        with tempfile.TemporaryDirectory(prefix="shelftally-export-") as tmp:
            local = Path(tmp) / "model.pt"
            shutil.copyfile(path, local)
            folder = Path(str(load_checkpoint(YOLO, local, path).export(
                format="openvino", imgsz=size, dynamic=True, half=False, device="cpu", verbose=False)))
            produced = sorted(folder.glob("*.xml"))
            if len(produced) != 1:
                raise ModelLoadError(f"ultralytics OpenVINO export of {path} gave {produced}", reason="export_failed")
            shutil.move(str(produced[0]), xml)
            shutil.move(str(produced[0].with_suffix(".bin")), xml.with_suffix(".bin"))
    else:
        raise ModelLoadError(f"{path}: expected a .onnx or .pt file", reason="unknown_model_format")
    # Which weights this IR was made from: the OpenVINO backend refuses an IR whose source
    # no longer matches the directory's model.onnx (e.g. after retraining into the directory).
    (root / OPENVINO_SOURCE).write_text(
        json.dumps({"source": path.name, "sha256": sha256_file(path)}, indent=2) + "\n", encoding="utf-8"
    )
    logger.info("exported %s -> %s", path, xml)
    return xml


def store_weights_fp16(path: str | Path, *, min_elements: int = 64) -> dict[str, int]:
    """Rewrite an ONNX file so that its float32 weights are stored as float16 and cast back.

    Every float32 initializer of at least ``min_elements`` values becomes a float16 initializer
    followed by a ``Cast`` to float32 under the original name, so the graph computes in float32
    as before; ONNX Runtime and OpenVINO fold the casts into constants when they load the model
    (ONNX Runtime's constant folding; OpenVINO keeps FP16-compressed weights as its own IR does).
    The file halves; each weight moves by at most float16's rounding (relative 2^-11, IEEE 754
    binary16). A file already converted is left as it is (no float32 initializer left).

    Args:
        path: the ``.onnx`` file, rewritten in place.
        min_elements: smaller tensors (shapes, scalars, biases of a few values) stay float32.

    Returns:
        ``{"converted": initializers converted, "bytes_before", "bytes_after"}``.

    Raises:
        ModelLoadError: the file is not a valid ONNX model (``export_failed``).
        MissingDependencyError: onnx is not installed.
    """
    try:
        import numpy as np
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as error:
        raise MissingDependencyError("onnx is not installed: pip install 'shelftally[train]'") from error
    target = Path(path)
    before = target.stat().st_size
    try:
        model = onnx.load(str(target))
    except Exception as error:  # onnx raises DecodeError, ValueError, OSError
        raise ModelLoadError(f"{target} is not an ONNX model: {error}", reason="export_failed") from error
    graph = model.graph
    casts, kept, converted = [], [], 0
    for tensor in graph.initializer:
        if tensor.data_type != TensorProto.FLOAT or int(np.prod(tensor.dims)) < min_elements:
            kept.append(tensor)
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16), f"{tensor.name}__fp16")
        kept.append(half)
        casts.append(helper.make_node("Cast", [half.name], [tensor.name], to=TensorProto.FLOAT,
                                      name=f"{tensor.name}__cast"))
        converted += 1
    if converted:
        del graph.initializer[:]
        graph.initializer.extend(kept)
        nodes = list(graph.node)
        del graph.node[:]
        graph.node.extend(casts + nodes)
        try:
            onnx.checker.check_model(model)
        except onnx.checker.ValidationError as error:
            raise ModelLoadError(f"{target}: the float16 graph does not validate: {error}",
                                 reason="export_failed") from error
        with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".onnx", delete=False) as handle:
            temporary = Path(handle.name)
        onnx.save(model, str(temporary))
        shutil.copymode(target, temporary)
        temporary.replace(target)
    result = {"converted": converted, "bytes_before": before, "bytes_after": target.stat().st_size}
    logger.info("%s: %s float32 weights stored as float16, %s -> %s bytes", target, converted, before,
                result["bytes_after"])
    return result


def export_model_dir(model_dir: str | Path, fmt: str, *, fp16_weights: bool = False) -> Path:
    """(Re-)export the weights of a model directory in place.

    ``onnx`` exports ``model.pt`` at the directory's ``preprocess.json`` input size; ``openvino``
    converts ``model.onnx`` (or exports ``model.pt`` when there is no ONNX file).

    Args:
        model_dir: a model directory (see :mod:`detector.model_dir`).
        fmt: ``"onnx"`` or ``"openvino"``.
        fp16_weights: ``onnx`` only: store the weights as float16 (:func:`store_weights_fp16`);
            a directory without ``model.pt`` has its existing ``model.onnx`` converted.

    Returns:
        Path of the written ``model.onnx`` or ``openvino/model.xml``.

    Raises:
        ModelLoadError: not a model directory, the needed weights are missing, or ``fmt`` is unknown.
        MissingDependencyError: the exporter's runtime is not installed.
    """
    info = read_model_dir(model_dir)
    if fmt == "onnx":
        if fp16_weights and not (info.path / WEIGHTS_PT).is_file():
            path = info.file(WEIGHTS_ONNX)
        else:
            path = export_onnx(info.file(WEIGHTS_PT), info.path, info.preprocess.input_size)
        if fp16_weights:
            store_weights_fp16(path)
        return path
    if fmt == "openvino":
        return export_openvino(info.path, info.path, imgsz=info.preprocess.input_size)
    raise ModelLoadError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}", reason="unknown_format")
