"""Result types of detection."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class Detections:
    """Detected objects in one picture.

    Attributes:
        xyxy: (N, 4) float32, box corners (x1, y1, x2, y2) in pixels of the upright source
            image, x1 <= x2 and y1 <= y2.
        confidence: (N,) float32 in [0, 1].
        class_id: (N,) int64, index into the model's labels.
        truncated: True when more boxes survived non-maximum suppression than the maximum
            number of detections kept (the ``max_det`` of the backend); the kept ones are the
            most confident.

    Raises:
        ValueError: on construction, when shapes or dtypes disagree; the message says expected
            and received.
    """

    xyxy: npt.NDArray[np.float32]
    confidence: npt.NDArray[np.float32]
    class_id: npt.NDArray[np.int64]
    truncated: bool = field(default=False)

    def __post_init__(self) -> None:
        xyxy = np.asarray(self.xyxy, dtype=np.float32)
        if xyxy.size == 0:
            xyxy = xyxy.reshape(0, 4)
        if xyxy.ndim != 2 or xyxy.shape[1] != 4:
            raise ValueError(f"xyxy: expected shape (N, 4), received {xyxy.shape}")
        n = xyxy.shape[0]
        confidence = np.asarray(self.confidence, dtype=np.float32).reshape(-1)
        class_id = np.asarray(self.class_id)
        if (
            class_id.size
            and not np.issubdtype(class_id.dtype, np.integer)
            and not np.all(np.equal(np.mod(class_id, 1), 0))
        ):
            raise ValueError(f"class_id: expected integers, received dtype {class_id.dtype}")
        class_id = class_id.astype(np.int64).reshape(-1)
        if confidence.shape != (n,):
            raise ValueError(f"confidence: expected shape ({n},), received {confidence.shape}")
        if class_id.shape != (n,):
            raise ValueError(f"class_id: expected shape ({n},), received {class_id.shape}")
        if n and (np.any(xyxy[:, 2] < xyxy[:, 0]) or np.any(xyxy[:, 3] < xyxy[:, 1])):
            raise ValueError("xyxy: expected x1 <= x2 and y1 <= y2 for every box")
        if n and (np.any(confidence < 0) or np.any(confidence > 1) or not np.all(np.isfinite(confidence))):
            raise ValueError("confidence: expected values in [0, 1]")
        object.__setattr__(self, "xyxy", xyxy)
        object.__setattr__(self, "confidence", confidence)
        object.__setattr__(self, "class_id", class_id)

    def __len__(self) -> int:
        return int(self.xyxy.shape[0])

    @classmethod
    def empty(cls) -> Detections:
        """No detections: xyxy (0, 4)."""
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    @property
    def area(self) -> npt.NDArray[np.float32]:
        """(N,) float32 box areas in square pixels."""
        return (self.xyxy[:, 2] - self.xyxy[:, 0]) * (self.xyxy[:, 3] - self.xyxy[:, 1])

    def __getitem__(self, index: npt.NDArray[np.bool_] | npt.NDArray[np.int64] | slice) -> Detections:
        """Select detections by boolean mask, index array or slice (``truncated`` is kept)."""
        return Detections(self.xyxy[index], self.confidence[index], self.class_id[index], self.truncated)
