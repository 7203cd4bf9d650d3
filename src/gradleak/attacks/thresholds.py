"""Acceptance thresholds for span residuals, read from the data instead of tuned by hand.

Residuals of true rows sit at the float-noise level (about 1e-7 to 1e-5 in float32); wrong rows
sit decades higher. Sorting a scan's residuals on a log scale, the largest jump separates the two
clusters. A threshold is placed between them, at most ``slack`` decades above the true cluster,
so that wrong candidates that creep closer in later search steps are still refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

#: A split whose clusters are less than this many decades apart is not trusted.
MIN_SPLIT_DECADES = 1.0
#: The threshold sits at most this many decades above the largest true residual seen.
SLACK_DECADES = 2.0


@dataclass(frozen=True)
class ResidualSplit:
    """Two clusters of residuals: a low (accepted) one and a high (rejected) one.

    Attributes:
        low: largest residual of the low cluster.
        high: smallest residual of the high cluster.
        count: how many residuals fall in the low cluster.
    """

    low: float
    high: float
    count: int

    @property
    def decades(self) -> float:
        """Returns how many decades separate the clusters."""
        return math.log10(self.high / max(self.low, 1e-30))

    def threshold(self, *, slack: float = SLACK_DECADES) -> float:
        """Returns an acceptance threshold between the clusters, at most ``slack`` decades above
        ``low``."""
        midpoint = math.sqrt(max(self.low, 1e-30) * self.high)
        return min(midpoint, max(self.low, 1e-30) * 10**slack)


def largest_gap_split(
    residuals: torch.Tensor, *, min_decades: float = MIN_SPLIT_DECADES
) -> ResidualSplit | None:
    """Returns the split at the largest log-gap of ``residuals``, or None if no gap is wide
    enough."""
    values = torch.sort(residuals.flatten().double().clamp_min(1e-30)).values
    if values.numel() < 2:
        return None
    logs = torch.log10(values)
    gaps = logs[1:] - logs[:-1]
    index = int(torch.argmax(gaps))
    if float(gaps[index]) < min_decades:
        return None
    return ResidualSplit(low=float(values[index]), high=float(values[index + 1]), count=index + 1)
