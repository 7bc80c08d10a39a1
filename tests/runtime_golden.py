"""The shipped models' outputs on a fixed set of pictures, recorded once and compared after changes.

``python -m tests.runtime_golden --write`` records ``tests/data/runtime_golden.json`` with the code
of the day; ``tests/test_runtime_golden.py`` loads the shipped detector and classifier through the
runtime layer on ONNX Runtime and on OpenVINO (FP32) and checks they still give the same boxes
and SKU codes. The pictures are real ones from ``../shared/data`` (shelf-testing test photos and
Grocery Store val packshots) plus generated ones, so the record never holds the pictures
themselves, only their names and the outputs.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
DATA = ROOT.parent / "shared" / "data"
GOLDEN = ROOT / "tests" / "data" / "runtime_golden.json"
SHELF_SETS = ("shelf-testing-ccby", "pallets-ccby", "packages-public-domain")
GROCERY_VAL = DATA / "grocerystore" / "dataset" / "val"
RUNTIMES = ("onnx", "openvino")


def shelf_pictures(per_set: int = 2) -> list[tuple[str, npt.NDArray[np.uint8]]]:
    """The first ``per_set`` test photos (name order) of each real detection set, (H, W, 3) uint8 RGB."""
    from PIL import Image

    paths: list[Path] = []
    for name in SHELF_SETS:
        images = DATA / name / "test" / "images"
        paths += sorted(p for p in images.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})[:per_set]
    pictures = [(str(p.relative_to(DATA)), np.asarray(Image.open(p).convert("RGB"))) for p in paths]
    # and one denser picture: the photos side by side, 3 x 2 tiles of 320 x 320 px
    tiles = [np.asarray(Image.fromarray(image).resize((320, 320))) for _, image in pictures[:6]]
    if len(tiles) == 6:
        mosaic = np.concatenate([np.concatenate(tiles[:3], axis=1), np.concatenate(tiles[3:], axis=1)], axis=0)
        pictures.append(("mosaic of the above", np.ascontiguousarray(mosaic)))
    return pictures


def grocery_crops(limit: int = 8) -> list[tuple[str, npt.NDArray[np.uint8]]]:
    """One Grocery Store val picture from each of the first ``limit`` class folders, plus generated crops."""
    from classifier.dataset import load_image

    paths = sorted(GROCERY_VAL.rglob("*.jpg"))
    chosen: dict[str, Path] = {}
    for path in paths:
        chosen.setdefault(str(path.parent), path)
    picked = sorted(chosen.values())[:limit]
    crops = [(str(p.relative_to(DATA)), load_image(p)) for p in picked]
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(rng.integers(40, 200, (3, 2))):
        crops.append((f"generated-{i}", rng.integers(0, 256, (int(h), int(w), 3), dtype=np.uint8)))
    return crops


def with_openvino(model: Path, kind: str, work: Path) -> Path:
    """A copy of ``model`` with its OpenVINO IR converted from its ``model.onnx`` (shipped dirs hold ONNX only)."""
    target = work / model.name
    if not (target / "openvino" / "model.xml").is_file():
        shutil.copytree(model, target, dirs_exist_ok=True)
        if kind == "detector":
            from detector.export import export_model_dir as export_detector

            export_detector(target, "openvino")
        else:
            from classifier.export import export_openvino

            export_openvino(target / "model.onnx")
    return target


def record(work: Path) -> dict[str, Any]:
    """The detector's boxes and the classifier's SKU codes on every runtime, as JSON-ready data."""
    from classifier.backends import load as load_classifier
    from detector.backends import load as load_detector

    shelves, crops = shelf_pictures(), grocery_crops()
    out: dict[str, Any] = {"shelf_pictures": [n for n, _ in shelves], "crops": [n for n, _ in crops],
                           "detector": {}, "classifier": {}}
    detector_dir = with_openvino(MODELS / "product-agnostic", "detector", work)
    classifier_dir = with_openvino(MODELS / "classifier-grocery", "classifier", work)
    for runtime in RUNTIMES:
        with load_detector(detector_dir, backend=runtime, threads=1, openvino_precision="f32") as detector:
            found = detector.predict([image for _, image in shelves])
        out["detector"][runtime] = [
            {"xyxy": np.round(d.xyxy, 2).tolist(), "confidence": np.round(d.confidence, 4).tolist()} for d in found
        ]
        with load_classifier(classifier_dir, backend=runtime, threads=1, openvino_precision="f32") as classifier:
            named = classifier.classify([crop for _, crop in crops])
        out["classifier"][runtime] = {"sku_code": named.sku_code, "confidence": np.round(named.confidence, 4).tolist()}
    return out


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m tests.runtime_golden --write")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        data = record(Path(tmp))
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {GOLDEN}: {sum(len(d['xyxy']) for d in data['detector']['onnx'])} boxes, "
          f"{len(data['crops'])} crops")
