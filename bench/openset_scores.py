"""Benchmark: which open-set score tells a held-out SKU from a trained one (not a test; run on demand).

For a classifier trained with ``--holdout-classes N`` (its ``metrics.json`` names the held-out
SKUs), every Grocery Store *val* picture is run through the torch model once
(:func:`classifier.backbones.load_model_dir`), keeping the pooled backbone features (F-D), the
L2-normalised embedding (D) and the logits. The trained SKUs' *train* pictures give the class
prototypes (mean vectors, L2-normalised). Scores, higher = more like a trained SKU:

- ``embedding_prototype_cosine``: the best cosine of the embedding to the embedding prototypes
  (what :class:`classifier.recognize.Recognizer` thresholds today);
- ``feature_prototype_cosine``: the same in the backbone's own feature space;
- ``centred_feature_prototype_cosine``: features minus the train mean first;
- ``centred_feature_knn_cosine_k``: the mean cosine to the k nearest train pictures (k = 1, 5);
- ``max_softmax``, ``max_logit``, ``energy``: from the head's logits (Hendrycks and Gimpel,
  ICLR 2017; Liu et al., NeurIPS 2020 for the energy score, log-sum-exp of the logits).

Each score's AUROC (known val pictures against held-out-SKU val pictures,
:func:`classifier.openset.auroc`) and the share of trained-SKU pictures accepted at the
threshold that lets 5 % of the held-out pictures through.

Usage::

    .venv/bin/python bench/openset_scores.py --model work/classifier-grocery-holdout10 [--threads 2]

Writes ``bench/results/openset_scores.json`` (``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._machine import cpu  # noqa: E402
from classifier.dataset import DatasetItem, load_image, read_grocery_store  # noqa: E402
from classifier.model_dir import read_model_dir  # noqa: E402
from classifier.openset import auroc  # noqa: E402
from classifier.preprocess import prepare_batch  # noqa: E402

GROCERY = ROOT.parent / "shared" / "data" / "grocerystore"
RESULTS = ROOT / "bench" / "results" / "openset_scores.json"
Array = npt.NDArray[np.float64]


def _unit(x: Array) -> Array:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _outputs(model: Any, preprocess: Any, items: list[DatasetItem]) -> tuple[Array, Array, Array]:
    """(N, F) features, (N, D) embeddings and (N, C) logits, float64."""
    import torch

    features, embeddings, logits = [], [], []
    with torch.no_grad():
        for start in range(0, len(items), 64):
            batch = torch.from_numpy(prepare_batch([load_image(i.path) for i in items[start : start + 64]], preprocess))
            f = model.backbone(batch)
            out, emb = model.classify_features(f)
            features.append(f.double().numpy())
            embeddings.append(emb.double().numpy())
            logits.append(out.double().numpy())
    return np.concatenate(features), np.concatenate(embeddings), np.concatenate(logits)


def _prototypes(x: Array, y: npt.NDArray[np.int64], classes: int) -> Array:
    return _unit(np.stack([x[y == c].mean(axis=0) for c in range(classes)]))


def _knn(x: Array, reference: Array, k: int) -> Array:
    similarity = _unit(x) @ _unit(reference).T
    return np.sort(similarity, axis=1)[:, -k:].mean(axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a model trained with --holdout-classes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    import torch

    from classifier.backbones import load_model_dir

    torch.set_num_threads(args.threads)
    directory = read_model_dir(args.model)
    held_out = set((directory.metrics.get("openset") or {}).get("held_out_classes") or [])
    if not held_out:
        sys.exit(f"{args.model}: no held-out SKUs in metrics.json (train it with --holdout-classes N)")
    labels = list(directory.labels)
    model = load_model_dir(directory).eval()
    train, val = read_grocery_store(GROCERY, "train"), read_grocery_store(GROCERY, "val")
    names = train.class_names
    reference = [item for item in train.items if names[item.class_index] in labels]
    y = np.array([labels.index(names[item.class_index]) for item in reference], np.int64)
    train_features, train_embeddings, _ = _outputs(model, directory.preprocess, reference)
    val_features, val_embeddings, val_logits = _outputs(model, directory.preprocess, list(val.items))
    known = np.array([names[item.class_index] in labels for item in val.items])
    mean = train_features.mean(axis=0)
    shifted = val_logits - val_logits.max(axis=1, keepdims=True)
    scores: dict[str, Array] = {
        "embedding_prototype_cosine": (_unit(val_embeddings) @ _prototypes(train_embeddings, y, len(labels)).T).max(1),
        "feature_prototype_cosine": (_unit(val_features) @ _prototypes(train_features, y, len(labels)).T).max(1),
        "centred_feature_prototype_cosine": (
            _unit(val_features - mean) @ _prototypes(train_features - mean, y, len(labels)).T).max(1),
        "centred_feature_knn_cosine_1": _knn(val_features - mean, train_features - mean, 1),
        "centred_feature_knn_cosine_5": _knn(val_features - mean, train_features - mean, 5),
        "max_softmax": np.exp(shifted).max(axis=1) / np.exp(shifted).sum(axis=1),
        "max_logit": val_logits.max(axis=1),
        "energy": np.log(np.exp(shifted).sum(axis=1)) + val_logits.max(axis=1),
    }
    rows = []
    for name, score in scores.items():
        threshold = float(np.quantile(score[~known], 0.95))  # 5 % of held-out pictures accepted
        rows.append({"score": name, "auroc": round(auroc(score[known], score[~known]), 4),
                     "known_accepted_at_5pct_false_accept": round(float((score[known] > threshold).mean()), 4)})
    result = {"benchmark": "openset_scores", "date": datetime.now(UTC).isoformat(timespec="seconds"),
              "cpu": cpu(), "model": str(args.model), "held_out_classes": sorted(held_out),
              "known_val_pictures": int(known.sum()), "held_out_val_pictures": int((~known).sum()),
              "prototype_pictures": len(reference), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"| score | AUROC | trained-SKU pictures accepted at 5 % false accept ({int((~known).sum())} held-out) |")
    print("|---|---|---|")
    for row in rows:
        print(f"| {row['score']} | {row['auroc']:.3f} | {100 * row['known_accepted_at_5pct_false_accept']:.1f} % |")


if __name__ == "__main__":
    main()
