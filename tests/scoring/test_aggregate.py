"""Aggregation over batches: mean ± standard error as the papers report it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gradleak.errors import GradleakError
from gradleak.scoring import (
    MetricSummary,
    bootstrap_interval,
    score_batch,
    summarize,
    summarize_batches,
)


def test_mean_and_stderr_by_hand():
    values = [100.0, 90.0, 80.0, 50.0]
    summary = summarize(values)
    mean = sum(values) / 4
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / 3)
    assert summary.mean == pytest.approx(mean)
    assert summary.stderr == pytest.approx(std / 2)
    assert summary.stderr == pytest.approx(np.std(values, ddof=1) / np.sqrt(4))
    assert summary.half_width == pytest.approx(2 * summary.stderr) and summary.n == 4


def test_single_batch_has_zero_stderr_and_empty_is_refused():
    assert summarize([42.0]) == MetricSummary(mean=42.0, stderr=0.0, n=1)
    assert str(summarize([100.0, 100.0])) == "100.0 ± 0.0"
    with pytest.raises(GradleakError, match="zero batches"):
        summarize([])
    with pytest.raises(GradleakError, match="NaN"):
        summarize([1.0, float("nan")])


def test_summarize_batches_per_metric():
    scores = [score_batch(["a b"], ["a b"]), score_batch(["a b"], ["c d"])]
    summary = summarize_batches(scores)
    assert summary["rouge1"].mean == 50.0 and summary["exact_rate"].mean == 0.5
    assert summary["rouge1"].stderr == pytest.approx(np.std([100, 0], ddof=1) / np.sqrt(2))


def test_bootstrap_interval_is_deterministic_and_brackets_the_mean():
    values = [0.0, 10.0, 20.0, 30.0, 100.0]
    low, high = bootstrap_interval(values, n_resamples=2000, seed=1)
    assert (low, high) == bootstrap_interval(values, n_resamples=2000, seed=1)
    assert low < np.mean(values) < high
    with pytest.raises(GradleakError, match="confidence"):
        bootstrap_interval(values, confidence=1.0)
