"""A time budget: every attack answers within it, with the best it has when time runs out."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Deadline:
    """When an attack must stop searching.

    Attributes:
        seconds: the budget; None never expires.
        started: when the clock started (``time.perf_counter``).
    """

    seconds: float | None
    started: float = field(default_factory=time.perf_counter)

    def expired(self) -> bool:
        """Returns whether the budget is spent."""
        return self.seconds is not None and time.perf_counter() - self.started >= self.seconds

    def past(self, fraction: float) -> bool:
        """Returns whether at least ``fraction`` of the budget is spent (never without one)."""
        left = self.left()
        return (
            self.seconds is not None and left is not None and left <= (1 - fraction) * self.seconds
        )

    def left(self) -> float | None:
        """Returns the seconds left (never below zero), or None without a budget."""
        if self.seconds is None:
            return None
        return max(0.0, self.seconds - (time.perf_counter() - self.started))


#: A deadline that never expires.
NO_DEADLINE = Deadline(None)
