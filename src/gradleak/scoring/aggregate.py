"""Summaries over batches: the mean and its standard error, as the papers report them.

DAGER and LAMP report each metric as the mean over 100 batches ± 2 standard errors, where the
standard error is the sample standard deviation (``ddof=1``) divided by ``sqrt(n)``. Where
normality cannot be assumed DAGER gives a 10,000-sample bootstrap interval instead
(:func:`bootstrap_interval`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from gradleak.errors import GradleakError
from gradleak.scoring.metrics import METRIC_NAMES, BatchScore

__all__ = ["MetricSummary", "bootstrap_interval", "summarize", "summarize_batches"]


@dataclass(frozen=True)
class MetricSummary:
    """The mean of one metric over batches, with its standard error.

    Attributes:
        mean: Mean over the batches.
        stderr: Sample standard deviation (ddof=1) over sqrt(n); 0 for a single batch.
        n: Number of batches.
    """

    mean: float
    stderr: float
    n: int

    @property
    def half_width(self) -> float:
        """Returns the papers' error bar, 2 standard errors."""
        return 2.0 * self.stderr

    def __str__(self) -> str:
        return f"{self.mean:.1f} ± {self.half_width:.1f}"


def summarize(values: Iterable[float]) -> MetricSummary:
    """Returns the mean and standard error of per-batch values.

    Raises:
        GradleakError: ``values`` is empty or holds a non-finite number.
    """
    array = np.asarray(list(values), dtype=float)
    if array.size == 0:
        raise GradleakError("Cannot summarize a metric over zero batches.")
    if not np.all(np.isfinite(array)):
        raise GradleakError("Cannot summarize a metric with NaN or infinite batch values.")
    n = int(array.size)
    stderr = float(array.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    return MetricSummary(mean=float(array.mean()), stderr=stderr, n=n)


def summarize_batches(scores: Sequence[BatchScore]) -> dict[str, MetricSummary]:
    """Returns a MetricSummary per metric name (:data:`METRIC_NAMES`) over batch scores.

    Raises:
        GradleakError: ``scores`` is empty.
    """
    return {name: summarize(getattr(s, name) for s in scores) for name in METRIC_NAMES}


def bootstrap_interval(
    values: Iterable[float], *, n_resamples: int = 10_000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Returns a percentile bootstrap interval for the mean of per-batch values (deterministic).

    Args:
        values: Per-batch metric values.
        n_resamples: Bootstrap resamples (DAGER: 10,000).
        confidence: Coverage of the interval.
        seed: Seed of the numpy Generator that draws the resamples.

    Raises:
        GradleakError: ``values`` is empty or ``confidence`` is outside (0, 1).
    """
    array = np.asarray(list(values), dtype=float)
    if array.size == 0:
        raise GradleakError("Cannot bootstrap a metric over zero batches.")
    if not 0.0 < confidence < 1.0:
        raise GradleakError(f"confidence must lie strictly between 0 and 1, got {confidence}.")
    rng = np.random.default_rng(seed)
    means = array[rng.integers(0, array.size, size=(n_resamples, array.size))].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)
