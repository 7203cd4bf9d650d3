"""The labels the attacker assumes: disclosed by the client, read from the head, or enumerated.

The papers give the attacker the true labels. gradleak uses them only when the update's
metadata discloses them (``metadata.extra["labels"]``); otherwise it reads them from the
classification head's gradient where that determines them, and else keeps a few label
*hypotheses* that the initialisation scores (a wrong binary label flips the sign of almost
every gradient, so the first candidates separate the hypotheses at once).

With cross-entropy, the head bias gradient is ``mean_i(p_i - y_i)``: a class with a negative
entry is present, and ``B * (1/C - g_c)`` estimates its count when the head's outputs are near
uniform (as after the small head initialisation). Without a bias, the weight gradient's rows
are ``(p_c - y_c) h`` for one sequence: the true class is the row whose sign differs from the
others, which needs at least three classes.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from gradleak.errors import InvalidUpdateError
from gradleak.models.families import ArchitectureFamily


@dataclass(frozen=True)
class LabelGuess:
    """Label assignments to try, and where they came from.

    Attributes:
        hypotheses: label tuples of length B (one tuple when the labels are known); empty
            tuples for next-token prediction, whose targets are the tokens themselves.
        source: "disclosed", "head_bias", "head_weight", "enumerated" or "task".
    """

    hypotheses: tuple[tuple[int, ...], ...]
    source: str


def infer_labels(
    family: ArchitectureFamily,
    gradients: Mapping[str, torch.Tensor],
    *,
    task: str,
    num_labels: int,
    batch_size: int,
    extra: Mapping[str, Any] | None = None,
    max_hypotheses: int = 8,
) -> LabelGuess:
    """Returns the labels to assume for a batch of ``batch_size`` sequences.

    Raises:
        InvalidUpdateError: disclosed labels do not fit the batch size or the head.
    """
    if task == "next_token":
        return LabelGuess(((),), "task")
    disclosed = (extra or {}).get("labels")
    if disclosed is not None:
        labels = tuple(int(v) for v in disclosed)
        if len(labels) != batch_size or not all(0 <= v < num_labels for v in labels):
            raise InvalidUpdateError(
                f"the update discloses labels {list(labels)}, which do not fit a batch of "
                f"{batch_size} with {num_labels} classes; fix metadata.extra['labels'] or the "
                "batch size."
            )
        return LabelGuess((labels,), "disclosed")
    head = _head_linear(family, num_labels)
    if head is not None:
        names = {id(p): n for n, p in family.model.named_parameters()}
        bias = gradients.get(names[id(head.bias)]) if head.bias is not None else None
        if bias is not None:
            return LabelGuess((_from_bias(bias.double(), batch_size),), "head_bias")
        weight = gradients.get(names[id(head.weight)])
        if weight is not None and batch_size == 1 and num_labels >= 3:
            return LabelGuess(((_odd_row(weight.double()),),), "head_weight")
    return LabelGuess(_enumerate(num_labels, batch_size, max_hypotheses), "enumerated")


def _head_linear(family: ArchitectureFamily, num_labels: int) -> nn.Linear | None:
    head = family.classification_head()
    if head is None:
        return None
    linears = [
        m for m in head.modules() if isinstance(m, nn.Linear) and m.out_features == num_labels
    ]
    return linears[-1] if linears else None


def _from_bias(grad: torch.Tensor, batch_size: int) -> tuple[int, ...]:
    if batch_size == 1:
        return (int(torch.argmin(grad)),)
    present = (grad < 0).tolist()
    expected = (batch_size * (1.0 / grad.numel() - grad)).clamp_min(0).tolist()
    counts = [max(int(e), int(p)) for e, p in zip(expected, present, strict=True)]
    while sum(counts) < batch_size:  # largest remainders first
        best = max(range(len(counts)), key=lambda i: expected[i] - counts[i])
        counts[best] += 1
    while sum(counts) > batch_size:
        spare = [i for i in range(len(counts)) if counts[i] > int(present[i])] or [
            i for i in range(len(counts)) if counts[i] > 0
        ]
        counts[min(spare, key=lambda i: expected[i] - counts[i])] -= 1
    return tuple(label for label, n in enumerate(counts) for _ in range(n))


def _odd_row(weight: torch.Tensor) -> int:
    """Returns the class whose row points against the others (one sequence, three+ classes)."""
    reference = weight[int(weight.norm(dim=1).argmax())]
    positive = (weight @ reference) > 0
    minority = positive if int(positive.sum()) * 2 < len(positive) else ~positive
    return (
        int(torch.nonzero(minority)[0])
        if bool(minority.any())
        else int(weight.norm(dim=1).argmax())
    )


def _enumerate(num_labels: int, batch_size: int, limit: int) -> tuple[tuple[int, ...], ...]:
    """Returns label multisets, the most balanced first, at most ``limit`` of them."""
    multisets = list(itertools.combinations_with_replacement(range(num_labels), batch_size))
    if len(multisets) > limit:
        ideal = batch_size / num_labels

        def imbalance(labels: tuple[int, ...]) -> float:
            return sum(abs(labels.count(c) - ideal) for c in range(num_labels))

        multisets = sorted(multisets, key=imbalance)[:limit]
    return tuple(multisets) if multisets else ((0,) * batch_size,)
