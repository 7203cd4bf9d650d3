"""A recovered sequence's confidence, from how far each of its tokens stood above the noise.

Each position's evidence is a z-score: how many standard deviations the chosen token's distance to
the spans lies below that of a null sample of wrong tokens at the same step. Were the null's
scores Gaussian, a wrong token would reach that z with probability Phi(z), and the chance that
none of the V vocabulary tokens does is about exp(-V Phi(z)); the sequence's confidence is that
chance taken over every position. It is a number to rank and calibrate with (the benchmarks report
how often sequences at each confidence are exact), never a certificate: the null's tail is not
Gaussian, and the positions are not independent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def position_doubt(z: float, vocabulary: int) -> float:
    """Returns V Phi(z): how many wrong tokens are expected to score as well as ``z``."""
    return vocabulary * 0.5 * math.erfc(-z / math.sqrt(2))


def confidence(zs: Sequence[float], vocabulary: int) -> float:
    """Returns exp(-sum V Phi(z)) over a sequence's positions, in [0, 1]; 0 for no positions."""
    if not zs:
        return 0.0
    return math.exp(-sum(position_doubt(z, vocabulary) for z in zs))
