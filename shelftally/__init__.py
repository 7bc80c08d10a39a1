"""ShelfTally: counts stock from pictures and reconciles it against the inventory book.

This package holds only what every other package may share: the version and the root of the
error tree (:mod:`shelftally.errors`). It imports no other ShelfTally package.
"""

__version__ = "0.1.0"
