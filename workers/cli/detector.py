"""``shelftally detector ...``: train, export and synthesise data for the product detector.

Training and export import ultralytics lazily (extra ``train``); errors print their
machine-readable reason and exit with status 1 (2 for usage errors).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml  # type: ignore[import-untyped,unused-ignore]
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from shelftally.errors import ConfigurationError, ShelfTallyError
from workers.console import console, err_console, print_error, stage_bars

detector_app = typer.Typer(no_args_is_help=True, help="Train, export and synthesise data for the product detector.")



def _fail(error: ShelfTallyError, as_json: bool = False) -> typer.Exit:
    print_error(error, as_json=as_json)
    return typer.Exit(1)


def _parse_sets(values: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in values or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--set")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as error:
            raise typer.BadParameter(f"{item!r}: {error}", param_hint="--set") from error
    return out


def _parse_size(value: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in value.lower().split("x"))
    except ValueError as error:
        raise typer.BadParameter(f"expected WIDTHxHEIGHT, got {value!r}", param_hint="--size") from error
    return w, h


@detector_app.command("train")
def train_cmd(
    data: Annotated[Path, typer.Option("--data", help="The dataset's data.yaml (YOLO / Roboflow format).",
                                       exists=True, dir_okay=False)],
    out: Annotated[Path, typer.Option("--out", help="Model directory to write.")],
    model: Annotated[str, typer.Option(
        "--model", help="Model YAML (never downloaded): yolov8n.yaml trains from scratch, yolov8n-lite0.yaml starts "
        "from ImageNet EfficientNet-Lite0 weights (extra pretrained).")] = "yolov8n.yaml",
    fine_tune_from: Annotated[
        Path | None, typer.Option("--fine-tune-from", help="Local .pt or model directory to fine-tune.", exists=True)
    ] = None,
    imgsz: Annotated[int, typer.Option("--imgsz", help="Network input side in pixels (multiple of 32).")] = 640,
    epochs: Annotated[int, typer.Option("--epochs")] = 50,
    batch: Annotated[int, typer.Option("--batch")] = 16,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    device: Annotated[str, typer.Option("--device", help="cpu, 0, cuda:0, ...")] = "cpu",
    sets: Annotated[
        list[str] | None,
        typer.Option("--set", help="Extra ultralytics training argument KEY=VALUE (repeatable), e.g. lr0=0.001."),
    ] = None,
    work_dir: Annotated[
        Path | None, typer.Option("--work-dir", help="Keep the prepared dataset and ultralytics runs here.")
    ] = None,
) -> None:
    """Train a detector (ultralytics YOLO, offline) and write its model directory with ONNX weights."""
    from detector.train import EpochProgress, train_detector

    hyperparameters = _parse_sets(sets)
    columns = (
        TextColumn("[bold]epoch"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
    )
    with Progress(*columns, console=err_console, transient=False) as bar:
        task = bar.add_task("train", total=epochs, status="preparing dataset")

        def show(state: EpochProgress) -> None:
            losses = " ".join(f"{k.removesuffix('_loss')} {v:.3f}" for k, v in state.losses.items())
            val = "-" if state.val_map50 is None else f"{state.val_map50:.3f}"
            bar.update(task, completed=state.epoch, total=state.epochs, status=f"{losses} | val mAP50 {val}")

        try:
            result = train_detector(
                data,
                model=str(fine_tune_from) if fine_tune_from is not None else model,
                imgsz=imgsz,
                epochs=epochs,
                batch=batch,
                out_dir=out,
                seed=seed,
                device=device,
                progress=show,
                work_dir=work_dir,
                **hyperparameters,
            )
        except ShelfTallyError as error:
            raise _fail(error) from error
    from detector.model_dir import read_model_dir

    metrics = read_model_dir(result).metrics
    summary = ", ".join(
        f"{k} {metrics[k]:.3f}" for k in ("mAP50", "mAP50-95", "precision", "recall", "test_mAP50") if k in metrics
    )
    console.print(f"model directory {result}: {summary}", highlight=False)


@detector_app.command("evaluate")
def evaluate_cmd(
    model_dir: Annotated[Path, typer.Argument(help="Model directory (with model.pt).", exists=True, file_okay=False)],
    data: Annotated[Path, typer.Option("--data", help="The dataset's data.yaml.", exists=True, dir_okay=False)],
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    agnostic: Annotated[bool, typer.Option("--agnostic", help="Score all classes as one (product / no product).")] = (
        False
    ),
    record_as: Annotated[
        str | None, typer.Option("--record-as", help="Also store the result in metrics.json under this name.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Score a model directory on a labelled dataset split (mAP50, mAP50-95, precision, recall)."""
    from detector.evaluate import evaluate_detector

    try:
        result = evaluate_detector(model_dir, data, split=split, agnostic=agnostic, record_as=record_as)
    except ShelfTallyError as error:
        raise _fail(error, as_json) from error
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        console.print(
            f"{escape(str(data))} [{split}{', agnostic' if agnostic else ''}]: {result['images']} images, "
            f"{result['boxes']} boxes: "
            f"mAP50 {result['mAP50']:.3f}, mAP50-95 {result['mAP50-95']:.3f}, precision {result['precision']:.3f}, "
            f"recall {result['recall']:.3f}",
            highlight=False,
        )


def print_int8_record(record: Any, max_drop_points: float, as_json: bool, setting: str) -> None:
    """Show an INT8 record: per evaluation set FP32, INT8 and the delta, and whether the gate accepts it."""
    from shelftally.runtimes.int8 import summarize

    summary = summarize(record, max_drop_points)
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
        return
    for name, scores in record.evaluations.items():
        delta = summary["delta_points"][name]
        console.print(
            f"{escape(name)}: {record.metric} FP32 {scores['fp32']:.4f}, INT8 {scores['int8']:.4f} "
            f"({delta:+.2f} points, {scores['pictures']} pictures)",
            highlight=False,
        )
    verdict = "[green]used[/]" if summary["within_margin"] else "[red]not used[/] (FP32 runs instead)"
    console.print(
        f"worst loss {summary['worst_drop_points']:.2f} points; with the margin of {max_drop_points:g} "
        f"(models.int8_max_accuracy_drop) INT8 is {verdict} when {setting} is int8 (backend openvino)"
    )


@detector_app.command("quantize")
def quantize_cmd(
    model_dir: Annotated[Path, typer.Argument(help="Model directory (with model.onnx).", exists=True, file_okay=False)],
    data: Annotated[
        Path, typer.Option("--data", help="data.yaml whose calibration split calibrates.", exists=True, dir_okay=False)
    ],
    evaluations: Annotated[
        list[str], typer.Option("--eval", help="DATA.yaml[:split] to score FP32 and INT8 on (repeatable; split test).")
    ],
    calibration_split: Annotated[str, typer.Option("--calibration-split")] = "train",
    calibration: Annotated[int, typer.Option("--calibration", min=1, help="Calibration pictures (at most).")] = 300,
    agnostic: Annotated[bool, typer.Option("--agnostic", help="Score all classes as one.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """INT8 post-training quantisation (NNCF, OpenVINO) with the mAP50 of FP32 and INT8 on each --eval set.

    Writes openvino-int8/ into the model directory. Scans use it with models.detector_precision=int8
    and backend openvino, only while its worst mAP50 loss is within models.int8_max_accuracy_drop.
    """
    import shlex

    from detector.quantize import parse_evaluation_set, quantize_detector
    from workers.settings import Settings

    try:
        sets = [parse_evaluation_set(text) for text in evaluations]
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--eval") from error
    try:
        margin = Settings.from_environment().models.int8_max_accuracy_drop
        with stage_bars() as show:
            record = quantize_detector(
                model_dir, data, sets, calibration_split=calibration_split, calibration_pictures=calibration,
                agnostic=agnostic, command=shlex.join(["shelftally", *sys.argv[1:]]), progress=show,
            )
    except ShelfTallyError as error:
        raise _fail(error, as_json) from error
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--eval") from error
    print_int8_record(record, margin, as_json, "models.detector_precision")


@detector_app.command("export")
def export_cmd(
    model_dir: Annotated[Path, typer.Argument(help="A model directory.", exists=True, file_okay=False)],
    fmt: Annotated[str, typer.Option("--format", help="onnx or openvino.")] = "onnx",
    fp16_weights: Annotated[bool, typer.Option(
        "--fp16-weights", help="ONNX: store the weights as float16 (half the file; computed in float32). Without "
        "model.pt the existing model.onnx is converted.")] = False,
) -> None:
    """Export a model directory's weights to ONNX (from model.pt) or OpenVINO IR (from model.onnx)."""
    from detector.export import FORMATS, export_model_dir

    if fmt not in FORMATS:
        raise typer.BadParameter(f"{fmt!r} is not one of {', '.join(FORMATS)}", param_hint="--format")
    try:
        path = export_model_dir(model_dir, fmt, fp16_weights=fp16_weights)
    except ShelfTallyError as error:
        raise _fail(error) from error
    console.print(f"wrote {path}", highlight=False)


@detector_app.command("synth")
def synth_cmd(
    packshots: Annotated[
        str, typer.Option("--packshots", help="Folder of packshots on plain backgrounds, or 'drawn'.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Output folder (agnostic/ and sku/ datasets).")],
    images: Annotated[int, typer.Option("--images", help="Number of pictures, all splits.")] = 200,
    size: Annotated[str, typer.Option("--size", help="Picture size WIDTHxHEIGHT.")] = "1280x960",
    max_objects: Annotated[int, typer.Option("--max-objects", help="Most products per picture.")] = 80,
    min_objects: Annotated[int | None, typer.Option("--min-objects", help="Fewest products per picture.")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    skus: Annotated[int, typer.Option("--skus", help="Number of drawn SKUs (with --packshots drawn).")] = 12,
    pattern: Annotated[str, typer.Option("--pattern", help="File name pattern in the packshot folder.")] = "*",
    backgrounds: Annotated[
        Path | None, typer.Option("--backgrounds", help="Folder of background photos.", exists=True, file_okay=False)
    ] = None,
    val_fraction: Annotated[float, typer.Option("--val-fraction")] = 0.2,
    test_fraction: Annotated[float, typer.Option("--test-fraction")] = 0.0,
) -> None:
    """Generate synthetic shelf pictures (cut-paste synthesis) as two YOLO datasets sharing the images."""
    from detector.synth import SceneConfig, drawn_packshots, load_packshots, write_synthetic_datasets

    size_wh = _parse_size(size)
    if out.exists() and not out.is_dir():
        raise _fail(ConfigurationError(f"--out {out} exists and is not a folder", reason="invalid_out_dir"))
    low = min_objects if min_objects is not None else max(1, max_objects // 4)
    try:
        config = SceneConfig(size_wh=size_wh, min_objects=low, max_objects=max_objects, background_dir=backgrounds)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    try:
        if packshots == "drawn":
            shots = drawn_packshots([f"SKU-{i + 1:04d}" for i in range(skus)], seed=seed)
        else:
            shots = load_packshots(packshots, pattern=pattern)
        with Progress(TextColumn("[bold]pictures"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=err_console) as bar:
            task = bar.add_task("synth", total=images)
            result = write_synthetic_datasets(
                out, shots, n_images=images, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                config=config, progress=lambda done, _total: bar.update(task, completed=done),
            )
    except ShelfTallyError as error:
        raise _fail(error) from error
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    console.print(
        f"{sum(result.images.values())} pictures, {sum(result.boxes.values())} boxes, {len(result.sku_codes)} SKUs\n"
        f"class-agnostic: {result.agnostic_yaml}\nper SKU:        {result.per_sku_yaml}",
        highlight=False,
    )


@detector_app.command("merge")
def merge_cmd(
    sources: Annotated[list[str], typer.Option(
        "--source", help="A dataset's data.yaml, or data.yaml:train[,val,test] for only those splits (repeatable).")],
    out: Annotated[Path, typer.Option("--out", help="Folder of the merged dataset (replaced if an earlier merge).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Merge YOLO datasets into one class-agnostic product dataset (every box becomes class 0, product)."""
    from detector.merge import merge_datasets, parse_source

    try:
        report = merge_datasets([parse_source(text) for text in sources], out)
    except ShelfTallyError as error:
        raise _fail(error, as_json) from error
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
        return
    for entry in report.sources:
        counts = ", ".join(f"{k} {v['images']} pictures / {v['boxes']} boxes" for k, v in entry["splits"].items())
        console.print(f"{escape(entry['data_yaml'])}: {counts}", highlight=False)
    totals = ", ".join(f"{k} {report.images[k]} / {report.boxes[k]}" for k in report.images)
    console.print(f"merged (pictures / boxes): {totals}\ndata: {escape(report.data_yaml)}", highlight=False)

