"""``shelftally scan PATH...``: pictures in, counts, discrepancies and evidence images out, in-process.

Also the ``shelftally evaluate`` group: ``evaluate grocery`` (the whole pipeline on Grocery Store
photos), ``evaluate classifier`` (a classifier model directory on labelled crops) and ``evaluate
detector`` (a detector model directory as a counter on labelled photos).

Paths may be files (taken whatever their name: the format is found from the content), folders
(every file with a picture suffix below them, in name order) and glob patterns (``shelf/**/*.jpg``,
quoted so that the shell leaves them alone). A picture that fails is reported with its reason and
recorded as a rejected scan; the others are still scanned; the exit status is 1 when any failed.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from sqlalchemy.orm import Session, sessionmaker

from inventory import queries
from shelftally.errors import ConfigurationError, ShelfTallyError
from workers.console import console, err_console, print_error, print_json
from workers.pipeline import PipelineConfig, ScanPipeline, ScanResult, load_models
from workers.report import print_discrepancies
from workers.settings import Settings

__all__ = ["PICTURE_SUFFIXES", "ScanRun", "collect_pictures", "result_dict", "run_scan"]

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
    }


def pictures_or_refuse(paths: Sequence[Path]) -> list[Path]:
    """:func:`collect_pictures`, refusing (usage error, exit status 2) arguments that name
    nothing and arguments that hold no picture.

    Raises:
        typer.BadParameter: a path names nothing, or there is no picture at all.
    """
    pictures, missing = collect_pictures(paths)
    if missing:
        raise typer.BadParameter(f"no such file or folder (and no glob match): {', '.join(missing)}",
                                 param_hint="PATHS")
    if not pictures:
        raise typer.BadParameter("no pictures in the given folders", param_hint="PATHS")
    return pictures


def build_pipeline(
    settings: Settings,
    factory: sessionmaker[Session],
    *,
    detector: Path | None = None,
    classifier: Path | None = None,
    evidence_dir: Path | None = None,
    with_models: bool = True,
) -> ScanPipeline:
    """The pipeline the settings (and command-line overrides) describe, its models loaded.

    ``with_models=False`` builds one that only admits and records pictures (a Celery worker of
    the ``ingest`` and ``db`` queues) and needs no model directories.

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
        int8_max_drop_points=models.int8_max_accuracy_drop,
    )
    return ScanPipeline(factory=factory, detector=detector_backend, recognizer=recognizer,
                        policy=settings.reconcile.policy(), config=config)


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


def print_run(
    run: ScanRun, factory: sessionmaker[Session], *, confirm_after_scans: int, out: Console = console
) -> None:
    """The per-picture table, then the open discrepancies at the scanned locations (on ``out``)."""
    table = Table(title="Scans")  # evidence paths are never cut: they are what a person opens next
    for column in ("picture", "status", "location", "scan", "counted (facings)", "unknown", "discrepancies",
                   "evidence / reason"):
        table.add_column(column, overflow="fold")
    for r in run.results:
        counted = ", ".join(f"{code} x{n}" for code, n in sorted(r.counts.items())) or "-"
        kinds = ", ".join(f"{line.sku_code or 'unknown'}: {line.discrepancy}" for line in r.lines if line.discrepancy)
        status = {"processed": "[green]processed[/]", "duplicate": "[yellow]already scanned[/]",
                  "rejected": "[red]rejected[/]"}[r.status]
        if r.stale:
            status = "[yellow]processed, older than the newest scan here: not reconciled[/]"
            kinds = ""
        detail = (f"{r.reason}: {r.message}" if r.status == "rejected"
                  else str(r.evidence) if r.evidence is not None else r.evidence_error or "-")
        table.add_row(
            Path(r.source).name, status, r.location_code or "-", "-" if r.scan_id is None else str(r.scan_id),
            counted, str(r.unknown_facings), kinds or "-", detail,
        )
    out.print(table)
    locations = sorted({r.location_code for r in run.results if r.location_code and r.status != "rejected"})
    if locations:
        with factory() as session:
            rows = [
                row for code in locations
                for row in queries.discrepancies(session, location_prefix=code, confirm_after_scans=confirm_after_scans)
                if row["location_code"] == code
            ]
        print_discrepancies(rows, out, "Open discrepancies at the scanned locations (book vs counted)")
    processed = sum(r.status == "processed" for r in run.results)
    duplicates = sum(r.status == "duplicate" for r in run.results)
    out.print(
        f"{len(run.results)} picture(s): {processed} scanned, {duplicates} already scanned before, "
        f"{len(run.failed)} rejected",
        highlight=False,
    )


evaluate_app = typer.Typer(
    no_args_is_help=True,
    help="Measure on labelled real photos: the whole pipeline (grocery), a classifier (classifier) or a detector "
    "(detector).",
)


@evaluate_app.command("grocery")
def evaluate_grocery_cmd(
    data: Annotated[Path, typer.Option("--data", help="Grocery Store dataset folder.", exists=True, file_okay=False)],
    detector: Annotated[Path, typer.Option("--detector", help="Detector model directory.", exists=True,
                                           file_okay=False)],
    classifier: Annotated[Path, typer.Option("--classifier", help="Classifier model directory.", exists=True,
                                             file_okay=False)],
    backend: Annotated[str, typer.Option("--backend", help="onnx, openvino or torch.")] = "onnx",
    confidence: Annotated[float | None, typer.Option(
        "--confidence", help="Detector confidence of counted boxes (default: the detector's own, inference.json, "
        "else 0.25).")] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Only the first N val pictures.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Also write the report (with every picture) here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Grocery Store val pictures through detection and classification: main-box accuracy and shelf counts."""
    from workers.grocery import evaluate_grocery

    try:
        detector_backend, recognizer = load_models(detector, classifier, backend=backend, conf=confidence)
        columns = (TextColumn("[bold]evaluate"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn())
        with Progress(*columns, console=err_console, disable=as_json) as bar:
            task = bar.add_task("evaluate", total=None)
            report = evaluate_grocery(data, detector_backend, recognizer, main_confidence=detector_backend.config.conf,
                                      limit=limit,
                                      progress=lambda done, total: bar.update(task, completed=done, total=total))
    except ShelfTallyError as error:
        print_error(error, as_json=as_json)
        raise typer.Exit(1) from error
    if out is not None:
        out.write_text(json.dumps(report.to_dict(pictures=True), indent=2) + "\n", encoding="utf-8")
    if as_json:
        print_json(report.to_dict())
        return
    console.print(
        f"{report.pictures} pictures: main box named right {report.main_box_accuracy:.3f} "
        f"(the classifier on the whole picture: {report.whole_picture_accuracy:.3f}); no confident box "
        f"{report.no_main_box:.3f}; main box off the held product (proxy) {report.main_box_off_product:.3f}; "
        f"{report.mean_boxes:.1f} boxes per picture",
        highlight=False,
    )
    table = Table(title="Background shelf counts (facings per SKU, main boxes excluded)")
    table.add_column("SKU")
    table.add_column("facings", justify="right")
    for code, count in list(report.background_counts.items())[:25]:
        table.add_row(code, str(count))
    console.print(table)


@evaluate_app.command("detector")
def evaluate_detector_cmd(
    data: Annotated[Path, typer.Option("--data", help="Labelled photos: a YOLO data.yaml or a COCO JSON.",
                                       exists=True, dir_okay=False)],
    detector: Annotated[Path, typer.Option("--detector", help="Detector model directory (model.onnx or "
                                                              "openvino/ is enough).", exists=True, file_okay=False)],
    split: Annotated[str, typer.Option("--split", help="Split of a data.yaml (train, val, test).")] = "test",
    confidence: Annotated[float | None, typer.Option(
        "--confidence", min=0.0, max=1.0,
        help="Counting threshold (default: the model's inference.json, else 0.25).")] = None,
    backend: Annotated[str, typer.Option(
        "--backend", help="onnx or openvino (a shipped model has only these files); torch needs model.pt, tensorrt "
        "a GPU.")] = "onnx",
    tiling: Annotated[str, typer.Option("--tiling", help="auto (large photos tiled, as a scan), always, never.")] = (
        "auto"),
    recommend: Annotated[bool, typer.Option(
        "--recommend", help="Write the best-F1 confidence of this split into the model's inference.json "
        "(use a validation split).")] = False,
    record_as: Annotated[str | None, typer.Option(
        "--record-as", help="Also store the result in the model's metrics.json under counting.NAME.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """A product detector as a counter on your labelled photos: P/R at IoU 0.5, mAP50, per-photo count error."""
    if tiling not in ("auto", "always", "never"):
        raise typer.BadParameter(f"expected auto, always or never, received {tiling!r}", param_hint="--tiling")
    from detector.counting import evaluate_model_dir

    try:
        columns = (TextColumn("[bold]evaluate"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn())
        with Progress(*columns, console=err_console, disable=as_json) as bar:
            task = bar.add_task("evaluate", total=None)
            result = evaluate_model_dir(
                detector, data, split=split, confidence=confidence, backend=backend, tiling=tiling,  # type: ignore[arg-type]
                recommend_into=recommend, record_as=record_as,
                progress=lambda done, total: bar.update(task, completed=done, total=total))
    except ShelfTallyError as error:
        print_error(error, as_json=as_json)
        raise typer.Exit(1) from error
    if as_json:
        print_json(result)
        return
    count_text = "n/a (no photo has a true box)" if result["count_error"] is None else f"{result['count_error']:.3f}"
    console.print(
        f"{result['model']} on {escape(str(data))} (split {split}), {result['pictures']} photos, "
        f"{result['true_boxes']} "
        f"true boxes, confidence {result['confidence']:.3f}: precision {result['precision']:.3f}, recall "
        f"{result['recall']:.3f} (IoU 0.5), mAP50 {result['mAP50']:.3f}; {result['detected_boxes']} boxes "
        f"detected; count error {count_text}, counts within ±10 % {100 * result['count_within_10pct']:.0f} % of photos",
        highlight=False, soft_wrap=True,
    )
    if result["empty_pictures"]:
        console.print(f"{result['empty_pictures']} photos without products: {result['false_boxes_on_empty']} boxes "
                      "on them", highlight=False)
    if result["unreadable"]:
        console.print(f"[yellow]{len(result['unreadable'])} photos could not be decoded (not scored)[/]: "
                      + ", ".join(escape(p) for p in result["unreadable"][:5]))
    console.print(f"best F1 {result['best_f1']:.3f} at confidence {result['best_f1_confidence']:.3f}"
                  + (" (written to inference.json)" if recommend else ""), highlight=False)


EVALUATE_FORMATS = ("grocery", "folder", "list")
"""``--format`` of ``evaluate classifier``: Grocery Store folder, image folder, list file."""


@evaluate_app.command("classifier")
def evaluate_classifier_cmd(
    model: Annotated[Path, typer.Option("--model", help="Classifier model directory.")],
    data: Annotated[Path, typer.Option("--data", help="Labelled pictures: Grocery Store folder, image folder "
                                                      "(one sub-folder per SKU code) or list file (path,sku_code).")],
    data_format: Annotated[str, typer.Option("--format", help="grocery, folder or list.")],
    split: Annotated[str | None, typer.Option("--split", help="Grocery Store split (default val); recorded for "
                                                              "the other formats.")] = None,
    backend: Annotated[str, typer.Option("--backend", help="onnx, openvino or torch.")] = "onnx",
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="Intra-op threads (default: the "
                                                                        "runtime's).")] = None,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Pictures recognised at a time.")] = 32,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """A classifier on your labelled photos as a scan runs it: top-1/5, macro P/R/F1, unknown rate, per class.

    Each picture is one whole crop. Rejected as unknown is wrong, except for classes the model does not name.
    """
    from classifier.backends import BACKENDS

    if data_format not in EVALUATE_FORMATS:
        raise typer.BadParameter(f"expected one of {', '.join(EVALUATE_FORMATS)}, received {data_format!r}",
                                 param_hint="--format")
    if backend not in BACKENDS:
        raise typer.BadParameter(f"expected one of {', '.join(sorted(BACKENDS))}, received {backend!r}",
                                 param_hint="--backend")
    from classifier.dataset import read_grocery_store, read_image_folder, read_list_file
    from classifier.evaluate import evaluate_classifier
    from classifier.model_dir import read_model_dir

    try:
        model_dir = read_model_dir(model)  # a wrong --model fails before the pictures are read
        if data_format == "grocery":
            dataset = read_grocery_store(data, split or "val")
        elif data_format == "folder":
            dataset = read_image_folder(data, split=split or "")
        else:
            dataset = read_list_file(data, split=split or "")
        columns = (TextColumn("[bold]evaluate"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn())
        with Progress(*columns, console=err_console) as bar:
            task = bar.add_task("evaluate", total=len(dataset))
            report = evaluate_classifier(model_dir, dataset, backend=backend, threads=threads, batch=batch,
                                         progress=lambda done, total: bar.update(task, completed=done, total=total))
    except ShelfTallyError as error:
        print_error(error, as_json=as_json)
        raise typer.Exit(1) from error
    result = {**report.to_dict(), "format": data_format}
    if as_json:
        print_json(result)
        return
    print_classifier_report(result)


def print_classifier_report(result: dict[str, Any], out: Console = console) -> None:
    """The figures of ``evaluate classifier`` (a :meth:`ClassifierReport.to_dict` dict), then
    per-class accuracy worst first (on ``out``)."""
    unknown = set(result["unknown_classes"])
    out.print(
        f"{result['model']['version']} on {result['backend']}, {result['items']} pictures "
        f"({result['format']} {result['data']}{' ' + result['split'] if result['split'] else ''}"
        f"{', ' + str(result['left_out_items']) + ' left out' if result['left_out_items'] else ''}): "
        f"top-1 {result['top1']:.3f}, top-5 {result['top5']:.3f}, macro precision {result['macro_precision']:.3f}, "
        f"recall {result['macro_recall']:.3f}, F1 {result['macro_f1']:.3f}; unknown rate {result['unknown_rate']:.3f}",
        highlight=False, soft_wrap=True,
    )
    if result["unknown_class_items"]:
        out.print(
            f"classes the model knows: {result['known_class_items']} pictures, top-1 {result['top1_known_classes']:.3f}"
            f", rejected {result['unknown_rate_known_classes']:.3f}; classes it does not know "
            f"({len(unknown)}): {result['unknown_class_items']} pictures, rejected as unknown "
            f"{result['unknown_class_rejection']:.3f}",
            highlight=False, soft_wrap=True,
        )
    table = Table(title="Per-class accuracy (worst first)")
    table.add_column("SKU", overflow="fold")
    table.add_column("pictures", justify="right")
    table.add_column("accuracy", justify="right")
    table.add_column("model knows it")
    rows = sorted(result["per_class_accuracy"].items(), key=lambda row: (row[1], row[0]))
    for code, accuracy in rows:
        table.add_row(code, str(result["per_class_items"][code]), f"{accuracy:.3f}",
                      "[yellow]no (right = unknown)[/]" if code in unknown else "yes")
    out.print(table)
