"""``shelftally demo``: a small warehouse counted from shelf photos, start to finish, on this machine.

Nothing outside the repository is used and nothing is downloaded:

1. **Products.** Eight SKUs whose catalogue packshots the project draws itself
   (:func:`detector.synth.drawn_packshots`).
2. **Training pictures.** Synthetic shelves pasted from those packshots
   (:func:`detector.synth.write_synthetic_datasets`, cut-paste synthesis), with exact boxes.
3. **Demo models.** The shipped product-agnostic detector (``models/product-agnostic``, trained on
   real labelled photos and generated shelves; ``DemoSize.detector="train"`` trains a YOLOv8n on
   the demo's own shelves instead, as the demo did before it shipped), and a SKU
   classifier trained on the product crops cut from them: a linear probe on ImageNet
   EfficientNet-Lite0 features (:data:`PRETRAINED_BACKBONE`) when the ``pretrained`` extra is
   installed, otherwise ``mobilenet_v3_small`` from random weights; both written as model
   directories in ``<workdir>/models`` and reused by the next run when the recipe is unchanged.
4. **The warehouse.** Three shelves. Each is photographed twice a few minutes apart (the second
   photo is the same shelf under other light, re-encoded: another picture, the same stock); a
   printed location label (QR code) is in every photo, so the scans find their location
   themselves. The book is what the generator put on each shelf, with deliberate errors: a
   shortage and an empty slot on shelf 1, an overage and a misplaced product on shelf 2;
   shelf 3 agrees with the book.
5. **Scan.** Every photo goes through :class:`workers.scan.pipeline.ScanPipeline` (decode, locate,
   detect, crop, classify, persist, reconcile, evidence image); then the discrepancy report is
   printed with the evidence images' paths.

Reconciliation in the demo tolerates one unit per SKU (``tolerance_units=1``) and one
unrecognised facing per photo (``unknown_tolerance_facings=1``), as a store would for a detector
that can miss a hidden facing or box a product cut by the photo's edge; the deliberate errors are
3 units or more.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import cv2
import numpy as np
import numpy.typing as npt
from PIL import Image
from rich.console import Console
from sqlalchemy.orm import Session

import migrations
from classifier.pretrained import available as pretrained_available
from detector.model_dir import read_model_dir as read_detector_dir
from detector.synth import (
    Packshot,
    SceneConfig,
    SyntheticDatasets,
    drawn_packshots,
    generate_scene,
    write_synthetic_datasets,
)
from inventory import queries
from inventory.db import create_engine, run_in_transaction, session_factory
from inventory.models import FacingRule, Location, LocationLevel, Sku, StockLevel
from inventory.reconcile import ReconcilePolicy
from inventory.sinks import LogSink, deliver_pending
from workers.ingest import read_image
from workers.scan.locate import location_label_image
from workers.scan.pipeline import PipelineConfig, ScanPipeline, load_models
from workers.scan.report import print_counts, print_run
from workers.scan.run import ScanRun
from workers.settings import Settings

if TYPE_CHECKING:
    from classifier.dataset import DatasetItem, ImageDataset

__all__ = ["DEMO_SKUS", "DemoSize", "demo_packshots", "run_vision_demo", "train_demo_models"]

DEMO_SKUS: list[tuple[str, str, str]] = [
    ("DEMO-COLA-330", "Fizz Cola 330 ml can", "can"),
    ("DEMO-OATS-500", "Oat Flakes 500 g", "carton"),
    ("DEMO-JUICE-1L", "Orange Juice 1 l", "carton"),
    ("DEMO-WATER-50", "Still Water 0.5 l", "bottle"),
    ("DEMO-JAM-370", "Strawberry Jam 370 g", "jar"),
    ("DEMO-CHIPS-175", "Salted Chips 175 g", "bag"),
    ("DEMO-SOUP-400", "Tomato Soup 400 g can", "can"),
    ("DEMO-TEA-50", "Green Tea 50 bags", "carton"),
]
"""SKU code, name, packshot kind."""

WAREHOUSE = "DEMO-WH"
SHELVES: list[tuple[str, list[int]]] = [
    ("DEMO-A01-S1", [0, 1, 2]),
    ("DEMO-A01-S2", [3, 4, 5]),
    ("DEMO-A01-S3", [6, 7]),
]
"""Shelf code and the SKUs (indices of DEMO_SKUS) the generator puts on it."""


#: The demo classifier's pretrained backbone (:mod:`classifier.pretrained`), probed when installed.
PRETRAINED_BACKBONE = "efficientnet_lite0.imagenet"
#: The demo classifier's backbone without the ``pretrained`` extra, trained from random weights.
SCRATCH_BACKBONE = "mobilenet_v3_small"
#: The product detector committed to the repository (README, "Starter models").
SHIPPED_DETECTOR = Path(__file__).resolve().parents[2] / "models" / "product-agnostic"


@dataclass(frozen=True)
class DemoSize:
    """How much the demo trains (the defaults take a few minutes on 2 cores; tests use less).

    Attributes:
        training_pictures: synthetic shelves for training (20 % of them validate).
        picture_wh: size of the training pictures and the shelf photos, pixels.
        detector_epochs: YOLO epochs.
        detector_imgsz: YOLO input side, pixels (multiple of 32).
        detector_batch: YOLO batch (small sets need enough optimizer steps: with 128 training
            pictures and batch 16, 12 epochs at 416 px left the detector at mAP50 0.00 here).
        classifier_epochs: classifier epochs.
        classifier_input: classifier input side, pixels.
        classifier_backbone: ``"auto"``: a linear probe on :data:`PRETRAINED_BACKBONE` when its
            weights are installed (extra ``pretrained``), else :data:`SCRATCH_BACKBONE` fine-tuned
            from random weights; or a backbone name (with a ``.tag``: pretrained, probed).
        detector: ``"shipped"``: :data:`SHIPPED_DETECTOR` (when the checkout has its
            ``model.onnx``, else the demo trains one, and says so); ``"train"``: a YOLOv8n trained
            on the demo's shelves (``detector_epochs`` at ``detector_imgsz``).
    """

    training_pictures: int = 160
    picture_wh: tuple[int, int] = (960, 720)
    detector_epochs: int = 15
    detector_imgsz: int = 256
    detector_batch: int = 8
    classifier_epochs: int = 8
    classifier_input: int = 64
    classifier_backbone: str = "auto"
    detector: Literal["shipped", "train"] = "shipped"

    def detector_dir(self) -> Path | None:
        """The shipped detector when ``detector`` is ``"shipped"`` and it is in this checkout, else None (train)."""
        if self.detector == "shipped" and (SHIPPED_DETECTOR / "model.onnx").is_file():
            return SHIPPED_DETECTOR
        return None

    def classifier_recipe(self) -> tuple[str, Literal["probe", "full"]]:
        """The classifier's backbone and adaptation mode, ``"auto"`` resolved on this installation."""
        backbone = self.classifier_backbone
        if backbone == "auto":
            backbone = PRETRAINED_BACKBONE if pretrained_available(PRETRAINED_BACKBONE) else SCRATCH_BACKBONE
        return backbone, "probe" if "." in backbone else "full"

    def key(self) -> str:
        """Short hash of the recipe: models in the work folder are reused only for the same one
        (installing the ``pretrained`` extra changes it)."""
        shipped = self.detector_dir()
        text = json.dumps({**asdict(self), "classifier_recipe": self.classifier_recipe(), "skus": DEMO_SKUS,
                           "detector_dir": str(shipped) if shipped else None, "version": 1}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def _scene_config(size: DemoSize, *, photo: bool) -> SceneConfig:
    return SceneConfig(
        size_wh=size.picture_wh, min_objects=8 if photo else 6, max_objects=14 if photo else 24,
        max_occlusion=0.35, overlap=(0.0, 0.05), gap_probability=0.0 if photo else 0.05,
        stack_probability=0.0, blur_probability=0.2, max_blur_sigma=0.8,
    )


def demo_packshots() -> list[Packshot]:
    """The demo SKUs' drawn catalogue packshots (seed 3), in :data:`DEMO_SKUS` order."""
    return drawn_packshots([code for code, _, _ in DEMO_SKUS], kinds=[kind for _, _, kind in DEMO_SKUS],
                           names=[name.split()[0] for _, name, _ in DEMO_SKUS], seed=3)


def demo_training_shelves(folder: Path, size: DemoSize, packshots: list[Packshot]) -> SyntheticDatasets:
    """The demo's ``size.training_pictures`` synthetic training shelves (seed 11), written to ``folder``.

    Raises:
        OSError: ``folder`` cannot be written.
    """
    return write_synthetic_datasets(
        folder, packshots, n_images=size.training_pictures, seed=11, config=_scene_config(size, photo=False),
    )


def cut_demo_crops(
    synthetic: SyntheticDatasets, packshots: list[Packshot], crops: Path
) -> tuple[ImageDataset, list[DatasetItem]]:
    """Cut every labelled product out of the synthetic shelves into ``crops/all/<SKU>/`` (train and
    val pictures alike; crops under 8 px a side are skipped) and write the packshots to
    ``crops/packshots/``; returns the crops as an image-folder dataset and the packshots as extra
    training items of its classes.

    Raises:
        DatasetError: a packshot's SKU has no crop (reason ``empty_split``).
        OSError: a file cannot be read or written.
    """
    from classifier.dataset import DatasetItem, read_image_folder
    from classifier.errors import DatasetError

    for split in ("train", "val"):
        images = sorted((synthetic.root / "sku" / "images" / split).glob("*.jpg"))
        for image_path in images:
            picture = read_image(image_path).pixels
            h, w = picture.shape[:2]
            rows = (synthetic.root / "sku" / "labels" / split / f"{image_path.stem}.txt").read_text().split("\n")
            for n, row in enumerate(r for r in rows if r.strip()):
                cls, cx, cy, bw, bh = row.split()
                x1, y1 = int((float(cx) - float(bw) / 2) * w), int((float(cy) - float(bh) / 2) * h)
                x2, y2 = int((float(cx) + float(bw) / 2) * w), int((float(cy) + float(bh) / 2) * h)
                crop = picture[max(0, y1) : y2, max(0, x1) : x2]
                if min(crop.shape[:2]) < 8:
                    continue
                target = crops / "all" / synthetic.sku_codes[int(cls)] / f"{split}-{image_path.stem}-{n:03d}.jpg"
                target.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(target), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
    train_set = read_image_folder(crops / "all", split="train")
    packshot_items = []
    for shot in packshots:
        target = crops / "packshots" / f"{shot.sku_code}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(target), cv2.cvtColor(shot.image, cv2.COLOR_RGB2BGR))
        if shot.sku_code not in train_set.class_names:
            raise DatasetError(f"SKU {shot.sku_code}: no crop of it in the training shelves", reason="empty_split")
        packshot_items.append(DatasetItem(target, train_set.class_names.index(shot.sku_code)))
    return train_set, packshot_items


def train_demo_classifier(
    train_set: ImageDataset, packshot_items: list[DatasetItem], size: DemoSize, out_dir: Path
) -> tuple[str, str, int]:
    """Train the demo's SKU classifier into ``out_dir`` (20 % of each class validates);
    returns its backbone, adaptation mode and epochs (:meth:`DemoSize.classifier_recipe`).

    Raises:
        ModelLoadError, MissingDependencyError: the backbone or its weights cannot be had.
        DatasetError: fewer than 2 SKUs with crops, or no validation crops.
    """
    from classifier.train import train_classifier

    backbone, mode = size.classifier_recipe()
    # a probe's epochs run on cached features (well under a second each): more of them cost nothing
    epochs = size.classifier_epochs * (4 if mode == "probe" else 1)
    train_classifier(
        train_set, val_fraction=0.2, out_dir=out_dir,
        backbone=backbone, mode=mode, input_size=size.classifier_input, resize="letterbox", embedding_dim=64,
        epochs=epochs, patience=epochs, batch=32, lr=3e-3, probe_views=2,
        extra_train_items=packshot_items, false_reject_rate=0.01, seed=0, command="shelftally demo",
    )
    return backbone, mode, epochs


def train_demo_models(
    folder: Path, size: DemoSize, packshots: list[Packshot], say: Callable[[str], None]
) -> tuple[Path, Path]:
    """Train (or reuse) the demo detector and classifier in ``folder``; returns their model directories.

    Models are reused when ``folder/recipe.txt`` holds ``size.key()`` (a few minutes on 2 cores
    otherwise); ``say`` receives progress lines. The classifier's backbone is checked before
    anything in ``folder`` is replaced.

    Raises:
        ModelLoadError, MissingDependencyError: the classifier backbone is unknown or not installed
            (:func:`classifier.backbones.require_backbone`); the previous models stay.
    """
    shipped = size.detector_dir()
    detector_dir, classifier_dir = shipped or folder / "detector", folder / "classifier"
    stamp = folder / "recipe.txt"
    key = size.key()
    if stamp.is_file() and stamp.read_text().strip() == key and (detector_dir / "model.onnx").is_file() \
            and (classifier_dir / "model.onnx").is_file():
        say(f"reusing the demo models in {folder} (same recipe {key})"
            + (f"; the shipped detector {shipped}" if shipped else ""))
        return detector_dir, classifier_dir
    if size.detector == "shipped" and shipped is None:
        say(f"the shipped detector is not in this checkout ({SHIPPED_DETECTOR}): training the demo's own")
    from classifier.backbones import require_backbone
    from detector.train import train_detector

    require_backbone(size.classifier_recipe()[0])  # a wrong name must not cost the models already there
    if folder.exists():
        shutil.rmtree(folder)
    work = folder / "work"
    started = time.perf_counter()
    synthetic = demo_training_shelves(work / "synth", size, packshots)
    say(f"generated {size.training_pictures} synthetic shelves ({sum(synthetic.boxes.values())} products) "
        f"in {time.perf_counter() - started:.0f} s")

    started = time.perf_counter()
    train_set, packshot_items = cut_demo_crops(synthetic, packshots, work / "crops")
    backbone, mode, epochs = train_demo_classifier(train_set, packshot_items, size, classifier_dir)
    top1 = json.loads((classifier_dir / "metrics.json").read_text())["top1"]
    say(f"trained the SKU classifier ({backbone}, {mode}; {len(train_set.items)} crops, {epochs} epochs; "
        f"val top-1 {100 * top1:.1f} %) in {time.perf_counter() - started:.0f} s")

    if shipped is None:
        started = time.perf_counter()
        train_detector(
            synthetic.agnostic_yaml, model="yolov8n.yaml", imgsz=size.detector_imgsz, epochs=size.detector_epochs,
            batch=size.detector_batch, out_dir=detector_dir, seed=0, work_dir=work / "detector",
        )
        say(f"trained the product detector ({size.detector_epochs} epochs at {size.detector_imgsz} px) "
            f"in {time.perf_counter() - started:.0f} s")
    else:
        say(f"product detector: the shipped {shipped} ({read_detector_dir(shipped).version})")
    shutil.rmtree(work)
    stamp.write_text(key + "\n")
    return detector_dir, classifier_dir


def _relit(image: npt.NDArray[np.uint8], seed: int) -> npt.NDArray[np.uint8]:
    """The same shelf a little brighter or darker, a few pixels to the side (another picture, the same stock)."""
    rng = np.random.default_rng(seed)
    gain = float(rng.uniform(0.9, 1.1))
    shifted = np.roll(image, int(rng.integers(-4, 5)), axis=1)
    relit: npt.NDArray[np.uint8] = np.clip(
        shifted.astype(np.float32) * gain + rng.normal(0, 2.0, image.shape), 0, 255
    ).astype(np.uint8)
    return relit


def _with_label(image: npt.NDArray[np.uint8], code: str) -> npt.NDArray[np.uint8]:
    """The photo with the shelf's printed location label below it (the label strip of the shelf)."""
    label = location_label_image(code, size_px=220)
    strip = np.full((label.shape[0] + 20, image.shape[1], 3), 235, np.uint8)
    strip[10 : 10 + label.shape[0], 10 : 10 + label.shape[1]] = label
    return np.concatenate([image, strip], axis=0)


def _photos_and_truth(
    photos: Path, size: DemoSize, packshots: list[Packshot]
) -> tuple[list[tuple[Path, datetime]], dict[str, dict[str, int]]]:
    """Write two photos per shelf; returns (photo, capture time) in order and the true facings per shelf."""
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
    taken: list[tuple[Path, datetime]] = []
    truth: dict[str, dict[str, int]] = {}
    for number, (shelf, members) in enumerate(SHELVES):
        scene = generate_scene([packshots[i] for i in members], seed=(2026, number),
                               config=_scene_config(size, photo=True))
        counts: dict[str, int] = {}
        for index in scene.sku_index.tolist():
            code = DEMO_SKUS[members[index]][0]
            counts[code] = counts.get(code, 0) + 1
        truth[shelf] = counts
        for round_ in range(2):
            image = scene.image if round_ == 0 else _relit(scene.image, number)
            path = photos / f"{shelf}-{round_ + 1}.jpg"
            when = start + timedelta(minutes=10 * round_ + number)
            _write_photo(path, _with_label(image, shelf), when)
            taken.append((path, when))
    return taken, truth


def _write_photo(path: Path, image: npt.NDArray[np.uint8], taken: datetime) -> None:
    """A JPEG as a camera writes it: with EXIF DateTimeOriginal and its UTC offset, so that scanning
    the file again later (``shelftally scan``) finds the same capture time and sees a duplicate."""
    exif = Image.Exif()
    sub = exif.get_ifd(0x8769)  # Exif IFD
    sub[0x9003] = taken.astimezone(UTC).strftime("%Y:%m:%d %H:%M:%S")  # DateTimeOriginal
    sub[0x9011] = "+00:00"  # OffsetTimeOriginal
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, "JPEG", quality=92, exif=exif)


def _book(truth: dict[str, dict[str, int]]) -> dict[str, dict[str, int | None]]:
    """The book: what is on the shelves, with the deliberate errors of the module docstring."""
    s1, s2, s3 = (dict(truth[code]) for code, _ in SHELVES)
    book: dict[str, dict[str, int | None]] = {code: dict(counts) for code, counts in truth.items()}
    first = sorted(s1)
    book["DEMO-A01-S1"][first[0]] = s1[first[0]] + 4  # shortage: the book says 4 more than the shelf holds
    book["DEMO-A01-S1"]["DEMO-TEA-50"] = 6  # out of stock: booked here, none on the shelf
    on_s2 = sorted(s2)
    book["DEMO-A01-S2"][on_s2[0]] = max(0, s2[on_s2[0]] - 3)  # overage: 3 more on the shelf than booked
    book["DEMO-A01-S2"][on_s2[-1]] = None  # misplaced: on the shelf, not booked there
    book["DEMO-A01-S3"] = dict(s3)
    return book


def _seed_warehouse(session: Session, book: dict[str, dict[str, int | None]]) -> None:
    skus = {}
    for code, name, _ in DEMO_SKUS:
        sku = Sku(sku_code=code, name=name)
        session.add(sku)
        skus[code] = sku
    warehouse = Location(location_code=WAREHOUSE, level=LocationLevel.WAREHOUSE, name="Demo warehouse")
    session.add(warehouse)
    session.flush()
    for shelf, _ in SHELVES:
        location = Location(location_code=shelf, level=LocationLevel.SHELF, parent_id=warehouse.id,
                            name=f"Shelf {shelf[-2:]}", facing_rule=FacingRule.VISIBLE_UNITS)
        session.add(location)
        session.flush()
        for code, quantity in book[shelf].items():
            if quantity is not None:
                session.add(StockLevel(location_id=location.id, sku_id=skus[code].id, quantity=quantity,
                                       source="demo"))
    session.flush()


def run_vision_demo(
    workdir: Path, *, console: Console, settings: Settings, size: DemoSize | None = None
) -> tuple[Path, ScanRun]:
    """Run the demo in ``workdir`` (database, photos and evidence replaced; models reused when unchanged).

    Args:
        workdir: the demo's folder (created).
        console: where the report goes.
        settings: alert channels and model runtime (its database URL and reconcile policy are not used).
        size: how much to train (default :class:`DemoSize`).

    Returns:
        The demo database and the scan results.

    Raises:
        MissingDependencyError: torch / ultralytics (extra ``train``) or ONNX Runtime (``onnx``) missing.
    """
    size = size or DemoSize()
    started = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)

    def say(text: str) -> None:
        console.print(f"[dim]{time.perf_counter() - started:6.1f} s[/]  {text}", highlight=False)

    console.rule("[bold]ShelfTally demo[/]: shelf photos to counts, discrepancies and evidence")
    packshots = demo_packshots()
    detector_dir, classifier_dir = train_demo_models(workdir / "models", size, packshots, say)

    database = workdir / "shelftally.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    for name in ("photos", "evidence"):
        shutil.rmtree(workdir / name, ignore_errors=True)
    url = f"sqlite:///{database}"
    migrations.upgrade(url)
    engine = create_engine(url)
    factory = session_factory(engine)
    photos, truth = _photos_and_truth(workdir / "photos", size, packshots)
    book = _book(truth)
    run_in_transaction(factory, lambda session: _seed_warehouse(session, book))
    say(f"demo warehouse: {len(DEMO_SKUS)} SKUs, {len(SHELVES)} shelves, book with deliberate errors; "
        f"{len(photos)} shelf photos in {workdir / 'photos'}")

    detector, recognizer = load_models(detector_dir, classifier_dir, backend="onnx", threads=settings.models.threads)
    policy = ReconcilePolicy(tolerance_units=1, confirm_after_scans=2, unknown_tolerance_facings=1)
    pipeline = ScanPipeline(
        factory=factory, detector=detector, recognizer=recognizer, policy=policy,
        config=PipelineConfig(evidence_dir=workdir / "evidence", channels=("log",)),
    )
    # No location given: every photo carries its shelf's label.
    run = ScanRun([pipeline.scan_path(path, captured_at=when) for path, when in photos])
    delivered = deliver_pending(factory, [LogSink()])
    say(f"scanned {len(run.results)} photos ({len(run.failed)} rejected); {delivered.delivered} alerts delivered (log)")
    print_run(run, factory, confirm_after_scans=policy.confirm_after_scans, out=console)
    with factory() as session:
        print_counts(queries.counts(session, location_prefix="DEMO-"), console)
    engine.dispose()
    env_file = write_demo_env(workdir, database, detector_dir, classifier_dir, policy)
    cli = _cli_command()
    console.print(
        f"\ndemo finished in {time.perf_counter() - started:.0f} s. Evidence images: {workdir / 'evidence'}; "
        f"database: {database}\nThe demo's settings (database, models, tolerances) are in {env_file}. "
        f"Explore it, or scan a photo again as a new count of its shelf (a new capture time; the same "
        f"picture at the same time is 'already scanned'):\n"
        f"  set -a; . {env_file}; set +a\n"
        f"  {cli} discrepancies\n"
        f"  {cli} scan {photos[0][0]} --location {SHELVES[0][0]} --captured-at \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\"",
        highlight=False, soft_wrap=True,
    )
    return database, run


def _cli_command() -> str:
    """How to call ``shelftally`` from the user's shell: the name when it is on PATH (an activated
    virtualenv), else the path it was started by (``.venv/bin/shelftally`` from ``demo.sh``)."""
    started = Path(sys.argv[0])
    on_path = shutil.which("shelftally")
    if started.name != "shelftally" or (on_path is not None and Path(on_path).resolve() == started.resolve()):
        return "shelftally"
    return str(started)


def write_demo_env(
    workdir: Path, database: Path, detector_dir: Path, classifier_dir: Path, policy: ReconcilePolicy
) -> Path:
    """Write ``<workdir>/demo.env``: the settings under which the demo scanned, for the next command.

    ``SHELFTALLY_*`` variables (database URL, both model directories, the demo's reconcile
    tolerances, its evidence folder), absolute paths, in dotenv syntax that a shell can also
    source (``set -a; . demo.env; set +a``) or that can be copied to ``.env``.

    Returns:
        The file's path.

    Raises:
        OSError: ``workdir`` cannot be written.
    """
    values = {
        "SHELFTALLY_DATABASE_URL": f"sqlite:///{database.resolve()}",
        "SHELFTALLY_MODELS__DETECTOR_DIR": str(detector_dir.resolve()),
        "SHELFTALLY_MODELS__CLASSIFIER_DIR": str(classifier_dir.resolve()),
        "SHELFTALLY_RECONCILE__TOLERANCE_UNITS": str(policy.tolerance_units),
        "SHELFTALLY_RECONCILE__CONFIRM_AFTER_SCANS": str(policy.confirm_after_scans),
        "SHELFTALLY_RECONCILE__UNKNOWN_TOLERANCE_FACINGS": str(policy.unknown_tolerance_facings),
        "SHELFTALLY_SCAN__EVIDENCE_DIR": str((workdir / "evidence").resolve()),
    }
    path = workdir / "demo.env"
    path.write_text("# written by shelftally demo: the settings its scans ran under\n"
                    + "".join(f"{key}='{value}'\n" for key, value in values.items()), encoding="utf-8")
    return path
