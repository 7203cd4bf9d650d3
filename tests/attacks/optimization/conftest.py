"""Fixtures of the optimisation-attack tests: one thread, and updates of tiny models."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Runs each test on one thread: the engine's many small ops lose more to thread hand-offs
    (badly so on a shared 2-core machine) than they gain from a second core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def make_update():
    """Returns ``make(public, texts, labels=None, *, expose="all", disclose_labels=False)``,
    which builds a ClientUpdate."""
    from gradleak.client import Exposure, compute_update
    from gradleak.data import Batch

    def make(public, texts, labels=None, *, expose="all", disclose_labels=False):
        if labels is None and public.task == "seq_class":
            labels = tuple(i % 2 for i in range(len(texts)))
        update = compute_update(
            public, Batch(texts=tuple(texts), labels=labels), exposure=Exposure.parse(expose)
        )
        if disclose_labels:
            update = update.with_tensors(update.tensors, extra={"labels": list(labels)})
        return update

    return make
