"""YOLO detection: training and export through ultralytics, runtime backends, tiling.

Knows nothing of databases or queues (enforced by import-linter, see ``pyproject.toml``).
The detector itself arrives with issue 3.
"""
