"""Classifier fixtures: a tiny classifier trained here, in the suite, on toy crops it makes.

The toy crops are four "SKUs" (a red disc, a blue square, a green disc, a yellow square) on
blurred noise, each crop of a random size and aspect ratio (24-119 px a side), as a detector
would cut them. The network is mobilenet_v3_small at 64 x 64 with random initialisation (no
downloaded weights), trained for 30 AdamW steps of 16 crops, then its BatchNorm statistics are
re-estimated on 256 crops (:func:`classifier.backbones.recalibrate_batchnorm`): after so few
steps the running statistics lag the weights and the model in eval mode names every crop alike,
even with momentum 0.1. Measured here over three seeds: 87-94 % of 200 fresh toy crops right
(21-26 % before re-estimation), about 2.5 s of training on one thread.

Torch runs on one thread in these tests (:func:`one_torch_thread`, restored afterwards): on this
project's busy 2-core machines a training step took 0.15 s with one thread and about 0.8 s with two.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from classifier.model_dir import LABELS, PREPROCESS, PROVENANCE, Preprocess

TOY_LABELS = ["red-disc", "blue-square", "green-disc", "yellow-square"]
TOY_COLOURS = [(220, 40, 40), (40, 60, 220), (40, 180, 60), (230, 200, 40)]  # RGB
TOY_INPUT = 64

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
GROCERY = DATA / "grocerystore"


def toy_crop(rng: np.random.Generator, class_id: int) -> np.ndarray:
    """An (h, w, 3) uint8 RGB crop of toy SKU ``class_id``, h and w in [24, 120)."""
    h, w = (int(v) for v in rng.integers(24, 120, 2))
    crop = cv2.GaussianBlur(rng.integers(60, 200, (h, w, 3), dtype=np.uint8), (5, 5), 0)
    side = min(h, w)
    cx = int(w / 2 + rng.integers(-side // 8, side // 8 + 1))
    cy = int(h / 2 + rng.integers(-side // 8, side // 8 + 1))
    r = int(side * rng.uniform(0.25, 0.4))
    if class_id % 2 == 0:
        cv2.circle(crop, (cx, cy), r, TOY_COLOURS[class_id], -1)
    else:
        cv2.rectangle(crop, (cx - r, cy - r), (cx + r, cy + r), TOY_COLOURS[class_id], -1)
    return crop


def toy_crops(rng: np.random.Generator, n: int) -> tuple[list[np.ndarray], np.ndarray]:
    """``n`` toy crops and their (n,) int64 class ids."""
    class_ids = rng.integers(0, len(TOY_LABELS), n).astype(np.int64)
    return [toy_crop(rng, int(c)) for c in class_ids], class_ids


@pytest.fixture(scope="session")
def one_torch_thread() -> Iterator[None]:
    """Run torch on one intra-op thread for the session (the previous count is restored)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass(frozen=True)
class TinyClassifier:
    """Model directories of the tiny classifier.

    Attributes:
        dynamic: model.pt, architecture.json, model.onnx (dynamic batch), openvino/, labels,
            preprocess, metrics, provenance.
        fixed_batch_1: the same weights with model.onnx exported with a fixed batch of 1.
    """

    dynamic: Path
    fixed_batch_1: Path


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None) -> TinyClassifier:
    """The tiny toy classifier, trained and exported once per session (about 10 s)."""
    import torch

    from classifier.backbones import build_model, recalibrate_batchnorm, save_model_dir
    from classifier.export import export_onnx, export_openvino
    from classifier.preprocess import prepare_batch

    work = tmp_path_factory.mktemp("tiny_classifier")
    preprocess = Preprocess(input_size=TOY_INPUT)
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    model = build_model("mobilenet_v3_small", len(TOY_LABELS))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(30):
        crops, class_ids = toy_crops(rng, 16)
        logits, _ = model(torch.from_numpy(prepare_batch(crops, preprocess)))
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(class_ids))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    recalibrate_batchnorm(model, [torch.from_numpy(prepare_batch(toy_crops(rng, 64)[0], preprocess)) for _ in range(4)])
    model.eval()
    out = work / "dynamic"
    save_model_dir(
        model, out, labels=TOY_LABELS, preprocess=preprocess, metrics={"final_train_loss": loss.item()},
        provenance={"recipe": "tests/classifier/conftest.py::tiny_classifier"},
    )
    export_onnx(model, out, input_size=TOY_INPUT)
    export_openvino(out / "model.onnx")
    fixed = work / "fixed_batch_1"
    fixed.mkdir()
    export_onnx(model, fixed, input_size=TOY_INPUT, batch=1)
    for name in (LABELS, PREPROCESS, PROVENANCE):
        shutil.copyfile(out / name, fixed / name)
    return TinyClassifier(out, fixed)


SHAPE_CLASSES: list[tuple[str, tuple[int, int, int], str]] = [
    ("red-disc", (220, 40, 40), "disc"),
    ("blue-square", (40, 60, 220), "square"),
    ("green-disc", (40, 180, 60), "disc"),
    ("yellow-square", (230, 200, 40), "square"),
    ("magenta-triangle", (210, 50, 200), "triangle"),
    ("cyan-disc", (40, 200, 210), "disc"),
    ("orange-triangle", (240, 130, 20), "triangle"),
    ("white-cross", (245, 245, 245), "cross"),
]
"""Generated SKUs for training tests: name, RGB colour, shape."""


def shape_crop(rng: np.random.Generator, class_id: int, *, packshot: bool = False) -> np.ndarray:
    """An (h, w, 3) uint8 RGB crop of generated SKU ``SHAPE_CLASSES[class_id]``, h and w in [40, 100).

    ``packshot``: a catalogue picture instead: 80 x 80, the product centred on plain grey.
    """
    _, colour, shape = SHAPE_CLASSES[class_id]
    if packshot:
        h = w = 80
        crop = np.full((h, w, 3), 110, np.uint8)
        cx, cy, r = 40, 40, 30
    else:
        h, w = (int(v) for v in rng.integers(40, 100, 2))
        crop = cv2.GaussianBlur(rng.integers(60, 160, (h, w, 3), dtype=np.uint8), (5, 5), 0)
        side = min(h, w)
        cx = int(w / 2 + rng.integers(-side // 10, side // 10 + 1))
        cy = int(h / 2 + rng.integers(-side // 10, side // 10 + 1))
        r = int(side * rng.uniform(0.3, 0.42))
    if shape == "disc":
        cv2.circle(crop, (cx, cy), r, colour, -1)
    elif shape == "square":
        cv2.rectangle(crop, (cx - r, cy - r), (cx + r, cy + r), colour, -1)
    elif shape == "triangle":
        points = np.array([[cx, cy - r], [cx - r, cy + r], [cx + r, cy + r]], np.int32)
        cv2.fillPoly(crop, [points], colour)
    else:
        t = max(2, r // 3)
        cv2.rectangle(crop, (cx - r, cy - t), (cx + r, cy + t), colour, -1)
        cv2.rectangle(crop, (cx - t, cy - r), (cx + t, cy + r), colour, -1)
    return crop


def write_shape_folder(root: Path, classes: list[int], per_class: int, seed: int) -> Path:
    """Write an image-folder dataset (``root/<sku>/<n>.png``) of generated SKUs; returns ``root``."""
    rng = np.random.default_rng(seed)
    for class_id in classes:
        folder = root / SHAPE_CLASSES[class_id][0]
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            crop = shape_crop(rng, class_id)
            cv2.imwrite(str(folder / f"{n:03d}.png"), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
    return root


@pytest.fixture(scope="session")
def shapes_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An image folder of the first 6 generated SKUs, 30 pictures each."""
    return write_shape_folder(tmp_path_factory.mktemp("shapes"), list(range(6)), 30, seed=1)


@pytest.fixture(scope="session")
def trained_shapes(tmp_path_factory: pytest.TempPathFactory, shapes_folder: Path, one_torch_thread: None) -> Path:
    """A model directory trained by ``train_classifier`` on ``shapes_folder`` with 2 held-out classes."""
    from classifier.dataset import read_image_folder
    from classifier.train import train_classifier

    return train_classifier(
        read_image_folder(shapes_folder), out_dir=tmp_path_factory.mktemp("trained") / "model",
        backbone="mobilenet_v3_small", input_size=TOY_INPUT, embedding_dim=64, epochs=6, batch=16, lr=3e-3,
        patience=6, holdout_classes=2, false_accept_rate=0.1, seed=0,
    )


def write_shape_grocery(root: Path, classes: list[int], train: int, val: int, seed: int) -> Path:
    """Write a Grocery Store-format dataset of generated SKUs; returns ``root``.

    Layout as in ``shared/data/grocerystore/dataset``: ``classes.csv`` (ids 0..K-1 in the order
    of ``classes``, one packshot per class under ``iconic-images-and-descriptions/``), and
    ``train.txt`` / ``val.txt`` lines ``path, fine_id, coarse_id`` with ``train`` and ``val``
    shelf crops per class.
    """
    rng = np.random.default_rng(seed)
    rows = ["Class Name (str),Class ID (int),Coarse Class Name (str),Coarse Class ID (int),"
            "Iconic Image Path (str),Product Description Path (str)"]
    lines: dict[str, list[str]] = {"train": [], "val": []}
    for fine, class_id in enumerate(classes):
        name = SHAPE_CLASSES[class_id][0]
        iconic = Path("iconic-images-and-descriptions") / name / f"{name}_Iconic.png"
        (root / iconic).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / iconic), cv2.cvtColor(shape_crop(rng, class_id, packshot=True), cv2.COLOR_RGB2BGR))
        rows.append(f"{name},{fine},{name},{fine},/{iconic.as_posix()},/{iconic.with_suffix('.txt').as_posix()}")
        for split, count in (("train", train), ("val", val)):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for n in range(count):
                cv2.imwrite(str(folder / f"{n:03d}.png"), cv2.cvtColor(shape_crop(rng, class_id), cv2.COLOR_RGB2BGR))
                lines[split].append(f"{split}/{name}/{n:03d}.png, {fine}, {fine}")
    (root / "classes.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    for split, entries in lines.items():
        (root / f"{split}.txt").write_text("\n".join(entries) + "\n", encoding="utf-8")
    return root
