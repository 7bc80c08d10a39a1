"""Naming SKUs from the text printed on a package, zero-shot: the SKU master is the only label.

What a text reader (:mod:`classifier.ocr`) read on a crop is matched against each SKU's name,
brand and description. Nothing is trained: a new SKU is matchable as soon as it is in the SKU
master.

How a text score is made (:meth:`TextMatcher.scores`):

1. Everything is normalised (:func:`normalise`): Unicode NFKD with accents dropped, case folded,
   every run of characters other than letters and digits becomes one space.
2. A SKU's vocabulary is the words (3 characters or more, not a stop word) of its name and brand
   (weight 1) and of its description (weight 0.5).
3. Each read word is compared with every vocabulary word by rapidfuzz's normalised Indel
   similarity (``fuzz.ratio``, 0-100; one wrong letter in six still scores 83). A pair counts when
   it reaches ``min_similarity``. A long read word (:data:`LONG_TOKEN` letters or more; readers
   run words together) also matches a vocabulary word of 4 letters or more found inside it
   (``fuzz.partial_ratio`` at least :data:`PARTIAL_SIMILARITY`), at :data:`PARTIAL_WEIGHT`.
4. Each vocabulary word is scored by its best-matching read word (0 when none reaches the
   threshold). A SKU's score adds its words' scores, each times the word's weight and its
   inverse document frequency ``log(1 + N / df)`` (a word that names one SKU of N says more than
   one every SKU shares, such as a brand), divided by the sum the SKU would get if every one of
   its words were read perfectly (tf-idf weighting, Salton & Buckley 1988, with fuzzy term
   matching). Scores lie in [0, 1].

Barcodes: :func:`shelftally.gtin.gtin14` brings EAN-8, UPC-A, EAN-13 and GTIN-14 codes to one
14-digit key with its GS1 check digit verified, so a code read on a package finds the SKU
master's ``gtin`` however either was written.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from shelftally.errors import MissingDependencyError
from shelftally.gtin import gtin14

__all__ = [
    "STOP_WORDS",
    "SkuText",
    "TextMatch",
    "TextMatcher",
    "gtin14",
    "normalise",
    "words",
]

STOP_WORDS = frozenset({
    "the", "and", "with", "for", "from", "per", "can", "also", "used", "use", "are", "has", "have", "this",
    "that", "its", "our", "your", "was", "not", "but", "all", "any", "one",
    "och", "med", "som", "att", "den", "det", "ett", "kan",
})
"""Words that name no product (English and Swedish: the Grocery Store descriptions are in both)."""

_NOT_WORD = re.compile(r"[^0-9a-z]+")
_LETTER_DIGIT = re.compile(r"(?<=[a-z])(?=[0-9])|(?<=[0-9])(?=[a-z])")


LONG_TOKEN = 7
"""A read word this long may be several words run together; vocabulary words inside it count."""
PARTIAL_SIMILARITY = 90.0
"""The least rapidfuzz ``partial_ratio`` of a vocabulary word (4 letters or more) inside a long read word."""
PARTIAL_WEIGHT = 0.9
"""How much such a match counts against a whole-word match."""


def normalise(text: str) -> str:
    """``text`` lower-cased, accents dropped (NFKD), other than letters and digits folded to single spaces,
    and letters and digits that touch split apart.

    >>> normalise("Bravo Äpple-Juice, 1L")
    'bravo apple juice 1 l'
    """
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    # letters and digits run together by a reader ("cola330ml") are words apart ("cola 330 ml")
    return _LETTER_DIGIT.sub(" ", _NOT_WORD.sub(" ", plain)).strip()


def words(text: str, *, min_length: int = 3) -> list[str]:
    """The words of ``normalise(text)`` with at least ``min_length`` characters, stop words dropped, in order."""
    return [w for w in normalise(text).split() if len(w) >= min_length and w not in STOP_WORDS]


@dataclass(frozen=True)
class SkuText:
    """What the SKU master says of one SKU, for matching.

    Attributes:
        sku_code: the SKU.
        name: its name (``"Arla-Ecological-Medium-Fat-Milk"`` and ``"Arla Ecological Medium Fat
            Milk"`` read the same after :func:`normalise`).
        description: free text, may be None.
        gtin: its barcode number (any GTIN length), may be None.
        brand: its brand, may be None (often the name's first word already).
    """

    sku_code: str
    name: str
    description: str | None = None
    gtin: str | None = None
    brand: str | None = None


@dataclass(frozen=True)
class TextMatch:
    """One SKU's text score.

    Attributes:
        sku_code: the SKU.
        score: in [0, 1] (see the module docstring).
        matched: the SKU's vocabulary words that a read word matched, best first.
    """

    sku_code: str
    score: float
    matched: tuple[str, ...] = field(default=())


class TextMatcher:
    """The SKU master's text, prepared for matching what is read on crops.

    Args:
        skus: the SKUs (at least one; codes unique).
        min_similarity: the least ``fuzz.ratio`` (0-100) at which a read word matches a vocabulary word.
        description_weight: weight of a description word against a name or brand word (1).

    Raises:
        ValueError: no SKU, a repeated ``sku_code``, or ``min_similarity`` outside [0, 100].
        MissingDependencyError: rapidfuzz is not installed (extra ``shelftally[text]``).
    """

    def __init__(self, skus: Iterable[SkuText], *, min_similarity: float = 80.0,
                 description_weight: float = 0.5) -> None:
        try:
            from rapidfuzz import fuzz, process
        except ImportError as error:
            raise MissingDependencyError("text matching needs rapidfuzz: pip install 'shelftally[text]'") from error
        self._cdist = process.cdist
        self._ratio = fuzz.ratio
        self._partial = fuzz.partial_ratio
        self.skus = list(skus)
        if not self.skus:
            raise ValueError("skus: expected at least one SKU")
        codes = [s.sku_code for s in self.skus]
        if len(set(codes)) != len(codes):
            repeated = sorted(code for code, n in Counter(codes).items() if n > 1)
            raise ValueError(f"skus: each sku_code once, repeated: {', '.join(repeated)}")
        if not 0.0 <= min_similarity <= 100.0:
            raise ValueError(f"min_similarity: expected 0-100, received {min_similarity}")
        self.min_similarity = float(min_similarity)
        self.by_gtin = {key: s.sku_code for s in self.skus if s.gtin and (key := gtin14(s.gtin)) is not None}
        vocabularies: list[dict[str, float]] = []
        for sku in self.skus:
            vocabulary: dict[str, float] = {}
            for word in words(sku.description or ""):
                vocabulary[word] = max(vocabulary.get(word, 0.0), description_weight)
            for word in words(f"{sku.name} {sku.brand or ''}"):
                vocabulary[word] = 1.0
            vocabularies.append(vocabulary)
        document_frequency = Counter(word for vocabulary in vocabularies for word in vocabulary)
        self.vocabulary: list[str] = sorted(document_frequency)
        index = {word: i for i, word in enumerate(self.vocabulary)}
        n = len(self.skus)
        # weights[k, j]: weight x idf of vocabulary word j for SKU k (0 where the SKU lacks it)
        self._weights = np.zeros((n, len(self.vocabulary)), np.float64)
        for k, vocabulary in enumerate(vocabularies):
            for word, weight in vocabulary.items():
                self._weights[k, index[word]] = weight * math.log(1.0 + n / document_frequency[word])
        self._perfect = np.maximum(self._weights.sum(axis=1), 1e-12)
        self._inner_ok = np.array([len(word) >= 4 for word in self.vocabulary], bool)

    def _read_as(self, read: Sequence[str]) -> npt.NDArray[np.float64]:
        """(V,): how well each vocabulary word was read, by its best-matching read word (0: not read)."""
        tokens = sorted({w for line in read for w in words(line)})
        if not tokens or not self.vocabulary:
            return np.zeros(len(self.vocabulary), np.float64)
        similarity = np.asarray(self._cdist(tokens, self.vocabulary, scorer=self._ratio), np.float64) / 100.0
        similarity[similarity < self.min_similarity / 100.0] = 0.0
        rows = [t for t, token in enumerate(tokens) if len(token) >= LONG_TOKEN]
        if rows:  # words a reader ran together ("appeljuice"): a vocabulary word inside a long token
            long_tokens = [tokens[t] for t in rows]
            inside = np.asarray(self._cdist(long_tokens, self.vocabulary, scorer=self._partial), np.float64) / 100.0
            inside[:, ~self._inner_ok] = 0.0
            inside[inside < PARTIAL_SIMILARITY / 100.0] = 0.0
            similarity[rows] = np.maximum(similarity[rows], inside * PARTIAL_WEIGHT)
        read_as: npt.NDArray[np.float64] = similarity.max(axis=0)
        return read_as

    def _scores(self, read_as: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        scores: npt.NDArray[np.float64] = np.clip((self._weights @ read_as) / self._perfect, 0.0, 1.0)
        return scores

    def scores(self, read: Sequence[str]) -> npt.NDArray[np.float64]:
        """Each SKU's text score for the words read on one crop.

        Args:
            read: text read on the crop (lines or words, any case; normalised here).

        Returns:
            (len(skus),) float64 in [0, 1], in :attr:`skus` order; all zero when nothing usable
            was read.
        """
        return self._scores(self._read_as(read))

    def match(self, read: Sequence[str], *, top: int = 5) -> list[TextMatch]:
        """The ``top`` SKUs by text score for what was read (those scoring above 0), best first.

        Args:
            read: text read on one crop (or typed by a person, to debug the matcher).
            top: how many at most.

        Returns:
            Each with the SKU's vocabulary words that were read (whole or inside a longer word),
            best read first.
        """
        read_as = self._read_as(read)
        scores = self._scores(read_as)
        order = [int(i) for i in np.argsort(-scores, kind="stable")[:top] if scores[i] > 0]
        matches = []
        for k in order:
            found = [j for j in np.flatnonzero((self._weights[k] > 0) & (read_as > 0))]
            found.sort(key=lambda j: (-read_as[j], self.vocabulary[j]))
            matches.append(TextMatch(self.skus[k].sku_code, float(scores[k]), tuple(self.vocabulary[j] for j in found)))
        return matches

    def sku_of_barcode(self, code: str) -> str | None:
        """The SKU whose ``gtin`` is this barcode's number (any GTIN length; the check digit verified), or None."""
        key = gtin14(code)
        return self.by_gtin.get(key) if key is not None else None

    def sku_of_barcodes(self, codes: Iterable[str]) -> tuple[str, str] | None:
        """``(sku_code, code)`` of the first of ``codes`` that names a SKU of the master, or None."""
        for code in codes:
            sku = self.sku_of_barcode(code)
            if sku is not None:
                return sku, code
        return None
