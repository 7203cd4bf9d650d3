"""The time budget: how much of it is spent."""

from __future__ import annotations

import time

from gradleak.attacks.budget import NO_DEADLINE, Deadline


def test_past_reads_the_share_of_the_budget_spent():
    started = time.perf_counter()
    assert Deadline(10.0, started=started - 6.0).past(0.5)
    assert not Deadline(10.0, started=started - 4.0).past(0.5)
    assert not NO_DEADLINE.past(0.0)
