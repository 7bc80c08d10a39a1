"""Benchmark: transfer learning on Grocery Store, mode x backbone x input size (not a test; run on demand).

Each row is one ``shelftally classifier train`` command (the product's own CLI, run as a
subprocess on ``../shared/data/grocerystore`` with the 81 catalogue packshots added to train),
writing a model directory under ``work/transfer/ROW``; the row's val top-1 / top-5 / macro F1
and training seconds are read back from that directory's ``metrics.json``:

- ``lite0-probe-{96,128,160,224}``: a linear probe (frozen ImageNet EfficientNet-Lite0, cosine
  head on the features of each picture and 4 augmented views), the shipped model's recipe
  without its cross-validation;
- ``lite0-partial-{128,224}``: the first 6 of the 9 stages frozen, the rest fine-tuned;
- ``lite0-full-{128,224}``: everything fine-tuned, backbone learning rate 0.1x the head's,
  layer-wise decay 0.8 from the top;
- ``lite1-probe-240``: the probe on EfficientNet-Lite1 at its own 240 px;
- ``shufflenet-scratch-112``: ShuffleNet V2 from random weights, the recipe that shipped until
  the pretrained model replaced it (100 epochs, about 75 minutes on 2 cores).

A row whose ``work/transfer/ROW`` holds a finished model made by the row's command (the options
in its ``provenance.json``; data and output paths and threads aside) is not retrained
(``--retrain`` forces it): rows take minutes to over an hour, so they can be run a few at a time
(``--row NAME``, repeatable).

Usage::

    .venv/bin/python bench/transfer.py [--row lite0-probe-224 ...] [--retrain] [--threads 2]

Writes ``bench/results/transfer.json`` (``--out``; rows already there and not rerun are kept)
and prints the README's Markdown table. Val is the 296 Grocery Store val pictures (60 of the 81
classes, 3-6 pictures each: a standard error of about 2.5 points on top-1).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._machine import cpu  # noqa: E402

GROCERY = ROOT.parent / "shared" / "data" / "grocerystore"
WORK = ROOT / "work" / "transfer"
RESULTS = ROOT / "bench" / "results" / "transfer.json"

_PROBE = ["--mode", "probe", "--probe-views", "4", "--epochs", "60", "--patience", "15",
          "--weight-decay", "0.5", "--lr", "3e-3"]
_PARTIAL = ["--mode", "partial", "--frozen-stages", "6", "--epochs", "4", "--patience", "4", "--lr", "1e-3"]
_FULL = ["--mode", "full", "--backbone-lr-scale", "0.1", "--layer-decay", "0.8", "--epochs", "4",
         "--patience", "4", "--lr", "1e-3"]
_LITE0 = ["--backbone", "efficientnet_lite0.imagenet"]

#: row name -> (backbone, mode, input size, epochs, arguments after the common ones)
ROWS: dict[str, tuple[str, str, int, int, list[str]]] = {
    "lite0-probe-96": ("efficientnet_lite0.imagenet", "probe", 96, 60, _LITE0 + _PROBE + ["--input-size", "96"]),
    "lite0-probe-128": ("efficientnet_lite0.imagenet", "probe", 128, 60, _LITE0 + _PROBE + ["--input-size", "128"]),
    "lite0-probe-160": ("efficientnet_lite0.imagenet", "probe", 160, 60, _LITE0 + _PROBE + ["--input-size", "160"]),
    "lite0-probe-224": ("efficientnet_lite0.imagenet", "probe", 224, 60, _LITE0 + _PROBE),
    "lite0-partial-128": ("efficientnet_lite0.imagenet", "partial", 128, 4,
                          _LITE0 + _PARTIAL + ["--input-size", "128"]),
    "lite0-partial-224": ("efficientnet_lite0.imagenet", "partial", 224, 4, _LITE0 + _PARTIAL),
    "lite0-full-128": ("efficientnet_lite0.imagenet", "full", 128, 4, _LITE0 + _FULL + ["--input-size", "128"]),
    "lite0-full-224": ("efficientnet_lite0.imagenet", "full", 224, 4, _LITE0 + _FULL),
    "lite1-probe-240": ("efficientnet_lite1.imagenet", "probe", 240, 60,
                        ["--backbone", "efficientnet_lite1.imagenet", *_PROBE]),
    "shufflenet-scratch-112": ("shufflenet_v2_x1_0", "full", 112, 100,
                               ["--backbone", "shufflenet_v2_x1_0", "--input-size", "112", "--epochs", "100",
                                "--patience", "30"]),
}


def command(row: str, threads: int) -> list[str]:
    """The ``shelftally classifier train`` argument list of ``row``."""
    return ["shelftally", "classifier", "train", "--data", str(GROCERY), "--format", "grocery", "--with-packshots",
            *ROWS[row][4], "--threads", str(threads), "--out", str(WORK / row)]


def _options(argv: list[str]) -> list[tuple[str, str]]:
    """A ``classifier train`` command's options as sorted (flag, value) pairs, where it reads and
    writes and its thread count left out (they do not change the recipe)."""
    pairs: list[tuple[str, str]] = []
    for i, token in enumerate(argv):
        if token.startswith("--") and token not in ("--data", "--out", "--threads"):
            value = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else ""
            pairs.append((token, value))
    return sorted(pairs)


def _trained(row: str) -> bool:
    """Whether ``work/transfer/ROW`` holds a finished model made by this row's command (its
    options compared with the recorded command's; data and output paths and threads aside)."""
    out = WORK / row
    try:
        recorded = json.loads((out / "provenance.json").read_text())["command"]
        json.loads((out / "metrics.json").read_text())
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return _options(shlex.split(recorded)) == _options(command(row, 1))


def measure(row: str) -> dict[str, Any]:
    """The row's figures from its model directory."""
    out = WORK / row
    metrics = json.loads((out / "metrics.json").read_text())
    provenance = json.loads((out / "provenance.json").read_text())
    backbone, mode, size, epochs, _ = ROWS[row]
    return {
        "row": row, "backbone": backbone, "mode": mode, "input_size": size, "epochs": epochs,
        "top1": metrics["top1"], "top5": metrics["top5"], "macro_f1": metrics["macro_f1"],
        "best_epoch": metrics.get("best_epoch"), "epochs_run": metrics.get("epochs_run"),
        "training_seconds": metrics["training_seconds"], "torch_threads": metrics.get("torch_threads"),
        "model_bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file()),
        "command": provenance.get("command"),
    }


def table(rows: list[dict[str, Any]]) -> str:
    """The README's Markdown table."""
    lines = ["| backbone | mode | input px | epochs run | val top-1 | top-5 | macro F1 | training min | threads |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['backbone']} | {r['mode']} | {r['input_size']} | {r['epochs_run']} | "
                     f"{100 * r['top1']:.1f} % | {100 * r['top5']:.1f} % | {r['macro_f1']:.3f} | "
                     f"{r['training_seconds'] / 60:.1f} | {r['torch_threads'] or 'default'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--row", action="append", choices=sorted(ROWS), help="rows to run (default: all)")
    parser.add_argument("--retrain", action="store_true", help="train even where the model directory is finished")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not (GROCERY / "dataset").is_dir():
        sys.exit(f"bench/transfer.py: the Grocery Store dataset is not at {GROCERY}")
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    previous: dict[str, Any] = {}
    if args.out.exists():
        previous = {r["row"]: r for r in json.loads(args.out.read_text()).get("rows", [])}
    for row in args.row or list(ROWS):
        trained_now = args.retrain or not _trained(row)
        if trained_now:
            print("$", " ".join(command(row, args.threads)), flush=True)
            subprocess.run(command(row, args.threads), check=True, env=env)
        result = measure(row)
        result["cpu"] = cpu() if trained_now else previous.get(row, {}).get("cpu", "not recorded")
        result["date"] = datetime.fromtimestamp((WORK / row / "metrics.json").stat().st_mtime, UTC).isoformat(
            timespec="seconds")
        previous[row] = result
        ordered = [previous[name] for name in ROWS if name in previous]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"benchmark": "transfer", "data": "Grocery Store val (296 pictures)",
                                        "rows": ordered}, indent=2) + "\n")  # after each row: rows take long
    print(table(ordered))


if __name__ == "__main__":
    main()
