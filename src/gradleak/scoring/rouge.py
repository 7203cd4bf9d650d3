"""ROUGE-1, ROUGE-2 and ROUGE-L F-measures, in percent, through Google's ``rouge-score``.

This is the implementation behind ``datasets.load_metric('rouge')`` / ``evaluate.load('rouge')``,
which DAGER and LAMP used, called directly: no Hub download and no bootstrap noise.

- **Tokenisation** (``rouge-score`` default): lower-case, every run of characters outside
  ``[a-z0-9]`` is a separator. Text in other scripts (e.g. Chinese) therefore scores 0.
- **Stemming** is off by default, as in the papers' code (``use_stemmer=False`` is the
  ``load_metric('rouge')`` default); ``use_stemmer=True`` applies the Porter stemmer.
- **Single-word texts** have no bigram, so their ROUGE-2 is 0 even when reconstructed exactly;
  the papers kept this (it explains DAGER's SST-2 R-1 100 / R-2 86).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from rouge_score import rouge_scorer

from gradleak.errors import UnknownSpecError

__all__ = ["ROUGE_TYPES", "RougeScores", "rouge_matrix", "rouge_scores"]

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


@dataclass(frozen=True)
class RougeScores:
    """ROUGE F-measures of one reconstruction against one reference, in percent (0 to 100)."""

    rouge1: float
    rouge2: float
    rougeL: float  # noqa: N815 - the name rouge-score and the papers use


@functools.lru_cache(maxsize=8)
def _scorer(rouge_types: tuple[str, ...], use_stemmer: bool) -> rouge_scorer.RougeScorer:
    """Returns a cached RougeScorer (building one loads NLTK's stemmer tables)."""
    return rouge_scorer.RougeScorer(list(rouge_types), use_stemmer=use_stemmer)


def rouge_scores(reference: str, reconstruction: str, *, use_stemmer: bool = False) -> RougeScores:
    """Returns the ROUGE-1, ROUGE-2 and ROUGE-L F-measures of ``reconstruction``, in percent.

    Args:
        reference: The true text (rouge-score's *target*).
        reconstruction: The attack's guess (rouge-score's *prediction*).
        use_stemmer: Apply the Porter stemmer before matching (the papers did not).
    """
    scores = _scorer(ROUGE_TYPES, use_stemmer).score(reference, reconstruction)
    return RougeScores(*(100.0 * scores[name].fmeasure for name in ROUGE_TYPES))


def rouge_matrix(
    references: Sequence[str],
    reconstructions: Sequence[str],
    *,
    rouge_type: str = "rouge1",
    use_stemmer: bool = False,
) -> np.ndarray:
    """Returns the F-measures (percent) of every reconstruction against every reference.

    Args:
        references: The true texts, one per row.
        reconstructions: The guesses, one per column.
        rouge_type: ``rouge1``, ``rouge2`` or ``rougeL``.
        use_stemmer: Apply the Porter stemmer before matching.

    Returns:
        A float array of shape ``(len(references), len(reconstructions))``.

    Raises:
        UnknownSpecError: ``rouge_type`` is not one of :data:`ROUGE_TYPES`.
    """
    if rouge_type not in ROUGE_TYPES:
        raise UnknownSpecError(f"rouge_type must be one of {ROUGE_TYPES}, got {rouge_type!r}.")
    scorer = _scorer((rouge_type,), use_stemmer)
    out = np.zeros((len(references), len(reconstructions)))
    for i, reference in enumerate(references):
        for j, reconstruction in enumerate(reconstructions):
            out[i, j] = 100.0 * scorer.score(reference, reconstruction)[rouge_type].fmeasure
    return out
