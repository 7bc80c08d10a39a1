"""The ``shelftally`` command line (typer + rich): the root app; one module per command group.

========================  =============================================================
module                    commands
========================  =============================================================
:mod:`.db`                ``db upgrade``, ``db downgrade``, ``db current``
:mod:`.imports`           ``import skus``, ``import locations``, ``import stock``, ``import counts``
:mod:`.counts`            ``counts``
:mod:`.discrepancies`     ``discrepancies`` (list, ``ack``, ``resolve``), ``adjust approve``, ``alerts deliver``
:mod:`.scan`              ``scan``
:mod:`.evaluate`          ``evaluate grocery``, ``evaluate detector``, ``evaluate classifier``
:mod:`.detector`          ``detector ...`` (train, evaluate, quantize, export, synth, merge)
:mod:`.classifier`        ``classifier ...`` and ``sku ...`` (gallery enrollment)
:mod:`.fleet`             ``worker``, ``beat``, ``ingest``, ``status``, ``tasks ...``, ``images prune``
:mod:`.cameras`           ``cameras add``, ``list``, ``remove``, ``poll``
:mod:`.demo`              ``demo``
========================  =============================================================

Every query takes ``--json`` and then prints one JSON document on stdout and nothing else.
Errors print the machine-readable reason and exit with status 1 (2 for usage errors). What the
command modules share (the per-invocation :class:`~workers.cli._common.Context`, options, error
handling) is in :mod:`workers.cli._common`; no command module imports another's commands.
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated, Any

import typer

from shelftally import __version__
from shelftally.errors import ShelfTallyError
from workers.cli._common import Context, fail
from workers.cli.cameras import cameras_app
from workers.cli.classifier import classifier_app, sku_app
from workers.cli.counts import counts_cmd
from workers.cli.db import db_app
from workers.cli.demo import demo_cmd
from workers.cli.detector import detector_app
from workers.cli.discrepancies import adjust_app, alerts_app, discrepancies_app
from workers.cli.evaluate import evaluate_app
from workers.cli.fleet import beat_cmd, images_app, ingest_cmd, status_cmd, tasks_app, worker_cmd
from workers.cli.imports import import_app
from workers.cli.scan import scan_cmd
from workers.settings import Settings

__all__ = ["app", "main"]

app = typer.Typer(no_args_is_help=True, add_completion=False, help="ShelfTally: stock counts from pictures.")
# The order of registration is the order of `shelftally --help`: commands first, then groups.
app.add_typer(db_app, name="db")
app.add_typer(import_app, name="import")
app.add_typer(discrepancies_app, name="discrepancies")
app.add_typer(adjust_app, name="adjust")
app.add_typer(alerts_app, name="alerts")
app.add_typer(detector_app, name="detector")
app.add_typer(classifier_app, name="classifier")
app.add_typer(sku_app, name="sku")
app.add_typer(evaluate_app, name="evaluate")
app.add_typer(tasks_app, name="tasks")
app.add_typer(cameras_app, name="cameras")
app.add_typer(images_app, name="images")
app.command("status")(status_cmd)
app.command("worker")(worker_cmd)
app.command("beat")(beat_cmd)
app.command("ingest")(ingest_cmd)
app.command("counts")(counts_cmd)
app.command("scan")(scan_cmd)
app.command("demo")(demo_cmd)


@app.callback()
def main(
    typer_ctx: typer.Context,
    database_url: Annotated[
        str | None, typer.Option("--database-url", help="Overrides SHELFTALLY_DATABASE_URL.", show_default=False)
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at INFO.")] = False,
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", callback=_version, is_eager=True)
    ] = False,
) -> None:
    """Settings come from SHELFTALLY_* environment variables and ./.env (see workers/settings.py)."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # httpx logs every request line, query string (tokens) included, at INFO.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        overrides: dict[str, Any] = {} if database_url is None else {"database_url": database_url}
        settings = Settings.from_environment(**overrides)
    except ShelfTallyError as error:
        fail(error)
        raise typer.Exit(2) from error
    typer_ctx.obj = Context(settings)


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"shelftally {__version__}\n")
        raise typer.Exit(0)

