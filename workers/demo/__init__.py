"""``shelftally demo``: a small warehouse counted on this machine, with nothing downloaded.

* :mod:`workers.demo.vision`: shelf photos to counts, discrepancies and evidence images (trains
  or reuses the demo's models, then scans with :mod:`workers.scan`).
* :mod:`workers.demo.counts`: the inventory half only (``--counts-only``): a shipped cycle-count
  file reconciled against the book, without models.
"""
