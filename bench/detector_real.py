"""Benchmark: product-agnostic detectors on the real test splits (not a test; run on demand).

Rows compare, on the same time budget (ultralytics' ``time`` argument: training stops, and its
learning-rate schedule ends, after ``--hours``), the from-scratch YOLOv8n the project shipped
with against YOLOv8n on an ImageNet EfficientNet-Lite0 backbone (``yolov8n-lite0.yaml``), on
generated shelves only against generated shelves mixed with the real labelled train splits,
and at 320 against a larger input:

- ``scratch-gen-320`` / ``lite0-gen-320``: 320 generated 640x480 shelves of the 81 Grocery Store
  catalogue packshots (``detector synth``, the shipped model's data); ``scratch-gen-320`` is the
  recipe of the model shipped until then (15 epochs, no time budget);
- ``scratch-mix-320`` / ``lite0-mix-320`` / ``lite0-mix-480``: those shelves plus the train
  splits of shelf-testing (535 photos), pallets (222) and packages (19), every box one class
  (``detector merge``); their val splits (51 photos) choose the best epoch, their test splits
  are never seen.

Every row is the product's own CLI run as a subprocess: ``detector synth``, ``detector merge``,
``detector train`` (into ``work/detector-real/ROW``, not retrained when finished with the same
command; ``--retrain`` forces it), then ``shelftally evaluate detector --json`` from the exported
ONNX on each real test split (shelf-testing 11 photos, pallets 13, packages 3), class-agnostic,
at the confidence each model recommends. Test splits this small give coarse figures (one photo
of 11 is 9 points); they are what the project has.

Usage::

    .venv/bin/python bench/detector_real.py [--row lite0-mix-320 ...] [--hours 0.15] [--retrain] \
        [--baseline models/product-agnostic]

Writes ``bench/results/detector_real.json`` (rows not rerun are kept) and prints the README's
Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._machine import cpu  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
WORK = ROOT / "work" / "detector-real"
RESULTS = ROOT / "bench" / "results" / "detector_real.json"
ICONIC = DATA / "grocerystore" / "dataset" / "iconic-images-and-descriptions"
#: The real labelled sets: name -> data.yaml.
REAL = {
    "shelf-testing": DATA / "shelf-testing-ccby" / "data.yaml",
    "pallets": DATA / "pallets-ccby" / "repo_data.yaml",
    "packages": DATA / "packages-public-domain" / "data.yaml",
}
GENERATED = WORK / "data" / "synth-grocery"
DRAWN = WORK / "data" / "synth-drawn"
MIX = WORK / "data" / "mix"
SHIP_MIX = WORK / "data" / "ship-mix"
DATASETS = {"gen": GENERATED / "agnostic" / "data.yaml", "mix": MIX / "data.yaml",
            "ship-mix": SHIP_MIX / "data.yaml"}

#: row name -> (model YAML, dataset key, input size, extra ``--set`` arguments). The lite0 rows
#: freeze the ImageNet trunk (ultralytics ``freeze=1``: layer 0, the EfficientNetLite module) and
#: train the neck and head: on 2 CPU cores the backward pass through the whole trunk (depthwise
#: convolutions) makes an unfrozen step several times YOLOv8n's, so in a fixed budget the frozen
#: trunk sees several times the pictures (the rows' ``epochs_run`` are the measured figure).
#: ``scratch-gen-320`` is the recipe the project shipped until this benchmark: 15 epochs, no
#: time budget (19.8 min on 2 shared cores); the ``--hours`` budget applies to the others.
ROWS: dict[str, tuple[str, str, int, tuple[str, ...]]] = {
    "scratch-gen-320": ("yolov8n.yaml", "gen", 320, ("epochs=15",)),
    "lite0-gen-320": ("yolov8n-lite0.yaml", "gen", 320, ("freeze=1",)),
    "scratch-mix-320": ("yolov8n.yaml", "mix", 320, ()),
    "lite0-mix-320": ("yolov8n-lite0.yaml", "mix", 320, ("freeze=1",)),
    "scratch-mix-480": ("yolov8n.yaml", "mix", 480, ()),
    "lite0-mix-480": ("yolov8n-lite0.yaml", "mix", 480, ("freeze=1",)),
    # The shipped detector: the best of the rows above, on the mix plus 240 drawn-packshot shelves (3-30 products),
    # for twice the budget.
    "ship": ("yolov8n-lite0.yaml", "ship-mix", 320, ("freeze=1", "time=0.3")),
}


def data_commands() -> list[list[str]]:
    """The commands that write the two training sets (generated; generated + real train splits)."""
    return [
        ["shelftally", "detector", "synth", "--packshots", str(ICONIC), "--pattern", "*_Iconic.jpg",
         "--out", str(GENERATED), "--images", "400", "--size", "640x480", "--min-objects", "2",
         "--max-objects", "30", "--seed", "0"],
        ["shelftally", "detector", "merge", *[a for path in REAL.values() for a in ("--source", str(path))],
         "--source", f"{DATASETS['gen']}:train", "--out", str(MIX)],
        # The shipped model also sees shelves of the project's drawn packshots (the demo's look),
        # from close-ups of 3 products to shelves of 30.
        ["shelftally", "detector", "synth", "--packshots", "drawn", "--skus", "24", "--out", str(DRAWN),
         "--images", "300", "--size", "960x720", "--min-objects", "3", "--max-objects", "30", "--seed", "1"],
        ["shelftally", "detector", "merge", *[a for path in REAL.values() for a in ("--source", str(path))],
         "--source", f"{DATASETS['gen']}:train", "--source", f"{DRAWN / 'agnostic' / 'data.yaml'}:train",
         "--out", str(SHIP_MIX)],
    ]


def train_command(row: str, hours: float) -> list[str]:
    """The ``shelftally detector train`` argument list of ``row``."""
    model, data, size, sets = ROWS[row]
    epochs = next((item.split("=")[1] for item in sets if item.startswith("epochs=")), None)
    own_time = any(item.startswith("time=") for item in sets)
    budget = ["--epochs", epochs] if epochs else ["--epochs", "100"] + ([] if own_time else ["--set", f"time={hours}"])
    return ["shelftally", "detector", "train", "--data", str(DATASETS[data]), "--model", model,
            "--imgsz", str(size), *budget, "--batch", "16", "--seed", "0",
            *[a for item in sets if not item.startswith("epochs=") for a in ("--set", item)], "--out", str(WORK / row)]


def recommend_command(row: str) -> list[str]:
    """``shelftally evaluate detector --recommend`` on the merged real val split (51 photos): the
    row's counting confidence, written to its ``inference.json`` before any test split is seen."""
    return ["shelftally", "evaluate", "detector", "--data", str(DATASETS["mix"]), "--split", "val",
            "--detector", str(WORK / row), "--recommend", "--record-as", "real-val", "--json"]


def evaluate_command(row: str, name: str) -> list[str]:
    """The ``shelftally evaluate detector`` argument list of ``row`` on one real test split."""
    return ["shelftally", "evaluate", "detector", "--data", str(REAL[name]), "--split", "test",
            "--detector", str(WORK / row), "--record-as", f"{name}-test", "--json"]


def _trained(row: str, hours: float) -> bool:
    out = WORK / row
    try:
        recipe = json.loads((out / "provenance.json").read_text())["recipe"]["requested"]
        model = json.loads((out / "provenance.json").read_text())["base_model"]["model"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    sets = dict(item.split("=") for item in ROWS[row][3])
    budget_ok = recipe.get("time") is None if "epochs" in sets else recipe.get("time") == float(sets.get("time", hours))
    return (out / "model.onnx").is_file() and Path(model).name == ROWS[row][0] and recipe.get("imgsz") == ROWS[row][2] \
        and budget_ok and all(str(recipe.get(k)) == v for k, v in sets.items())


def measure(row: str, env: dict[str, str]) -> dict[str, Any]:
    """The row's training figures and its scores on every real test split."""
    out = WORK / row
    metrics = json.loads((out / "metrics.json").read_text())
    provenance = json.loads((out / "provenance.json").read_text())
    epochs_run = len((out / "train_log.csv").read_text().strip().splitlines()) - 1
    model, data, size, sets = ROWS[row]
    result: dict[str, Any] = {
        "row": row, "model": model, "data": data, "input_size": size, "sets": list(sets),
        "epochs_run": epochs_run, "training_seconds": provenance.get("train_seconds"),
        "val_mAP50": metrics.get("mAP50"), "onnx_bytes": (out / "model.onnx").stat().st_size, "test": {},
    }
    done = subprocess.run(recommend_command(row), check=True, env=env, capture_output=True, text=True)
    val = json.loads(done.stdout)
    result["real_val"] = {k: val[k] for k in ("pictures", "true_boxes", "precision", "recall", "mAP50",
                                              "count_within_10pct", "best_f1")}
    result["recommended"] = val["recommended"]
    for name in REAL:
        started = time.perf_counter()
        done = subprocess.run(evaluate_command(row, name), check=True, env=env, capture_output=True, text=True)
        score = json.loads(done.stdout)
        score["seconds"] = round(time.perf_counter() - started, 1)
        result["test"][name] = score
    return result


def pooled(row: dict[str, Any]) -> dict[str, float]:
    """Precision, recall and the share of photos counted within 10 % over all real test photos."""
    tests = row["test"].values()
    tp = sum(round(t["precision"] * t["detected_boxes"]) for t in tests)
    detected = sum(t["detected_boxes"] for t in tests)
    true = sum(t["true_boxes"] for t in tests)
    pictures = sum(t["pictures"] for t in tests)
    within = sum(t["count_within_10pct"] * t["pictures"] for t in tests)
    return {"pictures": pictures, "precision": tp / detected if detected else 0.0,
            "recall": tp / true if true else 0.0, "count_within_10pct": within / pictures if pictures else 0.0}


def table(rows: list[dict[str, Any]]) -> str:
    """The README's Markdown table: per row, the confidence chosen on real val, then P / R / mAP50 /
    share of photos counted within 10 % on each real test split and pooled."""
    head = ("| row | backbone | training data | px | epochs in budget | confidence (real val) | "
            + " | ".join(f"{n} test P / R / mAP50 / ±10 %" for n in REAL) + " | all test photos P / R / ±10 % |")
    lines = [head, "|" + "---|" * (7 + len(REAL))]
    for r in rows:
        cells = []
        for name in REAL:
            t = r["test"][name]
            cells.append(f"{t['precision']:.2f} / {t['recall']:.2f} / {t['mAP50']:.3f} / "
                         f"{100 * t['count_within_10pct']:.0f} %")
        pool = pooled(r)
        backbone = "ImageNet EfficientNet-Lite0 (frozen)" if "lite0" in r["model"] else "YOLOv8n, random init"
        data = r["data"] if r["data"] in DATASETS else "/".join(Path(r["data"]).parts[-3:-1])  # a baseline's path
        lines.append(f"| {r['row']} | {backbone} | {data} | {r['input_size']} | {r['epochs_run']} | "
                     f"{r['recommended']['confidence']:.3f} | " + " | ".join(cells)
                     + f" | {pool['precision']:.2f} / {pool['recall']:.2f} / "
                     f"{100 * pool['count_within_10pct']:.0f} % |")
    return "\n".join(lines)


def _write(path: Path, hours: float, rows: dict[str, Any]) -> None:
    ordered = [rows[name] for name in dict.fromkeys([*ROWS, "baseline"]) if name in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"benchmark": "detector_real", "hours_per_row": hours, "rows": ordered}, indent=2)
                    + "\n")  # after each row: rows take long


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--row", action="append", choices=sorted(ROWS), help="rows to run (default: all)")
    parser.add_argument("--hours", type=float, default=0.15, help="training time budget of each row")
    parser.add_argument("--retrain", action="store_true", help="train even where the model directory is finished")
    parser.add_argument("--train-only", action="store_true", help="train, do not evaluate")
    parser.add_argument("--baseline", type=Path, help="also score this model directory as row 'baseline' (copied "
                        "to work/detector-real/baseline; its training is whatever its provenance.json says)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    missing = [str(p) for p in REAL.values() if not p.is_file()]
    if missing:
        sys.exit(f"bench/detector_real.py: real datasets missing: {', '.join(missing)}")
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    if not all(p.is_file() for p in DATASETS.values()):
        for argv in data_commands():
            print("$", " ".join(argv), flush=True)
            subprocess.run(argv, check=True, env=env)
    previous: dict[str, Any] = {}
    if args.out.exists():
        previous = {r["row"]: r for r in json.loads(args.out.read_text()).get("rows", [])}
    if args.baseline is not None:
        shutil.rmtree(WORK / "baseline", ignore_errors=True)
        shutil.copytree(args.baseline, WORK / "baseline")
        provenance = json.loads((WORK / "baseline" / "provenance.json").read_text())
        ROWS["baseline"] = (provenance["base_model"]["model"], str(provenance["dataset"]["source"]),
                            int(provenance["recipe"]["requested"]["imgsz"]), ())
    for row in ([*args.row, *(["baseline"] if args.baseline else [])] if args.row else list(ROWS)):
        if row == "baseline":
            result = measure(row, env) | {"cpu": "see provenance.json", "command": provenance.get("command"),
                                          "source": str(args.baseline)}
            previous[row] = result
            continue
        trained_now = args.retrain or not _trained(row, args.hours)
        if trained_now:
            print("$", " ".join(train_command(row, args.hours)), flush=True)
            subprocess.run(train_command(row, args.hours), check=True, env=env)
        if args.train_only:
            continue
        result = measure(row, env)
        result["cpu"] = cpu() if trained_now else previous.get(row, {}).get("cpu", cpu())
        result["date"] = datetime.fromtimestamp((WORK / row / "metrics.json").stat().st_mtime, UTC).isoformat(
            timespec="seconds")
        previous[row] = result
        _write(args.out, args.hours, previous)
    _write(args.out, args.hours, previous)
    if previous:
        print(table([previous[name] for name in dict.fromkeys([*ROWS, "baseline"]) if name in previous]))


if __name__ == "__main__":
    main()
