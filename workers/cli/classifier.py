"""``shelftally classifier ...`` and ``shelftally sku ...``: train the SKU classifier, enroll SKUs.

Training imports torch lazily (extra ``train``); errors print their machine-readable reason and
exit with status 1 (2 for usage errors).
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from shelftally.errors import ConfigurationError, ShelfTallyError
from workers.cli._common import JsonOption, run_in_db
from workers.console import console, err_console, print_error, print_json, stage_bars

classifier_app = typer.Typer(no_args_is_help=True, help="Train the SKU classifier and measure open-set enrollment.")
sku_app = typer.Typer(
    no_args_is_help=True,
    help="Enroll SKUs in a classifier's gallery without retraining; match text against the SKU master.",
)

_FORMATS = ("grocery", "folder", "list")



def _fail(error: ShelfTallyError, as_json: bool = False) -> typer.Exit:
    print_error(error, as_json=as_json)
    return typer.Exit(1)


@classifier_app.command("train")
def train_cmd(
    data: Annotated[Path, typer.Option("--data", help="Dataset: Grocery Store folder, image folder or list file.",
                                       exists=True)],
    out: Annotated[Path, typer.Option("--out", help="Model directory to write.")],
    fmt: Annotated[str, typer.Option("--format", help="grocery, folder or list.")] = "grocery",
    val_data: Annotated[
        Path | None, typer.Option("--val", help="Validation folder / list file (folder, list); default: 20 % split.",
                                  exists=True)
    ] = None,
    backbone: Annotated[str, typer.Option("--backbone", help=(
        "Backbone, or backbone with registered pretrained weights, e.g. efficientnet_lite0.imagenet "
        "(see `shelftally classifier backbones`)."))] = "mobilenet_v3_large",
    input_size: Annotated[int | None, typer.Option(
        "--input-size", help="Square network input side, pixels (default: the weights' own, else 128).")] = None,
    mode: Annotated[str, typer.Option("--mode", help="probe (frozen backbone), partial or full fine-tuning.")] = "full",
    frozen_stages: Annotated[int, typer.Option("--frozen-stages", help="--mode partial: first stages frozen.")] = 0,
    backbone_lr_scale: Annotated[float, typer.Option(
        "--backbone-lr-scale", help="The backbone's top stage learns at --lr times this.")] = 1.0,
    layer_decay: Annotated[float, typer.Option(
        "--layer-decay", help="Each lower backbone stage learns this many times slower.")] = 1.0,
    probe_views: Annotated[int, typer.Option(
        "--probe-views", help="--mode probe: augmented views per picture.")] = 4,
    head: Annotated[str, typer.Option("--head", help="cosine or linear.")] = "cosine",
    embedding_dim: Annotated[int, typer.Option("--embedding-dim")] = 128,
    resize: Annotated[str | None, typer.Option(
        "--resize", help="letterbox, stretch or center_crop (default: the weights' own, else letterbox).")] = None,
    allow_partial: Annotated[bool, typer.Option(
        "--allow-partial", help="Load the pretrained tensors that fit instead of refusing.")] = False,
    cv_folds: Annotated[int, typer.Option(
        "--cv-folds", help="Also cross-validate top-1 on the training set with K folds (K more trainings).")] = 0,
    threads: Annotated[int | None, typer.Option("--threads", help="torch threads (default: torch's).")] = None,
    epochs: Annotated[int, typer.Option("--epochs")] = 30,
    batch: Annotated[int, typer.Option("--batch")] = 32,
    lr: Annotated[float, typer.Option("--lr")] = 3e-3,
    weight_decay: Annotated[float, typer.Option("--weight-decay")] = 0.05,
    label_smoothing: Annotated[float, typer.Option("--label-smoothing")] = 0.1,
    freeze: Annotated[bool, typer.Option("--freeze", help="Freeze the backbone (train embedding and head).")] = False,
    trainable_stages: Annotated[int, typer.Option("--trainable-stages", help="With --freeze: last stages kept.")] = 0,
    pretrained: Annotated[
        Path | None, typer.Option("--pretrained", help="Local backbone weights (state dict).", exists=True)
    ] = None,
    patience: Annotated[int, typer.Option("--patience", help="Stop after this many epochs without progress.")] = 5,
    holdout_classes: Annotated[
        int, typer.Option("--holdout-classes", help="Leave N classes out to calibrate open-set rejection.")
    ] = 0,
    false_accept_rate: Annotated[float, typer.Option("--false-accept-rate")] = 0.05,
    with_packshots: Annotated[
        bool, typer.Option("--with-packshots", help="Grocery Store: add each class's iconic image to training.")
    ] = False,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Train a classifier and write its model directory (model.pt, model.onnx, prototypes, metrics)."""
    from classifier.dataset import (
        DatasetItem,
        ImageDataset,
        read_grocery_classes,
        read_grocery_store,
        read_image_folder,
        read_list_file,
    )
    try:
        from classifier.train import EpochProgress, train_classifier
    except ShelfTallyError as error:  # torch / torchvision missing: names the extra to install
        raise _fail(error) from error

    if fmt not in _FORMATS:
        raise typer.BadParameter(f"{fmt!r} is not one of {', '.join(_FORMATS)}", param_hint="--format")
    if with_packshots and fmt != "grocery":
        raise typer.BadParameter("only with --format grocery", param_hint="--with-packshots")
    try:
        val: ImageDataset | None = None
        extra: list[DatasetItem] = []
        if fmt == "grocery":
            train_set = read_grocery_store(data, "train")
            val = read_grocery_store(data, "val")
            if with_packshots:
                extra = [DatasetItem(c.iconic_image, c.class_id) for c in read_grocery_classes(data)
                         if c.iconic_image.is_file()]
        elif fmt == "folder":
            train_set = read_image_folder(data, split="train")
            if val_data is not None:
                val = read_image_folder(val_data, split="val")
        else:
            train_set = read_list_file(data, split="train")
            if val_data is not None:
                val = read_list_file(val_data, class_names=train_set.class_names, split="val")
        columns = (
            TextColumn("[bold]epoch"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
        )
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        with Progress(*columns, console=err_console) as bar:
            task = bar.add_task("train", total=epochs, status="decoding images")
            folds = bar.add_task("cross-validation", total=cv_folds, status="", visible=cv_folds > 0)

            def fold_done(done: int, total: int) -> None:
                bar.update(folds, completed=done, status=f"fold {done}/{total}")

            def show(state: EpochProgress) -> None:
                bar.update(task, completed=state.epoch, status=(
                    f"loss {state.train_loss:.3f} | val top-1 {state.val_top1:.3f} (best {state.best_top1:.3f}) "
                    f"| {state.seconds:.0f} s/epoch"
                ))

            result = train_classifier(
                train_set, out_dir=out, val=val, backbone=backbone, input_size=input_size, epochs=epochs,
                batch=batch, lr=lr, weight_decay=weight_decay, label_smoothing=label_smoothing, freeze=freeze,
                trainable_stages=trainable_stages, pretrained=pretrained, seed=seed, patience=patience,
                holdout_classes=holdout_classes, false_accept_rate=false_accept_rate, extra_train_items=extra,
                mode=mode,  # type: ignore[arg-type]  # checked by train_classifier
                frozen_stages=frozen_stages, backbone_lr_scale=backbone_lr_scale, layer_decay=layer_decay,
                probe_views=probe_views, head=head, embedding_dim=embedding_dim, resize=resize,
                allow_partial=allow_partial, cv_folds=cv_folds, cv_progress=fold_done,
                progress=show, command=shlex.join(["shelftally", *sys.argv[1:]]),
            )
    except ShelfTallyError as error:
        raise _fail(error) from error
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    from classifier.model_dir import read_model_dir

    metrics = read_model_dir(result).metrics
    summary = ", ".join(f"{k} {metrics[k]:.3f}" for k in ("top1", "top5", "macro_f1") if k in metrics)
    openset = metrics.get("openset", {})
    if "auroc" in openset:
        summary += f", open-set AUROC {openset['auroc']:.3f}"
    if metrics.get("cv_top1") is not None:
        summary += f", {cv_folds}-fold CV top-1 on train {metrics['cv_top1']:.3f}"
    console.print(
        f"model directory {result}: {summary}; {metrics['epochs_run']} epochs in {metrics['training_seconds']:.0f} s",
        highlight=False,
    )


@classifier_app.command("backbones")
def backbones_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print the table as JSON.")] = False,
) -> None:
    """List the registered pretrained weights, their preprocessing, licence and whether they are installed."""
    from classifier.pretrained import PRETRAINED, available

    rows = [
        {"name": cfg.name, "architecture": cfg.architecture, "installed": available(cfg.name),
         "source": cfg.package or cfg.file_name, "input_size": cfg.input_size, "resize": cfg.resize,
         "crop_pct": cfg.crop_pct, "interpolation": cfg.interpolation, "mean": list(cfg.mean), "std": list(cfg.std),
         "licence": cfg.licence}
        for cfg in PRETRAINED.values()
    ]
    if as_json:
        print_json({"pretrained": rows})
        return
    from rich.table import Table

    table = Table("weights", "installed", "source", "input", "mean / std", "licence")
    for row in rows:
        table.add_row(
            str(row["name"]), "yes" if row["installed"] else "no", str(row["source"]),
            f"{row['input_size']} px {row['resize']} {row['crop_pct']} {row['interpolation']}",
            f"{row['mean']} / {row['std']}", str(row["licence"]),
        )
    console.print(table)


@sku_app.command("enroll")
def enroll_cmd(
    code: Annotated[str, typer.Argument(help="SKU code.")],
    pictures: Annotated[list[Path], typer.Argument(help="1-10 reference pictures.", exists=True, dir_okay=False)],
    model: Annotated[Path, typer.Option("--model", help="Classifier model directory.", exists=True, file_okay=False)],
    backend: Annotated[str, typer.Option("--backend", help="onnx, openvino or torch.")] = "onnx",
) -> None:
    """Add a SKU to the model's gallery from reference pictures (a new gallery version)."""
    from classifier.gallery import enroll

    try:
        gallery = enroll(model, code, pictures, backend=backend)
    except ShelfTallyError as error:
        raise _fail(error) from error
    console.print(
        f"enrolled {code} from {len(pictures)} picture(s): gallery {gallery.version}, {len(gallery)} SKU(s)",
        highlight=False,
    )


@sku_app.command("gallery")
def gallery_cmd(
    model: Annotated[Path, typer.Option("--model", help="Classifier model directory.", exists=True, file_okay=False)],
) -> None:
    """List the gallery's versions (the current one marked) and its SKUs."""
    from classifier.gallery import current_version, list_versions, read_gallery

    try:
        current = current_version(model)
        versions = list_versions(model)
        if not versions:
            console.print(f"{model}: no gallery (nothing enrolled)", highlight=False)
            return
        for name in versions:
            gallery = read_gallery(model, name)
            mark = "*" if name == current else " "
            console.print(f"{mark} {name}: {len(gallery)} SKU(s): {', '.join(gallery.sku_codes)}", highlight=False)
    except ShelfTallyError as error:
        raise _fail(error) from error


@classifier_app.command("quantize")
def quantize_cmd(
    model_dir: Annotated[Path, typer.Argument(help="Model directory (with model.onnx).", exists=True, file_okay=False)],
    data: Annotated[Path, typer.Option("--data", help="Calibration pictures: Grocery Store folder (its train "
                                       "split), image folder or list file.", exists=True)],
    fmt: Annotated[str, typer.Option("--format", help="grocery, folder or list.")] = "grocery",
    val_data: Annotated[
        Path | None, typer.Option("--val", help="Labelled pictures to score on (folder, list); grocery: its val split.",
                                  exists=True)
    ] = None,
    calibration: Annotated[int, typer.Option("--calibration", min=1, help="Calibration pictures (at most).")] = 300,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """INT8 post-training quantisation (NNCF, OpenVINO) with the top-1 of FP32 and INT8 on the val pictures.

    Writes openvino-int8/ into the model directory. Scans use it with models.classifier_precision=int8
    and backend openvino, only while its top-1 loss is within models.int8_max_accuracy_drop.
    """
    from classifier.dataset import read_grocery_store, read_image_folder, read_list_file
    from classifier.quantize import quantize_classifier
    from workers.cli.detector import print_int8_record
    from workers.settings import Settings

    if fmt not in _FORMATS:
        raise typer.BadParameter(f"{fmt!r} is not one of {', '.join(_FORMATS)}", param_hint="--format")
    if fmt != "grocery" and val_data is None:
        raise typer.BadParameter("--val is needed with --format folder or list", param_hint="--val")
    try:
        margin = Settings.from_environment().models.int8_max_accuracy_drop
        name = None
        if fmt == "grocery":
            train_set, val = read_grocery_store(data, "train"), read_grocery_store(data, "val")
            name = f"{Path(data).resolve().name}/val"
        elif fmt == "folder":
            assert val_data is not None  # checked above
            train_set, val = read_image_folder(data, split="train"), read_image_folder(val_data, split="val")
        else:
            train_set = read_list_file(data, split="train")
            assert val_data is not None  # checked above
            val = read_list_file(val_data, class_names=train_set.class_names, split="val")
        with stage_bars() as show:
            record = quantize_classifier(
                model_dir, train_set, val, calibration_pictures=calibration, evaluation_name=name,
                command=shlex.join(["shelftally", *sys.argv[1:]]), progress=show,
            )
    except ShelfTallyError as error:
        raise _fail(error, as_json) from error
    print_int8_record(record, margin, as_json, "models.classifier_precision")


@classifier_app.command("evaluate-enrollment")
def evaluate_enrollment_cmd(
    model: Annotated[Path, typer.Option(
        "--model", help="Model directory trained with --holdout-classes.", exists=True, file_okay=False)],
    data: Annotated[Path, typer.Option("--data", help="Grocery Store dataset folder.", exists=True, file_okay=False)],
    shots: Annotated[int, typer.Option(
        "--shots", help="0: enroll each held-out SKU from its packshot alone; K: from K training pictures.")] = 0,
    backend: Annotated[str, typer.Option("--backend", help="onnx, openvino or torch.")] = "onnx",
    seed: Annotated[int, typer.Option("--seed", help="Seeds the choice of training pictures.")] = 0,
    out: Annotated[Path | None, typer.Option("--out", help="Also write the report to this JSON file.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Enroll the model's held-out SKUs (not trained on) and measure recognition on the val split."""
    from classifier.evaluate import evaluate_enrollment

    try:
        report = evaluate_enrollment(model, data, shots=shots, backend=backend, seed=seed)
    except ShelfTallyError as error:
        raise _fail(error, as_json) from error
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--shots") from error
    if out is not None:
        out.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    if as_json:
        print_json(report.to_dict())
        return
    auroc = f"{report.auroc:.3f}" if report.auroc is not None else "n/a"
    console.print(
        f"{len(report.held_out_classes)} SKUs held out of training, enrolled from {report.source}; "
        f"known-vs-held-out AUROC before enrollment {auroc}\n"
        f"  held-out val pictures ({report.held_out_items}): named right {report.held_out_accuracy:.3f}, "
        f"unknown {report.held_out_unknown_rate:.3f}, named as a trained SKU {report.held_out_as_trained_rate:.3f}\n"
        f"  trained-SKU val pictures ({report.known_items}): {report.known_accuracy:.3f} with the gallery, "
        f"{report.known_accuracy_without_gallery:.3f} without\n"
        f"  all val pictures: {report.overall_accuracy:.3f}\n"
        f"  with the open-set threshold off (nothing unknown): held-out {report.closed_set_held_out_accuracy:.3f}, "
        f"trained {report.closed_set_known_accuracy:.3f}, all {report.closed_set_overall_accuracy:.3f}",
        highlight=False,
    )


@sku_app.command("match")
def match_cmd(
    typer_ctx: typer.Context,
    text: Annotated[list[str], typer.Argument(help="Text as read on a package (one or more lines), or a barcode.")],
    top: Annotated[int, typer.Option("--top", min=1, help="How many SKUs to list.")] = 5,
    as_json: JsonOption = False,
) -> None:
    """Match text (or a barcode number) against the SKU master, as the zero-shot text matcher does.

    For debugging the matcher: it prints each SKU's text score in [0, 1] and the words of its
    name, brand and description that the text matched (``classifier/text.py`` says how).
    """
    from classifier.text import TextMatcher
    from workers.scan.run import sku_master

    skus = run_in_db(typer_ctx, sku_master, as_json)
    if not skus:
        raise _fail(ConfigurationError("the SKU master is empty: shelftally import skus FILE", reason="no_skus"),
                    as_json)
    try:
        matcher = TextMatcher(skus)
    except ShelfTallyError as error:
        raise _fail(error, as_json) from error
    by_code = matcher.sku_of_barcodes(text)
    barcode = by_code[0] if by_code is not None else None
    matches = matcher.match(text, top=top)
    if as_json:
        print_json({"barcode_sku": barcode, "matches": [
            {"sku_code": m.sku_code, "score": round(m.score, 4), "matched": list(m.matched)} for m in matches
        ]})
        return
    if barcode is not None:
        console.print(f"barcode: {barcode}", highlight=False)
    if not matches:
        console.print("no SKU matches this text", highlight=False)
    for m in matches:
        console.print(f"{m.score:.3f}  {m.sku_code}  ({', '.join(m.matched)})", highlight=False)
