"""Distances between the dummy input's gradient and the observed one, one class each.

Every distance takes the selected gradient tensors of K candidate inputs at once (each tensor
with a leading K axis) and the observed tensors (without it), and returns K distances, so one
code path serves the optimisation step (K = 1, differentiable) and batched candidate scoring.

The formulas are those of the LAMP code (``utilities.grad_dist``), which the partial-gradient
code copies: ``l2`` is DLG's summed squared error, ``tag`` adds ``alpha`` times the L1 error
(TAG; LAMP_L1+L2), ``cos`` averages ``1 - cos`` over tensors ("equal weight", LAMP_cos and the
partial-gradient attack), ``global_cos`` is one cosine over all selected entries.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from gradleak.errors import UnknownSpecError

_EPS = 1e-30


class GradientDistance(ABC):
    """A distance between K candidate gradients and the observed gradient."""

    name: ClassVar[str]

    @abstractmethod
    def __call__(
        self, grads: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """Returns the (K,) distances of ``grads`` (each (K, ...)) to ``targets`` (each (...))."""


def _flat(grads: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]):
    if len(grads) != len(targets) or not grads:
        raise ValueError(f"got {len(grads)} gradient tensors for {len(targets)} targets")
    for g, t in zip(grads, targets):
        yield g.reshape(g.shape[0], -1), t.reshape(-1).to(g.dtype)


@dataclass(frozen=True)
class L2(GradientDistance):
    """Summed squared error over every selected entry (DLG)."""

    name: ClassVar[str] = "l2"

    def __call__(self, grads, targets):
        return sum((g - t).square().sum(-1) for g, t in _flat(grads, targets))


@dataclass(frozen=True)
class TagDistance(GradientDistance):
    """Squared error plus ``alpha`` times absolute error, summed over entries (TAG, LAMP_L1+L2).

    Attributes:
        alpha: weight of the L1 term (LAMP's ``--tag_factor``; its TAG and L1+L2 scripts use 0.01).
    """

    alpha: float = 0.01
    name: ClassVar[str] = "tag"

    def __call__(self, grads, targets):
        total = 0.0
        for g, t in _flat(grads, targets):
            diff = g - t
            total = total + diff.square().sum(-1) + self.alpha * diff.abs().sum(-1)
        return total


@dataclass(frozen=True)
class CosinePerTensor(GradientDistance):
    """``1 - cos`` per selected tensor, averaged over tensors (LAMP_cos, partial gradients)."""

    name: ClassVar[str] = "cos"

    def __call__(self, grads, targets):
        total, count = 0.0, 0
        for g, t in _flat(grads, targets):
            cos = (g @ t) / (g.norm(dim=-1) * t.norm()).clamp_min(_EPS)
            total, count = total + (1.0 - cos), count + 1
        return total / count


@dataclass(frozen=True)
class GlobalCosine(GradientDistance):
    """``1 - cos`` between all selected entries taken as one vector."""

    name: ClassVar[str] = "global_cos"

    def __call__(self, grads, targets):
        dot, g_sq, t_sq = 0.0, 0.0, 0.0
        for g, t in _flat(grads, targets):
            dot = dot + g @ t
            g_sq = g_sq + g.square().sum(-1)
            t_sq = t_sq + t.square().sum()
        return 1.0 - dot / (g_sq.sqrt() * t_sq.sqrt()).clamp_min(_EPS)


_DISTANCES: dict[str, type[GradientDistance]] = {
    "l2": L2,
    "tag": TagDistance,
    "cos": CosinePerTensor,
    "global_cos": GlobalCosine,
}


def distance_names() -> list[str]:
    """Returns the names of the built-in distances."""
    return sorted(_DISTANCES)


def make_distance(name: str, **params: Any) -> GradientDistance:
    """Returns the distance called ``name``; ``tag`` takes ``alpha``, the others nothing.

    Raises:
        UnknownSpecError: no distance has that name.
    """
    if name not in _DISTANCES:
        raise UnknownSpecError(
            f"unknown gradient distance {name!r}; choose one of {', '.join(distance_names())}."
        )
    cls = _DISTANCES[name]
    accepted = {k: v for k, v in params.items() if k in getattr(cls, "__dataclass_fields__", {})}
    return cls(**accepted)
