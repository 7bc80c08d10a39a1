"""Result types of classification."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["EMBEDDING_NORM_ATOL", "UNKNOWN_CLASS_ID", "Classifications"]

UNKNOWN_CLASS_ID = -1
"""``class_id`` of a crop the classifier declines to name (its ``sku_code`` is None)."""

EMBEDDING_NORM_ATOL = 1e-3
"""Largest accepted deviation of an embedding's L2 norm from 1 (room for fp16/bf16 runtimes)."""


@dataclass(frozen=True)
class Classifications:
    """The SKU named for each of N crops, in the order the crops were given.

    Attributes:
        class_id: (N,) int64, index into the model's labels, or ``-1``
            (:data:`UNKNOWN_CLASS_ID`) when the crop is not recognised.
        sku_code: N SKU codes (``labels[class_id]``); None exactly where ``class_id`` is -1.
        confidence: (N,) float32 in [0, 1], the softmax probability of the best class (also
            for unknown crops, where it is the probability that was too low).
        embedding: (N, D) float32, L2-normalised (each row has norm 1 within
            :data:`EMBEDDING_NORM_ATOL`); the crop's position in the model's metric space, used
            for open-set rejection and few-shot galleries. For N = 0 the shape is (0, D), or
            (0, 0) when D is unknown.

    Raises:
        ValueError: on construction, when shapes, dtypes or values disagree; the message says
            expected and received.
    """

    class_id: npt.NDArray[np.int64]
    sku_code: Sequence[str | None]
    confidence: npt.NDArray[np.float32]
    embedding: npt.NDArray[np.float32]

    def __post_init__(self) -> None:
        class_id = np.asarray(self.class_id)
        if class_id.size == 0:
            class_id = class_id.reshape(0)
        if class_id.ndim != 1:
            raise ValueError(f"class_id: expected shape (N,), received {class_id.shape}")
        if class_id.size and not np.issubdtype(class_id.dtype, np.integer):
            raise ValueError(f"class_id: expected integers, received dtype {class_id.dtype}")
        class_id = class_id.astype(np.int64)
        n = class_id.shape[0]
        if n and int(class_id.min()) < UNKNOWN_CLASS_ID:
            raise ValueError(f"class_id: expected values >= {UNKNOWN_CLASS_ID}, received {int(class_id.min())}")

        codes = list(self.sku_code)
        if len(codes) != n:
            raise ValueError(f"sku_code: expected {n} entries, received {len(codes)}")
        for i, (code, cid) in enumerate(zip(codes, class_id.tolist(), strict=True)):
            if cid == UNKNOWN_CLASS_ID and code is not None:
                raise ValueError(f"sku_code[{i}]: expected None for class_id -1, received {code!r}")
            if cid != UNKNOWN_CLASS_ID and not (isinstance(code, str) and code):
                raise ValueError(f"sku_code[{i}]: expected a non-empty string for class_id {cid}, received {code!r}")

        confidence = np.asarray(self.confidence, dtype=np.float32)
        if confidence.size == 0:
            confidence = confidence.reshape(0)
        if confidence.shape != (n,):
            raise ValueError(f"confidence: expected shape ({n},), received {confidence.shape}")
        if n and (not np.all(np.isfinite(confidence)) or confidence.min() < 0 or confidence.max() > 1):
            raise ValueError("confidence: expected finite values in [0, 1]")

        embedding = np.asarray(self.embedding, dtype=np.float32)
        if embedding.size == 0 and embedding.ndim == 1:
            embedding = embedding.reshape(0, 0)
        if embedding.ndim != 2 or embedding.shape[0] != n:
            raise ValueError(f"embedding: expected shape ({n}, D), received {embedding.shape}")
        if n:
            if embedding.shape[1] == 0:
                raise ValueError(f"embedding: expected shape ({n}, D) with D >= 1, received {embedding.shape}")
            norms = np.linalg.norm(embedding, axis=1)
            if not np.all(np.abs(norms - 1.0) <= EMBEDDING_NORM_ATOL):
                worst = int(np.argmax(np.abs(norms - 1.0)))
                raise ValueError(
                    f"embedding: expected L2-normalised rows (norm 1 +- {EMBEDDING_NORM_ATOL}), "
                    f"received norm {float(norms[worst]):.6g} in row {worst}"
                )

        object.__setattr__(self, "class_id", class_id)
        object.__setattr__(self, "sku_code", codes)
        object.__setattr__(self, "confidence", confidence)
        object.__setattr__(self, "embedding", embedding)

    def __len__(self) -> int:
        return int(self.class_id.shape[0])

    @classmethod
    def empty(cls, embedding_dim: int = 0) -> Classifications:
        """No crops: class_id and confidence (0,), embedding (0, ``embedding_dim``)."""
        return cls(
            np.zeros(0, np.int64), [], np.zeros(0, np.float32), np.zeros((0, embedding_dim), np.float32)
        )

    @property
    def embedding_dim(self) -> int:
        """D, the length of each embedding."""
        return int(self.embedding.shape[1])

    @property
    def known(self) -> npt.NDArray[np.bool_]:
        """(N,) bool, True where a SKU was named (``class_id >= 0``)."""
        known: npt.NDArray[np.bool_] = self.class_id != UNKNOWN_CLASS_ID
        return known

    def __getitem__(self, index: npt.NDArray[np.bool_] | npt.NDArray[np.int64] | slice) -> Classifications:
        """Select crops by boolean mask, index array or slice."""
        class_id = self.class_id[index]
        codes = [self.sku_code[i] for i in np.arange(len(self))[index].tolist()]
        return Classifications(class_id, codes, self.confidence[index], self.embedding[index])
