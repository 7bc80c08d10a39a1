"""Benchmark: detector milliseconds per picture on the CPU (not a test; run on demand).

Compared, end to end per picture (letterbox, network, decoding with NMS), at 640 px:

- ``ultralytics``: ``YOLO(model.pt).predict`` on the checkpoint (ultralytics' own pipeline; it
  letterboxes 4:3 pictures to a smaller 640 x 480 rectangle, which favours it);
- ``onnx``: our ONNX Runtime backend on ``model.onnx``;
- ``openvino``: our OpenVINO backend on ``openvino/model.xml`` (fp32, see its module);
- ``torch``: our torch backend on ``model.pt`` (the same network as ``ultralytics``, our pre/post).

Each at batch 1 and 8, the median of ``--runs`` timed calls after ``--warmup`` calls, on
1280 x 960 RGB pictures (a phone photo's aspect). The timed calls go round-robin over all
configurations, so a busy neighbour on the machine slows every configuration alike instead of
whichever happened to run at the time; the load average is recorded beside the results.

Speed does not depend on the weights, so without ``--model`` a YOLOv8n is built from
ultralytics' YAML with random weights (80 classes) and exported by ultralytics to ONNX (dynamic
batch) and OpenVINO in a temporary directory.
Random weights produce few candidates, so NMS costs next to nothing here; on real shelves
decoding adds a few milliseconds per picture to every pipeline alike.

Usage::

    .venv/bin/python bench/detector.py [--model DIR] [--runs 20] [--warmup 3] [--batch 1 --batch 8]
        [--threads N] [--backend onnx --backend openvino ...]

Writes ``bench/results/detector.json`` and prints a table with the speed-up of the fastest of
our CPU backends over ultralytics' predict (target: at least 1.5x).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector._offline import configure_offline
from detector.backends import load
from detector.model_dir import Preprocess, write_metadata

RESULTS = Path(__file__).resolve().parent / "results"
IMGSZ = 640
OURS = ("onnx", "openvino", "torch")


def build_random_model(root: Path) -> Path:
    """A YOLOv8n model directory (model.pt, model.onnx, openvino/) with random weights, at 640."""
    configure_offline()
    from ultralytics.models.yolo.model import YOLO

    out = root / "yolov8n-random"
    out.mkdir(parents=True)
    model = YOLO("yolov8n.yaml")
    model.save(str(out / "model.pt"))
    onnx_path = Path(YOLO(str(out / "model.pt")).export(format="onnx", imgsz=IMGSZ, dynamic=True, simplify=True,
                                                         opset=17, verbose=False))
    shutil.move(onnx_path, out / "model.onnx")
    ov_dir = Path(YOLO(str(out / "model.pt")).export(format="openvino", imgsz=IMGSZ, dynamic=True, verbose=False))
    (out / "openvino").mkdir()
    for suffix in (".xml", ".bin"):
        shutil.move(next(ov_dir.glob(f"*{suffix}")), out / "openvino" / f"model{suffix}")
    shutil.rmtree(ov_dir)
    names = model.names
    labels = [names[i] for i in range(len(names))] if isinstance(names, dict) else list(names)
    write_metadata(out, labels=labels, preprocess=Preprocess(input_size=IMGSZ),
                   provenance={"recipe": "bench/detector.py: yolov8n.yaml, random weights"})
    return out


def pictures(n: int, seed: int = 0) -> list[np.ndarray]:
    """n textured 1280 x 960 RGB pictures with a few bright rectangles."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        small = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
        image = cv2.resize(small, (1280, 960), interpolation=cv2.INTER_LINEAR)
        for _ in range(12):
            x, y = int(rng.integers(0, 1100)), int(rng.integers(0, 800))
            colour = tuple(int(c) for c in rng.integers(0, 255, 3))
            cv2.rectangle(image, (x, y), (x + 150, y + 140), colour, -1)
        out.append(image)
    return out


def timed_round_robin(calls: dict[tuple[str, int], Callable[[], object]], runs: int, warmup: int
                      ) -> dict[tuple[str, int], list[float]]:
    """Seconds of ``runs`` calls of each configuration, interleaved, after ``warmup`` untimed ones each."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    seconds: dict[tuple[str, int], list[float]] = {key: [] for key in calls}
    for run in range(runs):
        for key, call in calls.items():
            started = time.perf_counter()
            call()
            seconds[key].append(time.perf_counter() - started)
        print(f"run {run + 1}/{runs} done", flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="model directory (default: a random-weight YOLOv8n at 640)")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, action="append", help="batch sizes (default 1 and 8)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: runtime's)")
    parser.add_argument("--backend", action="append", choices=["ultralytics", *OURS],
                        help="what to measure (default: all)")
    parser.add_argument("--out", type=Path, default=RESULTS / "detector.json")
    args = parser.parse_args()
    batches = args.batch or [1, 8]
    chosen = args.backend or ["ultralytics", *OURS]

    with tempfile.TemporaryDirectory(prefix="bench-detector-") as scratch:
        model_dir = args.model or build_random_model(Path(scratch))
        images = pictures(max(batches))
        images_bgr = [np.ascontiguousarray(im[..., ::-1]) for im in images]  # ultralytics wants BGR arrays
        rows: list[dict[str, Any]] = []
        calls: dict[tuple[str, int], Callable[[], object]] = {}
        for name in chosen:
            if name == "ultralytics":
                configure_offline()
                from ultralytics.models.yolo.model import YOLO

                yolo = YOLO(str(Path(model_dir) / "model.pt"))

                def make_call(batch: int, yolo: Any = yolo) -> Callable[[], object]:
                    return lambda: yolo.predict(images_bgr[:batch], imgsz=IMGSZ, device="cpu", verbose=False,
                                                conf=0.25, iou=0.45)
            else:
                backend = load(model_dir, backend=name, threads=args.threads, batch_size=max(batches))

                def make_call(batch: int, backend: Any = backend) -> Callable[[], object]:
                    return lambda: backend.predict(images[:batch])
            for batch in batches:
                calls[(name, batch)] = make_call(batch)
        load_before = os.getloadavg()
        measured = timed_round_robin(calls, args.runs, args.warmup)
        load_after = os.getloadavg()
        for (name, batch), seconds in measured.items():
            per_image = [s * 1000 / batch for s in seconds]
            rows.append({"backend": name, "batch": batch, "runs": args.runs,
                         "median_ms_per_image": round(statistics.median(per_image), 2),
                         "min_ms_per_image": round(min(per_image), 2),
                         "max_ms_per_image": round(max(per_image), 2)})

    speedups = {}
    for batch in batches:
        reference = next((r for r in rows if r["backend"] == "ultralytics" and r["batch"] == batch), None)
        ours = [r for r in rows if r["backend"] in OURS and r["batch"] == batch]
        if reference and ours:
            fastest = min(ours, key=lambda r: r["median_ms_per_image"])
            speedups[str(batch)] = {"fastest": fastest["backend"], "speedup_over_ultralytics":
                                    round(reference["median_ms_per_image"] / fastest["median_ms_per_image"], 2)}

    import onnxruntime
    import openvino
    import torch
    import ultralytics

    result = {
        "benchmark": "detector",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "processor": platform.processor()},
        "versions": {"torch": torch.__version__, "ultralytics": ultralytics.__version__,
                     "onnxruntime": onnxruntime.__version__, "openvino": openvino.__version__},
        "model": str(args.model) if args.model else "yolov8n.yaml, random weights, exported by ultralytics",
        "imgsz": IMGSZ,
        "picture_wh": [1280, 960],
        "threads": args.threads,
        "load_average_1_5_15": {"before": [round(x, 2) for x in load_before],
                                "after": [round(x, 2) for x in load_after]},
        "results": rows,
        "speedup": speedups,
        "target_speedup": 1.5,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print()
    print(f"{'backend':12s} " + " ".join(f"{'batch ' + str(b):>14s}" for b in batches) + "   (median ms per picture)")
    for name in chosen:
        cells = []
        for batch in batches:
            row = next(r for r in rows if r["backend"] == name and r["batch"] == batch)
            cells.append(f"{row['median_ms_per_image']:14.2f}")
        print(f"{name:12s} " + " ".join(cells))
    for batch, s in speedups.items():
        verdict = "meets" if s["speedup_over_ultralytics"] >= 1.5 else "MISSES"
        print(f"batch {batch}: fastest of ours is {s['fastest']}, {s['speedup_over_ultralytics']:.2f}x ultralytics "
              f"predict ({verdict} the 1.5x target)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
