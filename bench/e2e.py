"""Benchmark: the whole scan, ShelfTally against the obvious script, on the same pictures.

Not a test; run on demand (PostgreSQL on 127.0.0.1:5432 must run).

Standard workload: ``--pictures`` synthetic 1280 x 960 shelf photos of the demo SKUs
(:func:`detector.synth.generate_scene`, 80-120 products each, JPEG quality 90, written to
files), the project's demo detector (YOLOv8n, :func:`workers.demo_vision.train_demo_models`,
trained once and cached in ``work/e2e-models``) run at 640 px, its classifier on every crop,
PostgreSQL as the database. In one process, on the same files, one after the other:

(a) **ShelfTally**: :meth:`workers.pipeline.ScanPipeline.scan_path` with the chosen runtime
    (``--backend``, default OpenVINO), crops classified in batches, one transaction per picture
    (scan, detections and observations in bulk, reconcile).
(b) **naive**, written the obvious way: ``YOLO(model.pt).predict(path, imgsz=640)``, the torch
    classifier (``classifier.backbones.load_model_dir``) on one crop at a time, and one ORM
    ``session.add`` + flush per detection and per observation, one commit per picture.

Reported: pictures per second of both and their ratio; ShelfTally's per-stage breakdown
(decode, detect, crop, classify, persist, reconcile; median ms per picture) and the naive
pipeline's (detect, classify, persist); the work's FLOPs (detector at 640 from ultralytics'
profiler (thop), the classifier per crop times the crops) against this machine's peak FP32
rate: cores x clock x FP32 lanes x 2 (fused multiply-add) x FMA units, where the lanes come from
the CPU flags in ``/proc/cpuinfo`` (``avx512f``: 16, ``avx2`` + ``fma``: 8) and the clock from
``lscpu``'s max MHz (else ``/proc/cpuinfo``'s "cpu MHz"); the FMA units per core are an
assumption (``--fma-units``, default 2: Intel Xeon Scalable cores have two 512-bit FMA ports).

Usage::

    .venv/bin/python bench/e2e.py [--pictures 12] [--backend openvino|onnx] [--threads N]

Writes ``bench/results/e2e.json`` and ``bench/results/e2e_stages.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._database import drop_schema, fresh_schema  # noqa: E402
from detector.synth import SceneConfig, generate_scene  # noqa: E402
from inventory.db import create_engine, session_factory  # noqa: E402
from inventory.models import Detection, Location, Observation, Scan, ScanStatus, Sku  # noqa: E402
from workers.demo_vision import DEMO_SKUS, DemoSize, demo_packshots, train_demo_models  # noqa: E402

POSTGRES = os.environ.get("SHELFTALLY_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
LOCATION = "E2E-A01-S1"
IMGSZ = 640


def make_pictures(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    packshots = demo_packshots()
    config = SceneConfig(size_wh=(1280, 960), min_objects=80, max_objects=120)
    paths = []
    for i in range(count):
        scene = generate_scene(packshots, seed=(7, i), config=config)
        path = folder / f"shelf-{i:03d}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(path)
    return paths


def models(work: Path) -> tuple[Path, Path]:
    """The demo models, and a copy of the detector directory that runs at 640 px (dynamic ONNX)."""
    detector, classifier = train_demo_models(work / "demo", DemoSize(), demo_packshots(), print)
    at640 = work / "detector-640"
    if not (at640 / "model.pt").is_file():
        shutil.rmtree(at640, ignore_errors=True)
        shutil.copytree(detector, at640)
        shutil.rmtree(at640 / "openvino", ignore_errors=True)
        preprocess = json.loads((at640 / "preprocess.json").read_text())
        preprocess["input_size"] = IMGSZ
        (at640 / "preprocess.json").write_text(json.dumps(preprocess, indent=2) + "\n")
        from detector.export import export_openvino

        export_openvino(at640 / "model.onnx", at640)
    if not (classifier / "openvino" / "model.xml").is_file():
        from classifier.export import export_openvino as export_classifier_openvino

        export_classifier_openvino(classifier / "model.onnx", classifier)
    return at640, classifier


def run_shelftally(paths: list[Path], detector: Path, classifier: Path, url: str, backend: str,
                   threads: int | None) -> dict[str, Any]:
    from inventory.reconcile import ReconcilePolicy
    from workers.pipeline import PipelineConfig, ScanPipeline, load_models

    engine = create_engine(url)
    det, rec = load_models(detector, classifier, backend=backend, threads=threads)
    pipeline = ScanPipeline(factory=session_factory(engine), detector=det, recognizer=rec,
                            policy=ReconcilePolicy(), config=PipelineConfig(evidence_dir=None))
    start = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)
    pipeline.scan_path(paths[0], location_code=LOCATION, captured_at=start - timedelta(minutes=1))  # warm-up
    stages: dict[str, list[float]] = {}
    boxes = []
    started = time.perf_counter()
    for i, path in enumerate(paths):
        result = pipeline.scan_path(path, location_code=LOCATION, captured_at=start + timedelta(minutes=i))
        assert result.status in ("processed", "duplicate"), result
        for stage, ms in result.timings_ms.items():
            stages.setdefault(stage, []).append(ms)
        boxes.append(sum(result.counts.values()) + result.unknown_facings)
    elapsed = time.perf_counter() - started
    engine.dispose()
    return {"seconds": round(elapsed, 3), "pictures_per_s": round(len(paths) / elapsed, 3),
            "stages_ms": {k: round(statistics.median(v), 1) for k, v in stages.items()},
            "boxes_per_picture": round(float(np.mean(boxes)), 1), "backend": backend,
            "detector_version": det.version}


def run_naive(paths: list[Path], detector: Path, classifier: Path, url: str) -> dict[str, Any]:
    """The obvious script: ultralytics predict, torch per crop, an ORM row at a time."""
    import torch
    from sqlalchemy import select
    from ultralytics import YOLO

    from classifier.backbones import load_model_dir

    yolo = YOLO(str(detector / "model.pt"))
    labels = json.loads((classifier / "labels.json").read_text())
    preprocess = json.loads((classifier / "preprocess.json").read_text())
    size = int(preprocess["input_size"])
    mean, std = np.array(preprocess["mean"], np.float32), np.array(preprocess["std"], np.float32)
    net = load_model_dir(classifier).eval()
    engine = create_engine(url)
    factory = session_factory(engine)
    with factory() as session:
        location_id = session.scalar(select(Location.id).where(Location.location_code == LOCATION))
        sku_ids = {code: sku_id for code, sku_id in session.execute(select(Sku.sku_code, Sku.id)).all()}

    def one(path: Path, minute: int) -> dict[str, float]:
        timings = {}
        t = time.perf_counter()
        result = yolo.predict(str(path), imgsz=IMGSZ, conf=0.25, verbose=False, device="cpu")[0]
        image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        timings["detect"] = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        named = []
        for (x1, y1, x2, y2), conf in zip(result.boxes.xyxy.tolist(), result.boxes.conf.tolist(), strict=True):
            crop = image[int(y1):int(y2), int(x1):int(x2)]
            if crop.size == 0:
                continue
            x = (cv2.resize(crop, (size, size)).astype(np.float32) / 255.0 - mean) / std
            with torch.no_grad():
                logits, _ = net(torch.from_numpy(x.transpose(2, 0, 1)).unsqueeze(0))
            probabilities = torch.softmax(logits, dim=1)[0]
            index = int(probabilities.argmax())
            named.append(((x1, y1, x2, y2), conf, labels[index], float(probabilities[index])))
        timings["classify"] = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        with factory() as session:
            scan = Scan(location_id=location_id, captured_at=datetime(2026, 11, 29, 9, 0, tzinfo=UTC)
                        + timedelta(minutes=minute), image_sha256=uuid.uuid4().hex + uuid.uuid4().hex,
                        image_size_bytes=path.stat().st_size, width_px=image.shape[1], height_px=image.shape[0],
                        source=str(path), status=ScanStatus.PROCESSED)
            session.add(scan)
            session.flush()
            counts: dict[str, int] = {}
            for (x1, y1, x2, y2), conf, code, sku_conf in named:
                session.add(Detection(scan_id=scan.id, x1=x1, y1=y1, x2=x2, y2=y2, confidence=conf, class_id=0,
                                      sku_id=sku_ids.get(code), sku_confidence=sku_conf))
                session.flush()
                counts[code] = counts.get(code, 0) + 1
            for code, quantity in counts.items():
                if code in sku_ids:
                    session.add(Observation(scan_id=scan.id, sku_id=sku_ids[code], facings=quantity, quantity=quantity,
                                            confidence=1.0))
                    session.flush()
            session.commit()
        timings["persist"] = (time.perf_counter() - t) * 1000
        return timings

    one(paths[0], 0)  # warm-up
    stages: dict[str, list[float]] = {}
    started = time.perf_counter()
    for i, path in enumerate(paths):
        for stage, ms in one(path, i + 1).items():
            stages.setdefault(stage, []).append(ms)
    elapsed = time.perf_counter() - started
    engine.dispose()
    return {"seconds": round(elapsed, 3), "pictures_per_s": round(len(paths) / elapsed, 3),
            "stages_ms": {k: round(statistics.median(v), 1) for k, v in stages.items()}}


def flops(detector: Path, classifier: Path) -> dict[str, float]:
    """GFLOPs (multiply-adds x 2) of one detector pass at 640 and of one classifier crop."""
    import torch
    from ultralytics import YOLO
    from ultralytics.utils.torch_utils import get_flops

    from classifier.backbones import load_model_dir

    det_gflops = float(get_flops(YOLO(str(detector / "model.pt")).model, imgsz=IMGSZ))
    from thop import profile

    size = int(json.loads((classifier / "preprocess.json").read_text())["input_size"])
    net = load_model_dir(classifier).eval()
    macs, _ = profile(net, inputs=(torch.zeros(1, 3, size, size),), verbose=False)
    return {"detector_gflops_at_640": round(det_gflops, 3), "classifier_gflops_per_crop": round(2 * macs / 1e9, 4),
            "classifier_input": size}


def peak_gflops(fma_units: int) -> dict[str, Any]:
    flags = set()
    mhz = None
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            if line.startswith("cpu MHz") and mhz is None:
                mhz = float(line.split(":", 1)[1])
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        found = re.search(r"CPU max MHz:\s*([\d.]+)", lscpu)
        if found:
            mhz = float(found.group(1))
    except OSError:
        pass
    lanes = 16 if "avx512f" in flags else 8 if {"avx2", "fma"} <= flags else 4
    cores = os.cpu_count() or 1
    peak = cores * (mhz or 0) / 1000 * lanes * 2 * fma_units
    return {"cores": cores, "mhz": mhz, "fp32_lanes": lanes, "fma_units_per_core": fma_units,
            "flags_used": sorted(f for f in flags if f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile")),
            "peak_gflops": round(peak, 1)}


def plot(report: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = ["decode", "detect", "crop", "classify", "persist", "reconcile"]
    fig, ax = plt.subplots(figsize=(8, 3.2))
    left = 0.0
    ours = report["shelftally"]["stages_ms"]
    for stage in order:
        width = ours.get(stage, 0.0)
        ax.barh("ShelfTally", width, left=left, label=stage)
        left += width
    left = 0.0
    colours = {stage: bar.get_facecolor() for stage, bar in zip(order, ax.patches, strict=False)}
    for stage in ("detect", "classify", "persist"):
        width = report["naive"]["stages_ms"].get(stage, 0.0)
        ax.barh("naive", width, left=left, color=colours.get(stage))
        left += width
    ax.set_xlabel("median ms per 1280x960 picture")
    ax.set_title(f"ShelfTally {report['shelftally']['pictures_per_s']:.2f} vs naive "
                 f"{report['naive']['pictures_per_s']:.2f} pictures/s ({report['speedup']:.2f}x)")
    ax.legend(ncol=6, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.3))
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pictures", type=int, default=12)
    parser.add_argument("--backend", default="openvino", choices=["openvino", "onnx", "torch"])
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the runtime's)")
    parser.add_argument("--fma-units", type=int, default=2)
    parser.add_argument("--work", type=Path, default=ROOT / "work" / "e2e-models")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "e2e.json")
    args = parser.parse_args()

    from detector._offline import configure_offline

    configure_offline(args.work / "ultralytics")
    detector, classifier = models(args.work)
    paths = make_pictures(args.work / "pictures", args.pictures + 1)
    warm, timed = paths[0], paths[1:]
    load_before = os.getloadavg()
    schema, url = fresh_schema(POSTGRES, prefix="e2e", location_code=LOCATION,
                               skus=[(code, name) for code, name, _ in DEMO_SKUS], quantity=12)
    try:
        ours = run_shelftally([warm, *timed], detector, classifier, url, args.backend, args.threads)
        naive = run_naive([warm, *timed], detector, classifier, url)
    finally:
        drop_schema(POSTGRES, schema)
    work = flops(detector, classifier)
    peak = peak_gflops(args.fma_units)
    per_picture = work["detector_gflops_at_640"] + ours["boxes_per_picture"] * work["classifier_gflops_per_crop"]
    model_ms = ours["stages_ms"].get("detect", 0) + ours["stages_ms"].get("classify", 0)
    achieved = per_picture / (model_ms / 1000) if model_ms else None
    report = {
        "benchmark": "e2e", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), **peak},
        "workload": {"pictures": len(timed), "size_wh": [1280, 960], "products_per_picture": "80-120",
                     "detector": "demo YOLOv8n at 640", "classifier": "demo mobilenet_v3_small",
                     "database": "postgresql"},
        "shelftally": ours, "naive": naive, "speedup": round(ours["pictures_per_s"] / naive["pictures_per_s"], 2),
        "flops": {**work, "gflops_per_picture": round(per_picture, 2),
                  "achieved_gflops_in_models": round(achieved, 1) if achieved else None,
                  "fraction_of_peak": round(achieved / peak["peak_gflops"], 3) if achieved and peak["peak_gflops"]
                  else None},
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, args.out.with_name("e2e_stages.png"))
    print(json.dumps({k: report[k] for k in ("shelftally", "naive", "speedup", "flops")}, indent=2))


if __name__ == "__main__":
    main()
