"""Evaluate a detector model directory on a labelled YOLO dataset split (real photos included).

Uses ultralytics' validator (COCO-style mAP at IoU 0.50 and 0.50:0.95, precision and recall at
its confidence-optimal F1 point) on the ``model.pt`` of the directory, after the same dataset
preparation as training (:func:`detector.dataset.prepare_dataset`: polygons become boxes,
Roboflow paths are resolved). ``agnostic=True`` merges every class into one (ultralytics
``single_cls``): how a class-agnostic product detector is scored on a set labelled per product.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from detector._offline import configure_offline
from detector.dataset import prepare_dataset, require_split
from detector.errors import DatasetError
from detector.export import load_checkpoint
from detector.model_dir import METRICS, WEIGHTS_PT, read_model_dir


def evaluate_detector(
    model_dir: str | Path,
    data_yaml: str | Path,
    *,
    split: str = "test",
    agnostic: bool = False,
    imgsz: int | None = None,
    batch: int = 16,
    device: str = "cpu",
    record_as: str | None = None,
) -> dict[str, Any]:
    """Score a model directory on one split of a dataset.

    Args:
        model_dir: the model directory (needs ``model.pt``).
        data_yaml: the dataset's ``data.yaml``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        agnostic: score every class as one ("is there a product here").
        imgsz: input size; default the model's ``preprocess.json`` size.
        batch: validation batch size.
        device: ``"cpu"`` or a CUDA device.
        record_as: if given, also store the result in the directory's ``metrics.json`` under
            ``evaluations[record_as]``.

    Returns:
        ``{"dataset", "split", "agnostic", "images", "boxes", "mAP50", "mAP50-95", "precision",
        "recall", "imgsz"}``.

    Raises:
        DatasetError: the split does not exist or has no images.
        ModelLoadError: the model directory is incomplete.
    """
    model = read_model_dir(model_dir)
    weights = model.file(WEIGHTS_PT)
    size = imgsz or model.preprocess.input_size
    configure_offline()
    from ultralytics.models.yolo.model import YOLO

    with tempfile.TemporaryDirectory(prefix="shelftally-eval-") as work:
        report = prepare_dataset(data_yaml, Path(work) / "data")
        require_split(report, split)
        if not agnostic and list(report.names) != list(model.labels):
            raise DatasetError(
                f"the model's classes {model.labels[:5]}{'...' if len(model.labels) > 5 else ''} are not the "
                f"dataset's {list(report.names)[:5]}{'...' if len(report.names) > 5 else ''}; "
                "score with --agnostic (every class as one) or use a dataset with the model's classes",
                reason="class_mismatch",
            )
        results = load_checkpoint(YOLO, weights, weights).val(
            data=report.data_yaml, split=split, imgsz=size, batch=batch, device=device, single_cls=agnostic,
            plots=False, verbose=False, project=str(Path(work) / "runs"), name="eval", exist_ok=True,
        )
        box = results.box
        result: dict[str, Any] = {
            "dataset": str(data_yaml),
            "split": split,
            "agnostic": agnostic,
            "images": report.splits[split].images,
            "boxes": report.splits[split].boxes,
            "imgsz": size,
            "mAP50": round(float(box.map50), 4),
            "mAP50-95": round(float(box.map), 4),
            "precision": round(float(box.mp), 4),
            "recall": round(float(box.mr), 4),
        }
    if record_as is not None:
        path = model.path / METRICS
        metrics = json.loads(path.read_text()) if path.is_file() else {}
        metrics.setdefault("evaluations", {})[record_as] = result
        path.write_text(json.dumps(metrics, indent=2) + "\n")
    return result
