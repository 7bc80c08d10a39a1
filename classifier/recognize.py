"""Recognition with open-set rejection and enrolled SKUs: a backend + prototypes + a gallery.

Rule (:meth:`Recognizer.classify`), per crop with unit embedding ``e``:

1. The candidate prototypes are the trained classes' prototypes (``prototypes.npy``, one per
   label) followed by the gallery's enrolled prototypes (:mod:`classifier.gallery`), all
   centred by the mean training embedding (:func:`classifier.openset.centre`) like ``e``.
   ``s = max_k cos(centre(e), p_k)`` and ``k*`` its argmax.
2. ``s < threshold`` (``openset.json``, :mod:`classifier.openset`): unknown (``class_id`` -1,
   ``sku_code`` None; ``confidence`` is the head's best softmax probability).
3. ``k*`` is a trained prototype: the trained head decides (its argmax class and softmax
   probability), as the plain backend would.
4. ``k*`` is an enrolled prototype: the enrolled SKU is named; ``confidence`` is the softmax
   over ``logit_scale x`` the cosines to all prototypes, at ``k*`` (the cosine head's own
   temperature, so the two kinds of confidence are on one scale).

``class_id`` indexes :attr:`Recognizer.labels`: the model's labels, then the enrolled SKU codes
that are not among them (an enrolled code equal to a trained label keeps the label's index:
enrolling a trained SKU adds a prototype for, e.g., new packaging).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Literal

import numpy as np
import numpy.typing as npt

from classifier.backends import ClassifierBackend, load, softmax
from classifier.gallery import Gallery, read_gallery
from classifier.model_dir import ModelDir, read_model_dir
from classifier.openset import centre, prototype_scores, read_embedding_mean, read_openset, read_prototypes
from classifier.types import UNKNOWN_CLASS_ID, Classifications

__all__ = ["Recognizer"]


class Recognizer:
    """Classify crops with a backend, reject unknown ones and name enrolled SKUs.

    Args:
        backend: a loaded classifier backend.
        prototypes: (C, D) float32 unit rows, one per backend label (``prototypes.npy``).
        threshold: open-set threshold on the best prototype cosine; None: never unknown.
        embedding_mean: (D,) float32 mean training embedding (``embedding_mean.npy``); None: zeros.
        gallery: enrolled SKUs (default none).
        logit_scale: temperature of the enrolled SKUs' confidence (the cosine head's scale).

    Raises:
        ValueError: ``prototypes`` is not (C, D) for the backend's C labels, or the gallery's
            width differs.
    """

    def __init__(
        self,
        backend: ClassifierBackend,
        prototypes: npt.NDArray[np.float32],
        *,
        threshold: float | None = None,
        embedding_mean: npt.NDArray[np.float32] | None = None,
        gallery: Gallery | None = None,
        logit_scale: float = 16.0,
    ) -> None:
        prototypes = np.asarray(prototypes, dtype=np.float32)
        if prototypes.ndim != 2 or prototypes.shape[0] != len(backend.labels):
            raise ValueError(f"prototypes: expected ({len(backend.labels)}, D), received {prototypes.shape}")
        self.backend = backend
        self.threshold = threshold
        self.gallery = gallery if gallery is not None else Gallery(
            "", [], np.zeros((0, prototypes.shape[1]), np.float32), np.zeros(0, np.int64)
        )
        self.logit_scale = float(logit_scale)
        if len(self.gallery) and self.gallery.prototypes.shape[1] != prototypes.shape[1]:
            raise ValueError(
                f"gallery: expected {prototypes.shape[1]}-D prototypes, received {self.gallery.prototypes.shape[1]}"
            )
        extra = [c for c in dict.fromkeys(self.gallery.sku_codes) if c not in backend.labels]
        self.labels: list[str] = [*backend.labels, *extra]
        """SKU codes; index = ``class_id`` (model labels, then enrolled codes)."""
        index = {code: i for i, code in enumerate(self.labels)}
        self.embedding_mean = (
            np.zeros(prototypes.shape[1], np.float32) if embedding_mean is None
            else np.asarray(embedding_mean, np.float32)
        )
        rows = [prototypes] + ([centre(self.gallery.prototypes, self.embedding_mean)] if len(self.gallery) else [])
        self._prototypes = np.concatenate(rows).astype(np.float32)
        self._num_trained = prototypes.shape[0]
        self._gallery_class = np.array([index[c] for c in self.gallery.sku_codes], np.int64)

    @classmethod
    def from_model_dir(
        cls,
        model_dir: str | Path | ModelDir,
        *,
        backend: str = "onnx",
        threads: int | None = None,
        openvino_precision: Literal["auto", "f32", "int8"] = "auto",
        int8_max_drop_points: float = 1.0,
        device: str = "cpu",
    ) -> Recognizer:
        """Load a model directory's backend, prototypes, threshold and current gallery.

        ``device``, ``openvino_precision`` and ``int8_max_drop_points`` are passed to
        :func:`classifier.backends.load` (``"int8"``: the INT8 model within its accuracy margin).
        The open-set threshold was calibrated on FP32 embeddings and is used unchanged with INT8.

        Raises:
            ModelLoadError: the directory, its weights or ``prototypes.npy`` cannot be used.
            GalleryError: the gallery cannot be read.
            MissingDependencyError: the runtime is not installed.
        """
        directory = model_dir if isinstance(model_dir, ModelDir) else read_model_dir(model_dir)
        calibration = read_openset(directory.path)
        scale = directory.architecture.logit_scale if directory.architecture is not None else 16.0
        prototypes = read_prototypes(directory.path, num_classes=directory.num_classes)
        return cls(
            load(directory, backend=backend, threads=threads, openvino_precision=openvino_precision,
                 int8_max_drop_points=int8_max_drop_points, device=device),
            prototypes,
            threshold=calibration.threshold if calibration is not None else None,
            embedding_mean=read_embedding_mean(directory.path, prototypes.shape[1]),
            gallery=read_gallery(directory),
            logit_scale=scale,
        )

    def classify(self, crops: Sequence[npt.NDArray[np.uint8]]) -> Classifications:
        """Name the SKU of each crop, or unknown (see the module docstring for the rule).

        Args:
            crops: each (h, w, 3) uint8 RGB, h, w >= 1.

        Returns:
            One entry per crop; ``class_id`` indexes :attr:`labels`.

        Raises:
            ValueError: a crop is not (h, w, 3) uint8.
        """
        logits, embedding = self.backend.outputs(crops)
        return self.decide(logits, embedding)

    def decide(self, logits: npt.NDArray[np.float32], embedding: npt.NDArray[np.float32]) -> Classifications:
        """Apply the rule (module docstring) to network outputs already computed.

        :meth:`classify` is ``decide(*backend.outputs(crops))``; an evaluation that also needs the
        head's full ranking (top-5) runs the network once and passes its outputs here.

        Args:
            logits: (N, C) float32 head logits for the backend's C labels.
            embedding: (N, D) float32 unit-norm embeddings, row i for the same crop as ``logits[i]``.

        Returns:
            One entry per row; ``class_id`` indexes :attr:`labels`.

        Raises:
            ValueError: the embeddings are not unit-norm (:class:`~classifier.types.Classifications`).
        """
        n = len(logits)
        if n == 0:
            return Classifications.empty(embedding.shape[1])
        probabilities = softmax(logits)
        head_class = probabilities.argmax(axis=1).astype(np.int64)
        confidence = probabilities[np.arange(n), head_class].astype(np.float32)
        centred = centre(embedding, self.embedding_mean)
        score, nearest = prototype_scores(centred, self._prototypes)
        class_id = head_class.copy()
        enrolled = nearest >= self._num_trained
        if enrolled.any():
            similarity = centred[enrolled] @ self._prototypes.T
            gallery_probability = softmax((self.logit_scale * similarity).astype(np.float32))
            rows = nearest[enrolled]
            confidence[enrolled] = gallery_probability[np.arange(len(rows)), rows]
            class_id[enrolled] = self._gallery_class[rows - self._num_trained]
        if self.threshold is not None:
            class_id[score < self.threshold] = UNKNOWN_CLASS_ID
        codes = [self.labels[i] if i != UNKNOWN_CLASS_ID else None for i in class_id.tolist()]
        return Classifications(class_id, codes, np.clip(confidence, 0.0, 1.0), embedding)

    def close(self) -> None:
        """Close the backend."""
        self.backend.close()

    def __enter__(self) -> Recognizer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
