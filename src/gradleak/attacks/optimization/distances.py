"""Distances between the dummy input's gradient and the observed one, one class each.

Every distance takes the selected gradient tensors of K candidate inputs at once (each tensor
with a leading K axis) and the observed tensors (without it), and returns K distances, so one
code path serves the optimisation step (K = 1, differentiable) and batched candidate scoring.

The formulas are those of the LAMP code (``utilities.grad_dist``), which the partial-gradient
code copies: ``l2`` is DLG's summed squared error, ``tag`` adds ``alpha`` times the L1 error
(TAG; LAMP_L1+L2), ``cos`` averages ``1 - cos`` over tensors ("equal weight", LAMP_cos and the
partial-gradient attack), ``global_cos`` is one cosine over all selected entries.

Speed: on a 100 M-parameter model the selected gradients are as large as the model, and plain
autograd would allocate and sweep a few full-size temporaries per tensor in the forward pass
(difference, square, absolute value) and again in the backward pass. Each distance therefore
goes through two small autograd functions that read the gradient once or twice, keep at most
one full-size tensor for the backward pass, and write the gradient with respect to ``g`` in
one or two in-place sweeps (:class:`_DiffNorms` for L2 and L2 + L1, :class:`_DotNorm` for the
cosines). Their backward passes are not themselves differentiable, which the engine never needs.
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
    for g, t in zip(grads, targets, strict=True):
        yield g.reshape(g.shape[0], -1), t.reshape(-1).to(g.dtype)


def _scaled(tensor: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Returns ``tensor`` (K, n) times ``factor`` (K,) per row, in place (a second backward
    pass through the same graph then fails on the saved tensor's version, never silently)."""
    if tensor.shape[0] == 1:
        scale = float(factor.reshape(-1)[0])
        return tensor if scale == 1.0 else tensor.mul_(scale)
    return tensor.mul_(factor[:, None])


class _DiffNorms(torch.autograd.Function):
    """``||g - t||^2 + alpha * ||g - t||_1`` per row of ``g`` (K, n), ``t`` (n,).

    The forward pass keeps one tensor, the derivative ``2 (g - t) + alpha sign(g - t)``,
    computed in place in the difference's own memory.
    """

    @staticmethod
    def forward(ctx, g: torch.Tensor, t: torch.Tensor, alpha: float) -> torch.Tensor:
        diff = g - t
        value = torch.linalg.vector_norm(diff, dim=-1).square()
        if alpha:
            value = value + alpha * torch.linalg.vector_norm(diff, ord=1, dim=-1)
        if ctx.needs_input_grad[0]:
            sign = diff.sign() if alpha else None
            derivative = diff.mul_(2.0)
            if sign is not None:
                derivative.add_(sign, alpha=alpha)
            ctx.save_for_backward(derivative)
        return value

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_value: torch.Tensor):
        (derivative,) = ctx.saved_tensors
        return _scaled(derivative, grad_value), None, None


class _DotNorm(torch.autograd.Function):
    """``(g . t, ||g||^2)`` per row of ``g`` (K, n), ``t`` (n,), read without temporaries."""

    @staticmethod
    def forward(ctx, g: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dot = g @ t
        square = torch.linalg.vector_norm(g, dim=-1).square()
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(g, t)
        return dot, square

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_dot: torch.Tensor, grad_square: torch.Tensor):
        g, t = ctx.saved_tensors
        if g.shape[0] == 1:
            out = torch.mul(t, float(grad_dot.reshape(-1)[0]))[None]
            return out.add_(g, alpha=2.0 * float(grad_square.reshape(-1)[0])), None
        return grad_dot[:, None] * t + (2.0 * grad_square)[:, None] * g, None


@dataclass(frozen=True)
class L2(GradientDistance):
    """Summed squared error over every selected entry (DLG)."""

    name: ClassVar[str] = "l2"

    def __call__(self, grads, targets):
        return sum(_DiffNorms.apply(g, t, 0.0) for g, t in _flat(grads, targets))


@dataclass(frozen=True)
class TagDistance(GradientDistance):
    """Squared error plus ``alpha`` times absolute error, summed over entries (TAG, LAMP_L1+L2).

    Attributes:
        alpha: weight of the L1 term (LAMP's ``--tag_factor``; its TAG and L1+L2 scripts use 0.01).
    """

    alpha: float = 0.01
    name: ClassVar[str] = "tag"

    def __call__(self, grads, targets):
        return sum(_DiffNorms.apply(g, t, float(self.alpha)) for g, t in _flat(grads, targets))


@dataclass(frozen=True)
class CosinePerTensor(GradientDistance):
    """``1 - cos`` per selected tensor, averaged over tensors (LAMP_cos, partial gradients)."""

    name: ClassVar[str] = "cos"

    def __call__(self, grads, targets):
        total, count = 0.0, 0
        for g, t in _flat(grads, targets):
            dot, square = _DotNorm.apply(g, t)
            cos = dot / (square.sqrt() * torch.linalg.vector_norm(t)).clamp_min(_EPS)
            total, count = total + (1.0 - cos), count + 1
        return total / count


@dataclass(frozen=True)
class GlobalCosine(GradientDistance):
    """``1 - cos`` between all selected entries taken as one vector."""

    name: ClassVar[str] = "global_cos"

    def __call__(self, grads, targets):
        dot, g_sq, t_sq = 0.0, 0.0, 0.0
        for g, t in _flat(grads, targets):
            part_dot, part_sq = _DotNorm.apply(g, t)
            dot, g_sq = dot + part_dot, g_sq + part_sq
            t_sq = t_sq + torch.linalg.vector_norm(t).square()
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
