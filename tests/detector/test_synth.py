"""Synthetic shelves: drawn packshots, foreground extraction, scenes with exact labels, datasets."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from detector.dataset import prepare_dataset
from detector.errors import DatasetError
from detector.synth import (
    PACKSHOT_KINDS,
    Packshot,
    SceneConfig,
    draw_packshot,
    drawn_packshots,
    extract_foreground,
    generate_scene,
    kind_from_text,
    load_packshots,
    write_synthetic_datasets,
)

SHARED_DATA = Path(__file__).parents[2].parent / "shared" / "data"
ICONIC = SHARED_DATA / "grocerystore" / "dataset" / "iconic-images-and-descriptions"

#: A clean scene: no photometric change, so painted colours stay recognisable.
CLEAN = {"perspective": 0.0, "lighting": 0.0, "blur_probability": 0.0, "noise_sigma": 0.0}


def _solid(sku_code: str, rgb: tuple[int, int, int], size_hw: tuple[int, int] = (60, 40)) -> Packshot:
    return Packshot(sku_code, np.full((*size_hw, 3), rgb, np.uint8), np.full(size_hw, 255, np.uint8))


# ---------------------------------------------------------------------------------- packshots


def test_drawn_packshots_differ_per_sku_and_repeat_per_seed() -> None:
    codes = [f"SKU-{i:04d}" for i in range(12)]
    images = [draw_packshot(code, seed=0, height_px=96) for code in codes]
    assert all(image.dtype == np.uint8 and image.ndim == 3 for image in images)
    assert all(np.all(image[0, 0] == 255) and np.all(image[-1, -1] == 255) for image in images)  # white background
    small = [cv2.resize(image, (48, 96), interpolation=cv2.INTER_AREA).astype(np.float32) for image in images]
    differences = [np.abs(a - b).mean() for i, a in enumerate(small) for b in small[i + 1 :]]
    assert min(differences) > 8.0  # every pair of SKUs looks different
    assert np.array_equal(draw_packshot("SKU-0003", seed=0, height_px=96), images[3])
    assert not np.array_equal(draw_packshot("SKU-0003", seed=1, height_px=96), images[3])


@pytest.mark.parametrize("kind", PACKSHOT_KINDS)
def test_every_kind_draws_a_product(kind: str) -> None:
    (packshot,) = drawn_packshots(["SKU-1"], kinds=[kind], names=["ACME"], height_px=128)
    h, w = packshot.alpha.shape
    assert 120 <= h <= 130 and w >= 20
    # Cropped to the product: the mask touches all four sides.
    assert packshot.alpha[0].any() and packshot.alpha[-1].any() and packshot.alpha[:, 0].any()
    assert packshot.alpha[:, -1].any()
    assert (packshot.alpha > 0).mean() > 0.6


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda: draw_packshot("X", kind="barrel"), ValueError),
        (lambda: draw_packshot("X", height_px=16), ValueError),
        (lambda: drawn_packshots(["A", "A"]), ValueError),
        (lambda: drawn_packshots(["A", "B"], kinds=["can"]), ValueError),
    ],
)
def test_packshot_argument_errors(call: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        call()  # type: ignore[operator]


@pytest.mark.parametrize(
    ("text", "kind"),
    [("Chopped Tomatoes, 400 g can", "can"), ("Durum wheat pasta in a 500 g bag", "bag"),
     ("Olive oil bottle", "bottle"), ("Honey jar", "jar"), ("Cereal box", "carton"), ("Spaghetti No. 5", None)],
)
def test_kind_from_text(text: str, kind: str | None) -> None:
    assert kind_from_text(text) == kind


def test_extract_foreground_recovers_a_drawn_mask() -> None:
    for code in ("A", "B", "C", "D"):
        (packshot,) = drawn_packshots([code], height_px=160)
        image = np.full((packshot.image.shape[0] + 20, packshot.image.shape[1] + 20, 3), 255, np.uint8)
        truth = np.zeros(image.shape[:2], bool)
        inner = (slice(10, -10), slice(10, -10))
        image[inner] = np.where(packshot.alpha[:, :, None] > 0, packshot.image, 255)
        truth[inner] = packshot.alpha > 0
        found = extract_foreground(image) > 0
        iou = (found & truth).sum() / (found | truth).sum()
        assert iou > 0.95, code


def test_extract_foreground_on_a_blank_picture() -> None:
    assert not extract_foreground(np.full((40, 40, 3), 250, np.uint8)).any()
    with pytest.raises(ValueError):
        extract_foreground(np.zeros((40, 40), np.uint8))


@pytest.mark.parametrize(("name", "max_background"), [("Mango", 0.01), ("Red-Bell-Pepper", 0.01),
                                                        ("Tropicana-Golden-Grapefruit", 0.05)])
def test_extract_foreground_on_real_iconic_images(name: str, max_background: float) -> None:
    """Grocery Store iconic images (Klasson et al., WACV 2019; MIT): products on white.

    Product proxy: pixels clearly not white. Background proxy: near-white pixels outside the
    convex hull of the product proxy.
    """
    files = sorted(ICONIC.rglob(f"{name}_Iconic.jpg"))
    if not files:
        pytest.skip(f"{ICONIC} is absent (real datasets live in ../shared/data)")
    image = cv2.cvtColor(cv2.imread(str(files[0])), cv2.COLOR_BGR2RGB)
    mask = extract_foreground(image) > 0
    product = (255 - image.astype(np.int16)).max(axis=2) > 40
    hull = np.zeros(mask.shape, np.uint8)
    points = np.argwhere(product)[:, ::-1].astype(np.int32)
    cv2.fillPoly(hull, [cv2.convexHull(points)], 1)
    background = (image.min(axis=2) >= 245) & (hull == 0)
    assert (mask & product).sum() / product.sum() > 0.97
    assert (mask & background).sum() / background.sum() < max_background


def test_load_packshots_from_a_folder(tmp_path: Path) -> None:
    for code in ("Oat-Drink", "Tomato-Can"):
        cv2.imwrite(str(tmp_path / f"{code}_Iconic.jpg"), draw_packshot(code, height_px=96)[:, :, ::-1])
    rgba = np.zeros((50, 30, 4), np.uint8)
    rgba[10:40, 5:25] = (0, 0, 255, 255)
    cv2.imwrite(str(tmp_path / "Red-Box.png"), rgba)
    packshots = load_packshots(tmp_path)
    assert [p.sku_code for p in packshots] == ["Oat-Drink", "Red-Box", "Tomato-Can"]
    red = packshots[1]
    assert red.image.shape == (30, 20, 3) and np.all(red.image == (255, 0, 0)) and np.all(red.alpha == 255)
    with pytest.raises(DatasetError):
        load_packshots(tmp_path / "missing")
    with pytest.raises(DatasetError):
        load_packshots(tmp_path, pattern="*.webp")


# ------------------------------------------------------------------------------------- scenes


def test_labels_match_painted_objects() -> None:
    """Two solid colours as products on a clean scene: every product pixel lies in a box of its
    SKU, and every box edge touches a pixel of its SKU (boxes are tight)."""
    magenta, cyan = (255, 0, 255), (0, 255, 255)
    packshots = [_solid("M", magenta), _solid("C", cyan, (50, 50))]
    config = SceneConfig(size_wh=(320, 240), min_objects=15, max_objects=25, max_occlusion=0.999, min_box_px=1,
                         **CLEAN)
    for seed in range(4):
        scene = generate_scene(packshots, seed=seed, config=config)
        image = scene.image.astype(np.int16)
        is_magenta = (image[:, :, 0] > 150) & (image[:, :, 2] > 150) & (image[:, :, 1] < 60)
        is_cyan = (image[:, :, 1] > 150) & (image[:, :, 2] > 150) & (image[:, :, 0] < 60)
        assert len(scene.xyxy) >= 5
        for sku, pixels in ((0, is_magenta), (1, is_cyan)):
            covered = np.zeros_like(pixels)
            for (x1, y1, x2, y2), index in zip(scene.xyxy.astype(int), scene.sku_index, strict=True):
                if index != sku:
                    continue
                covered[y1:y2, x1:x2] = True
                box = pixels[y1:y2, x1:x2]
                assert box[0].any() and box[-1].any() and box[:, 0].any() and box[:, -1].any()
            assert not (pixels & ~covered).any(), f"seed {seed}: SKU {sku} pixels outside its boxes"


def test_scene_boxes_are_inside_and_occlusion_is_bounded() -> None:
    packshots = drawn_packshots([f"S{i}" for i in range(6)], height_px=96)
    config = SceneConfig(size_wh=(640, 480), min_objects=40, max_objects=60, overlap=(0.1, 0.3), max_occlusion=0.5)
    scene = generate_scene(packshots, seed=7, config=config)
    h, w = scene.image.shape[:2]
    assert scene.image.shape == (480, 640, 3) and scene.image.dtype == np.uint8
    assert scene.xyxy.dtype == np.float32 and scene.sku_index.dtype == np.int64
    assert len(scene.xyxy) > 10
    x1, y1, x2, y2 = scene.xyxy.T
    assert np.all((x1 >= 0) & (y1 >= 0) & (x2 <= w) & (y2 <= h) & (x2 - x1 >= 4) & (y2 - y1 >= 4))
    assert np.all(scene.visible_fraction >= 0.5) and np.all(scene.visible_fraction <= 1.0)
    assert set(scene.sku_index.tolist()) <= set(range(6))


def test_scenes_are_deterministic() -> None:
    packshots = drawn_packshots(["A", "B", "C"], height_px=64)
    config = SceneConfig(size_wh=(320, 240), min_objects=10, max_objects=20)
    first = generate_scene(packshots, seed=(3, 1), config=config)
    again = generate_scene(packshots, seed=(3, 1), config=config)
    other = generate_scene(packshots, seed=(3, 2), config=config)
    assert np.array_equal(first.image, again.image) and np.array_equal(first.xyxy, again.xyxy)
    assert np.array_equal(first.sku_index, again.sku_index)
    assert not np.array_equal(first.image, other.image)


def test_crowded_scene_has_hundreds_of_boxes() -> None:
    packshots = drawn_packshots([f"S{i}" for i in range(10)], height_px=96)
    config = SceneConfig(min_objects=280, max_objects=320)
    scene = generate_scene(packshots, seed=0, config=config)
    assert scene.image.shape == (960, 1280, 3)
    assert len(scene.xyxy) >= 200


def test_background_photos(tmp_path: Path) -> None:
    photo = np.zeros((100, 150, 3), np.uint8)
    photo[:, :, 1] = 200  # plain green "photo"
    (tmp_path / "bg").mkdir()
    cv2.imwrite(str(tmp_path / "bg" / "shelf.jpg"), photo)
    config = SceneConfig(size_wh=(200, 150), min_objects=1, max_objects=2, background_dir=tmp_path / "bg",
                         background_photo_probability=1.0, **CLEAN)
    scene = generate_scene([_solid("M", (255, 0, 255))], seed=0, config=config)
    assert np.median(scene.image[:5, :, 1]) > 150  # the photo shows at the top
    with pytest.raises(DatasetError):
        generate_scene([_solid("M", (255, 0, 255))], seed=0,
                       config=SceneConfig(background_dir=tmp_path / "missing"))


@pytest.mark.parametrize(
    "kwargs",
    [{"size_wh": (16, 16)}, {"min_objects": 0}, {"min_objects": 5, "max_objects": 4}, {"max_occlusion": 1.0},
     {"overlap": (0.3, 0.1)}, {"shelf_fill": (0.05, 0.5)}, {"blur_probability": 1.5}, {"perspective": 0.5}],
)
def test_scene_config_rejects_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SceneConfig(**kwargs)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------- datasets


def _rows(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()]


def test_two_datasets_share_images_and_agree_line_by_line(tmp_path: Path) -> None:
    packshots = drawn_packshots(["SKU-A", "SKU-B", "SKU-C"], height_px=64)
    config = SceneConfig(size_wh=(256, 192), min_objects=3, max_objects=12)
    result = write_synthetic_datasets(tmp_path / "out", packshots, n_images=10, val_fraction=0.2,
                                      test_fraction=0.1, seed=5, config=config)
    assert result.images == {"train": 7, "val": 2, "test": 1}
    assert result.sku_codes == ["SKU-A", "SKU-B", "SKU-C"]
    agnostic, sku = tmp_path / "out" / "agnostic", tmp_path / "out" / "sku"
    total = 0
    for image in sorted((agnostic / "images").rglob("*.jpg")):
        rel = image.relative_to(agnostic / "images")
        twin = sku / "images" / rel
        assert os.path.samefile(image, twin)  # one file, two datasets
        a_rows = _rows((agnostic / "labels" / rel).with_suffix(".txt"))
        s_rows = _rows((sku / "labels" / rel).with_suffix(".txt"))
        assert len(a_rows) == len(s_rows)
        for a, s in zip(a_rows, s_rows, strict=True):
            assert a[0] == "0" and 0 <= int(s[0]) < 3 and a[1:] == s[1:]
            values = np.array(a[1:], float)
            assert np.all(values > 0) and np.all(values <= 1)
        total += len(a_rows)
    assert total == sum(result.boxes.values())
    # The written datasets pass preparation with no quirk to report.
    for data in (result.agnostic_yaml, result.per_sku_yaml):
        report = prepare_dataset(data, tmp_path / ("prep-" + data.parent.name))
        assert report.orphan_labels == 0 and report.background_images == 0
        assert sum(v.boxes for v in report.splits.values()) == total
    assert prepare_dataset(result.per_sku_yaml, tmp_path / "prep-names").names == ["SKU-A", "SKU-B", "SKU-C"]


def test_written_datasets_are_deterministic(tmp_path: Path) -> None:
    packshots = drawn_packshots(["A", "B"], height_px=64)
    config = SceneConfig(size_wh=(160, 120), min_objects=2, max_objects=6)
    for name in ("one", "two"):
        write_synthetic_datasets(tmp_path / name, packshots, n_images=4, seed=9, config=config)
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file()
                   and p.suffix in (".jpg", ".txt"))
    assert len(files) == 16
    for rel in files:
        assert (tmp_path / "one" / rel).read_bytes() == (tmp_path / "two" / rel).read_bytes()
    # Writing again into the same folder replaces the earlier output; a foreign folder is refused.
    write_synthetic_datasets(tmp_path / "one", packshots, n_images=2, seed=9, config=config)
    assert len(list((tmp_path / "one" / "agnostic" / "images").rglob("*.jpg"))) == 2
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("keep")
    with pytest.raises(DatasetError):
        write_synthetic_datasets(tmp_path / "foreign", packshots, n_images=2, config=config)
