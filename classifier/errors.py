"""Errors raised by the classifier package (all derive from :class:`shelftally.errors.ShelfTallyError`).

Every error carries a machine-readable ``reason`` (see :class:`shelftally.errors.ShelfTallyError`);
the reasons each function raises are listed in its docstring.
"""

from __future__ import annotations

from shelftally.errors import MissingDependencyError, ShelfTallyError

__all__ = [
    "ClassifierError",
    "DatasetError",
    "MissingDependencyError",
    "ModelLoadError",
]


class ClassifierError(ShelfTallyError):
    """Base class of classifier errors."""

    reason = "classifier_error"


class ModelLoadError(ClassifierError):
    """A classifier model directory, weights file or exported graph cannot be used.

    Reasons: ``model_dir_missing``, ``model_file_missing``, ``model_file_unreadable``,
    ``invalid_labels``, ``invalid_preprocess``, ``invalid_architecture``, ``invalid_model``
    (a graph's inputs or outputs are not what the model directory says),
    ``model_output_mismatch`` (the network's outputs disagree with ``labels.json``),
    ``pretrained_mismatch`` (a local weights file does not fit the architecture),
    ``unknown_architecture`` and ``export_failed``.
    """

    reason = "model_load_failed"


class DatasetError(ClassifierError):
    """A classification dataset cannot be read at all (no split file, no classes, bad class table).

    Problems with single images (missing, unreadable) are not errors: the readers in
    :mod:`classifier.dataset` report them and go on.
    """

    reason = "invalid_dataset"
