"""Benchmark: classifier crops per second on the CPU (not a test; run on demand).

Compared, end to end per call of ``classify(crops)`` (resize and normalise each crop, network,
softmax, embedding normalisation), through our backends on one model directory:

- ``torch``: the `torch` session (:mod:`shelftally.runtimes.torch`) on ``model.pt`` (eager, eval mode);
- ``onnx``: the `onnx` session (:mod:`shelftally.runtimes.onnx`) on ``model.onnx``;
- ``openvino``: the `openvino` session (:mod:`shelftally.runtimes.openvino`) on ``openvino/model.xml``
  (``openvino_precision="auto"``: bf16 where the CPU has it).

Each at batch 1, 32 and 128 crops, the median of ``--runs`` timed calls after ``--warmup``
calls. Crops are random-sized (40-160 px a side) textured uint8 RGB arrays, as a detector would
cut them. The timed calls go round-robin over all configurations, so a busy neighbour slows
every configuration alike; the load average before and after is recorded in the JSON.

Speed does not depend on the weights, so without ``--model`` randomly initialised networks
(``mobilenet_v3_small`` by default; ``--arch resnet18`` adds it) are saved at 64 x 64 and
128 x 128 and exported with :mod:`classifier.export` (dynamic batch, OpenVINO IR) in a
temporary directory.

Usage::

    .venv/bin/python bench/classifier.py [--model DIR] [--arch mobilenet_v3_small --arch resnet18]
        [--size 64 --size 128] [--batch 1 --batch 32 --batch 128] [--runs 10] [--warmup 2]
        [--threads N] [--backend torch --backend onnx ...]

Writes ``bench/results/classifier.json`` and prints a table of crops per second with the
speed-up of the fastest non-torch CPU backend over torch at batch 32 (target: at least 2x).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from classifier.backends import load
from classifier.model_dir import Preprocess

RESULTS = Path(__file__).resolve().parent / "results"
BACKENDS = ("torch", "onnx", "openvino")
TARGET_SPEEDUP = 2.0
LABELS = [f"sku-{i:03d}" for i in range(50)]


def build_random_model(root: Path, arch: str, size: int) -> Path:
    """A model directory (model.pt, model.onnx, openvino/) of ``arch`` with random weights at ``size``."""
    import torch

    from classifier.backbones import build_model, save_model_dir
    from classifier.export import export_onnx, export_openvino

    torch.manual_seed(0)
    model = build_model(arch, len(LABELS))
    model.eval()
    out = root / f"{arch}-{size}"
    save_model_dir(model, out, labels=LABELS, preprocess=Preprocess(input_size=size),
                   provenance={"recipe": f"bench/classifier.py: {arch}, random weights"})
    export_onnx(model, out, input_size=size)
    export_openvino(out / "model.onnx")
    return out


def crops(n: int, seed: int = 0) -> list[np.ndarray]:
    """n (h, w, 3) uint8 RGB crops, h and w in [40, 160)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (int(h), int(w), 3), dtype=np.uint8) for h, w in rng.integers(40, 160, (n, 2))]


def timed_round_robin(calls: dict[tuple[str, str, int], Callable[[], object]], runs: int, warmup: int
                      ) -> dict[tuple[str, str, int], list[float]]:
    """Seconds of ``runs`` calls of each configuration, interleaved, after ``warmup`` untimed ones each."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    seconds: dict[tuple[str, str, int], list[float]] = {key: [] for key in calls}
    for run in range(runs):
        for key, call in calls.items():
            started = time.perf_counter()
            call()
            seconds[key].append(time.perf_counter() - started)
        print(f"run {run + 1}/{runs} done", flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="classifier model directory (default: random networks)")
    parser.add_argument("--arch", action="append", help="random backbones (default mobilenet_v3_small)")
    parser.add_argument("--size", type=int, action="append", help="input sizes of random models (default 64, 128)")
    parser.add_argument("--batch", type=int, action="append", help="batch sizes (default 1, 32, 128)")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: runtime's)")
    parser.add_argument("--backend", action="append", choices=BACKENDS, help="what to measure (default: all)")
    parser.add_argument("--out", type=Path, default=RESULTS / "classifier.json")
    args = parser.parse_args()
    batches: list[int] = args.batch or [1, 32, 128]
    chosen: list[str] = args.backend or list(BACKENDS)
    archs: list[str] = args.arch or ["mobilenet_v3_small"]
    sizes: list[int] = args.size or [64, 128]

    pool = crops(max(batches))
    with tempfile.TemporaryDirectory(prefix="bench-classifier-") as scratch:
        if args.model:
            models = {args.model.name: args.model}
        else:
            models = {f"{arch}@{size}": build_random_model(Path(scratch), arch, size)
                      for arch in archs for size in sizes}
        calls: dict[tuple[str, str, int], Callable[[], object]] = {}
        for model_name, model_dir in models.items():
            for name in chosen:
                backend = load(model_dir, backend=name, threads=args.threads, batch_size=max(batches))
                for batch in batches:
                    calls[(model_name, name, batch)] = (
                        lambda backend=backend, batch=batch: backend.classify(pool[:batch]))
        load_before = os.getloadavg()
        measured = timed_round_robin(calls, args.runs, args.warmup)
        load_after = os.getloadavg()

    rows: list[dict[str, Any]] = []
    for (model_name, name, batch), seconds in measured.items():
        rates = [batch / s for s in seconds]
        rows.append({"model": model_name, "backend": name, "batch": batch, "runs": args.runs,
                     "median_crops_per_s": round(statistics.median(rates), 1),
                     "min_crops_per_s": round(min(rates), 1), "max_crops_per_s": round(max(rates), 1),
                     "median_ms_per_call": round(statistics.median(seconds) * 1000, 2)})

    def rate(model_name: str, name: str, batch: int) -> float | None:
        row = next((r for r in rows if (r["model"], r["backend"], r["batch"]) == (model_name, name, batch)), None)
        return None if row is None else float(row["median_crops_per_s"])

    speedups: dict[str, dict[str, Any]] = {}
    for model_name in models:
        reference = rate(model_name, "torch", 32)
        others = {n: rate(model_name, n, 32) for n in chosen if n != "torch"}
        others_known = {n: r for n, r in others.items() if r is not None}
        if reference and others_known:
            fastest = max(others_known, key=lambda n: others_known[n])
            speedups[model_name] = {"batch": 32, "fastest": fastest,
                                    "speedup_over_torch": round(others_known[fastest] / reference, 2)}

    import onnxruntime
    import openvino
    import torch

    result = {
        "benchmark": "classifier",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "processor": platform.processor()},
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                     "openvino": openvino.__version__},
        "models": {k: (str(v) if args.model else "random weights, exported by classifier/export.py")
                   for k, v in models.items()},
        "crop_side_px": [40, 160],
        "threads": args.threads,
        "runs": args.runs,
        "warmup": args.warmup,
        "load_average_1_5_15": {"before": [round(x, 2) for x in load_before],
                                "after": [round(x, 2) for x in load_after]},
        "results": rows,
        "speedup_at_batch_32": speedups,
        "target_speedup": TARGET_SPEEDUP,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print()
    header = f"{'model':26s} {'backend':9s} " + " ".join(f"{'batch ' + str(b):>11s}" for b in batches)
    print(header + "   (median crops per second)")
    for model_name in models:
        for name in chosen:
            cells = [rate(model_name, name, b) for b in batches]
            print(f"{model_name:26s} {name:9s} " + " ".join(f"{c:11.1f}" if c else f"{'-':>11s}" for c in cells))
    for model_name, s in speedups.items():
        verdict = "meets" if s["speedup_over_torch"] >= TARGET_SPEEDUP else "misses"
        print(f"{model_name}: fastest at batch 32 is {s['fastest']}, {s['speedup_over_torch']}x torch "
              f"({verdict} the {TARGET_SPEEDUP}x target)")
    print(f"load average before {load_before}, after {load_after}; written to {args.out}")


if __name__ == "__main__":
    main()
