"""Scoring: the only place where ground-truth texts meet reconstructions.

:func:`score_batch` matches an attack's reconstructions to a batch's references and returns a
:class:`BatchScore` (ROUGE-1/2/L in percent, exact rate, token accuracy, matched pairs);
:func:`summarize_batches` turns the batch scores of a run into mean ± standard error.
"""

from gradleak.scoring.aggregate import (
    MetricSummary,
    bootstrap_interval,
    summarize,
    summarize_batches,
)
from gradleak.scoring.matching import (
    MATCHINGS,
    assign,
    dager_assignment,
    hungarian_assignment,
)
from gradleak.scoring.metrics import (
    METRIC_NAMES,
    BatchScore,
    PairScore,
    default_special_tokens,
    score_batch,
    strip_special_tokens,
    token_accuracy,
)
from gradleak.scoring.rouge import ROUGE_TYPES, RougeScores, rouge_matrix, rouge_scores

__all__ = [
    "MATCHINGS",
    "METRIC_NAMES",
    "ROUGE_TYPES",
    "BatchScore",
    "MetricSummary",
    "PairScore",
    "RougeScores",
    "assign",
    "bootstrap_interval",
    "dager_assignment",
    "default_special_tokens",
    "hungarian_assignment",
    "rouge_matrix",
    "rouge_scores",
    "score_batch",
    "strip_special_tokens",
    "summarize",
    "summarize_batches",
    "token_accuracy",
]
