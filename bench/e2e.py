"""Benchmark: the whole scan, ShelfTally against the obvious script, on the same pictures.

Not a test; run on demand (PostgreSQL on 127.0.0.1:5432 must run).

Standard workload: ``--pictures`` synthetic 1280 x 960 shelf photos of the demo SKUs
(:func:`detector.synth.generate_scene`, 80-120 products each, JPEG quality 90, written to
files), the project's demo detector (YOLOv8n, :func:`workers.demo.vision.train_demo_models`,
trained once and cached in ``work/e2e-models``) run at 640 px, its classifier on every crop,
PostgreSQL as the database. In one process, on the same files, one after the other:

(a) **ShelfTally**: :meth:`workers.scan.pipeline.ScanPipeline.scan_path` with the chosen runtime
    (``--backend``, default OpenVINO), crops classified in batches, one transaction per picture
    (scan, detections and observations in bulk, reconcile).
(b) **naive**, written the obvious way: ``YOLO(model.pt).predict(path, imgsz=640)``, the torch
    classifier (``classifier.backbones.load_model_dir``) on one crop at a time, and one ORM
    ``session.add`` + flush per detection and per observation, one commit per picture.

With ``--read-text``, ShelfTally runs once more with text and barcode reading on, as
``scan --read-text`` does (the SKU master: the demo SKUs' names), so the cost of reading text is
its stage ``read_text`` and the drop in pictures per second.

With ``--int8``, ShelfTally runs twice more on the same pictures, with both models INT8
(``models.detector_precision`` and ``classifier_precision`` ``int8``) and with the detector alone INT8:
the detector and classifier are quantised once (:func:`quantized_models`: NNCF, calibrated on
generated shelves of other seeds, accuracy recorded on 40 more) and the accuracy gate decides
(margin 1 point), as in a deployment.

Each ShelfTally run happens in a fresh spawned process, as a worker process would, so that its
peak resident memory (``VmHWM``) is the workload's own (models, runtime, pictures, database
session), not the benchmark's (the naive pipeline's torch, ultralytics, the model training).

Reported: pictures per second of each and the ratio to the naive script; ShelfTally's per-stage
breakdown (decode, detect, crop, classify, persist, reconcile; median ms per picture) and the
naive pipeline's (detect, classify, persist); peak RSS per ShelfTally process; the work's FLOPs
(detector at 640 from ultralytics' profiler (thop), the classifier per crop times the crops)
against this machine's peak FP32 rate: cores x clock x FP32 lanes x 2 (fused multiply-add) x FMA
units, where the lanes come from the CPU flags in ``/proc/cpuinfo`` (``avx512f``: 16, ``avx2`` +
``fma``: 8) and the clock from ``lscpu``'s max MHz (else ``/proc/cpuinfo``'s "cpu MHz"); the FMA
units per core are an assumption (``--fma-units``, default 2: Intel Xeon Scalable cores have two
512-bit FMA ports, AMD Zen 2-4 cores two 256-bit FMA pipes).

Usage::

    .venv/bin/python bench/e2e.py [--pictures 12] [--backend openvino|onnx] [--threads N] [--int8] [--read-text]

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
from workers.demo.vision import DEMO_SKUS, DemoSize, demo_packshots, train_demo_models  # noqa: E402

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
    if not (at640 / "openvino" / "model.xml").is_file():  # the shipped detector has no model.pt, only ONNX
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


def quantized_models(work: Path, detector: Path, classifier: Path, calibration: int) -> dict[str, Any]:
    """Quantise the workload's detector and classifier (once; cached in their directories) and return the records.

    Calibration and scoring pictures are generated shelves of the same kind as the workload
    (other seeds): ``calibration`` train pictures, 40 val pictures; the classifier calibrates on
    300 crops of the first 40 train pictures' products and is scored on the crops of the 40 val
    pictures' products.
    """
    from classifier.dataset import read_image_folder
    from classifier.quantize import quantize_classifier
    from detector.quantize import EvaluationSet, quantize_detector
    from detector.synth import write_synthetic_datasets
    from shelftally.runtimes.int8 import INT8_RECORD, read_record

    if not ((detector / INT8_RECORD).is_file() and (classifier / INT8_RECORD).is_file()):
        data = work / "int8-data"
        shutil.rmtree(data, ignore_errors=True)
        n = calibration + 40
        synthetic = write_synthetic_datasets(data / "synth", demo_packshots(), n_images=n, val_fraction=40 / n,
                                             seed=23, config=SceneConfig(size_wh=(1280, 960), min_objects=80,
                                                                         max_objects=120))
        sets = [EvaluationSet(synthetic.agnostic_yaml, "val", "generated shelves/val (40)")]
        quantize_detector(detector, synthetic.agnostic_yaml, sets, calibration_pictures=calibration,
                          command="bench/e2e.py --int8")
        for split in ("train", "val"):
            for image_path in sorted((synthetic.root / "sku" / "images" / split).glob("*.jpg"))[:40]:
                picture = cv2.cvtColor(cv2.imread(str(image_path)), cv2.COLOR_BGR2RGB)
                h, w = picture.shape[:2]
                rows = (synthetic.root / "sku" / "labels" / split / f"{image_path.stem}.txt").read_text().split()
                for n_row in range(0, len(rows), 5):
                    cls, cx, cy, bw, bh = (float(v) for v in rows[n_row:n_row + 5])
                    x1, y1 = max(0, int((cx - bw / 2) * w)), max(0, int((cy - bh / 2) * h))
                    crop = picture[y1:int((cy + bh / 2) * h), x1:int((cx + bw / 2) * w)]
                    if min(crop.shape[:2]) >= 8:
                        sku = synthetic.sku_codes[int(cls)]
                        target = data / "crops" / split / sku / f"{image_path.stem}-{n_row}.jpg"
                        target.parent.mkdir(parents=True, exist_ok=True)
                        cv2.imwrite(str(target), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
        quantize_classifier(classifier, read_image_folder(data / "crops" / "train", split="train"),
                            read_image_folder(data / "crops" / "val", split="val"), calibration_pictures=300,
                            evaluation_name="generated crops/val", command="bench/e2e.py --int8")
    return {"detector": read_record(detector).__dict__, "classifier": read_record(classifier).__dict__}


def peak_rss_mib() -> float:
    """This process's peak resident memory, MiB: ``VmHWM`` of ``/proc/self/status`` (Linux).

    Not ``getrusage``'s ``ru_maxrss``: Linux carries that over ``execve`` from the forked parent,
    so a spawned child would report at least its parent's size.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def run_shelftally(paths: list[Path], detector: Path, classifier: Path, url: str, backend: str,
                   threads: int | None, precision: str = "fp32", read_text: bool = False) -> dict[str, Any]:
    from inventory.reconcile import ReconcilePolicy
    from workers.scan.pipeline import PipelineConfig, ScanPipeline, load_models

    engine = create_engine(url)
    det, rec = load_models(detector, classifier, backend=backend, threads=threads,
                           detector_precision="int8" if precision in ("int8", "int8-detector") else "fp32",
                           classifier_precision="int8" if precision == "int8" else "fp32", int8_max_drop_points=1.0)
    fusion = None
    if read_text:  # as `scan --read-text` does, with the scan settings' defaults
        from workers.scan.run import text_fusion
        from workers.settings import Settings

        fusion = text_fusion(session_factory(engine), classifier, Settings(_env_file=None))  # type: ignore[call-arg]
    pipeline = ScanPipeline(factory=session_factory(engine), detector=det, recognizer=rec,
                            policy=ReconcilePolicy(), config=PipelineConfig(evidence_dir=None), text_fusion=fusion)
    start = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)
    pipeline.scan_path(paths[0], location_code=LOCATION, captured_at=start - timedelta(minutes=1))  # warm-up
    stages: dict[str, list[float]] = {}
    boxes = []
    started = time.perf_counter()
    loaded_rss = peak_rss_mib()
    timed = paths[1:]  # paths[0] warmed up; scanning it again would be a (nearly free) duplicate
    for i, path in enumerate(timed):
        result = pipeline.scan_path(path, location_code=LOCATION, captured_at=start + timedelta(minutes=i))
        assert result.status == "processed", result
        for stage, ms in result.timings_ms.items():
            stages.setdefault(stage, []).append(ms)
        boxes.append(sum(result.counts.values()) + result.unknown_facings)
    elapsed = time.perf_counter() - started
    engine.dispose()
    return {"seconds": round(elapsed, 3), "pictures": len(timed), "pictures_per_s": round(len(timed) / elapsed, 3),
            "stages_ms": {k: round(statistics.median(v), 1) for k, v in stages.items()},
            "boxes_per_picture": round(float(np.mean(boxes)), 1), "backend": backend,
            "precision": {"detector": det.precision, "classifier": rec.backend.precision},
            "detector_version": det.version, "classifier_version": rec.backend.version,
            "peak_rss_mib": round(peak_rss_mib(), 1),
            "peak_rss_after_loading_and_warm_up_mib": round(loaded_rss, 1), "read_text": read_text}


def run_worker(paths: list[Path], detector: Path, classifier: Path, url: str, backend: str,
               threads: int | None, precision: str, read_text: bool = False) -> dict[str, Any]:
    """:func:`run_shelftally` in a fresh process (as a worker process is), so its peak RSS is the workload's alone."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        result: dict[str, Any] = pool.apply(run_shelftally, (paths, detector, classifier, url, backend, threads,
                                                             precision, read_text))
    return result


def run_naive(paths: list[Path], detector: Path, classifier: Path, url: str) -> dict[str, Any]:
    """The obvious script: ultralytics predict, torch per crop, an ORM row at a time."""
    import torch
    from sqlalchemy import select
    from ultralytics import YOLO

    from classifier.backbones import load_model_dir

    # the obvious script loads what the model directory has: the checkpoint, else the ONNX export
    weights = detector / "model.pt" if (detector / "model.pt").is_file() else detector / "model.onnx"
    yolo = YOLO(str(weights), task="detect")
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
    for i, path in enumerate(paths[1:]):  # paths[0] warmed up
        for stage, ms in one(path, i + 1).items():
            stages.setdefault(stage, []).append(ms)
    elapsed = time.perf_counter() - started
    engine.dispose()
    return {"seconds": round(elapsed, 3), "pictures": len(paths) - 1,
            "pictures_per_s": round((len(paths) - 1) / elapsed, 3),
            "stages_ms": {k: round(statistics.median(v), 1) for k, v in stages.items()}}


def _detector_module(detector: Path, yolo: Any) -> Any:
    """The detector as a torch module, for counting its FLOPs: its checkpoint, else its architecture rebuilt.

    A directory shipped with ONNX only (the product-agnostic detector) records its model YAML in
    ``provenance.json`` (``base_model``); the FLOPs of a network do not depend on its weights.
    """
    if (detector / "model.pt").is_file():
        return yolo(str(detector / "model.pt")).model
    from ultralytics.nn.tasks import DetectionModel

    from detector.backbones import register_modules
    from detector.train import resolve_model

    register_modules()
    base = json.loads((detector / "provenance.json").read_text())["base_model"]
    yaml = Path(base["model"] if isinstance(base, dict) else base)
    local = ROOT / "detector" / "cfg" / yaml.name  # the recorded path is the machine's that trained it
    labels = json.loads((detector / "labels.json").read_text())
    return DetectionModel(resolve_model(local if local.is_file() else yaml), nc=len(labels), verbose=False)


def flops(detector: Path, classifier: Path) -> dict[str, float]:
    """GFLOPs (multiply-adds x 2) of one detector pass at 640 and of one classifier crop."""
    import torch
    from ultralytics import YOLO
    from ultralytics.utils.torch_utils import get_flops

    from classifier.backbones import load_model_dir

    det_gflops = float(get_flops(_detector_module(detector, YOLO), imgsz=IMGSZ))
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
    fig, ax = plt.subplots(figsize=(8, 3.6))
    colours = {stage: f"C{i}" for i, stage in enumerate(order)}
    rows = [("ShelfTally INT8 det.", report.get("shelftally_int8_detector")),
            ("ShelfTally INT8", report.get("shelftally_int8")), ("ShelfTally", report["shelftally"]),
            ("naive", report["naive"])]
    for name, run in rows:
        if not run:
            continue
        left = 0.0
        for stage in order:
            width = run["stages_ms"].get(stage, 0.0)
            ax.barh(name, width, left=left, color=colours[stage], label=stage if name == "ShelfTally" else None)
            left += width
    ax.set_xlabel("median ms per 1280x960 picture")
    title = (f"ShelfTally {report['shelftally']['pictures_per_s']:.2f} vs naive "
             f"{report['naive']['pictures_per_s']:.2f} pictures/s ({report['speedup']:.2f}x)")
    if report.get("shelftally_int8"):
        title += f"; INT8 {report['shelftally_int8']['pictures_per_s']:.2f} ({report['speedup_int8']:.2f}x)"
    if report.get("shelftally_int8_detector"):
        title += (f"\nINT8 detector + FP32 classifier {report['shelftally_int8_detector']['pictures_per_s']:.2f}"
                  f" ({report['speedup_int8_detector']:.2f}x)")
    ax.set_title(title, fontsize=10)
    ax.legend(ncol=6, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.3))
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pictures", type=int, default=12)
    parser.add_argument("--backend", default="openvino", choices=["openvino", "onnx", "torch"])
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the runtime's)")
    parser.add_argument("--fma-units", type=int, default=2)
    parser.add_argument("--int8", action="store_true",
                        help="also run ShelfTally with the INT8 models (quantised once, cached), same pictures")
    parser.add_argument("--calibration", type=int, default=120, help="generated pictures calibrating INT8")
    parser.add_argument("--read-text", action="store_true",
                        help="also run ShelfTally with text and barcode reading on (scan --read-text)")
    parser.add_argument("--work", type=Path, default=ROOT / "work" / "e2e-models")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "e2e.json")
    args = parser.parse_args()

    from detector._offline import configure_offline

    configure_offline(args.work / "ultralytics")
    detector, classifier = models(args.work)
    paths = make_pictures(args.work / "pictures", args.pictures + 1)
    warm, timed = paths[0], paths[1:]
    load_before = os.getloadavg()
    records = quantized_models(args.work, detector, classifier, args.calibration) if args.int8 else None

    def in_fresh_schema(run: Any, *run_args: Any) -> dict[str, Any]:
        """One pipeline's run in its own empty schema (same book), so no run sees another's scans."""
        schema, url = fresh_schema(POSTGRES, prefix="e2e", location_code=LOCATION,
                                   skus=[(code, name) for code, name, _ in DEMO_SKUS], quantity=12)
        try:
            result: dict[str, Any] = run([warm, *timed], detector, classifier, url, *run_args)
            return result
        finally:
            drop_schema(POSTGRES, schema)

    int8: dict[str, Any] | None = None
    int8_detector: dict[str, Any] | None = None
    ours = in_fresh_schema(run_worker, args.backend, args.threads, "fp32")
    if records is not None:
        int8 = in_fresh_schema(run_worker, args.backend, args.threads, "int8")
        if int8["precision"] != {"detector": "int8", "classifier": "int8"}:
            raise SystemExit(f"the INT8 run fell back to FP32 ({int8['precision']}): see the warning above; "
                             f"delete {detector}/openvino-int8 and {classifier}/openvino-int8 to quantise again")
        int8_detector = in_fresh_schema(run_worker, args.backend, args.threads, "int8-detector")
        if int8_detector["precision"] != {"detector": "int8", "classifier": "fp32"}:
            raise SystemExit(f"the detector-only INT8 run did not run as asked: {int8_detector['precision']}")
        int8["records"] = {k: {"evaluations": {n: {m: e[m] for m in ("fp32", "int8", "pictures")}
                                               for n, e in r["evaluations"].items()},
                               "metric": r["metric"], "calibration": r["calibration"]}
                           for k, r in records.items()}
    with_text = in_fresh_schema(run_worker, args.backend, args.threads, "fp32", True) if args.read_text else None
    naive = in_fresh_schema(run_naive)
    work = flops(detector, classifier)
    peak = peak_gflops(args.fma_units)
    per_picture = work["detector_gflops_at_640"] + ours["boxes_per_picture"] * work["classifier_gflops_per_crop"]
    model_ms = ours["stages_ms"].get("detect", 0) + ours["stages_ms"].get("classify", 0)
    achieved = per_picture / (model_ms / 1000) if model_ms else None
    report = {
        "benchmark": "e2e", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), **peak},
        "workload": {"pictures": len(timed), "size_wh": [1280, 960], "products_per_picture": "80-120",
                     "detector": f"{ours['detector_version']} at {IMGSZ}",
                     "classifier": "demo " + " ".join(DemoSize().classifier_recipe()),
                     "database": "postgresql"},
        "shelftally": ours, "naive": naive, "speedup": round(ours["pictures_per_s"] / naive["pictures_per_s"], 2),
        "shelftally_int8": int8,
        "speedup_int8": round(int8["pictures_per_s"] / naive["pictures_per_s"], 2) if int8 else None,
        "shelftally_read_text": with_text,
        "speedup_read_text": round(with_text["pictures_per_s"] / naive["pictures_per_s"], 2) if with_text else None,
        "shelftally_int8_detector": int8_detector,
        "speedup_int8_detector": round(int8_detector["pictures_per_s"] / naive["pictures_per_s"], 2)
        if int8_detector else None,
        "flops": {**work, "gflops_per_picture": round(per_picture, 2),
                  "achieved_gflops_in_models": round(achieved, 1) if achieved else None,
                  "fraction_of_peak": round(achieved / peak["peak_gflops"], 3) if achieved and peak["peak_gflops"]
                  else None},
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, args.out.with_name(f"{args.out.stem}_stages.png"))
    print(json.dumps({k: report[k] for k in ("shelftally", "shelftally_int8", "shelftally_int8_detector",
                                             "shelftally_read_text", "naive", "speedup", "speedup_int8",
                                             "speedup_int8_detector", "speedup_read_text", "flops")}, indent=2))


if __name__ == "__main__":
    main()
