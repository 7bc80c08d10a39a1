"""``shelftally demo``: a small warehouse counted from shelf photos (:mod:`workers.demo`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shelftally.errors import ConfigurationError
from workers.cli._common import get_context, handle_errors
from workers.console import console

__all__ = ["demo_cmd"]


def demo_cmd(
    typer_ctx: typer.Context,
    workdir: Annotated[
        Path, typer.Option(help="Folder of the demo: database, photos, evidence, models (models are reused).")
    ] = Path("shelftally-demo"),
    counts_only: Annotated[bool, typer.Option(
        "--counts-only", help="Only the inventory half: reconcile the shipped cycle-count file (no models, < 1 s).",
    )] = False,
    classifier_backbone: Annotated[str, typer.Option(
        "--classifier-backbone", help=(
            "auto: a linear probe on ImageNet EfficientNet-Lite0 when the pretrained extra is installed, else "
            "mobilenet_v3_small from random weights; or a backbone name (NAME.TAG: pretrained, probed)."),
    )] = "auto",
    detector: Annotated[str, typer.Option(
        "--detector", help="shipped: the committed models/product-agnostic; train: a YOLOv8n trained on the demo's "
        "own shelves (a few minutes more)."),
    ] = "shipped",
) -> None:
    """Count a small demo warehouse from shelf photos: train the demo models, scan, report.

    The demo always uses its own SQLite database in --workdir (not --database-url), so it never
    touches a real one. The first run trains the demo models (a few minutes); later runs reuse them.
    """
    with handle_errors():
        if workdir.exists() and not workdir.is_dir():
            raise ConfigurationError(f"--workdir {workdir} exists and is not a folder", reason="invalid_workdir")
        settings = get_context(typer_ctx).settings
        if counts_only:
            from workers.demo.counts import run_demo

            run_demo(workdir, console=console, settings=settings)
        else:
            from workers.demo.vision import DemoSize, run_vision_demo

            if detector not in ("shipped", "train"):
                raise typer.BadParameter(f"expected shipped or train, received {detector!r}", param_hint="--detector")
            run_vision_demo(workdir, console=console, settings=settings,
                            size=DemoSize(classifier_backbone=classifier_backbone,
                                          detector="shipped" if detector == "shipped" else "train"))
