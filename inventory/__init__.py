"""The inventory book and what ShelfTally does with counts.

SQLAlchemy 2.0 models (:mod:`inventory.models`), engines and transactions (:mod:`inventory.db`),
reconciliation of observations against stock levels (:mod:`inventory.reconcile`), alerts
(:mod:`inventory.alerts`), stock adjustments (:mod:`inventory.adjustments`), admin queries
(:mod:`inventory.queries`) and WMS imports (:mod:`inventory.imports`).

Never imports vision code (enforced by import-linter, see ``pyproject.toml``).
"""
