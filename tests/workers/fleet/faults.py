"""Fault injection for the fleet tests, imported into real workers with ``shelftally worker --include``.

A test sets ``<prefix>test-fault:<task name>`` in Redis to one of:

- ``kill-once``: the first delivery of each message SIGKILLs its own worker process;
- ``kill-always``: every delivery does;
- ``sleep-once:<seconds>``: the first delivery of each message sleeps, then runs;
- ``transient-once``: the first run of each message fails with a database outage (retried);
- ``permanent``: every run fails with a ValueError (a bug: never retried).

Nothing here is imported by ShelfTally itself.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from inventory.errors import DatabaseUnavailableError
from workers.fleet import tasks
from workers.fleet.app import context


def _wrap(task: Any) -> None:
    original = task.run

    def run(*args: Any, **kwargs: Any) -> Any:
        ctx = context()
        prefix = ctx.settings.fleet.key_prefix
        fault = ctx.redis.get(f"{prefix}test-fault:{task.name}")
        if fault:
            kind = fault.decode()
            first = bool(ctx.redis.set(f"{prefix}test-fault-fired:{task.name}:{task.request.id}", 1, nx=True, ex=600))
            if kind == "kill-always" or (kind == "kill-once" and first):
                os.kill(os.getpid(), signal.SIGKILL)
            if kind.startswith("sleep-once:") and first:
                time.sleep(float(kind.split(":", 1)[1]))
            if kind == "transient-once" and first:
                raise DatabaseUnavailableError("injected: the database is restarting")
            if kind == "permanent":
                raise ValueError("injected: a bug")
        return original(*args, **kwargs)

    task.run = run


for _task in (tasks.ingest, tasks.vision, tasks.persist):
    _wrap(_task)
