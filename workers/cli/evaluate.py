"""``shelftally evaluate``: measure on labelled real photos.

``evaluate grocery`` (the whole pipeline on Grocery Store photos), ``evaluate classifier`` (a
classifier model directory on labelled crops) and ``evaluate detector`` (a detector model
directory as a counter on labelled photos).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from shelftally.errors import ShelfTallyError
from workers.console import console, err_console, print_error, print_json
from workers.scan.pipeline import load_models

__all__ = ["EVALUATE_FORMATS", "evaluate_app", "print_classifier_report"]

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
    from workers.scan.grocery import evaluate_grocery

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


@evaluate_app.command("zero-shot")
def evaluate_zero_shot_cmd(
    data: Annotated[Path, typer.Option("--data", help="Grocery Store dataset folder.", exists=True, file_okay=False)],
    model: Annotated[Path, typer.Option("--model", help="Classifier model directory.", exists=True, file_okay=False)],
    split: Annotated[str, typer.Option("--split", help="Grocery Store split.")] = "val",
    backend: Annotated[str, typer.Option("--backend", help="onnx, openvino or torch.")] = "onnx",
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="Intra-op threads.")] = None,
    limit: Annotated[int | None, typer.Option(
        "--limit", min=1, help="Only the first N pictures of each class (a quick look).")] = None,
    record: Annotated[bool, typer.Option(
        "--record", help="Write the chosen text weight into the model directory (text_fusion.json), for scans.",
    )] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Vision alone, text alone (zero-shot, no training picture) and their fusion, on a Grocery Store split.

    Text is read with PP-OCRv4 and matched against the classes' names and descriptions
    (classifier/text.py); the fusion weight is calibrated on the split, and the fused top-1 is
    2-fold cross-validated (classifier/zeroshot.py).
    """
    from classifier.zeroshot import evaluate_zero_shot

    try:
        columns = (TextColumn("[bold]zero-shot"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn())
        with Progress(*columns, console=err_console) as bar:
            task = bar.add_task("zero-shot", total=None)
            report = evaluate_zero_shot(data, model, split=split, backend=backend, threads=threads, limit=limit,
                                        progress=lambda done, total: bar.update(task, completed=done, total=total))
    except ShelfTallyError as error:
        print_error(error, as_json=as_json)
        raise typer.Exit(1) from error
    result = report.to_dict()
    if record:
        import shlex
        import sys

        from classifier.zeroshot import TEXT_FUSION

        if limit is not None:
            print_error(ShelfTallyError("--record needs the whole split (no --limit)", reason="partial_split"),
                        as_json=as_json)
            raise typer.Exit(1)
        target = model / TEXT_FUSION
        target.write_text(json.dumps({**result, "command": shlex.join(["shelftally", *sys.argv[1:]])}, indent=2)
                          + "\n", encoding="utf-8")
        err_console.print(f"recorded text weight {report.weight:g} in {target}", highlight=False)
    if as_json:
        print_json(result)
        return

    def cell(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    held = f"{len(report.held_out_classes)} SKUs held out of training, {report.held_out_pictures} pictures" \
        if report.held_out_classes else "the model was trained on every class"
    console.print(
        f"{report.split}: {report.pictures} pictures, text matched on {report.pictures_with_text}; "
        f"text weight {report.weight:g}\n"
        f"  visual alone, all classes                 {cell(report.visual_top1)}\n"
        f"  visual + text, all classes (2-fold CV)    {cell(report.fused_top1)}"
        f"   (in-sample {cell(report.fused_top1_in_sample)})\n"
        f"  text alone, packaged classes              {cell(report.text_only_top1_packaged)}"
        f"   ({report.packaged_pictures} pictures)\n"
        f"  held-out SKUs, visual + text              {cell(report.held_out_text_top1)}   ({held})\n"
        f"  seconds per picture: text {report.seconds_per_picture_text:.3f}, "
        f"visual {report.seconds_per_picture_visual:.3f}",
        highlight=False,
    )
