"""Benchmark: reading prices and barcodes on shelf-edge labels (not a test; run on demand).

There are no real price-tag photos in ``../shared/data``, so the labels are drawn by the project
(:mod:`classifier.tags`: OpenCV Hershey fonts on white or yellow cards, the price in large print
as ``12,90``, ``12.90`` or ``29:-``, an optional comparison price and article number in small
print, an EAN-13 drawn by zxing-cpp, then a random perspective tilt, scale 0.6-1.0, blur, noise
and JPEG compression). Each names one of the demo SKUs. Measured per label:

- the price read (:func:`classifier.labels.parse_price`) equals the printed one exactly;
- the barcode read equals the drawn GTIN;
- the label names its SKU (by barcode, else by its text);
- seconds per label (PP-OCRv4 through rapidocr, ``--threads``).

Usage::

    .venv/bin/python bench/price_tags.py [--labels 200] [--threads 2] [--seed 0]

Writes ``bench/results/price_tags.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from classifier.labels import read_label  # noqa: E402
from classifier.ocr import TextReader  # noqa: E402
from classifier.tags import draw_tag, ean13  # noqa: E402
from classifier.text import SkuText, TextMatcher  # noqa: E402
from workers.demo.vision import DEMO_SKUS  # noqa: E402


def cpu() -> dict[str, object]:
    """The CPU's model name and the vector flags that matter for these runtimes."""
    name, flags = platform.processor(), set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name") and not name:
            name = line.split(":", 1)[1].strip()
        if line.startswith("flags") and not flags:
            flags = set(line.split(":", 1)[1].split())
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")
    return {"cpu": name, "flags": [f for f in wanted if f in flags]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "price_tags.json")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    skus = [SkuText(code, name, gtin=ean13(f"20000{i:07d}")) for i, (code, name, _) in enumerate(DEMO_SKUS)]
    matcher = TextMatcher(skus)
    reader = TextReader(threads=args.threads)
    price_right = gtin_right = sku_right = 0
    by_style: dict[str, list[int]] = {}
    seconds = 0.0
    misses = []
    for i in range(args.labels):
        sku = skus[int(rng.integers(0, len(skus)))]
        tag = draw_tag(rng, sku.name, str(sku.gtin))
        started = time.perf_counter()
        label = read_label(reader.read(tag.image), matcher)
        seconds += time.perf_counter() - started
        right = label.price == tag.price
        price_right += right
        gtin_right += label.gtin == f"{int(tag.gtin):014d}"
        sku_right += label.sku_code == sku.sku_code
        style = "whole :-" if tag.printed.endswith(":-") else ("comma" if "," in tag.printed else "point")
        by_style.setdefault(style, []).append(int(right))
        if not right and len(misses) < 10:
            misses.append({"printed": tag.printed, "read": label.text[:80]})
        print(f"\r{i + 1}/{args.labels}", end="", file=sys.stderr)
    print(file=sys.stderr)
    n = args.labels
    report = {
        "benchmark": "price_tags", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {**cpu(), "threads": args.threads, "python": platform.python_version()},
        "labels": n, "seed": args.seed, "source": "drawn by classifier.tags (no real tag photos in ../shared/data)",
        "price_exact": round(price_right / n, 3), "barcode_read": round(gtin_right / n, 3),
        "sku_named": round(sku_right / n, 3),
        "price_exact_by_style": {k: round(sum(v) / len(v), 3) for k, v in sorted(by_style.items())},
        "seconds_per_label": round(seconds / n, 3), "misses": misses,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "misses"}, indent=2))


if __name__ == "__main__":
    main()
