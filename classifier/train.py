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

import contextlib
import copy
import hashlib
import logging
import math
import platform
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

import cv2
import numpy as np
import numpy.typing as npt

from classifier.dataset import DatasetItem, ImageDataset, load_image
from classifier.errors import DatasetError, MissingDependencyError
from classifier.metrics import classification_metrics
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
from classifier.pretrained import lookup as lookup_pretrained
from classifier.pretrained import split_name

try:
    import torch
    import torchvision
    from torch.utils.data import DataLoader, Dataset
    from torchvision.transforms import v2
except ImportError as _error:  # pragma: no cover - the tests run with torch installed
    raise MissingDependencyError(
        "classifier.train needs torch and torchvision: pip install 'shelftally[train]'"
    ) from _error

from classifier.backbones import (
    EmbeddingClassifier,
    build_model,
    read_state_dict,
    recalibrate_batchnorm,
    require_backbone,
    save_model_dir,
)
from classifier.export import export_onnx

__all__ = [
    "CACHE_SCALE",
    "TRAIN_MODES",
    "EpochProgress",
    "TrainMode",
    "classification_metrics",
    "fold_assignments",
    "train_classifier",
]

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


def _cache_preprocess(preprocess: Preprocess, side: int) -> Preprocess:
    """How a picture is kept in memory: letterboxed to ``side``, or (for weights evaluated with a
    centre crop) its central square at ``side``, so that the deployment preprocessing applied to
    the cached copy equals the preprocessing applied to the picture up to a second resize."""
    if preprocess.resize == "center_crop":
        return Preprocess(input_size=side, resize="center_crop", crop_pct=1.0, interpolation=preprocess.interpolation)
    return Preprocess(input_size=side, resize=preprocess.resize, pad_value=preprocess.pad_value)


def _decode(items: Sequence[DatasetItem], side: int, digest: Any, preprocess: Preprocess) -> _Cached:
    pad = _cache_preprocess(preprocess, side)
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


def _features(
    model: EmbeddingClassifier, images: npt.NDArray[np.uint8], preprocess: Preprocess,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """(N, F) float32 pooled backbone features (eval mode) of cached images, deployment-prepared
    or, with ``transform``, augmented."""
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(images), _EVAL_BATCH):
            chunk = images[start : start + _EVAL_BATCH]
            if transform is None:
                batch = torch.from_numpy(prepare_batch(list(chunk), preprocess))
            else:
                batch = torch.stack([transform(torch.from_numpy(image).permute(2, 0, 1)) for image in chunk])
            out.append(model.backbone(batch.contiguous(memory_format=torch.channels_last)))
    return torch.cat(out) if out else torch.zeros((0, model.feature_dim))


def _forward(
    model: EmbeddingClassifier, images: npt.NDArray[np.uint8], preprocess: Preprocess,
    features: torch.Tensor | None = None,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """(N, C) logits and (N, D) embeddings of cached images in eval mode; with ``features``
    (their precomputed backbone output, a probe) only the embedding and head run."""
    model.eval()
    logits, embeddings = [], []
    with torch.no_grad():
        for start in range(0, len(images), _EVAL_BATCH):
            if features is not None:
                out_logits, out_embedding = model.classify_features(features[start : start + _EVAL_BATCH])
            else:
                batch = torch.from_numpy(prepare_batch(list(images[start : start + _EVAL_BATCH]), preprocess))
                out_logits, out_embedding = model(batch)
            logits.append(out_logits.numpy())
            embeddings.append(out_embedding.numpy())
    classes, dim = model.num_classes, model.embedding_dim
    return (
        np.concatenate(logits).astype(np.float32) if logits else np.zeros((0, classes), np.float32),
        np.concatenate(embeddings).astype(np.float32) if embeddings else np.zeros((0, dim), np.float32),
    )


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


TrainMode = Literal["probe", "partial", "full"]
"""How much of a (pretrained) backbone adapts (Kornblith et al., "Do Better ImageNet Models
Transfer Better?", CVPR 2019; Kumar et al., "Fine-Tuning can Distort Pretrained Features",
ICLR 2022):

- ``"probe"``: linear probe. The backbone is frozen (BatchNorm statistics too); its pooled
  features are computed once per image, clean and for ``probe_views`` augmented views, and only
  the embedding and head train on them (an epoch then costs milliseconds).
- ``"partial"``: the first ``frozen_stages`` stages are frozen (their BatchNorm statistics kept),
  the rest trains with layer-wise learning-rate decay.
- ``"full"``: everything trains; the backbone's learning rate is ``lr x backbone_lr_scale``,
  decayed by ``layer_decay`` per stage from the top (layer-wise decay of Clark et al., ELECTRA,
  ICLR 2020; Bao et al., BEiT, ICLR 2022).
"""

TRAIN_MODES: tuple[str, ...] = get_args(TrainMode)


def _param_groups(
    model: EmbeddingClassifier, lr: float, backbone_lr_scale: float, layer_decay: float
) -> list[dict[str, Any]]:
    """AdamW groups: embedding and head at ``lr``; backbone stage k of S at
    ``lr x backbone_lr_scale x layer_decay^(S - 1 - k)``; frozen parameters left out."""
    groups: list[dict[str, Any]] = []
    seen: set[int] = set()
    stages = model.stages
    for k, stage in enumerate(stages):
        params = [p for p in stage.parameters() if p.requires_grad and id(p) not in seen]
        seen.update(id(p) for p in params)
        if params:
            groups.append({"params": params, "lr": lr * backbone_lr_scale * layer_decay ** (len(stages) - 1 - k)})
    rest_backbone = [p for p in model.backbone.parameters() if p.requires_grad and id(p) not in seen]
    seen.update(id(p) for p in rest_backbone)
    if rest_backbone:  # parameters outside the listed stages: the lowest rate of the backbone
        groups.append({"params": rest_backbone, "lr": lr * backbone_lr_scale * layer_decay ** max(0, len(stages) - 1)})
    head = [p for p in model.parameters() if p.requires_grad and id(p) not in seen]
    groups.append({"params": head, "lr": lr})
    return groups


def fold_assignments(class_ids: npt.NDArray[np.int64], folds: int) -> npt.NDArray[np.int64]:
    """Stratified k-fold split, by capture sequence: each class's items, in dataset order, are cut
    into ``folds`` contiguous runs of near-equal length.

    Grocery Store pictures of one class are consecutive shots of the same products; a random
    split would put near-duplicates on both sides and overrate every model. Contiguous runs keep
    most of a sequence on one side.

    Args:
        class_ids: (N,) int64 class of each item, in dataset order.
        folds: k >= 2.

    Returns:
        (N,) int64 fold index in [0, k) of each item. A class with fewer than k items has no item
        in some folds.

    Raises:
        ValueError: ``folds < 2``.
    """
    if folds < 2:
        raise ValueError(f"folds: expected >= 2, received {folds}")
    out = np.zeros(len(class_ids), np.int64)
    for c in np.unique(class_ids):
        members = np.flatnonzero(class_ids == c)
        out[members] = (np.arange(len(members)) * folds) // max(1, len(members))
    return out


@dataclass
class _Recipe:
    backbone: str
    input_size: int
    embedding_dim: int
    head: str
    epochs: int
    batch: int
    lr: float
    weight_decay: float
    label_smoothing: float
    mode: TrainMode
    frozen_stages: int
    trainable_stages: int
    backbone_lr_scale: float
    layer_decay: float
    probe_views: int
    weights: str | None
    pretrained: str | Path | None
    allow_partial: bool
    patience: int
    seed: int
    threads: int | None


@dataclass
class _Fitted:
    model: EmbeddingClassifier
    best_top1: float
    best_epoch: int
    epochs_run: int
    epoch_seconds: list[float]
    train_features: torch.Tensor | None  # probe: clean features of the training cache
    val_features: torch.Tensor | None


def _build(recipe: _Recipe, classes: int) -> EmbeddingClassifier:
    architecture = Architecture(
        recipe.backbone, embedding_dim=recipe.embedding_dim, head=recipe.head,  # type: ignore[arg-type]
        backbone_weights=recipe.weights if recipe.mode == "probe" and recipe.weights and not recipe.allow_partial
        else None,
    )
    model = build_model(
        architecture, classes, pretrained=recipe.pretrained, weights=recipe.weights,
        allow_partial=recipe.allow_partial, freeze=recipe.mode == "probe" or recipe.trainable_stages > 0,
        trainable_stages=recipe.trainable_stages if recipe.mode != "probe" else 0,
        frozen_stages=recipe.frozen_stages if recipe.mode == "partial" else 0,
    )
    # channels-last only where the backbone runs frozen (probe features): it changes fine-tuning numerics
    return model.to(memory_format=torch.channels_last) if recipe.mode == "probe" else model


@dataclass
class _ProbeFeatures:
    """A probe's backbone features, computed once: the backbone is frozen, so every fit of one
    recipe (the final one and each cross-validation fold) shares them."""

    views: torch.Tensor  # (V + 1, N, F) float32, training cache: clean first, then V augmented views
    val: torch.Tensor  # (M, F) float32, validation cache, clean
    backbone: dict[str, torch.Tensor]  # the frozen backbone that made them: every fit's model gets it

    def split(self, train: npt.NDArray[np.bool_], val: npt.NDArray[np.bool_]) -> _ProbeFeatures:
        """Training rows ``train`` (all views) and training rows ``val`` (clean) as a new split."""
        return _ProbeFeatures(self.views[:, torch.from_numpy(train)], self.views[0, torch.from_numpy(val)],
                              self.backbone)


def _probe_features(recipe: _Recipe, preprocess: Preprocess, train_cache: _Cached, val_cache: _Cached,
                    classes: int) -> _ProbeFeatures:
    extractor = _build(recipe, classes)
    augment = _augmentation(preprocess)
    views = [_features(extractor, train_cache.images, preprocess)] + [
        _features(extractor, train_cache.images, preprocess, augment) for _ in range(recipe.probe_views)
    ]
    return _ProbeFeatures(torch.stack(views), _features(extractor, val_cache.images, preprocess),
                          extractor.backbone.state_dict())


def _fit(
    recipe: _Recipe, preprocess: Preprocess, train_cache: _Cached, val_cache: _Cached, classes: int,
    rng: np.random.Generator, progress: Callable[[EpochProgress], None] | None,
    features: _ProbeFeatures | None = None,
) -> _Fitted:
    """Train one network on cached pictures, keeping the epoch with the best validation top-1
    (a probe trains on ``features``, made by :func:`_probe_features` from these caches)."""
    model = _build(recipe, classes)
    augment = _augmentation(preprocess)
    generator = torch.Generator().manual_seed(recipe.seed)
    train_features = val_features = None
    if recipe.mode == "probe":
        if features is None:
            raise ValueError("a probe fit needs its features (_probe_features of these caches)")
        # the backbone the features came from (a random or partly loaded one differs between builds)
        model.backbone.load_state_dict(features.backbone)
        train_features, val_features = features.views[0], features.val
        targets_all = torch.from_numpy(train_cache.labels)
        steps_per_epoch = max(1, math.ceil(len(train_cache.labels) / recipe.batch))
        loader = None
    else:
        loader = DataLoader(
            _Augmented(train_cache, augment), batch_size=recipe.batch, shuffle=True, num_workers=0,
            drop_last=len(train_cache.labels) > recipe.batch, generator=generator,
        )
        steps_per_epoch = len(loader)
    total_steps = steps_per_epoch * recipe.epochs
    optimizer = torch.optim.AdamW(
        _param_groups(model, recipe.lr, recipe.backbone_lr_scale, recipe.layer_decay), weight_decay=recipe.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _schedule(total_steps, max(1, min(total_steps // 20, 3 * steps_per_epoch)))
    )
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    recalibration_index = rng.permutation(len(train_cache.labels))[:_RECALIBRATION_CROPS]
    # a probe's backbone (and its BatchNorm statistics) stays frozen: nothing to re-estimate
    recalibration = [] if loader is None else _batches(train_cache.images[np.sort(recalibration_index)], preprocess)

    best_top1, best_epoch, best_state = -1.0, 0, copy.deepcopy(model.state_dict())
    epoch_seconds: list[float] = []
    epochs_run = 0
    for epoch in range(1, recipe.epochs + 1):
        epoch_started = time.perf_counter()
        model.train()
        losses: list[float] = []
        if loader is None:  # probe: one view per picture, drawn anew each epoch
            assert features is not None
            n = len(targets_all)
            pick = torch.randint(len(features.views), (n,), generator=generator)
            epoch_features = features.views[pick, torch.arange(n)]
            order = torch.randperm(n, generator=generator)
            batches: Any = (
                (epoch_features[order[i : i + recipe.batch]], targets_all[order[i : i + recipe.batch]])
                for i in range(0, n, recipe.batch)
            )
        else:
            batches = loader
        for inputs, targets in batches:
            if loader is None:
                logits, _ = model.classify_features(inputs)
            else:
                logits, _ = model(inputs)
            loss = criterion(logits, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.item()))
        if loader is not None:
            recalibrate_batchnorm(model, recalibration)
        val_logits, _ = _forward(model, val_cache.images, preprocess, val_features)
        top1 = float((val_logits.argmax(axis=1) == val_cache.labels).mean()) if len(val_logits) else 0.0
        epochs_run = epoch
        if top1 >= best_top1:  # ties: the later epoch (trained longer at a lower learning rate)
            best_top1, best_epoch, best_state = top1, epoch, copy.deepcopy(model.state_dict())
        seconds = time.perf_counter() - epoch_started
        epoch_seconds.append(seconds)
        train_loss = float(np.mean(losses)) if losses else float("nan")
        logger.info("epoch %s/%s: loss %.4f, val top-1 %.4f (%.1f s)", epoch, recipe.epochs, train_loss, top1, seconds)
        if progress is not None:
            progress(EpochProgress(epoch, recipe.epochs, train_loss, top1, best_top1, seconds))
        if epoch - best_epoch >= recipe.patience:
            logger.info("early stop after epoch %s: no better val top-1 for %s epochs", epoch, recipe.patience)
            break
    model.load_state_dict(best_state)
    model.eval()
    return _Fitted(model, best_top1, best_epoch, epochs_run, epoch_seconds, train_features, val_features)


def _subset(cache: _Cached, mask: npt.NDArray[np.bool_]) -> _Cached:
    return _Cached(cache.images[mask], cache.labels[mask])


@contextlib.contextmanager
def _random_state_kept() -> Iterator[None]:
    """Run a block and put torch's (CPU), numpy's and Python's global random states back as they were."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def _cross_validate(
    recipe: _Recipe, preprocess: Preprocess, cache: _Cached, classes: int, folds: int,
    positions: npt.NDArray[np.int64], progress: Callable[[int, int], None] | None = None,
    features: _ProbeFeatures | None = None,
) -> dict[str, Any]:
    """k-fold top-1 on the training pictures (:func:`fold_assignments`) with the same recipe; each
    fold model stops early on its own held-out fold, so the figure is mildly optimistic. A probe
    reuses ``features`` (one row per picture of ``cache``) instead of running the backbone again.
    ``positions``: (N,) each picture's place in the dataset, whose order is the capture order the
    folds follow."""
    sequence = np.argsort(positions, kind="stable")
    assignment = np.empty(len(cache.labels), np.int64)
    assignment[sequence] = fold_assignments(cache.labels[sequence], folds)
    scores: list[float] = []
    items: list[int] = []
    for fold in range(folds):
        held = assignment == fold
        if not held.any() or held.all():
            continue
        fitted = _fit(recipe, preprocess, _subset(cache, ~held), _subset(cache, held), classes,
                      np.random.default_rng(recipe.seed + fold + 1), None,
                      None if features is None else features.split(~held, held))
        scores.append(fitted.best_top1)
        items.append(int(held.sum()))
        logger.info("cross-validation fold %s/%s: top-1 %.4f on %s pictures", fold + 1, folds, scores[-1], items[-1])
        if progress is not None:
            progress(fold + 1, folds)
    weights = np.array(items, np.float64)
    return {
        "folds": folds,
        "split": "stratified by class, contiguous runs of each class's pictures (capture sequences)",
        "top1": float(np.average(scores, weights=weights)) if scores else None,
        "top1_std": float(np.std(scores)) if scores else None,
        "per_fold_top1": [round(x, 4) for x in scores],
        "per_fold_items": items,
    }


def train_classifier(
    dataset: ImageDataset,
    *,
    out_dir: str | Path,
    val: ImageDataset | None = None,
    val_fraction: float = 0.2,
    backbone: str = "mobilenet_v3_large",
    input_size: int | None = None,
    embedding_dim: int = 128,
    head: str = "cosine",
    epochs: int = 30,
    batch: int = 32,
    lr: float = 3e-3,
    weight_decay: float = 0.05,
    label_smoothing: float = 0.1,
    mode: TrainMode = "full",
    frozen_stages: int = 0,
    backbone_lr_scale: float = 1.0,
    layer_decay: float = 1.0,
    probe_views: int = 4,
    freeze: bool = False,
    trainable_stages: int = 0,
    pretrained: str | Path | None = None,
    allow_partial: bool = False,
    resize: str | None = None,
    cv_folds: int = 0,
    seed: int = 0,
    patience: int = 5,
    holdout_classes: int = 0,
    false_accept_rate: float = 0.05,
    false_reject_rate: float = 0.05,
    extra_train_items: Sequence[DatasetItem] = (),
    progress: Callable[[EpochProgress], None] | None = None,
    cv_progress: Callable[[int, int], None] | None = None,
    command: str | None = None,
) -> Path:
    """Train a classifier and write its model directory.

    Args:
        dataset: the training images (class names = SKU codes).
        out_dir: the model directory to write (created; files in it are replaced).
        val: the validation images (same class names); None: ``val_fraction`` of each class of
            ``dataset`` is held out (stratified, seeded).
        val_fraction: see ``val``.
        backbone: a name in :data:`classifier.backbones.BACKBONES`, or with registered pretrained
            weights in timm's style (``"efficientnet_lite0.imagenet"``, :mod:`classifier.pretrained`):
            the weights' own preprocessing (size, mean/std, resize, interpolation) is then used.
        input_size: S, pixels (square input); None: the pretrained weights' size, else 128.
        embedding_dim: D.
        head: ``"cosine"`` or ``"linear"`` (:class:`~classifier.model_dir.Architecture`).
        epochs: the most epochs to run.
        batch: crops per optimizer step.
        lr: peak AdamW learning rate of the embedding and head.
        weight_decay: AdamW weight decay.
        label_smoothing: cross-entropy label smoothing.
        mode: ``"probe"``, ``"partial"`` or ``"full"`` (:data:`TrainMode`).
        frozen_stages: ``"partial"``: the number of first backbone stages frozen (>= 1).
        backbone_lr_scale: the backbone's top stage learns at ``lr x backbone_lr_scale``.
        layer_decay: each stage lower learns ``layer_decay`` times slower (1: no decay).
        probe_views: ``"probe"``: augmented views per picture whose features are computed.
        freeze: legacy spelling: freeze the backbone except its last ``trainable_stages`` stages.
        trainable_stages: see ``freeze``.
        pretrained: local backbone weights (:func:`classifier.backbones.load_pretrained`).
        allow_partial: load the pretrained tensors that fit instead of refusing a partial match.
        resize: override the resize policy (``letterbox``, ``stretch``, ``center_crop``).
        cv_folds: k >= 2: also report k-fold cross-validated top-1 on ``dataset``
            (:func:`fold_assignments`; k more trainings) in ``metrics.json`` under ``cross_validation``.
        seed: seeds torch, numpy and Python's ``random``.
        patience: stop after this many epochs without a better validation top-1.
        holdout_classes: N > 0 leaves N randomly chosen classes (seeded) out of training to
            calibrate the open-set threshold and measure AUROC (:mod:`classifier.openset`);
            the model then names only the other classes.
        false_accept_rate: with held-out classes, the fraction of unknown crops to accept.
        false_reject_rate: without held-out classes, the fraction of known crops to reject.
        extra_train_items: more training items (e.g. catalogue packshots), class indices of
            ``dataset.class_names``; never used for validation or cross-validation folds.
        progress: called after every epoch of the final training.
        cv_progress: called with ``(folds done, folds)`` during cross-validation.
        command: the command line that reproduces the run (recorded in ``provenance.json``).

    Returns:
        The model directory.

    Raises:
        DatasetError: fewer than 2 trainable classes, no validation items, or ``val`` has other
            classes (reasons ``too_few_classes``, ``empty_split``, ``class_mismatch``).
        ModelLoadError: unknown backbone, unusable pretrained weights or a failed export.
        MissingDependencyError: the backbone or its weights need the ``pretrained`` extra.
        ValueError: an argument out of range.
    """
    if epochs < 1 or batch < 1 or patience < 1:
        raise ValueError(f"epochs, batch, patience: expected >= 1, received {epochs}, {batch}, {patience}")
    if holdout_classes < 0:
        raise ValueError(f"holdout_classes: expected >= 0, received {holdout_classes}")
    if mode not in TRAIN_MODES:
        raise ValueError(f"mode: expected one of {', '.join(TRAIN_MODES)}, received {mode!r}")
    if mode == "partial" and frozen_stages < 1:
        raise ValueError("frozen_stages: partial fine-tuning needs at least 1 frozen stage")
    if mode != "partial" and frozen_stages:
        raise ValueError(f"frozen_stages: only with mode 'partial', received mode {mode!r}")
    if freeze:  # legacy flags
        if mode != "full":
            raise ValueError("freeze: give mode or freeze, not both")
        mode = "partial" if trainable_stages else "probe"
    elif trainable_stages:
        raise ValueError("trainable_stages: only meaningful with freeze=True")
    if not backbone_lr_scale > 0 or not 0 < layer_decay <= 1:
        raise ValueError(f"backbone_lr_scale > 0, layer_decay in (0, 1]: received {backbone_lr_scale}, {layer_decay}")
    if probe_views < 0:
        raise ValueError(f"probe_views: expected >= 0, received {probe_views}")
    if cv_folds == 1 or cv_folds < 0:
        raise ValueError(f"cv_folds: expected 0 (off) or >= 2, received {cv_folds}")
    started = time.perf_counter()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    require_backbone(backbone)  # an unknown or missing backbone fails here, before any picture is decoded
    if pretrained is not None:
        read_state_dict(Path(pretrained))  # so does an unreadable weights file (its fit is checked when built)
    architecture_name, tag = split_name(backbone)
    weights = backbone if tag is not None else None
    if weights is not None and pretrained is not None:
        raise ValueError(f"pretrained: {backbone!r} already names its weights; give a file or a name, not both")
    cfg = lookup_pretrained(weights) if weights is not None else None
    preprocess = cfg.preprocess(input_size) if cfg is not None else Preprocess(input_size=input_size or 128)
    if resize is not None:
        preprocess = replace(preprocess, resize=resize)  # type: ignore[arg-type]
    train_items, val_items = _split(dataset, val, val_fraction, rng)
    place = {item.path: i for i, item in enumerate(dataset.items)}  # capture order, for cross-validation
    extra_items = list(extra_train_items)

    names = dataset.class_names
    present = sorted({item.class_index for item in train_items + extra_items})
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
    train_items, val_items, extra_items = (
        relabel(train_items, True), relabel(val_items, True), relabel(extra_items, True)
    )
    if not val_items:
        raise DatasetError("no validation images for the trained classes", reason="empty_split")

    side = math.ceil(CACHE_SCALE * preprocess.input_size)
    digest = hashlib.sha256()
    decode_started = time.perf_counter()
    own_cache = _decode(train_items, side, digest, preprocess)
    extra_cache = _decode(extra_items, side, digest, preprocess)
    train_cache = _Cached(
        np.concatenate([own_cache.images, extra_cache.images]), np.concatenate([own_cache.labels, extra_cache.labels])
    )
    val_cache = _decode(val_items, side, digest, preprocess)
    unknown_cache = _decode(unknown_items, side, digest, preprocess)
    logger.info(
        "decoded %s train, %s val, %s held-out images at %s px in %.1f s",
        len(train_cache.labels), len(val_items), len(unknown_items), side, time.perf_counter() - decode_started,
    )
    recipe = _Recipe(
        backbone=architecture_name, input_size=preprocess.input_size, embedding_dim=embedding_dim, head=head,
        epochs=epochs, batch=batch, lr=lr, weight_decay=weight_decay, label_smoothing=label_smoothing, mode=mode,
        frozen_stages=frozen_stages, trainable_stages=trainable_stages, backbone_lr_scale=backbone_lr_scale,
        layer_decay=layer_decay, probe_views=probe_views, weights=weights, pretrained=pretrained,
        allow_partial=allow_partial, patience=patience, seed=seed, threads=torch.get_num_threads(),
    )
    features = _probe_features(recipe, preprocess, train_cache, val_cache, len(labels)) if mode == "probe" else None
    cross_validation = None
    if cv_folds:
        # the folds draw from the global generators; the final fit must not depend on whether they ran
        with _random_state_kept():
            cross_validation = _cross_validate(
                recipe, preprocess, own_cache, len(labels), cv_folds,
                np.array([place[item.path] for item in train_items], np.int64), cv_progress,
                None if features is None else _ProbeFeatures(  # own pictures come first
                    features.views[:, : len(own_cache.labels)], features.val, features.backbone),
            )
    fitted = _fit(recipe, preprocess, train_cache, val_cache, len(labels), rng, progress, features)
    model = fitted.model
    val_logits, val_embedding = _forward(model, val_cache.images, preprocess, fitted.val_features)
    metrics = classification_metrics(val_logits, val_cache.labels, labels)
    _, train_embedding = _forward(model, train_cache.images, preprocess, fitted.train_features)
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
    if cross_validation is not None:
        metrics["cross_validation"] = cross_validation
        metrics["cv_top1"] = cross_validation["top1"]
    metrics.update({
        "best_epoch": fitted.best_epoch,
        "epochs_run": fitted.epochs_run,
        "epoch_seconds": [round(s, 2) for s in fitted.epoch_seconds],
        "train_items": len(train_cache.labels),
        "training_seconds": round(time.perf_counter() - started, 2),
        "torch_threads": torch.get_num_threads(),
    })
    recipe_record = {
        "backbone": architecture_name, "weights": weights, "mode": mode, "input_size": preprocess.input_size,
        "embedding_dim": embedding_dim, "head": head, "epochs": epochs, "batch": batch, "lr": lr,
        "weight_decay": weight_decay, "label_smoothing": label_smoothing, "frozen_stages": frozen_stages,
        "trainable_stages": trainable_stages, "backbone_lr_scale": backbone_lr_scale, "layer_decay": layer_decay,
        "probe_views": probe_views if mode == "probe" else None,
        "pretrained": str(pretrained) if pretrained is not None else None, "allow_partial": allow_partial,
        "seed": seed, "patience": patience, "holdout_classes": holdout_classes,
        "val_fraction": None if val is not None else val_fraction, "cv_folds": cv_folds,
        "extra_train_items": len(extra_items), "augmentation": "rrc0.3,persp0.25,jitter0.3,blur,erase",
        "schedule": "adamw+warmup+cosine", "cache_side": side,
    }
    provenance = {
        "dataset": {"root": str(dataset.root), "sha256": digest.hexdigest(), "classes": len(names)},
        "recipe": recipe_record,
        "pretrained": model.weights_provenance,
        "versions": {
            "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": np.__version__, "opencv": cv2.__version__, **_optional_versions(),
        },
        "created_at": datetime.now(UTC).isoformat(),
        "command": command or " ".join(sys.argv),
        "openset": asdict(calibration),
    }
    out = Path(out_dir)
    model = model.to(memory_format=torch.contiguous_format)
    save_model_dir(model, out, labels=labels, preprocess=preprocess, metrics=metrics, provenance=provenance)
    write_openset(out, prototypes, mean, calibration)
    export_onnx(model, out, input_size=preprocess.input_size)
    logger.info("wrote classifier %s: val top-1 %.4f after %s epochs", out, metrics["top1"], fitted.epochs_run)
    return out


def _optional_versions() -> dict[str, str]:
    import importlib.metadata

    found = {}
    for package in ("timm",):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found
