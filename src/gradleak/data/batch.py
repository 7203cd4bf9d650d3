"""The Batch: the private texts one client trains on, as the victim side sees them."""

from __future__ import annotations

import operator
from dataclasses import dataclass

from gradleak.errors import GradleakError

__all__ = ["Batch"]


@dataclass(frozen=True)
class Batch:
    """A batch of private training texts, optionally with labels and source indices.

    Attributes:
        texts: The texts, exactly as they go to the tokenizer (never stripped).
        labels: One integer label per text, or None for unlabelled data (e.g. next-token tasks).
        source: Where the texts came from, e.g. ``"cola/train"`` or a file path.
        indices: The row index of each text in its source, or None when unknown.
        targets: For sequence-to-sequence training, each text's target text; None: each text is
            its own target (reconstruction).
    """

    texts: tuple[str, ...]
    labels: tuple[int, ...] | None = None
    source: str = ""
    indices: tuple[int, ...] | None = None
    targets: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        # Accept lists from callers but store tuples, so the batch stays hashable and immutable.
        object.__setattr__(self, "texts", tuple(self.texts))
        if self.targets is not None:
            object.__setattr__(self, "targets", tuple(self.targets))
        problems = []
        for field_name in ("labels", "indices"):
            values = getattr(self, field_name)
            if values is None:
                continue
            try:  # numpy integers become plain ints; floats and strings are refused
                object.__setattr__(self, field_name, tuple(operator.index(v) for v in values))
            except TypeError:
                problems.append(f"{field_name} must be integers")
        problems += _problems(self)
        if problems:
            raise GradleakError("Invalid Batch: " + "; ".join(problems) + ".")

    def __len__(self) -> int:
        return len(self.texts)


def _problems(batch: Batch) -> list[str]:
    """Returns every validation problem of ``batch`` (empty when it is valid)."""
    problems = []
    n = len(batch.texts)
    if n == 0:
        problems.append("texts is empty, a batch needs at least one text")
    bad = [i for i, t in enumerate(batch.texts) if not isinstance(t, str)]
    if bad:
        problems.append(f"texts must be strings, positions {bad[:5]} are not")
    if batch.targets is not None:
        if len(batch.targets) != n:
            problems.append(f"targets has {len(batch.targets)} entries for {n} texts")
        if not all(isinstance(t, str) for t in batch.targets):
            problems.append("targets must be strings")
    for field_name in ("labels", "indices"):
        values = getattr(batch, field_name)
        if values is None:
            continue
        if len(values) != n:
            problems.append(f"{field_name} has {len(values)} entries for {n} texts")
    return problems
