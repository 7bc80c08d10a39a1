"""Detector fixtures: a tiny YOLO trained here, in the suite, on toy pictures it makes.

The toy pictures are coloured rectangles ("red", "blue") on textured noise at 128 px; the
detector is ultralytics YOLOv8n built from its YAML (no downloaded weights), trained with the
settings measured to learn on tiny data (ENVIRONMENT.md: nbs = batch, AdamW lr0 0.003, warm-up
0.5 epochs, no mosaic), and exported to ONNX (dynamic batch) and OpenVINO IR by ultralytics.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from detector._offline import configure_offline
from detector.model_dir import Preprocess, write_metadata

TOY_LABELS = ["red", "blue"]
TOY_COLOURS = [(220, 40, 40), (40, 60, 220)]  # RGB
TOY_SIZE = 128


def toy_picture(rng: np.random.Generator, size: int = TOY_SIZE, n_max: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """An RGB picture with 1..n_max non-overlapping rectangles; returns (image, rows of class,x1,y1,x2,y2)."""
    image = rng.integers(90, 170, (size, size, 3), dtype=np.uint8)
    image = cv2.GaussianBlur(image, (5, 5), 0)
    boxes: list[tuple[int, int, int, int, int]] = []
    for _ in range(int(rng.integers(1, n_max + 1))):
        for _attempt in range(20):
            w, h = (int(v) for v in rng.integers(size // 8, size // 3, 2))
            x1, y1 = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
            if all(x1 >= b[3] or x1 + w <= b[1] or y1 >= b[4] or y1 + h <= b[2] for b in boxes):
                cls = int(rng.integers(0, len(TOY_LABELS)))
                boxes.append((cls, x1, y1, x1 + w, y1 + h))
                cv2.rectangle(image, (x1, y1), (x1 + w - 1, y1 + h - 1), TOY_COLOURS[cls], -1)
                break
    return image, np.array(boxes, dtype=np.float32).reshape(-1, 5)


def write_toy_dataset(root: Path, n_train: int = 96, n_val: int = 24, seed: int = 0) -> Path:
    """YOLO-format toy dataset; returns its data.yaml."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image, rows = toy_picture(rng)
            cv2.imwrite(str(root / "images" / split / f"{i:04d}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            lines = []
            for cls, x1, y1, x2, y2 in rows:
                cx, cy = (x1 + x2) / 2 / TOY_SIZE, (y1 + y2) / 2 / TOY_SIZE
                lines.append(f"{int(cls)} {cx:.6f} {cy:.6f} {(x2 - x1) / TOY_SIZE:.6f} {(y2 - y1) / TOY_SIZE:.6f}")
            (root / "labels" / split / f"{i:04d}.txt").write_text("\n".join(lines) + "\n")
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames: {TOY_LABELS}\n")
    return data


@pytest.fixture(scope="session")
def tiny_detector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory (model.pt, model.onnx, openvino/, labels, preprocess, metrics) of a
    YOLOv8n trained for 12 epochs at 128 px on toy rectangles."""
    configure_offline(tmp_path_factory.mktemp("ultralytics"))
    from ultralytics import YOLO

    work = tmp_path_factory.mktemp("tiny_detector")
    data = write_toy_dataset(work / "data")
    model = YOLO("yolov8n.yaml")
    model.train(
        data=str(data), imgsz=TOY_SIZE, epochs=12, batch=16, nbs=16, optimizer="AdamW", lr0=0.003,
        warmup_epochs=0.5, mosaic=0.0, workers=0, device="cpu", seed=0, deterministic=True,
        plots=False, val=True, project=str(work / "runs"), name="train", exist_ok=True, verbose=False, amp=False,
    )
    out = work / "model"
    out.mkdir()
    best = Path(model.trainer.best)
    shutil.copyfile(best, out / "model.pt")
    metrics = YOLO(str(out / "model.pt")).val(data=str(data), imgsz=TOY_SIZE, batch=16, device="cpu", plots=False,
                                                verbose=False, project=str(work / "runs"), name="val", exist_ok=True)
    trained = YOLO(str(out / "model.pt"))
    onnx_path = Path(trained.export(format="onnx", imgsz=TOY_SIZE, dynamic=True, simplify=True, opset=17))
    shutil.move(onnx_path, out / "model.onnx")
    ov_dir = Path(YOLO(str(out / "model.pt")).export(format="openvino", imgsz=TOY_SIZE, dynamic=True))
    (out / "openvino").mkdir()
    for suffix in (".xml", ".bin"):
        shutil.move(next(ov_dir.glob(f"*{suffix}")), out / "openvino" / f"model{suffix}")
    shutil.rmtree(ov_dir)
    write_metadata(
        out,
        labels=TOY_LABELS,
        preprocess=Preprocess(input_size=TOY_SIZE),
        metrics={"mAP50": float(metrics.box.map50), "mAP50-95": float(metrics.box.map),
                 "precision": float(metrics.box.mp), "recall": float(metrics.box.mr)},
        provenance={"recipe": "tests/detector/conftest.py::tiny_detector"},
    )
    return out
