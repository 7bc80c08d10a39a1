"""Scanning picture files in-process: the pipeline the settings describe, and a batch of files through it.

Paths may be files (taken whatever their name: the format is found from the content), folders
(every file with a picture suffix below them, in name order) and glob patterns (``shelf/**/*.jpg``,
quoted so that the shell leaves them alone). A picture that fails is reported with its reason and
recorded as a rejected scan; the others are still scanned. ``shelftally scan``, ``shelftally
ingest`` without a broker, the demo and a Celery worker's context (:func:`build_pipeline`) use it.
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from sqlalchemy.orm import Session, sessionmaker

from inventory.models import Sku
from shelftally.errors import ConfigurationError
from workers.console import err_console
from workers.scan.pipeline import PipelineConfig, ScanPipeline, ScanResult, load_models
from workers.settings import Settings

if TYPE_CHECKING:
    from classifier.text import SkuText
    from classifier.zeroshot import TextFusion

__all__ = ["PICTURE_SUFFIXES", "ScanRun", "build_pipeline", "collect_pictures", "result_dict", "run_scan"]

PICTURE_SUFFIXES = frozenset({
    ".jpg", ".jpeg", ".jpe", ".png", ".tif", ".tiff", ".webp", ".bmp", ".gif", ".heic", ".heif", ".avif",
})
"""Suffixes (case-insensitive) of the files taken from folders and glob matches of folders."""

_GLOB_CHARS = frozenset("*?[")


def collect_pictures(paths: Sequence[Path]) -> tuple[list[Path], list[str]]:
    """Expand files, folders and glob patterns into picture files.

    Args:
        paths: as given on the command line.

    Returns:
        ``(pictures, missing)``: each file once, in argument order (folders and globs sorted by
        name); ``missing`` lists the arguments that name nothing (no file, no glob match).
    """
    pictures: list[Path] = []
    missing: list[str] = []
    seen: set[Path] = set()

    def add(path: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            pictures.append(path)

    def add_folder(folder: Path) -> None:
        for child in sorted(folder.rglob("*")):
            if child.is_file() and child.suffix.lower() in PICTURE_SUFFIXES and not child.name.startswith("."):
                add(child)

    for path in paths:
        if path.is_file():
            add(path)
        elif path.is_dir():
            add_folder(path)
        elif _GLOB_CHARS & set(str(path)):
            matches = sorted(glob.glob(str(path), recursive=True))
            if not matches:
                missing.append(str(path))
            for match in matches:
                found = Path(match)
                if found.is_dir():
                    add_folder(found)
                elif found.is_file():
                    add(found)
        else:
            missing.append(str(path))
    return pictures, missing


@dataclass
class ScanRun:
    """What ``shelftally scan`` did: one result per picture, in order."""

    results: list[ScanResult]

    @property
    def failed(self) -> list[ScanResult]:
        """The rejected pictures."""
        return [r for r in self.results if r.status == "rejected"]


def result_dict(result: ScanResult) -> dict[str, Any]:
    """A JSON-ready dict of one picture's result."""
    return {
        "source": result.source,
        "status": result.status,
        "scan_id": result.scan_id,
        "location_code": result.location_code,
        "captured_at": result.captured_at.isoformat(),
        "image_sha256": result.image_sha256,
        "reason": result.reason,
        "message": result.message,
        "counts": result.counts,
        "unknown_facings": result.unknown_facings,
        "lines": [
            {"sku_code": line.sku_code, "counted": line.counted, "book": line.book, "discrepancy": line.discrepancy,
             "consecutive_scans": line.consecutive_scans}
            for line in result.lines
        ],
        "stale": result.stale,
        "evidence": str(result.evidence) if result.evidence is not None else None,
        "evidence_error": result.evidence_error,
        "timings_ms": result.timings_ms,
        "named_by": result.named_by,
    }


def build_pipeline(
    settings: Settings,
    factory: sessionmaker[Session],
    *,
    detector: Path | None = None,
    classifier: Path | None = None,
    evidence_dir: Path | None = None,
    with_models: bool = True,
    read_text: bool | None = None,
) -> ScanPipeline:
    """The pipeline the settings (and command-line overrides) describe, its models loaded.

    ``with_models=False`` builds one that only admits and records pictures (a Celery worker of
    the ``ingest`` and ``db`` queues) and needs no model directories. ``read_text`` (default
    ``SHELFTALLY_SCAN__READ_TEXT``) adds text and barcode reading fused with the classifier
    (:class:`classifier.zeroshot.TextFusion`), matched against the SKU master in the database.

    Raises:
        ConfigurationError: no detector or classifier model directory configured (reason
            ``models_not_configured``).
        ModelLoadError, MissingDependencyError: a model or its runtime cannot be loaded.
    """
    scan = settings.scan
    config = PipelineConfig(
        max_pixels=scan.max_pixels, min_box_px=scan.min_box_px,
        evidence_dir=evidence_dir if evidence_dir is not None else scan.evidence_dir,
        camera_timezone=scan.zone(), channels=tuple(settings.alerts.channels),
    )
    if not with_models:
        return ScanPipeline(factory=factory, detector=None, recognizer=None, policy=settings.reconcile.policy(),
                            config=config)
    detector_dir = detector or settings.models.detector_dir
    classifier_dir = classifier or settings.models.classifier_dir
    if detector_dir is None or classifier_dir is None:
        raise ConfigurationError(
            "scanning needs a detector and a classifier model directory: pass --detector and --classifier, or set "
            "SHELFTALLY_MODELS__DETECTOR_DIR and SHELFTALLY_MODELS__CLASSIFIER_DIR",
            reason="models_not_configured",
        )
    models = settings.models
    detector_backend, recognizer = load_models(
        detector_dir, classifier_dir, backend=models.backend, threads=models.threads, conf=models.detector_confidence,
        detector_precision=models.detector_precision, classifier_precision=models.classifier_precision,
        int8_max_drop_points=models.int8_max_accuracy_drop, device=models.device,
    )
    fusion = None
    if scan.read_text if read_text is None else read_text:
        fusion = text_fusion(factory, classifier_dir, settings)
    return ScanPipeline(factory=factory, detector=detector_backend, recognizer=recognizer,
                        policy=settings.reconcile.policy(), config=config, text_fusion=fusion)


def sku_master(session: Session) -> list[SkuText]:
    """The SKU master as the text matcher reads it (code, name, description, GTIN), by SKU code."""
    from classifier.text import SkuText

    rows = session.scalars(sa.select(Sku).order_by(Sku.sku_code)).all()
    return [SkuText(row.sku_code, row.name, row.description, row.gtin) for row in rows]


def text_fusion(factory: sessionmaker[Session], classifier_dir: Path, settings: Settings) -> TextFusion:
    """Text and barcode reading for a scan: the SKU master from the database, the weight from the classifier.

    Raises:
        ConfigurationError: the SKU master is empty (reason ``no_skus``).
        MissingDependencyError: the ``text`` extra is not installed.
    """
    from classifier.ocr import text_reader
    from classifier.text import TextMatcher
    from classifier.zeroshot import TextFusion, read_weight

    with factory() as session:
        skus = sku_master(session)
    if not skus:
        raise ConfigurationError("reading text needs a SKU master to match: shelftally import skus FILE",
                                 reason="no_skus")
    scan = settings.scan
    return TextFusion(TextMatcher(skus), text_reader(settings.models.threads), weight=read_weight(classifier_dir),
                      max_visual_confidence=scan.text_max_visual_confidence, min_crop_px=scan.text_min_crop_px,
                      max_crops=scan.text_max_crops)


def run_scan(
    pipeline: ScanPipeline,
    pictures: Sequence[Path],
    *,
    location_code: str | None,
    captured_at: datetime | None,
    show_progress: bool = True,
) -> ScanRun:
    """Scan each picture in turn with a progress bar; a failing picture never stops the others.

    Raises:
        UnknownLocationError: ``location_code`` is not a location (before any picture is read).
    """
    if location_code is not None:
        from inventory.reconcile import get_location

        with pipeline.factory() as session:
            get_location(session, location_code)
    results: list[ScanResult] = []
    columns = (
        TextColumn("[bold]scan"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
    )
    with Progress(*columns, console=err_console, disable=not show_progress) as bar:
        task = bar.add_task("scan", total=len(pictures), status="")
        for path in pictures:
            bar.update(task, status=path.name)
            results.append(pipeline.scan_path(path, location_code=location_code, captured_at=captured_at))
            bar.advance(task)
    return ScanRun(results)

