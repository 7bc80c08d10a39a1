"""A real fleet for the tests: PostgreSQL, Redis on 127.0.0.1:6379, and ``shelftally worker``
processes started and killed by the tests.

Each test gets its own PostgreSQL schema, Redis key prefix (``SHELFTALLY_FLEET__KEY_PREFIX``,
which also prefixes Celery's queues) and picture store, so tests never see each other's
messages, and a CI run never sees a session's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

import migrations
from inventory.db import create_engine, session_factory
from tests.conftest import POSTGRES_URL, _postgres_schema_url, seed_shelf
from tests.workers.cameras.conftest import silent_listener, snapshot_server  # noqa: F401  (fixtures for cameras)
from tests.workers.conftest import SHELF

REDIS_URL = os.environ.get("SHELFTALLY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
ROOT = Path(__file__).resolve().parents[3]
SHELFTALLY = str(Path(sys.executable).parent / "shelftally")


def redis_or_fail() -> Any:
    """A client of the test Redis; the test fails (not skips) when it is down."""
    from redis import Redis

    client = Redis.from_url(REDIS_URL, socket_timeout=5, socket_connect_timeout=2)
    try:
        client.ping()
    except Exception as error:  # noqa: BLE001
        pytest.fail(f"Redis at {REDIS_URL} is not reachable ({error}); .ci/run starts it")
    return client


@dataclass
class Fleet:
    """One test's fleet: settings as environment variables, its database, Redis and workers."""

    env: dict[str, str]
    prefix: str
    database_url: str
    factory: sessionmaker[Session]
    redis: Any
    home: Path
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def run(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run a ``shelftally`` command with this fleet's settings."""
        return subprocess.run([SHELFTALLY, *args], env={**self.env, **(env or {})}, cwd=self.home,
                              capture_output=True, text=True, timeout=timeout, check=False)

    def start_worker(
        self, *args: str, env: dict[str, str] | None = None, ready_s: float = 120
    ) -> subprocess.Popen[bytes]:
        """Start ``shelftally worker`` (own process group) and wait for its "ready" line."""
        log = self.home / f"worker-{len(self.workers)}.log"
        process = subprocess.Popen(
            [SHELFTALLY, "worker", "--include", "tests.workers.fleet.faults", *args],
            env={**self.env, **(env or {})}, cwd=self.home, stdout=log.open("wb"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.workers.append(process)
        deadline = time.monotonic() + ready_s
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace")
            if " ready." in text:
                return process
            if process.poll() is not None:
                pytest.fail(f"worker exited with {process.returncode} before it was ready:\n{text[-4000:]}")
            time.sleep(0.2)
        pytest.fail(f"worker not ready in {ready_s} s:\n{log.read_text(errors='replace')[-4000:]}")

    def logs(self) -> str:
        return "\n".join(f"--- {path.name}\n{path.read_text(errors='replace')[-6000:]}"
                         for path in sorted(self.home.glob("worker-*.log")))

    def stop_workers(self) -> None:
        for process in self.workers:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for process in self.workers:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:  # a worker stuck in a task ignores SIGTERM (ENVIRONMENT.md)
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        self.workers.clear()

    def scan_rows(self) -> list[sa.Row[Any]]:
        with self.factory() as session:
            return list(session.execute(sa.text(
                "SELECT id, status, image_sha256, reject_reason FROM scan ORDER BY id")).all())

    def wait_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.25)
        pytest.fail(f"timed out after {timeout} s waiting for {what}\n{self.logs()}")

    def pending(self) -> dict[str, int]:
        """Messages still queued per queue, and taken but unacknowledged (``unacked``)."""
        counts = {queue: int(self.redis.llen(f"{self.prefix}{queue}")) for queue in ("ingest", "vision", "db")}
        counts["unacked"] = int(self.redis.hlen(f"{self.prefix}unacked"))
        return counts

    def deliveries(self) -> list[int]:
        """Delivery counts of every message so far (the fleet's counters are keyed by task id, not name)."""
        return [int(self.redis.get(key)) for key in self.redis.scan_iter(f"{self.prefix}deliveries:*")]

    def fault(self, task_name: str, kind: str | None) -> None:
        key = f"{self.prefix}test-fault:{task_name}"
        if kind is None:
            self.redis.delete(key)
        else:
            self.redis.set(key, kind)

    def dead_letters(self) -> list[dict[str, Any]]:
        result = self.run("tasks", "failed", "--json")
        assert result.returncode == 0, result.stderr
        letters: list[dict[str, Any]] = json.loads(result.stdout)["failed"]
        return letters


@pytest.fixture
def fleet(tmp_path: Path, tiny_detector: Path, toy_classifier: Path) -> Iterator[Fleet]:
    """A fleet on a fresh PostgreSQL schema (shelf ``SHELF`` with a book) and a fresh Redis prefix."""
    redis = redis_or_fail()
    schema = f"t_{uuid.uuid4().hex[:16]}"
    admin = create_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    url = _postgres_schema_url(schema)
    migrations.upgrade(url)
    engine = create_engine(url)
    factory = session_factory(engine)
    with factory.begin() as session:
        seed_shelf(session, book={"SKU-RED": 3, "SKU-BLUE": 2, "SKU-GREEN": 4}, location_code=SHELF)
    prefix = f"t{uuid.uuid4().hex[:12]}:"
    home = tmp_path / "fleet"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHELFTALLY_")}
    env.update({
        "SHELFTALLY_DATABASE_URL": url,
        "SHELFTALLY_BROKER_URL": REDIS_URL,
        "SHELFTALLY_FLEET__KEY_PREFIX": prefix,
        "SHELFTALLY_FLEET__IMAGE_STORE_DIR": str(home / "images"),
        "SHELFTALLY_FLEET__RESTORE_INTERVAL_S": "1",
        "SHELFTALLY_MODELS__DETECTOR_DIR": str(tiny_detector),
        "SHELFTALLY_MODELS__CLASSIFIER_DIR": str(toy_classifier),
        "SHELFTALLY_SCAN__EVIDENCE_DIR": str(home / "evidence"),
        "SHELFTALLY_ALERTS__CHANNELS": "log",
        "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": "1",
    })
    built = Fleet(env=env, prefix=prefix, database_url=url, factory=factory, redis=redis, home=home)
    try:
        yield built
    finally:
        built.stop_workers()
        for key in redis.scan_iter(f"{prefix}*"):
            redis.delete(key)
        engine.dispose()
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()
