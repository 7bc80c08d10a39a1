"""Detector fixtures: a tiny YOLO trained here, in the suite, on toy pictures it makes.

The toy pictures are coloured rectangles ("red", "blue") on textured noise at 128 px; the
detector is ultralytics YOLOv8n built from its YAML (no downloaded weights), trained with the
settings measured to learn on tiny data (ENVIRONMENT.md: nbs = batch, AdamW lr0 0.003, warm-up
0.5 epochs, no mosaic), and exported to ONNX (dynamic batch) and OpenVINO IR by ultralytics.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

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
