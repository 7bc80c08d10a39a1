"""Train a SKU classifier on labelled crops and write its model directory.

Needs ``pip install 'shelftally[train]'`` (torch, torchvision, onnx).

Recipe (:func:`train_classifier`):

- Images are decoded once (OpenCV) and kept in memory letterboxed to ``L x L`` uint8 with
  ``L = ceil(1.25 S)`` (S = input size): the Grocery Store's 2,640 training pictures at S = 128
  take about 200 MB, and an epoch decodes nothing.
- Training augmentation (``torchvision.transforms.v2`` on uint8 tensors), chosen for crops cut
  from shelf photos by a detector: random resized crop (30-100 % of the area, aspect 3/4-4/3:
  loose or tight boxes), perspective (products seen from the side), colour jitter (shop
  lighting), Gaussian blur (focus, motion) and random erasing (price tags, neighbours'
  overlap). No horizontal flip: packaging text is not mirror-symmetric.
- Validation and prototypes use the deployment preprocessing (:func:`classifier.preprocess.prepare_batch`).
- AdamW, linear warm-up over the first ~5 % of the steps then cosine decay to 0 (per step),
  cross-entropy with label smoothing. After every epoch the BatchNorm statistics are
  re-estimated on up to 256 un-augmented training crops (:func:`classifier.backbones.recalibrate_batchnorm`),
  then validation top-1 is measured; the best epoch's weights are kept and training stops
  after ``patience`` epochs without improvement.
- Then prototypes (mean training embedding per class), the open-set threshold
  (:mod:`classifier.openset`), ``metrics.json``, ``provenance.json``, ``model.pt`` and
  ``model.onnx`` (dynamic batch) are written.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import platform
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from classifier.dataset import DatasetItem, ImageDataset, load_image
from classifier.errors import DatasetError, MissingDependencyError
from classifier.model_dir import Architecture, Preprocess
from classifier.openset import (
    OpenSetCalibration,
    auroc,
    centre,
    class_prototypes,
    prototype_scores,
    threshold_for_false_accept,
    threshold_for_false_reject,
    write_openset,
)
from classifier.preprocess import prepare_batch, resize_crop

try:
    import torch
    import torchvision
    from torch.utils.data import DataLoader, Dataset
    from torchvision.transforms import v2
except ImportError as _error:  # pragma: no cover - the tests run with torch installed
    raise MissingDependencyError(
        "classifier.train needs torch and torchvision: pip install 'shelftally[train]'"
    ) from _error

from classifier.backbones import EmbeddingClassifier, build_model, recalibrate_batchnorm, save_model_dir
from classifier.export import export_onnx

__all__ = ["CACHE_SCALE", "EpochProgress", "classification_metrics", "train_classifier"]

logger = logging.getLogger(__name__)

CACHE_SCALE = 1.25
"""Side of the in-memory letterboxed copy of each image, as a multiple of the input size."""

_RECALIBRATION_CROPS = 256
_EVAL_BATCH = 64


@dataclass(frozen=True)
class EpochProgress:
    """Reported after every epoch.

    Attributes:
        epoch: epochs done (1-based).
        epochs: the most epochs that will run.
        train_loss: mean training loss of the epoch.
        val_top1: validation top-1 accuracy after the epoch, in [0, 1].
        best_top1: best validation top-1 so far.
        seconds: wall time of the epoch (training and validation).
    """

    epoch: int
    epochs: int
    train_loss: float
    val_top1: float
    best_top1: float
    seconds: float


@dataclass
class _Cached:
    images: npt.NDArray[np.uint8]  # (N, L, L, 3) RGB
    labels: npt.NDArray[np.int64]  # (N,)


def _decode(items: Sequence[DatasetItem], side: int, digest: Any) -> _Cached:
    pad = Preprocess(input_size=side)
    images = np.empty((len(items), side, side, 3), np.uint8)
    for i, item in enumerate(items):
        digest.update(f"{item.path.name}:{item.class_index}:".encode())
        digest.update(hashlib.sha256(item.path.read_bytes()).digest())
        images[i] = resize_crop(load_image(item.path), pad)
    return _Cached(images, np.array([item.class_index for item in items], np.int64))


class _Augmented(Dataset[tuple[torch.Tensor, int]]):
    def __init__(self, cached: _Cached, transform: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.cached = cached
        self.transform = transform

    def __len__(self) -> int:
        return len(self.cached.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = torch.from_numpy(self.cached.images[index]).permute(2, 0, 1)
        return self.transform(image), int(self.cached.labels[index])


def _augmentation(preprocess: Preprocess) -> Callable[[torch.Tensor], torch.Tensor]:
    size = preprocess.input_size
    transform: Callable[[torch.Tensor], torch.Tensor] = v2.Compose([
        v2.RandomResizedCrop(size, scale=(0.3, 1.0), ratio=(0.75, 4 / 3), antialias=True),
        v2.RandomApply([v2.RandomPerspective(distortion_scale=0.25, p=1.0, fill=preprocess.pad_value)], p=0.3),
        v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.03),
        v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 1.5))], p=0.2),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(preprocess.mean), list(preprocess.std)),
        v2.RandomErasing(p=0.25, scale=(0.02, 0.15), value=0.0),
    ])
    return transform


def _batches(images: npt.NDArray[np.uint8], preprocess: Preprocess) -> list[torch.Tensor]:
    return [
        torch.from_numpy(prepare_batch(list(images[start : start + _EVAL_BATCH]), preprocess))
        for start in range(0, len(images), _EVAL_BATCH)
    ]


def _forward(
    model: EmbeddingClassifier, images: npt.NDArray[np.uint8], preprocess: Preprocess
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    model.eval()
    logits, embeddings = [], []
    with torch.no_grad():
        for start in range(0, len(images), _EVAL_BATCH):
            batch = torch.from_numpy(prepare_batch(list(images[start : start + _EVAL_BATCH]), preprocess))
            out_logits, out_embedding = model(batch)
            logits.append(out_logits.numpy())
            embeddings.append(out_embedding.numpy())
    classes, dim = model.num_classes, model.embedding_dim
    return (
        np.concatenate(logits).astype(np.float32) if logits else np.zeros((0, classes), np.float32),
        np.concatenate(embeddings).astype(np.float32) if embeddings else np.zeros((0, dim), np.float32),
    )


def classification_metrics(
    logits: npt.NDArray[np.float32], class_ids: npt.NDArray[np.int64], labels: Sequence[str]
) -> dict[str, Any]:
    """Top-1, top-5, macro precision / recall / F1 and per-class accuracy.

    Args:
        logits: (N, C) float32 network outputs.
        class_ids: (N,) int64 true classes.
        labels: the C SKU codes.

    Returns:
        ``{"top1", "top5", "macro_precision", "macro_recall", "macro_f1", "per_class_accuracy",
        "val_items"}``; macro averages run over the classes present in ``class_ids`` (precision
        of a class never predicted counts as 0); ``per_class_accuracy`` maps each SKU code with
        validation items to its recall.
    """
    n, c = logits.shape
    if n == 0:
        return {"top1": 0.0, "top5": 0.0, "macro_precision": 0.0, "macro_recall": 0.0, "macro_f1": 0.0,
                "per_class_accuracy": {}, "val_items": 0}
    predicted = logits.argmax(axis=1)
    top5 = np.argsort(-logits, axis=1)[:, : min(5, c)]
    confusion = np.zeros((c, c), np.int64)
    np.add.at(confusion, (class_ids, predicted), 1)
    present = np.flatnonzero(confusion.sum(axis=1))
    true_positive = np.diag(confusion).astype(np.float64)
    recall = true_positive / np.maximum(confusion.sum(axis=1), 1)
    precision = true_positive / np.maximum(confusion.sum(axis=0), 1)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    return {
        "top1": float((predicted == class_ids).mean()),
        "top5": float((top5 == class_ids[:, None]).any(axis=1).mean()),
        "macro_precision": float(precision[present].mean()),
        "macro_recall": float(recall[present].mean()),
        "macro_f1": float(f1[present].mean()),
        "per_class_accuracy": {labels[i]: float(recall[i]) for i in present.tolist()},
        "val_items": int(n),
    }


def _split(
    dataset: ImageDataset, val: ImageDataset | None, val_fraction: float, rng: np.random.Generator
) -> tuple[list[DatasetItem], list[DatasetItem]]:
    if val is not None:
        if val.class_names != dataset.class_names:
            raise DatasetError("val: expected the same class names as the training set", reason="class_mismatch")
        return list(dataset.items), list(val.items)
    train_items: list[DatasetItem] = []
    val_items: list[DatasetItem] = []
    by_class: dict[int, list[DatasetItem]] = {}
    for item in dataset.items:
        by_class.setdefault(item.class_index, []).append(item)
    for index in sorted(by_class):
        items = by_class[index]
        order = rng.permutation(len(items)).tolist()
        count = round(len(items) * val_fraction) if len(items) > 1 else 0
        count = min(max(count, 1 if len(items) > 1 else 0), len(items) - 1)
        val_items.extend(items[i] for i in order[:count])
        train_items.extend(items[i] for i in order[count:])
    return train_items, val_items


def _schedule(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def train_classifier(
    dataset: ImageDataset,
    *,
    out_dir: str | Path,
    val: ImageDataset | None = None,
    val_fraction: float = 0.2,
    backbone: str = "mobilenet_v3_large",
    input_size: int = 128,
    embedding_dim: int = 128,
    epochs: int = 30,
    batch: int = 32,
    lr: float = 3e-3,
    weight_decay: float = 0.05,
    label_smoothing: float = 0.1,
    freeze: bool = False,
    trainable_stages: int = 0,
    pretrained: str | Path | None = None,
    seed: int = 0,
    patience: int = 5,
    holdout_classes: int = 0,
    false_accept_rate: float = 0.05,
    false_reject_rate: float = 0.05,
    extra_train_items: Sequence[DatasetItem] = (),
    progress: Callable[[EpochProgress], None] | None = None,
    command: str | None = None,
) -> Path:
    """Train a classifier and write its model directory.

    Args:
        dataset: the training images (class names = SKU codes).
        out_dir: the model directory to write (created; files in it are replaced).
        val: the validation images (same class names); None: ``val_fraction`` of each class of
            ``dataset`` is held out (stratified, seeded).
        val_fraction: see ``val``.
        backbone: a name in :data:`classifier.backbones.BACKBONES`.
        input_size: S, pixels (square input, letterboxed).
        embedding_dim: D.
        epochs: the most epochs to run.
        batch: crops per optimizer step.
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        label_smoothing: cross-entropy label smoothing.
        freeze: freeze the backbone except its last ``trainable_stages`` stages.
        trainable_stages: see ``freeze``.
        pretrained: local backbone weights (:func:`classifier.backbones.load_pretrained`).
        seed: seeds torch, numpy and Python's ``random``.
        patience: stop after this many epochs without a better validation top-1.
        holdout_classes: N > 0 leaves N randomly chosen classes (seeded) out of training to
            calibrate the open-set threshold and measure AUROC (:mod:`classifier.openset`);
            the model then names only the other classes.
        false_accept_rate: with held-out classes, the fraction of unknown crops to accept.
        false_reject_rate: without held-out classes, the fraction of known crops to reject.
        extra_train_items: more training items (e.g. catalogue packshots), class indices of
            ``dataset.class_names``; never used for validation.
        progress: called after every epoch.
        command: the command line that reproduces the run (recorded in ``provenance.json``).

    Returns:
        The model directory.

    Raises:
        DatasetError: fewer than 2 trainable classes, no validation items, or ``val`` has other
            classes (reasons ``too_few_classes``, ``empty_split``, ``class_mismatch``).
        ModelLoadError: unknown backbone, unusable ``pretrained`` weights or a failed export.
        ValueError: an argument out of range.
    """
    if epochs < 1 or batch < 1 or patience < 1:
        raise ValueError(f"epochs, batch, patience: expected >= 1, received {epochs}, {batch}, {patience}")
    if holdout_classes < 0:
        raise ValueError(f"holdout_classes: expected >= 0, received {holdout_classes}")
    started = time.perf_counter()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    preprocess = Preprocess(input_size=input_size)
    train_items, val_items = _split(dataset, val, val_fraction, rng)
    train_items = train_items + list(extra_train_items)

    names = dataset.class_names
    present = sorted({item.class_index for item in train_items})
    held = sorted(rng.choice(present, size=holdout_classes, replace=False).tolist()) if holdout_classes else []
    kept = [i for i in present if i not in held]
    if len(kept) < 2:
        raise DatasetError(f"need at least 2 classes with training images, have {len(kept)}", reason="too_few_classes")
    remap = {old: new for new, old in enumerate(kept)}
    labels = [names[i] for i in kept]

    def relabel(items: Sequence[DatasetItem], keep: bool) -> list[DatasetItem]:
        if keep:
            return [DatasetItem(it.path, remap[it.class_index]) for it in items if it.class_index in remap]
        return [it for it in items if it.class_index in held]

    unknown_items = relabel(train_items, False) + relabel(val_items, False)
    train_items, val_items = relabel(train_items, True), relabel(val_items, True)
    if not val_items:
        raise DatasetError("no validation images for the trained classes", reason="empty_split")

    side = math.ceil(CACHE_SCALE * input_size)
    digest = hashlib.sha256()
    decode_started = time.perf_counter()
    train_cache = _decode(train_items, side, digest)
    val_cache = _decode(val_items, side, digest)
    unknown_cache = _decode(unknown_items, side, digest)
    logger.info(
        "decoded %s train, %s val, %s held-out images at %s px in %.1f s",
        len(train_items), len(val_items), len(unknown_items), side, time.perf_counter() - decode_started,
    )

    architecture = Architecture(backbone, embedding_dim=embedding_dim)
    model = build_model(
        architecture, len(labels), pretrained=pretrained, freeze=freeze, trainable_stages=trainable_stages
    )
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        _Augmented(train_cache, _augmentation(preprocess)), batch_size=batch, shuffle=True, num_workers=0,
        drop_last=len(train_items) > batch, generator=generator,
    )
    steps_per_epoch = len(loader)
    total_steps = steps_per_epoch * epochs
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _schedule(total_steps, max(1, min(total_steps // 20, 3 * steps_per_epoch)))
    )
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    recalibration_index = rng.permutation(len(train_items))[:_RECALIBRATION_CROPS]
    recalibration = _batches(train_cache.images[np.sort(recalibration_index)], preprocess)

    best_top1, best_epoch, best_state = -1.0, 0, copy.deepcopy(model.state_dict())
    epoch_seconds: list[float] = []
    epochs_run = 0
    for epoch in range(1, epochs + 1):
        epoch_started = time.perf_counter()
        model.train()
        losses: list[float] = []
        for images, targets in loader:
            logits, _ = model(images)
            loss = criterion(logits, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.item()))
        recalibrate_batchnorm(model, recalibration)
        val_logits, _ = _forward(model, val_cache.images, preprocess)
        top1 = float((val_logits.argmax(axis=1) == val_cache.labels).mean())
        epochs_run = epoch
        if top1 >= best_top1:  # ties: the later epoch (trained longer at a lower learning rate)
            best_top1, best_epoch, best_state = top1, epoch, copy.deepcopy(model.state_dict())
        seconds = time.perf_counter() - epoch_started
        epoch_seconds.append(seconds)
        train_loss = float(np.mean(losses)) if losses else float("nan")
        logger.info("epoch %s/%s: loss %.4f, val top-1 %.4f (%.1f s)", epoch, epochs, train_loss, top1, seconds)
        if progress is not None:
            progress(EpochProgress(epoch, epochs, train_loss, top1, best_top1, seconds))
        if epoch - best_epoch >= patience:
            logger.info("early stop after epoch %s: no better val top-1 for %s epochs", epoch, patience)
            break

    model.load_state_dict(best_state)
    model.eval()
    val_logits, val_embedding = _forward(model, val_cache.images, preprocess)
    metrics = classification_metrics(val_logits, val_cache.labels, labels)
    _, train_embedding = _forward(model, train_cache.images, preprocess)
    mean = train_embedding.mean(axis=0).astype(np.float32)
    prototypes = class_prototypes(centre(train_embedding, mean), train_cache.labels, len(labels))
    known_scores, _ = prototype_scores(centre(val_embedding, mean), prototypes)
    if unknown_items:
        _, unknown_embedding = _forward(model, unknown_cache.images, preprocess)
        unknown_scores, _ = prototype_scores(centre(unknown_embedding, mean), prototypes)
        order = rng.permutation(len(unknown_scores))
        half = max(1, len(order) // 2)
        calibrate, evaluate = unknown_scores[order[:half]], unknown_scores[order[half:]]
        threshold = threshold_for_false_accept(calibrate, false_accept_rate)
        calibration = OpenSetCalibration(threshold, "holdout", target_false_accept_rate=false_accept_rate)
        metrics["openset"] = {
            "auroc": auroc(known_scores, unknown_scores),
            "threshold": threshold,
            "calibration": "holdout",
            "held_out_classes": [names[i] for i in held],
            "held_out_items": len(unknown_items),
            "target_false_accept_rate": false_accept_rate,
            "false_accept_rate": float((evaluate >= threshold).mean()) if len(evaluate) else None,
            "known_accept_rate": float((known_scores >= threshold).mean()),
        }
    else:
        threshold = threshold_for_false_reject(known_scores, false_reject_rate)
        calibration = OpenSetCalibration(threshold, "known_quantile", target_false_reject_rate=false_reject_rate)
        metrics["openset"] = {
            "threshold": threshold,
            "calibration": "known_quantile",
            "target_false_reject_rate": false_reject_rate,
            "known_accept_rate": float((known_scores >= threshold).mean()),
        }
    metrics.update({
        "best_epoch": best_epoch,
        "epochs_run": epochs_run,
        "epoch_seconds": [round(s, 2) for s in epoch_seconds],
        "train_items": len(train_items),
        "training_seconds": round(time.perf_counter() - started, 2),
    })
    recipe = {
        "backbone": backbone, "input_size": input_size, "embedding_dim": embedding_dim, "epochs": epochs,
        "batch": batch, "lr": lr, "weight_decay": weight_decay, "label_smoothing": label_smoothing,
        "freeze": freeze, "trainable_stages": trainable_stages,
        "pretrained": str(pretrained) if pretrained is not None else None, "seed": seed, "patience": patience,
        "holdout_classes": holdout_classes, "val_fraction": None if val is not None else val_fraction,
        "extra_train_items": len(extra_train_items), "augmentation": "rrc0.3,persp0.25,jitter0.3,blur,erase",
        "schedule": "adamw+warmup+cosine", "cache_side": side,
    }
    provenance = {
        "dataset": {"root": str(dataset.root), "sha256": digest.hexdigest(), "classes": len(names)},
        "recipe": recipe,
        "versions": {
            "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": np.__version__, "opencv": cv2.__version__,
        },
        "created_at": datetime.now(UTC).isoformat(),
        "command": command or " ".join(sys.argv),
        "openset": asdict(calibration),
    }
    out = Path(out_dir)
    save_model_dir(model, out, labels=labels, preprocess=preprocess, metrics=metrics, provenance=provenance)
    write_openset(out, prototypes, mean, calibration)
    export_onnx(model, out, input_size=input_size)
    logger.info("wrote classifier %s: val top-1 %.4f after %s epochs", out, metrics["top1"], epochs_run)
    return out
