"""Classifications: shape, dtype and value checks, the empty case, selection."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from classifier.types import UNKNOWN_CLASS_ID, Classifications


def unit_rows(n: int, d: int = 4, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(n, d))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


GOOD: dict[str, Any] = {
    "class_id": np.array([0, -1, 2]),
    "sku_code": ["A-1", None, "C-3"],
    "confidence": np.array([0.9, 0.2, 0.6]),
    "embedding": unit_rows(3),
}


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({}, None),
        ({"class_id": [], "sku_code": [], "confidence": [], "embedding": np.zeros((0, 4))}, None),
        ({"class_id": np.zeros(0, np.int64), "sku_code": [], "confidence": np.zeros(0), "embedding": np.zeros(0)},
         None),
        ({"class_id": np.array([[0, -1, 2]])}, "class_id: expected shape (N,), received (1, 3)"),
        ({"class_id": np.array([0.0, -1.0, 2.0])}, "class_id: expected integers, received dtype float64"),
        ({"class_id": np.array([0, -2, 2])}, "class_id: expected values >= -1, received -2"),
        ({"sku_code": ["A-1", None]}, "sku_code: expected 3 entries, received 2"),
        ({"sku_code": ["A-1", "B-2", "C-3"]}, "sku_code[1]: expected None for class_id -1, received 'B-2'"),
        ({"sku_code": ["A-1", None, None]}, "sku_code[2]: expected a non-empty string for class_id 2"),
        ({"sku_code": ["", None, "C-3"]}, "sku_code[0]: expected a non-empty string"),
        ({"confidence": np.array([0.9, 0.2])}, "confidence: expected shape (3,), received (2,)"),
        ({"confidence": np.array([0.9, 1.2, 0.6])}, "confidence: expected finite values in [0, 1]"),
        ({"confidence": np.array([0.9, np.nan, 0.6])}, "confidence: expected finite values in [0, 1]"),
        ({"embedding": unit_rows(2)}, "embedding: expected shape (3, D), received (2, 4)"),
        ({"embedding": unit_rows(3).reshape(-1)}, "embedding: expected shape (3, D), received (12,)"),
        ({"embedding": np.zeros((3, 0))}, "embedding: expected shape (3, D) with D >= 1"),
        ({"embedding": unit_rows(3) * 2}, "embedding: expected L2-normalised rows"),
        ({"embedding": np.zeros((3, 4))}, "received norm 0 in row 0"),
    ],
    ids=["valid", "empty (0, D)", "empty (0,)", "class_id 2-D", "class_id float", "class_id -2", "sku_code short",
         "sku for unknown", "no sku for known", "empty sku", "confidence short", "confidence > 1", "confidence nan",
         "embedding rows", "embedding 1-D", "embedding D=0", "embedding norm 2", "embedding zeros"],
)
def test_classifications_validate_on_construction(changes: dict[str, Any], error: str | None) -> None:
    fields = {**GOOD, **changes}
    if error is None:
        result = Classifications(**fields)
        n = len(fields["sku_code"])
        assert len(result) == n
        assert result.class_id.dtype == np.int64 and result.class_id.shape == (n,)
        assert result.confidence.dtype == np.float32 and result.confidence.shape == (n,)
        assert result.embedding.dtype == np.float32 and result.embedding.ndim == 2 and result.embedding.shape[0] == n
    else:
        with pytest.raises(ValueError) as caught:
            Classifications(**fields)
        assert error in str(caught.value)


def test_empty_has_the_embedding_width() -> None:
    empty = Classifications.empty(128)
    assert len(empty) == 0
    assert empty.class_id.shape == (0,) and empty.confidence.shape == (0,)
    assert empty.embedding.shape == (0, 128) and empty.embedding_dim == 128
    assert empty.sku_code == []


def test_known_and_selection_keep_the_rows_together() -> None:
    result = Classifications(**GOOD)
    assert result.known.tolist() == [True, False, True]
    named = result[result.known]
    assert named.sku_code == ["A-1", "C-3"]
    assert named.class_id.tolist() == [0, 2]
    assert np.allclose(named.confidence, [0.9, 0.6])
    assert np.array_equal(named.embedding, GOOD["embedding"][[0, 2]])
    assert result[1:].sku_code == [None, "C-3"]
    assert result[np.array([2, 0])].class_id.tolist() == [2, 0]
    assert len(result[np.zeros(3, bool)]) == 0
    assert UNKNOWN_CLASS_ID == -1


def test_embedding_norm_tolerates_half_precision_rounding() -> None:
    embedding = unit_rows(3).astype(np.float16).astype(np.float32)
    assert np.abs(np.linalg.norm(embedding, axis=1) - 1).max() > 1e-6
    Classifications(GOOD["class_id"], GOOD["sku_code"], GOOD["confidence"], embedding)
