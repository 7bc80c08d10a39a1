"""SKU recognition on crops: training, export, runtime backends, open-set rejection, gallery.

Knows nothing of databases or queues (enforced by import-linter, see ``pyproject.toml``).
The classifier itself arrives with issue 4.
"""
