"""The consoles that commands print on (the CLI, the demo, scan reports) and the one way of reporting an error."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from inventory.errors import ImportFileError
from shelftally.errors import ShelfTallyError

# Piped output (files, CI logs) gets wide tables instead of rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def print_json(data: Any) -> None:
    """One JSON document on stdout."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def print_error(error: ShelfTallyError, *, as_json: bool = False) -> None:
    """Report an error: ``error (<reason>): <message>`` on stderr, its text never read as markup
    (paths and package extras contain brackets); with ``as_json`` also the error object on stdout.
    """
    if as_json:
        data: dict[str, Any] = error.to_dict()
        if isinstance(error, ImportFileError):
            data["row_errors"] = [{"line": line, "reason": reason} for line, reason in error.row_errors]
        print_json(data)
    err_console.print(f"[bold red]error[/] ({error.reason}): {escape(str(error))}", highlight=False, soft_wrap=True)
    if isinstance(error, ImportFileError):
        for line, reason in error.row_errors:
            err_console.print(f"  line {line}: {escape(reason)}", highlight=False, soft_wrap=True)


@contextmanager
def stage_bars() -> Iterator[Callable[[str, int, int], None]]:
    """Progress bars on stderr, one per stage: yields ``progress(stage, done, total)`` for long commands."""
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True) as bar:
        tasks: dict[str, TaskID] = {}

        def show(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done)

        yield show
