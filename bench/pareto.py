"""Benchmark: classifier accuracy against speed on the CPU, the Pareto front (not a test; run on demand).

Each point is one model directory at one input size, run by one runtime and precision:

- ``onnx-fp32``: ONNX Runtime on ``model.onnx``;
- ``openvino-f32``: OpenVINO, ``openvino_precision="f32"``;
- ``openvino-auto``: OpenVINO's own choice (bfloat16 where the CPU has it: what a scan uses by default);
- ``openvino-int8``: the NNCF INT8 model made by the product's quantize gate
  (:func:`classifier.quantize.quantize_classifier`: 300 calibration pictures from *train*),
  timed whether or not the gate would accept it (the table says which).

Top-1 is on the 296 Grocery Store val pictures, by :func:`classifier.quantize.top1` (the
network's head, no open-set threshold) through the same backend as the speed. Speed is crops
per second through ``backend.classify`` (resize, normalise, network, softmax) on batches of 32
random-sized (40-160 px a side) crops, the median of ``--runs`` calls, all configurations
interleaved, ``--threads`` intra-op threads.

Models (made by ``bench/transfer.py``):

- ``lite0``: the linear probes on ImageNet EfficientNet-Lite0, one trained at each of 96, 128,
  160 and 224 px (``work/transfer/lite0-probe-N``);
- ``shufflenet``: the from-scratch ShuffleNet V2 (``work/transfer/shufflenet-scratch-112``),
  trained at 112 px once (75 minutes) and run at 96, 112, 128, 160 and 224 px by re-exporting
  its weights at that size (a convolutional network with global pooling takes any size).

Usage::

    .venv/bin/python bench/pareto.py [--size 96 --size 128 ...] [--runs 10] [--threads 2]

Copies go to ``work/pareto/``. Writes ``bench/results/pareto.json`` (``--out``) and prints the
README's Markdown table, the points on the front in bold (an INT8 model the gate refuses is
timed and listed, but a scan would not run it, so it is never on the front).
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

from bench._machine import cpu  # noqa: E402
from bench.classifier import crops, timed_round_robin  # noqa: E402
from bench.transfer import WORK as TRANSFER_WORK  # noqa: E402
from classifier.backends import load  # noqa: E402
from classifier.dataset import read_grocery_store  # noqa: E402
from classifier.export import export_model_dir  # noqa: E402
from classifier.model_dir import read_model_dir  # noqa: E402
from classifier.quantize import quantize_classifier, top1  # noqa: E402

GROCERY = ROOT.parent / "shared" / "data" / "grocerystore"
WORK = ROOT / "work" / "pareto"
RESULTS = ROOT / "bench" / "results" / "pareto.json"
SIZES = (96, 128, 160, 224)
SHUFFLENET = "shufflenet-scratch-112"
#: runtime name -> load() keyword arguments
RUNTIMES: dict[str, dict[str, Any]] = {
    "onnx-fp32": {"backend": "onnx"},
    "openvino-f32": {"backend": "openvino", "openvino_precision": "f32"},
    "openvino-auto": {"backend": "openvino", "openvino_precision": "auto"},
    # the gate's margin opened so that the INT8 model is timed even where a scan would refuse it
    "openvino-int8": {"backend": "openvino", "openvino_precision": "int8", "int8_max_drop_points": 100.0},
}


def prepare(source: Path, name: str, size: int) -> Path:
    """A copy of ``source`` under ``work/pareto/NAME@SIZE``, re-exported at ``size`` if it was trained at another."""
    copy = WORK / f"{name}@{size}"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("openvino-int8", "openvino", "engines", "gallery"))
    if read_model_dir(copy).preprocess.input_size != size:
        preprocess = json.loads((copy / "preprocess.json").read_text())
        preprocess["input_size"] = size
        (copy / "preprocess.json").write_text(json.dumps(preprocess, indent=2) + "\n")
        export_model_dir(copy)
    return copy


def pareto_front(points: list[dict[str, Any]]) -> None:
    """Mark ``on_front`` on the points a scan can use (an INT8 model the gate refuses is not one):
    no other usable point is at least as accurate and as fast, and better in one of the two."""
    usable = [p for p in points if p.get("int8_gate") != "refused"]
    for p in points:
        p["on_front"] = p in usable and not any(
            q is not p and q["top1"] >= p["top1"] and q["crops_per_s"] >= p["crops_per_s"]
            and (q["top1"] > p["top1"] or q["crops_per_s"] > p["crops_per_s"]) for q in usable)


def table(points: list[dict[str, Any]]) -> str:
    """The README's Markdown table, fastest first; points on the front in bold."""
    lines = ["| model | trained at | run at px | runtime | val top-1 | crops/s (batch 32) | INT8 gate |",
             "|---|---|---|---|---|---|---|"]
    for p in sorted(points, key=lambda p: -p["crops_per_s"]):
        bold = "**" if p["on_front"] else ""
        gate = p.get("int8_gate", "")
        lines.append(f"| {p['model']} | {p['trained_px']} | {p['input_size']} | {p['runtime']} | "
                     f"{bold}{100 * p['top1']:.1f} %{bold} | {bold}{p['crops_per_s']:,.0f}{bold} | {gate} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--size", type=int, action="append", choices=SIZES,
                        help=f"input sizes (default {', '.join(map(str, SIZES))})")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-drop-points", type=float, default=1.0, help="the gate's margin, for the table")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    sizes: list[int] = args.size or list(SIZES)

    sources: list[tuple[str, Path, int]] = [("efficientnet_lite0 probe", TRANSFER_WORK / f"lite0-probe-{s}", s)
                                            for s in sizes]
    shuffle = TRANSFER_WORK / SHUFFLENET
    sources += [("shufflenet_v2 scratch", shuffle, s) for s in sorted({*sizes, 112})]
    missing = sorted({str(path) for _, path, _ in sources if not (path / "metrics.json").is_file()})
    if missing:
        sys.exit("bench/pareto.py: train these first with bench/transfer.py: " + ", ".join(missing))

    train, val = read_grocery_store(GROCERY, "train"), read_grocery_store(GROCERY, "val")
    points: list[dict[str, Any]] = []
    calls: dict[int, Any] = {}
    pool = crops(32)
    backends: list[Any] = []
    for model, source, size in sources:
        trained = read_model_dir(source).preprocess.input_size
        copy = prepare(source, model.split()[0], size)
        started = time.perf_counter()
        record = quantize_classifier(copy, train, val, threads=args.threads, evaluation_name="grocerystore/val",
                                     command="bench/pareto.py")
        (scores,) = record.evaluations.values()
        gate = "used" if record.worst_drop_points() <= args.max_drop_points else "refused"
        print(f"{model} @{size}: quantised in {time.perf_counter() - started:.0f} s, "
              f"OpenVINO top-1 FP32 {scores['fp32']:.4f}, INT8 {scores['int8']:.4f} ({gate})", flush=True)
        for runtime, options in RUNTIMES.items():
            backend = load(copy, threads=args.threads, batch_size=32, **options)
            backends.append(backend)
            point: dict[str, Any] = {"model": model, "trained_px": trained, "input_size": size, "runtime": runtime,
                                     "top1": scores["int8"] if runtime == "openvino-int8" else
                                     scores["fp32"] if runtime == "openvino-f32" else round(top1(backend, val), 4)}
            if runtime == "openvino-int8":
                point["int8_gate"] = gate
            calls[len(points)] = (lambda backend=backend: backend.classify(pool))
            points.append(point)
    load_before = os.getloadavg()
    seconds = timed_round_robin(calls, args.runs, 2)
    load_after = os.getloadavg()
    for i, point in enumerate(points):
        point["crops_per_s"] = round(32 / statistics.median(seconds[i]), 1)
    for backend in backends:
        backend.close()
    pareto_front(points)

    result = {"benchmark": "pareto", "date": datetime.now(UTC).isoformat(timespec="seconds"),
              "cpu": cpu(), "threads": args.threads, "runs": args.runs, "batch": 32,
              "accuracy_set": "Grocery Store val (296 pictures), head top-1, no open-set threshold",
              "load_average_1_5_15": {"before": [round(x, 2) for x in load_before],
                                      "after": [round(x, 2) for x in load_after]},
              "points": points}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(points))
    print(f"{result['cpu']}; load average before {load_before}, after {load_after}; written to {args.out}")


if __name__ == "__main__":
    main()
