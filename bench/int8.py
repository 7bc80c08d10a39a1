"""Benchmark: INT8 post-training quantisation of the shipped classifier on the CPU, with its
accuracy delta on the real Grocery Store val set (not a test; run on demand; needs ../shared/data).

ONNX Runtime static quantisation (QDQ format, per-channel signed 8-bit weights, 8-bit
activations calibrated with MinMax on ``--calibration`` Grocery Store *train* pictures, whole
pictures as crops, prepared exactly as the classifier backend prepares them) of
``models/classifier-grocery/model.onnx``. Reported, for FP32 and INT8: top-1 on the 296 *val*
pictures (argmax of the logits, no open-set threshold) and crops per second at batch 32 (median
of ``--runs`` timed calls, ONNX Runtime with ``--threads`` intra-op threads, calls interleaved).

Usage::

    .venv/bin/python bench/int8.py [--calibration 256] [--runs 20] [--threads 2]

Writes ``bench/results/int8.json`` (``--out`` elsewhere; the quantised model goes to ``work/int8/``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from classifier.dataset import load_image, read_grocery_store  # noqa: E402
from classifier.model_dir import read_model_dir  # noqa: E402
from classifier.preprocess import prepare_batch  # noqa: E402

GROCERY = ROOT.parent / "shared" / "data" / "grocerystore"


def main() -> None:
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "classifier-grocery")
    parser.add_argument("--calibration", type=int, default=256)
    parser.add_argument("--format", choices=["qdq", "qoperator"], default="qdq",
                        help="QDQ (quantise/dequantise pairs) or QOperator (fused integer operators)")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--work", type=Path, default=ROOT / "work" / "int8")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "int8.json")
    args = parser.parse_args()

    model = read_model_dir(args.model)
    args.work.mkdir(parents=True, exist_ok=True)
    train = read_grocery_store(GROCERY, "train")
    val = read_grocery_store(GROCERY, "val")
    rng = np.random.default_rng(0)
    picks = rng.choice(len(train.items), size=min(args.calibration, len(train.items)), replace=False)
    calibration = [train.items[i].path for i in sorted(picks.tolist())]
    input_name = "images"

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.batches = iter([calibration[i:i + 16] for i in range(0, len(calibration), 16)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            paths = next(self.batches, None)
            if paths is None:
                return None
            return {input_name: prepare_batch([load_image(p) for p in paths], model.preprocess)}

    fp32 = args.model / "model.onnx"
    prepared = args.work / "model.pre.onnx"
    int8 = args.work / "model.int8.onnx"
    started = time.perf_counter()
    quant_pre_process(str(fp32), str(prepared))
    quant_format = QuantFormat.QDQ if args.format == "qdq" else QuantFormat.QOperator
    quantize_static(str(prepared), str(int8), Reader(), quant_format=quant_format, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    quantise_s = time.perf_counter() - started

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    sessions = {name: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                for name, path in (("fp32", fp32), ("int8", int8))}

    index_of = {code: i for i, code in enumerate(model.labels)}
    truth = [index_of.get(val.class_names[item.class_index], -1) for item in val.items]
    pictures = [load_image(item.path) for item in val.items]
    results: dict[str, Any] = {}
    for name, session in sessions.items():
        predicted: list[int] = []
        for i in range(0, len(pictures), 32):
            logits = session.run(None, {input_name: prepare_batch(pictures[i:i + 32], model.preprocess)})[0]
            predicted.extend(np.argmax(logits, axis=1).tolist())
        results[name] = {"top1": round(float(np.mean([p == t for p, t in zip(predicted, truth, strict=True)])), 4)}
    batch = prepare_batch(pictures[:32], model.preprocess)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(3):
        for session in sessions.values():
            session.run(None, {input_name: batch})
    for _ in range(args.runs):
        for name, session in sessions.items():
            t = time.perf_counter()
            session.run(None, {input_name: batch})
            times[name].append(time.perf_counter() - t)
    for name in sessions:
        median = statistics.median(times[name])
        results[name].update({"ms_per_batch_32": round(median * 1000, 2), "crops_per_s": round(32 / median, 1)})
    report = {
        "benchmark": "int8", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": args.model.name, "val_pictures": len(pictures), "calibration_pictures": len(calibration),
        "method": f"onnxruntime quantize_static, {args.format}, per-channel QInt8 weights, QUInt8 activations, MinMax",
        "quantise_seconds": round(quantise_s, 1), "threads": args.threads,
        "fp32": results["fp32"], "int8": results["int8"],
        "top1_delta": round(results["int8"]["top1"] - results["fp32"]["top1"], 4),
        "speedup": round(results["fp32"]["ms_per_batch_32"] / results["int8"]["ms_per_batch_32"], 2),
        "load_average": os.getloadavg(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
