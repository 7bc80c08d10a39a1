"""Train a YOLO detector through ultralytics and write a model directory.

:func:`train_detector` prepares the dataset (:func:`detector.dataset.prepare_dataset`), trains
with ultralytics without touching the network (no downloads: a model must be a model YAML that
ultralytics ships, e.g. ``yolov8n.yaml``, or a local ``.pt`` to fine-tune), evaluates the best
weights on the val split (and on the test split when there is one), exports ONNX, and writes the
model directory described in :mod:`detector.model_dir`.

Defaults are the settings measured to learn on small data on CPUs (``shared/ENVIRONMENT.md``):
the automatic recipe accumulates gradients to a nominal batch of 64 and picks a very low learning
rate, which leaves a few optimizer steps per epoch and mAP50 0.000 after 10 epochs on a small set.
Here ``nbs`` = batch (no accumulation), AdamW with ``lr0`` 0.003, ``warmup_epochs`` 0.5, no
mosaic when the train split has fewer than 500 images, and ``amp`` off on CPU. Every one can be
overridden.
"""

from __future__ import annotations

import json
import logging
import platform
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from detector._offline import configure_offline
from detector.dataset import DatasetReport, prepare_dataset
from detector.errors import DetectorError, MissingDependencyError, ModelLoadError
from detector.export import export_onnx, load_checkpoint
from detector.model_dir import ARTIFACTS, LABELS, WEIGHTS_PT, Preprocess, write_metadata
from shelftally.errors import ConfigurationError
from shelftally.files import sha256_file
from shelftally.runtimes.devices import parse_cuda_device

logger = logging.getLogger(__name__)

__all__ = ["SMALL_TRAIN_SET", "EpochProgress", "default_recipe", "resolve_model", "train_detector"]

#: Train splits smaller than this get ``mosaic=0`` by default.
SMALL_TRAIN_SET = 500

#: Arguments that train_detector owns (they cannot come through ``hyperparameters``).
_RESERVED = frozenset({"data", "model", "project", "name", "exist_ok", "resume", "imgsz", "epochs", "batch",
                       "seed", "device"})

#: Libraries whose versions are recorded in provenance.json (distribution names).
_LIBRARIES = ("torch", "torchvision", "ultralytics", "onnx", "onnxslim", "opencv-python-headless",
              "opencv-python", "numpy", "openvino", "onnxruntime")


@dataclass(frozen=True)
class EpochProgress:
    """Where training stands, reported once per epoch (and once more after validation).

    Attributes:
        epoch: epochs finished, 1-based.
        epochs: epochs planned.
        losses: mean training losses of the epoch, e.g. ``{"box_loss": 1.2, "cls_loss": 2.3, "dfl_loss": 1.1}``.
        val_map50: mAP50 on val after the latest validation; None before the first one.
        validated: True when reported after this epoch's validation (``on_fit_epoch_end``),
            False when reported at the end of its training pass (``on_train_epoch_end``).
        elapsed_s: seconds since training started.
    """

    epoch: int
    epochs: int
    losses: dict[str, float]
    val_map50: float | None
    validated: bool
    elapsed_s: float


ProgressCallback = Callable[[EpochProgress], None]


def resolve_model(model: str | Path) -> str:
    """Check that a model can be built without a download.

    Args:
        model: a local ``.pt`` file (fine-tuning), a model directory holding ``model.pt``, a
            local model YAML, the name of a model YAML that ShelfTally ships with a pretrained
            backbone (``yolov8n-lite0.yaml``, :func:`detector.backbones.backbone_yamls`), or the
            name of one that ultralytics ships (``yolov8n.yaml``, ``yolo11s.yaml``; the scale
            letter picks the size).

    Returns:
        What to pass to ``ultralytics.YOLO``.

    Raises:
        ModelLoadError: anything else, in particular a weights name such as ``yolo11n.pt`` that
            ultralytics would try to download (reason ``model_not_local``), or a YAML name that
            ultralytics does not ship (reason ``model_yaml_unknown``).
    """
    text = str(model).strip()
    path = Path(text)
    if len(path.parts) == 1 and not path.exists():
        from detector.backbones import backbone_yaml

        shipped = backbone_yaml(text)
        if shipped is not None:
            return str(shipped)
    if path.is_dir() and (path / WEIGHTS_PT).is_file():
        return str((path / WEIGHTS_PT).resolve())
    if path.is_file():
        if path.suffix not in (".pt", ".yaml", ".yml"):
            raise ModelLoadError(f"{path}: expected a .pt checkpoint or a model .yaml", reason="model_not_local")
        return str(path.resolve())
    if path.suffix in (".yaml", ".yml") and len(path.parts) == 1:
        configure_offline()
        from ultralytics.nn import tasks

        load_yaml: Callable[[str], dict[str, Any]] = tasks.yaml_model_load
        try:
            load_yaml(text)
        except (FileNotFoundError, OSError) as error:
            raise ModelLoadError(
                f"model YAML {text!r} is neither a local file nor one that ultralytics ships",
                reason="model_yaml_unknown",
            ) from error
        return text
    raise ModelLoadError(
        f"model {text!r} is not a local file and ShelfTally never downloads weights: pass a model YAML "
        "(e.g. yolov8n.yaml) to train from scratch, or the path of a local .pt (or model directory) to fine-tune",
        reason="model_not_local",
    )


def default_recipe(*, batch: int, device: str, train_images: int) -> dict[str, Any]:
    """The measured small-data defaults (see the module docstring); all can be overridden."""
    return {
        "nbs": batch,
        "optimizer": "AdamW",
        "lr0": 0.003,
        "warmup_epochs": 0.5,
        "mosaic": 0.0 if train_images < SMALL_TRAIN_SET else 1.0,
        "close_mosaic": 0 if train_images < SMALL_TRAIN_SET else 10,
        "amp": not device.startswith("cpu"),
        "workers": 0 if device.startswith("cpu") else 4,
        "deterministic": True,
        "plots": False,
        "val": True,
        "verbose": False,
    }


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _command(
    data_yaml: Path, model: str, imgsz: int, epochs: int, batch: int, out: Path, seed: int, device: str,
    hyperparameters: Mapping[str, Any],
) -> str:
    fine_tune = model.endswith(".pt")
    parts = ["shelftally", "detector", "train", "--data", str(data_yaml)]
    parts += ["--fine-tune-from", model] if fine_tune else ["--model", model]
    parts += ["--imgsz", str(imgsz), "--epochs", str(epochs), "--batch", str(batch), "--out", str(out),
              "--seed", str(seed), "--device", device]
    for key, value in sorted(hyperparameters.items()):
        parts += ["--set", f"{key}={json.dumps(value) if not isinstance(value, str) else value}"]
    return shlex.join(parts)


def _box_metrics(results: Any, names: list[str], prefix: str) -> dict[str, Any]:
    box = results.box
    out: dict[str, Any] = {
        f"{prefix}mAP50": float(box.map50),
        f"{prefix}mAP50-95": float(box.map),
        f"{prefix}precision": float(box.mp),
        f"{prefix}recall": float(box.mr),
    }
    per_class = {}
    for i, class_index in enumerate(getattr(results, "ap_class_index", [])):
        per_class[names[int(class_index)]] = round(float(box.ap50[i]), 6)
    out[f"{prefix}mAP50_per_class"] = per_class
    return out


def _callbacks(model: Any, progress: ProgressCallback, started: float) -> None:
    state: dict[str, float | None] = {"map50": None}

    def losses(trainer: Any) -> dict[str, float]:
        items = trainer.label_loss_items(trainer.tloss, prefix="train") if trainer.tloss is not None else {}
        return {str(k).removeprefix("train/"): round(float(v), 4) for k, v in items.items()}

    def report(trainer: Any, validated: bool) -> None:
        progress(
            EpochProgress(
                epoch=min(int(trainer.epoch) + 1, int(trainer.epochs)),
                epochs=int(trainer.epochs),
                losses=losses(trainer),
                val_map50=state["map50"],
                validated=validated,
                elapsed_s=time.monotonic() - started,
            )
        )

    def on_train_epoch_end(trainer: Any) -> None:
        report(trainer, False)

    def on_fit_epoch_end(trainer: Any) -> None:
        metrics = trainer.metrics or {}
        value = metrics.get("metrics/mAP50(B)")
        if value is not None:
            state["map50"] = float(value)
        report(trainer, True)

    model.add_callback("on_train_epoch_end", on_train_epoch_end)
    model.add_callback("on_fit_epoch_end", on_fit_epoch_end)


def train_detector(
    data_yaml: str | Path,
    *,
    model: str | Path = "yolov8n.yaml",
    imgsz: int = 640,
    epochs: int = 50,
    batch: int = 16,
    out_dir: str | Path,
    seed: int = 0,
    device: str = "cpu",
    progress: ProgressCallback | None = None,
    work_dir: str | Path | None = None,
    export: bool = True,
    **hyperparameters: Any,
) -> Path:
    """Train a detector and write its model directory.

    Steps: resolve the model without network (:func:`resolve_model`); prepare a clean copy of the
    dataset (:func:`detector.dataset.prepare_dataset`); train with ultralytics using
    :func:`default_recipe` updated by ``hyperparameters``; copy the best checkpoint to
    ``model.pt``; validate it on val (and test, when the dataset has one); export ``model.onnx``
    (dynamic batch, :func:`detector.export.export_onnx`); write ``labels.json``,
    ``preprocess.json``, ``metrics.json``, ``provenance.json`` and ``train_log.csv`` (ultralytics'
    per-epoch results).

    Args:
        data_yaml: the dataset's YAML (Roboflow quirks are handled, see :mod:`detector.dataset`).
        model: a model YAML name or file (train from scratch), or a local ``.pt`` / model
            directory (fine-tune).
        imgsz: square network input side in pixels, a multiple of 32.
        epochs: training epochs.
        batch: images per batch (also the nominal batch ``nbs`` unless overridden).
        out_dir: the model directory to write (created; files of the same names are replaced).
        seed: random seed of ultralytics (``deterministic`` is on).
        device: ``"cpu"``, ``"0"``, ``"cuda:0"``, ...
        progress: called at the end of each epoch's training pass and after its validation.
        work_dir: where the prepared dataset and ultralytics' runs go; default a temporary folder
            removed afterwards.
        export: write ``model.onnx`` (default True).
        **hyperparameters: any other ultralytics training argument (``lr0=0.001``, ``mosaic=1.0``,
            ``patience=20``, ``cache="ram"`` ...); they override the defaults.

    Returns:
        The model directory.

    Raises:
        ModelLoadError: the model is not local (see :func:`resolve_model`).
        DatasetError: the dataset cannot be prepared (see :func:`detector.dataset.prepare_dataset`).
        DetectorError: a bad argument (reason ``invalid_training_argument``) or an unknown
            hyperparameter (reason ``unknown_hyperparameter``), or training produced no weights.
        MissingDependencyError: ultralytics is not installed (extra ``train``).
    """
    if imgsz <= 0 or imgsz % 32:
        raise DetectorError(f"imgsz must be a positive multiple of 32, got {imgsz}", reason="invalid_training_argument")
    if epochs < 1 or batch < 1:
        raise DetectorError(f"epochs and batch must be >= 1, got {epochs}, {batch}", reason="invalid_training_argument")
    reserved = _RESERVED & set(hyperparameters)
    if reserved:
        raise DetectorError(
            f"{', '.join(sorted(reserved))} are arguments of train_detector, not hyperparameters",
            reason="invalid_training_argument",
        )
    resolved = resolve_model(model)
    configure_offline()
    try:
        from ultralytics.models.yolo.model import YOLO
        from ultralytics.utils import DEFAULT_CFG_DICT
    except ImportError as error:
        raise MissingDependencyError("ultralytics is not installed: pip install 'shelftally[train]'") from error
    unknown = set(hyperparameters) - set(DEFAULT_CFG_DICT)
    if unknown:
        raise DetectorError(f"unknown ultralytics arguments: {', '.join(sorted(unknown))}",
                            reason="unknown_hyperparameter")
    out = _check_out_dir(Path(out_dir).resolve())
    _check_device(device)
    temporary = work_dir is None
    work = Path(tempfile.mkdtemp(prefix="shelftally-train-")) if work_dir is None else Path(work_dir).resolve()
    try:
        return _train(
            Path(data_yaml).resolve(), resolved, imgsz, epochs, batch, out, seed, device, progress, work, export,
            hyperparameters, YOLO,
        )
    finally:
        if temporary:
            shutil.rmtree(work, ignore_errors=True)


def _check_out_dir(out: Path) -> Path:
    """Refuse an output that is a file, or a non-empty folder that is not a model directory.

    Raises:
        DetectorError: reason ``invalid_out_dir``.
    """
    if out.exists() and not out.is_dir():
        raise DetectorError(f"--out {out} exists and is not a folder", reason="invalid_out_dir")
    if out.is_dir() and any(out.iterdir()) and not (out / LABELS).is_file():
        raise DetectorError(
            f"--out {out} is a non-empty folder that is not a model directory; choose a new or empty folder",
            reason="invalid_out_dir",
        )
    return out


def _clear_artifacts(out: Path) -> None:
    for name in ARTIFACTS:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _check_device(device: str) -> None:
    """Refuse a CUDA device on a machine without one before any work is done.

    Raises:
        ConfigurationError: reason ``invalid_device``.
    """
    index = parse_cuda_device(device)
    if index is None and device.strip().lower() not in ("cpu", "mps"):
        if not device.strip().isdigit():
            raise ConfigurationError(f"device {device!r}: expected cpu, cuda or cuda:N", reason="invalid_device")
        index = int(device)
    if index is None:
        return
    import torch

    if not torch.cuda.is_available() or index >= torch.cuda.device_count():
        raise ConfigurationError(
            f"device {device!r} asked for, but this machine has {torch.cuda.device_count()} CUDA device(s)",
            reason="invalid_device",
        )


def _train(
    data_yaml: Path, model: str, imgsz: int, epochs: int, batch: int, out: Path, seed: int, device: str,
    progress: ProgressCallback | None, work: Path, export: bool, hyperparameters: Mapping[str, Any], yolo: Any,
) -> Path:
    report: DatasetReport = prepare_dataset(data_yaml, work / "data")
    train_images = report.splits["train"].images
    recipe: dict[str, Any] = default_recipe(batch=batch, device=device, train_images=train_images)
    recipe.update(hyperparameters)
    recipe.update(imgsz=imgsz, epochs=epochs, batch=batch, seed=seed, device=device)
    logger.info("training %s on %s (%s train images): %s", model, data_yaml, train_images, recipe)
    from detector.backbones import backbone_record, register_modules

    register_modules()
    detector = load_checkpoint(yolo, Path(model), Path(model)) if Path(model).suffix == ".pt" else yolo(model)
    started = time.monotonic()
    if progress is not None:
        _callbacks(detector, progress, started)
    try:
        detector.train(data=report.data_yaml, project=str(work / "runs"), name="train", exist_ok=True, **recipe)
    except (TypeError, SyntaxError) as error:  # ultralytics' check_cfg on a bad --set value
        raise DetectorError(f"invalid training argument: {error}", reason="invalid_hyperparameter") from error
    train_s = time.monotonic() - started
    trainer = detector.trainer
    best = Path(trainer.best) if Path(trainer.best).is_file() else Path(trainer.last)
    if not best.is_file():
        raise DetectorError(f"training wrote no weights under {trainer.save_dir}", reason="training_failed")
    out.mkdir(parents=True, exist_ok=True)
    _clear_artifacts(out)  # an earlier model's openvino/ or engines/ must not outlive its weights
    shutil.copyfile(best, out / WEIGHTS_PT)
    results_csv = Path(trainer.save_dir) / "results.csv"
    if results_csv.is_file():
        shutil.copyfile(results_csv, out / "train_log.csv")
    trained_args = _plain(vars(trainer.args))
    names = report.names
    val_kwargs: dict[str, Any] = {
        "data": report.data_yaml, "imgsz": imgsz, "batch": batch, "device": device, "plots": False,
        "verbose": False, "project": str(work / "runs"), "exist_ok": True,
    }
    evaluated = load_checkpoint(yolo, out / WEIGHTS_PT, out / WEIGHTS_PT)
    metrics: dict[str, Any] = _box_metrics(evaluated.val(split="val", name="val", **val_kwargs), names, "")
    metrics.update(split="val", images=report.splits["val"].images, boxes=report.splits["val"].boxes, imgsz=imgsz)
    if "test" in report.splits:
        test = evaluated.val(split="test", name="test", **val_kwargs)
        metrics.update(_box_metrics(test, names, "test_"))
        metrics.update(test_images=report.splits["test"].images, test_boxes=report.splits["test"].boxes)
    stride = int(max(int(s) for s in evaluated.model.stride)) if hasattr(evaluated.model, "stride") else 32
    if export:
        export_onnx(out / WEIGHTS_PT, out, imgsz)
    base_model = {"model": model}
    if Path(model).is_file():
        base_model["sha256"] = sha256_file(Path(model))
    provenance = {
        "dataset_hash": report.dataset_hash,
        "dataset": {
            "source": report.source,
            "names": names,
            "splits": {
                k: {"images": v.images, "boxes": v.boxes, "background_images": len(v.background_images),
                    "orphan_labels": len(v.orphan_labels), "polygons_converted": v.polygons}
                for k, v in report.splits.items()
            },
        },
        "base_model": base_model,
        "backbone": backbone_record(detector.model.yaml),
        "recipe": {"requested": _plain(recipe), "ultralytics_args": trained_args},
        "libraries": _versions(),
        "device": device,
        "train_seconds": round(train_s, 1),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": _command(data_yaml, model, imgsz, int(recipe["epochs"]), batch, out, seed, device,
                            hyperparameters),
    }
    write_metadata(
        out,
        labels=names,
        preprocess=Preprocess(input_size=imgsz, stride=stride),
        metrics=metrics,
        provenance=provenance,
    )
    logger.info("model directory %s: val mAP50 %.3f in %.0f s", out, metrics["mAP50"], train_s)
    return out
