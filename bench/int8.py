"""Benchmark: INT8 against FP32 on the CPU, speed and accuracy, for detectors and the shipped classifier.

Not a test; run on demand; needs ``../shared/data`` and the ``int8`` extra (nncf).

For each model, a copy is quantised by the product's own command code
(:func:`detector.quantize.quantize_detector`, :func:`classifier.quantize.quantize_classifier`:
NNCF, MIXED preset, 300 calibration pictures from the *train* split) and then:

- accuracy, recorded by that code: detector mAP50 (ultralytics' matching and AP, conf 0.001)
  on each labelled *real* split given (test and val), classifier top-1 on the 296 Grocery Store
  *val* pictures; FP32 and INT8 both run by OpenVINO, so the delta is the quantisation's alone;
- speed: OpenVINO FP32 (``INFERENCE_PRECISION_HINT=f32``) and INT8 compiled models with the
  backends' settings (LATENCY hint, ``--threads``), timed interleaved (``--runs`` calls each,
  median): detectors on one letterboxed picture per call at the model's input size and at 640
  (the end-to-end workload's size), the classifier on batches of 32 crops.

Usage::

    .venv/bin/python bench/int8.py --detector work/pallets ../shared/data/pallets-ccby/repo_data.yaml \\
        [--detector DIR DATA.yaml ...] [--runs 30] [--threads 2]

Detector directories are trained with ``shelftally detector train`` (README, "Detector models"; the
pallets and shelf-testing recipes). Writes ``bench/results/int8.json`` (``--out``); copies go to ``work/int8/``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from classifier.dataset import load_image, read_grocery_store  # noqa: E402
from classifier.model_dir import read_model_dir as read_classifier_dir  # noqa: E402
from classifier.preprocess import prepare_batch  # noqa: E402
from classifier.quantize import quantize_classifier  # noqa: E402
from detector.dataset import split_pictures  # noqa: E402
from detector.model_dir import read_model_dir as read_detector_dir  # noqa: E402
from detector.preprocess import letterbox  # noqa: E402
from detector.quantize import EvaluationSet, quantize_detector  # noqa: E402
from shelftally.runtimes.int8 import INT8_XML  # noqa: E402

GROCERY = ROOT.parent / "shared" / "data" / "grocerystore"


def time_interleaved(calls: dict[str, Any], runs: int) -> dict[str, float]:
    """Median seconds per call of each callable, calls interleaved (3 warm-up rounds first)."""
    for _ in range(3):
        for call in calls.values():
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(runs):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def compiled(xml: Path, threads: int, fp32: bool) -> Any:
    """An OpenVINO infer request with the backends' settings (LATENCY hint, ``threads``)."""
    import openvino as ov

    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
    if fp32:
        config["INFERENCE_PRECISION_HINT"] = "f32"
    return ov.Core().compile_model(str(xml), "CPU", config).create_infer_request()


def bench_detector(model_dir: Path, data_yaml: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    import dataclasses
    import tempfile

    from detector.dataset import prepare_dataset

    copy = work / model_dir.name
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(model_dir, copy, ignore=shutil.ignore_patterns("openvino-int8", "engines"))
    sets = [EvaluationSet(data_yaml, split, f"{data_yaml.resolve().parent.name}/{split}") for split in args.splits]
    started = time.perf_counter()
    record = quantize_detector(copy, data_yaml, sets, calibration_pictures=args.calibration, threads=args.threads,
                               command="bench/int8.py")
    seconds = time.perf_counter() - started
    model = read_detector_dir(copy)
    with tempfile.TemporaryDirectory() as prepared:
        prepare_dataset(data_yaml, Path(prepared) / "data")
        image_path = split_pictures(Path(prepared) / "data", args.splits[0])[0][0]
        picture = load_image(image_path)
    speed: dict[str, Any] = {}
    for size in sorted({model.preprocess.input_size, 640}):
        batch, _ = letterbox([picture], dataclasses.replace(model.preprocess, input_size=size))
        requests = {"fp32": compiled(copy / "openvino" / "model.xml", args.threads, True),
                    "int8": compiled(copy / INT8_XML, args.threads, False)}
        medians = time_interleaved({name: (lambda r=r, b=batch: r.infer({0: b})) for name, r in requests.items()},
                                   args.runs)
        speed[str(size)] = {"fp32_ms": round(medians["fp32"] * 1000, 2), "int8_ms": round(medians["int8"] * 1000, 2),
                            "speedup": round(medians["fp32"] / medians["int8"], 2)}
    return {"model": str(model_dir), "input_size": model.preprocess.input_size, "quantise_seconds": round(seconds, 1),
            "calibration": record.calibration, "metric": record.metric,
            "accuracy": {name: {"fp32": e["fp32"], "int8": e["int8"], "pictures": e["pictures"],
                                "boxes": e["fp32_detail"]["boxes"]} for name, e in record.evaluations.items()},
            "delta_points": record.delta_points(), "speed_ms_per_picture": speed}


def bench_classifier(model_dir: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    copy = work / model_dir.name
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(model_dir, copy, ignore=shutil.ignore_patterns("openvino-int8", "engines"))
    val = read_grocery_store(GROCERY, "val")
    started = time.perf_counter()
    record = quantize_classifier(copy, read_grocery_store(GROCERY, "train"), val,
                                 calibration_pictures=args.calibration, threads=args.threads,
                                 evaluation_name="grocerystore/val", command="bench/int8.py")
    seconds = time.perf_counter() - started
    batch = prepare_batch([load_image(item.path) for item in val.items[:32]], read_classifier_dir(copy).preprocess)
    requests = {"fp32": compiled(copy / "openvino" / "model.xml", args.threads, True),
                "int8": compiled(copy / INT8_XML, args.threads, False)}
    medians = time_interleaved({name: (lambda r=r: r.infer({0: batch})) for name, r in requests.items()}, args.runs)
    (name, scores), = record.evaluations.items()
    return {"model": str(model_dir), "quantise_seconds": round(seconds, 1), "calibration": record.calibration,
            "metric": "top1", "accuracy": {name: {k: scores[k] for k in ("fp32", "int8", "pictures")}},
            "delta_points": record.delta_points(),
            "speed_batch_32": {"fp32_ms": round(medians["fp32"] * 1000, 2), "int8_ms": round(medians["int8"] * 1000, 2),
                               "fp32_crops_per_s": round(32 / medians["fp32"], 1),
                               "int8_crops_per_s": round(32 / medians["int8"], 1),
                               "speedup": round(medians["fp32"] / medians["int8"], 2)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detector", nargs=2, action="append", default=[], metavar=("DIR", "DATA_YAML"),
                        type=Path, help="a detector directory and the real dataset it was trained on (repeatable)")
    parser.add_argument("--splits", nargs="+", default=["test", "val"], help="labelled splits scored")
    parser.add_argument("--classifier", type=Path, default=ROOT / "models" / "classifier-grocery")
    parser.add_argument("--calibration", type=int, default=300)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--work", type=Path, default=ROOT / "work" / "int8")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "int8.json")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    detectors = [bench_detector(d, y, args.work, args) for d, y in args.detector]
    classifier = bench_classifier(args.classifier, args.work, args)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown")
    report = {
        "benchmark": "int8", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "method": "NNCF nncf.quantize (MIXED preset) to OpenVINO IR; detection head's box decoding kept in FP32",
        "cpu": cpu, "threads": args.threads, "runs": args.runs,
        "detectors": detectors, "classifier": classifier, "load_average": os.getloadavg(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
