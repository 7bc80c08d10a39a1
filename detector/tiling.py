"""Sliced inference for large pictures (dense shelves photographed at high resolution).

Letterboxing a 12000 x 9000 picture into a 640 px input shrinks every product about 19 times;
small facings vanish. :func:`detect` instead cuts such pictures into overlapping square tiles
(the idea of SAHI, Akyon et al., "Slicing Aided Hyper Inference and Fine-tuning for Small
Object Detection", ICIP 2022), runs the tiles through the backend in batches, shifts each
tile's boxes back to picture pixels and merges them:

1. a box cut by an *interior* tile edge (within ``edge_margin_px`` of a tile side that is not a
   picture border) is dropped when a more complete box of the same class from another tile,
   not itself cut, covers at least ``seam_ios`` of it (intersection over the cut box's area);
   this comes before any NMS across tiles, which could otherwise keep a confident piece and
   suppress the whole object;
2. cut boxes left over from different tiles that cover each other by ``seam_ios``
   (intersection over the smaller area) are pieces of one object larger than the overlap and
   are replaced by their union, with the highest confidence;
3. class-aware NMS over everything removes the duplicates of objects seen whole in two
   overlapping tiles; then clipping to [0, W] x [0, H];
4. fragments go (:func:`suppress_fragments`): a box lying at least ``fragment_ios`` inside a box
   of the same class with at least twice its area and at least half its confidence is a part
   of that object (a logo, a label, the price tag on its shelf edge, the half of a carton a tile
   saw) and is dropped; then the ``max_det`` cap.

The tile size follows the objects' scale (:func:`detect`): the whole picture is detected first,
letterboxed; when the median object there is already at least ``object_px`` network pixels
wide (the smallest size the model was validated to count, ``inference.json``), that result
stands; otherwise tiles are cut so
that the median object becomes ``object_px`` wide in a tile, never smaller than the network
input (native resolution) and no larger than the picture. A tile size fixed at the network
input would cut 12 MP pictures of a few large products into parts that the model takes for
products.

Tiles are views into the picture (no copies) and each batch is letterboxed to the network's
input size as uint8 before becoming float, so memory stays at one batch of inputs however big
the picture is.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from detector.backends import DetectorBackend
from detector.postprocess import nms
from detector.types import Detections

__all__ = ["Tile", "detect", "detect_tiled", "scale_tile_px", "suppress_fragments", "tile_grid"]

logger = logging.getLogger(__name__)

DEFAULT_OVERLAP = 0.2
#: A box this much inside a larger box of its class is a fragment of it (step 4).
FRAGMENT_IOS = 0.8
#: Median object width in network-input pixels the model is taken to have learnt, as a fraction
#: of the input size, where ``inference.json`` has no ``object_px`` (the project's generated
#: shelves put products at 1/12 to 1/4 of a 320 px input).
DEFAULT_OBJECT_FRACTION = 1 / 8
#: Fewest whole-picture detections whose median size is trusted as the picture's object scale
#: (one or two boxes are as often a large false positive as a product).
MIN_SCALE_BOXES = 3


@dataclass(frozen=True)
class Tile:
    """A window of the picture, pixels: ``[x1, x2) x [y1, y2)``."""

    x1: int
    y1: int
    x2: int
    y2: int


def _positions(length: int, tile: int, overlap: float) -> list[int]:
    if length <= tile:
        return [0]
    stride = tile * (1.0 - overlap)
    count = math.ceil((length - tile) / stride) + 1
    # Evenly spread so the last tile ends at the border; consecutive tiles overlap >= overlap.
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def tile_grid(width: int, height: int, tile_px: int, overlap: float = DEFAULT_OVERLAP) -> list[Tile]:
    """Overlapping square tiles covering a picture, row by row.

    Args:
        width: picture width, pixels.
        height: picture height, pixels.
        tile_px: tile side, pixels (a side of the picture shorter than this gets one tile of
            the picture's length on that axis).
        overlap: fraction of ``tile_px`` that neighbouring tiles share at least, in [0, 1).

    Returns:
        Tiles with ``0 <= x1 < x2 <= width``, ``0 <= y1 < y2 <= height``, covering the picture.

    Raises:
        ValueError: non-positive sizes or ``overlap`` outside [0, 1).
    """
    if width <= 0 or height <= 0 or tile_px <= 0:
        raise ValueError(f"expected positive sizes, received width={width}, height={height}, tile_px={tile_px}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap: expected a value in [0, 1), received {overlap}")
    xs, ys = _positions(width, tile_px, overlap), _positions(height, tile_px, overlap)
    return [Tile(x, y, min(x + tile_px, width), min(y + tile_px, height)) for y in ys for x in xs]


def _intersections(box: npt.NDArray[np.float32], boxes: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    w = np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0])
    h = np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1])
    inter: npt.NDArray[np.float32] = np.clip(w, 0.0, None) * np.clip(h, 0.0, None)
    return inter


def _area(xyxy: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    area: npt.NDArray[np.float32] = (xyxy[:, 2] - xyxy[:, 0]) * (xyxy[:, 3] - xyxy[:, 1])
    return area


def _cut_flags(
    xyxy: npt.NDArray[np.float32], tile: Tile, width: int, height: int, margin: float
) -> npt.NDArray[np.bool_]:
    """True for boxes within ``margin`` of a tile side that lies inside the picture."""
    cut = np.zeros(len(xyxy), dtype=bool)
    if tile.x1 > 0:
        cut |= xyxy[:, 0] <= tile.x1 + margin
    if tile.x2 < width:
        cut |= xyxy[:, 2] >= tile.x2 - margin
    if tile.y1 > 0:
        cut |= xyxy[:, 1] <= tile.y1 + margin
    if tile.y2 < height:
        cut |= xyxy[:, 3] >= tile.y2 - margin
    return cut


def _merge_seams(
    xyxy: npt.NDArray[np.float32],
    confidence: npt.NDArray[np.float32],
    class_id: npt.NDArray[np.int64],
    tile_index: npt.NDArray[np.int64],
    cut: npt.NDArray[np.bool_],
    seam_ios: float,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Steps 1 and 2 of the module docstring."""
    alive = np.ones(len(xyxy), dtype=bool)
    area = _area(xyxy)
    cut_indices = np.flatnonzero(cut)
    # 1. A cut box mostly inside a complete box of the same class from another tile goes.
    for i in cut_indices[np.argsort(area[cut_indices], kind="stable")]:
        complete = alive & ~cut & (class_id == class_id[i]) & (tile_index != tile_index[i]) & (area >= area[i])
        if complete.any():
            covered = _intersections(xyxy[i], xyxy[complete]) / max(float(area[i]), 1e-9)
            if (covered >= seam_ios).any():
                alive[i] = False
    # 2. Pieces of one object cut in several tiles join (union-find over covering pairs).
    parent = {int(i): int(i) for i in cut_indices if alive[i]}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    pieces = np.array(sorted(parent), dtype=np.int64)
    for position, i in enumerate(pieces):
        others = pieces[position + 1 :]
        others = others[(class_id[others] == class_id[i]) & (tile_index[others] != tile_index[i])]
        if others.size == 0:
            continue
        smaller = np.minimum(area[others], area[i])
        covered = _intersections(xyxy[i], xyxy[others]) / np.maximum(smaller, 1e-9)
        for j in others[covered >= seam_ios]:
            parent[root(int(j))] = root(int(i))
    groups: dict[int, list[int]] = {}
    for i in parent:
        groups.setdefault(root(i), []).append(i)
    out_xyxy, out_conf, out_cls = [xyxy[alive & ~cut]], [confidence[alive & ~cut]], [class_id[alive & ~cut]]
    for members in groups.values():
        member_boxes = xyxy[members]
        out_xyxy.append(np.array([[member_boxes[:, 0].min(), member_boxes[:, 1].min(),
                                   member_boxes[:, 2].max(), member_boxes[:, 3].max()]], dtype=np.float32))
        out_conf.append(np.array([confidence[members].max()], dtype=np.float32))
        out_cls.append(np.array([class_id[members[0]]], dtype=np.int64))
    return np.concatenate(out_xyxy), np.concatenate(out_conf), np.concatenate(out_cls)


def suppress_fragments(
    xyxy: npt.NDArray[np.float32],
    confidence: npt.NDArray[np.float32],
    class_id: npt.NDArray[np.int64],
    *,
    inside: float = FRAGMENT_IOS,
    area_ratio: float = 2.0,
    confidence_ratio: float = 0.5,
) -> npt.NDArray[np.int64]:
    """Indices of the boxes that are not fragments of a larger box (step 4 of the module docstring).

    Args:
        xyxy: (N, 4) float32 pixels.
        confidence: (N,) float32.
        class_id: (N,) int64.
        inside: a box whose intersection with a larger box covers at least this fraction of its
            own area lies inside it.
        area_ratio: the larger box's area is at least this multiple of the fragment's.
        confidence_ratio: the larger box's confidence is at least this fraction of the fragment's
            (a faint large box does not swallow confident products).

    Returns:
        (K,) int64 indices into the inputs, in their order.
    """
    area = _area(xyxy)
    keep = np.ones(len(xyxy), dtype=bool)
    for i in np.argsort(area, kind="stable"):
        larger = (class_id == class_id[i]) & (area >= area_ratio * area[i]) & (
            confidence >= confidence_ratio * confidence[i])
        larger[i] = False
        if larger.any():
            covered = _intersections(xyxy[i], xyxy[larger]) / max(float(area[i]), 1e-9)
            if (covered >= inside).any():
                keep[i] = False
    return np.flatnonzero(keep).astype(np.int64)


def scale_tile_px(
    found: Detections, width: int, height: int, input_size: int, object_px: float,
) -> int | None:
    """The tile side that brings the median object of a whole-picture pass to ``object_px``.

    Args:
        found: detections of the whole picture, letterboxed to ``input_size``.
        width, height: the picture's size, pixels.
        input_size: the network's input side, pixels.
        object_px: the smallest object width the model counts well, network-input pixels.

    Returns:
        None when the picture need not be tiled (fewer than :data:`MIN_SCALE_BOXES` detections:
        nothing tells the scale, and the caller's default applies; or the median object is
        already ``object_px`` wide in the whole-picture pass); else the tile side in picture
        pixels, in ``[input_size, max(width, height)]``.
    """
    if len(found) < MIN_SCALE_BOXES:
        return None
    sides = np.sqrt(np.clip(_area(found.xyxy), 0.0, None))
    median = float(np.median(sides))
    shrink = input_size / max(width, height)
    if median * shrink >= object_px:
        return None
    side = round(median * input_size / object_px)
    return int(min(max(side, input_size), max(width, height)))


def detect_tiled(
    backend: DetectorBackend,
    image: npt.NDArray[np.uint8],
    *,
    tile_px: int | None = None,
    tile_overlap: float = DEFAULT_OVERLAP,
    edge_margin_px: float | None = None,
    seam_ios: float = 0.6,
    fragment_ios: float | None = FRAGMENT_IOS,
    max_det: int | None = None,
) -> Detections:
    """Detect objects tile by tile (always tiles; see :func:`detect` for the size test).

    Args:
        backend: a loaded detector backend (its ``conf``, ``iou`` and ``batch_size`` apply).
        image: (H, W, 3) uint8 RGB, upright.
        tile_px: tile side in picture pixels; default the model's input size (tiles run at
            native resolution). Larger tiles are downscaled to the input size.
        tile_overlap: fraction of ``tile_px`` that neighbouring tiles share, in [0, 1); objects
            narrower than the overlap are seen whole in at least one tile.
        edge_margin_px: a box this close to an interior tile side counts as cut; default two
            network-input pixels (``2 * tile_px / input_size``, at least 2).
        seam_ios: intersection-over-smaller-area above which a cut box is a piece of another
            box (steps 1 and 2 of the module docstring).
        fragment_ios: see :func:`suppress_fragments` (step 4); None keeps fragments.
        max_det: most detections kept for the picture; default the backend's ``max_det`` times
            the number of tiles (each tile already keeps up to ``max_det``: a picture large
            enough to tile is one that holds more objects than one network input).

    Returns:
        Detections in picture pixels within [0, W] x [0, H], most confident first;
        ``truncated`` when any tile or the final cap hit its limit.

    Raises:
        ValueError: ``image`` is not (H, W, 3) uint8, or bad tile settings.
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image: expected (H, W, 3) uint8 RGB, received {getattr(image, 'shape', None)}")
    height, width = int(image.shape[0]), int(image.shape[1])
    input_size = backend.preprocess.input_size
    side = tile_px or input_size
    margin = edge_margin_px if edge_margin_px is not None else max(2.0, 2.0 * side / input_size)
    tiles = tile_grid(width, height, side, tile_overlap)
    limit = max_det or backend.config.max_det * len(tiles)
    results = backend.predict([image[t.y1 : t.y2, t.x1 : t.x2] for t in tiles])
    truncated = any(r.truncated for r in results)
    parts_xyxy, parts_conf, parts_cls, parts_tile, parts_cut = [], [], [], [], []
    for index, (tile, found) in enumerate(zip(tiles, results, strict=True)):
        if not len(found):
            continue
        shifted = found.xyxy + np.array([tile.x1, tile.y1, tile.x1, tile.y1], dtype=np.float32)
        parts_xyxy.append(shifted)
        parts_conf.append(found.confidence)
        parts_cls.append(found.class_id)
        parts_tile.append(np.full(len(found), index, dtype=np.int64))
        parts_cut.append(_cut_flags(shifted, tile, width, height, margin))
    logger.debug("tiled %sx%s picture into %s tiles of %s px", width, height, len(tiles), side)
    if not parts_xyxy:
        return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), truncated)
    xyxy, confidence = np.concatenate(parts_xyxy), np.concatenate(parts_conf)
    class_id, tile_index, cut = np.concatenate(parts_cls), np.concatenate(parts_tile), np.concatenate(parts_cut)
    xyxy, confidence, class_id = _merge_seams(xyxy, confidence, class_id, tile_index, cut, seam_ios)
    np.clip(xyxy[:, 0::2], 0.0, float(width), out=xyxy[:, 0::2])
    np.clip(xyxy[:, 1::2], 0.0, float(height), out=xyxy[:, 1::2])
    keep = nms(xyxy, confidence, class_id, backend.config.iou)
    if fragment_ios is not None and keep.size:
        keep = keep[suppress_fragments(xyxy[keep], confidence[keep], class_id[keep], inside=fragment_ios)]
    truncated = truncated or keep.size > limit
    keep = keep[:limit]
    return Detections(xyxy[keep], confidence[keep], class_id[keep], truncated)


def detect(
    backend: DetectorBackend,
    image: npt.NDArray[np.uint8],
    *,
    tile_threshold_px: int | None = None,
    tile_px: int | None = None,
    tile_overlap: float = DEFAULT_OVERLAP,
    max_det: int | None = None,
    object_px: float | None = None,
) -> Detections:
    """Detect objects in one picture, tiling it only when it is large and its objects small.

    A picture whose longer side is at most ``tile_threshold_px`` is detected whole (one network
    call). A larger one is detected whole first; the tile size then follows the median object
    of that pass (:func:`scale_tile_px`): no tiling when the objects are already ``object_px``
    wide in the network input, else tiles in which they would be. When the whole pass finds
    fewer than :data:`MIN_SCALE_BOXES` (objects too small to see, or none) or hits ``max_det``,
    tiles of ``3 x`` the input size are used (products shrink 3x in them: a compromise between
    missing tiny products and cutting large ones into parts).

    Args:
        backend: a loaded detector backend.
        image: (H, W, 3) uint8 RGB, upright.
        tile_threshold_px: pictures whose longer side exceeds this may be tiled; default three
            times the model's input size (beyond that, letterboxing shrinks objects more
            than 3x).
        tile_px: a fixed tile side (skips the whole-picture pass); see :func:`detect_tiled`.
        tile_overlap: tile overlap fraction in [0, 1).
        max_det: most detections kept for a tiled picture (default the backend's per tile).
        object_px: the smallest object width the model counts well, network-input pixels; default
            the model directory's ``inference.json`` ``object_px``, else
            :data:`DEFAULT_OBJECT_FRACTION` of the input size.

    Returns:
        Detections in picture pixels (see :func:`detect_tiled` and
        :meth:`~detector.backends.DetectorBackend.predict`).

    Raises:
        ValueError: ``image`` is not (H, W, 3) uint8, or bad tile settings.
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"image: expected one (H, W, 3) uint8 RGB array, received {type(image).__name__} "
            f"{getattr(image, 'shape', '')} {getattr(image, 'dtype', '')}".rstrip()
        )
    input_size = backend.preprocess.input_size
    threshold = tile_threshold_px if tile_threshold_px is not None else 3 * input_size
    height, width = int(image.shape[0]), int(image.shape[1])
    if max(height, width) <= threshold:
        return backend.predict([image])[0]
    if tile_px is not None:
        return detect_tiled(backend, image, tile_px=tile_px, tile_overlap=tile_overlap, max_det=max_det)
    whole = backend.predict([image])[0]
    if object_px is None:
        model_dir = getattr(backend, "model_dir", None)
        learnt = getattr(model_dir, "inference", {}).get("object_px") if model_dir is not None else None
        object_px = float(learnt) if learnt else input_size * DEFAULT_OBJECT_FRACTION
    side = scale_tile_px(whole, width, height, input_size, object_px)
    if side is None and len(whole) >= MIN_SCALE_BOXES and not whole.truncated:
        logger.debug("%sx%s picture: objects large enough at whole-picture scale, not tiled", width, height)
        return whole
    side = side or min(3 * input_size, max(width, height))
    return detect_tiled(backend, image, tile_px=side, tile_overlap=tile_overlap, max_det=max_det)
