"""``shelftally scan PATH...``: pictures in, counts, discrepancies and evidence images out, in-process.

Paths may be files, folders and quoted glob patterns (:func:`workers.scan.run.collect_pictures`).
A picture that fails is reported with its reason and recorded as a rejected scan; the others are
still scanned; the exit status is 1 when any failed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from workers.cli._common import JsonOption, get_context, handle_errors, parse_time_option
from workers.console import err_console, print_json
from workers.scan.report import print_run
from workers.scan.run import build_pipeline, collect_pictures, result_dict, run_scan

__all__ = ["pictures_or_refuse", "scan_cmd"]


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



def scan_cmd(
    typer_ctx: typer.Context,
    paths: Annotated[list[Path], typer.Argument(help="Picture files, folders or quoted glob patterns.")],
    location: Annotated[str | None, typer.Option(
        "--location", help="Location code; omit it to read each picture's location label (QR code / barcode).",
    )] = None,
    captured_at: Annotated[str | None, typer.Option(
        "--captured-at", help="Capture time (ISO 8601 with offset); default: EXIF, else the file's time.",
    )] = None,
    detector: Annotated[Path | None, typer.Option(
        "--detector", help="Detector model directory (default SHELFTALLY_MODELS__DETECTOR_DIR).",
        exists=True, file_okay=False,
    )] = None,
    classifier: Annotated[Path | None, typer.Option(
        "--classifier", help="Classifier model directory (default SHELFTALLY_MODELS__CLASSIFIER_DIR).",
        exists=True, file_okay=False,
    )] = None,
    evidence_dir: Annotated[Path | None, typer.Option(
        "--evidence-dir", help="Where evidence images go (default SHELFTALLY_SCAN__EVIDENCE_DIR, ./evidence).",
    )] = None,
    read_text: Annotated[bool | None, typer.Option(
        "--read-text/--no-read-text",
        help="Also read text and barcodes on products the classifier is unsure of "
             "(default SHELFTALLY_SCAN__READ_TEXT).",
    )] = None,
    as_json: JsonOption = False,
) -> None:
    """Count the stock in pictures, reconcile it against the book, write evidence images.

    Pictures that fail are reported with their reason (and recorded as rejected scans); the rest
    are still scanned. Exit status 1 when any picture failed.
    """
    ctx = get_context(typer_ctx)
    when = parse_time_option(captured_at, "--captured-at")
    pictures = pictures_or_refuse(paths)
    with handle_errors(as_json):
        pipeline = build_pipeline(ctx.settings, ctx.factory, detector=detector, classifier=classifier,
                                  evidence_dir=evidence_dir, read_text=read_text)
        run = run_scan(pipeline, pictures, location_code=location, captured_at=when, show_progress=not as_json)
        report = ctx.deliver_alerts()
    if as_json:
        print_json({"pictures": [result_dict(r) for r in run.results], "alerts_delivered": report.delivered,
                    "alerts_failed": report.failed})
    else:
        print_run(run, ctx.factory, confirm_after_scans=ctx.settings.reconcile.confirm_after_scans)
    if run.failed:
        if not as_json:
            err_console.print(f"{len(run.failed)} picture(s) could not be scanned (see the reasons above)",
                              highlight=False)
        raise typer.Exit(1)

