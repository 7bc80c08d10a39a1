"""Benchmark: pictures per second end to end through the Celery fleet, with 1 and 2 worker processes.

Not a test; run on demand (PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379 must run).

Workload: ``--pictures`` synthetic 1280 x 960 shelf photos (:func:`detector.synth.generate_scene`,
80-120 products each, JPEG quality 90), the shipped detector (``models/product-agnostic``) and
classifier (``models/classifier-grocery``) on ONNX Runtime, PostgreSQL as the database. For each
process count, a fresh schema and Redis key prefix, then ``shelftally worker --concurrency N``
(prefork: N child processes serving ingest, vision and db), ``--threads`` intra-op threads per
model in each child (default 1, so that the runs measure process scaling, not thread scaling).
Two warm-up pictures go through first; the clock runs from the first enqueue of the timed
pictures to the last scan committed (polled every 50 ms). Evidence images are written, as in
production.

Usage::

    .venv/bin/python bench/throughput.py [--pictures 48] [--processes 1 --processes 2] [--threads 1]

Writes ``bench/results/throughput.json`` and prints pictures per second per process count and
the scaling of the largest over the smallest (target on this 2-core machine: at least 1.6x).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._database import drop_schema, fresh_schema  # noqa: E402
from detector.synth import SceneConfig, drawn_packshots, generate_scene  # noqa: E402
from inventory.db import create_engine  # noqa: E402

POSTGRES = os.environ.get("SHELFTALLY_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS = "redis://127.0.0.1:6379/0"
SHELFTALLY = str(Path(sys.executable).parent / "shelftally")
LOCATION = "BENCH-A01-S1"


def pictures(count: int, seed: int) -> list[bytes]:
    """``count`` distinct synthetic shelf photos as JPEG bytes."""
    packshots = drawn_packshots([f"SYN-{i:03d}" for i in range(24)], seed=seed)
    config = SceneConfig(size_wh=(1280, 960), min_objects=80, max_objects=120)
    out = []
    for i in range(count):
        scene = generate_scene(packshots, seed=(seed, i), config=config)
        ok, buffer = cv2.imencode(".jpg", cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        out.append(buffer.tobytes())
    return out


def scans(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM scan WHERE status = 'processed'")).scalar() or 0)


def run(processes: int, threads: int, timed: list[bytes], warmup: list[bytes], args: argparse.Namespace,
        labels: list[str]) -> dict[str, Any]:
    from workers.fleet.app import configure
    from workers.fleet.tasks import enqueue_picture
    from workers.settings import FleetSettings, ModelSettings, ScanSettings, Settings

    schema, url = fresh_schema(POSTGRES, prefix="bench", location_code=LOCATION,
                               skus=[(code, code) for code in labels], quantity=5)
    home = Path(tempfile.mkdtemp(prefix="shelftally-bench-"))
    prefix = f"bench{uuid.uuid4().hex[:8]}:"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHELFTALLY_")}
    env.update({
        "SHELFTALLY_DATABASE_URL": url, "SHELFTALLY_BROKER_URL": REDIS, "SHELFTALLY_FLEET__KEY_PREFIX": prefix,
        "SHELFTALLY_FLEET__IMAGE_STORE_DIR": str(home / "images"),
        "SHELFTALLY_MODELS__DETECTOR_DIR": str(args.detector),
        "SHELFTALLY_MODELS__CLASSIFIER_DIR": str(args.classifier),
        "SHELFTALLY_MODELS__THREADS": str(threads), "SHELFTALLY_SCAN__EVIDENCE_DIR": str(home / "evidence"),
        "SHELFTALLY_ALERTS__CHANNELS": "log",
    })
    settings = Settings(
        database_url=url, broker_url=REDIS,
        fleet=FleetSettings(key_prefix=prefix, image_store_dir=home / "images"),
        models=ModelSettings(), scan=ScanSettings(evidence_dir=None),
    )
    configure(settings, serves_vision=False)
    log = home / "worker.log"
    worker = subprocess.Popen([SHELFTALLY, "worker", "--concurrency", str(processes), "--loglevel", args.loglevel],
                              env=env, cwd=home, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        for picture in warmup:
            enqueue_picture(picture, source="bench-warmup", location_code=LOCATION)
        wait_for(url, len(warmup), worker, log, timeout=args.warmup_timeout)
        started = time.perf_counter()
        for picture in timed:
            enqueue_picture(picture, source="bench", location_code=LOCATION)
        wait_for(url, len(warmup) + len(timed), worker, log, timeout=1800)
        elapsed = time.perf_counter() - started
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
        from redis import Redis

        client = Redis.from_url(REDIS)
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)
        drop_schema(POSTGRES, schema)
        shutil.rmtree(home, ignore_errors=True)
    return {"processes": processes, "threads_per_process": threads, "pictures": len(timed),
            "seconds": round(elapsed, 2), "pictures_per_s": round(len(timed) / elapsed, 3)}


def wait_for(url: str, count: int, worker: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    engine = create_engine(url)
    deadline = time.monotonic() + timeout
    try:
        while scans(engine) < count:
            if worker.poll() is not None:
                raise SystemExit(f"the worker exited:\n{log.read_text(errors='replace')[-6000:]}")
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out waiting for {count} scans:\n{log.read_text(errors='replace')[-6000:]}")
            time.sleep(0.05)
    finally:
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pictures", type=int, default=48)
    parser.add_argument("--processes", type=int, action="append")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per model in each worker process")
    parser.add_argument("--detector", type=Path, default=ROOT / "models" / "product-agnostic")
    parser.add_argument("--classifier", type=Path, default=ROOT / "models" / "classifier-grocery")
    parser.add_argument("--warmup-timeout", type=float, default=300.0, help="seconds for the warm-up pictures")
    parser.add_argument("--loglevel", default="WARNING", help="the workers' Celery log level")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "throughput.json")
    args = parser.parse_args()
    counts = sorted(set(args.processes or [1, 2]))
    labels = json.loads((args.classifier / "labels.json").read_text())
    print(f"generating {args.pictures + 2} synthetic 1280x960 shelf photos ...", flush=True)
    made = pictures(args.pictures + 2, seed=2026)
    warmup, timed = made[:2], made[2:]
    load_before = os.getloadavg()
    runs = []
    for processes in counts:
        result = run(processes, args.threads, timed, warmup, args, labels)
        print(f"{processes} process(es) x {args.threads} thread(s): {result['pictures_per_s']:.2f} pictures/s "
              f"({result['pictures']} in {result['seconds']} s)", flush=True)
        runs.append(result)
    scaling = runs[-1]["pictures_per_s"] / runs[0]["pictures_per_s"] if len(runs) > 1 else None
    report = {
        "benchmark": "throughput", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "workload": {"pictures": args.pictures, "size_wh": [1280, 960], "products_per_picture": "80-120",
                     "detector": args.detector.name, "classifier": args.classifier.name, "backend": "onnx",
                     "database": "postgresql", "broker": "redis", "evidence_images": True},
        "runs": runs, "scaling": round(scaling, 3) if scaling else None, "target_scaling": 1.6,
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    if scaling:
        print(f"scaling {counts[-1]} vs {counts[0]} process(es): {scaling:.2f}x (target 1.6x) -> {args.out}")


if __name__ == "__main__":
    main()
