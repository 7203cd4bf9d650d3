"""How coarsely an update's values were rounded, read off the values themselves, and the noise
that rounding adds to a gradient's spectrum.

A client that trains in bfloat16 or float16 sends values on that format's grid; an int8-quantised
update sends multiples of one step per tensor (max|g| / 127). Either way every value is off the
true gradient by up to half a grid step, independently per value, and that error fills every
direction of the spectrum: a true input row no longer has a residual of 1e-7 but one near the
rounding level. The grid is read from the tensor, not from its metadata, so the floor is that of
the values actually searched.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

#: Explicit mantissa bits of the float formats an update can be rounded to, coarsest first.
_MANTISSA_BITS = {torch.bfloat16: 7, torch.float16: 10}
#: Exponent of the smallest normal value of each float format (by mantissa bits).
_MIN_EXPONENT = {7: -126, 10: -14}
#: Largest int8 code of a symmetric per-tensor quantiser.
_INT8_MAX = 127
#: Codes this close to integers (in units of the step) count as quantised.
_ON_GRID = 1e-3


@dataclass(frozen=True)
class Rounding:
    """The grid a tensor's values lie on.

    Attributes:
        kind: ``"float"`` (a float format's grid) or ``"step"`` (one uniform step per tensor).
        bits: explicit mantissa bits of the float format (``kind == "float"``).
        step: the uniform step (``kind == "step"``).
    """

    kind: str
    bits: int = 0
    step: float = 0.0

    def describe(self) -> str:
        """Returns the grid in words, for diagnostics and verdicts."""
        if self.kind == "step":
            return f"int8 step {self.step:.2e}"
        return {7: "bfloat16", 10: "float16"}.get(self.bits, f"{self.bits}-bit mantissa")

    def element_std(self, tensor: torch.Tensor) -> torch.Tensor:
        """Returns the standard deviation of each value's rounding error (uniform over a step)."""
        values = tensor.detach().double()
        if self.kind == "step":
            return torch.full_like(values, self.step / math.sqrt(12))
        # Below the format's smallest normal value the grid is uniform (subnormals): a float16
        # gradient's small values there carry that absolute step, not one relative to them.
        exponent = torch.floor(torch.log2(values.abs().clamp_min(1e-300)))
        ulp = torch.exp2(exponent.clamp_min(_MIN_EXPONENT[self.bits]) - self.bits)
        return torch.where(values == 0, torch.zeros_like(values), ulp / math.sqrt(12))


def read_rounding(tensor: torch.Tensor) -> Rounding | None:
    """Returns the coarsest lossy grid ``tensor``'s values lie on, or None for a float32/64 grid."""
    values = tensor.detach()
    if values.numel() == 0 or not bool(values.abs().max() > 0):
        return None
    amax = float(values.abs().max().double())
    step = amax / _INT8_MAX
    codes = values.double() / step
    if float((codes - codes.round()).abs().max()) < _ON_GRID:
        return Rounding("step", step=step)
    for dtype, bits in _MANTISSA_BITS.items():
        if values.dtype == dtype or bool((values.to(dtype).to(values.dtype) == values).all()):
            return Rounding("float", bits=bits)
    return None


def rounding_floor(
    gradients: Sequence[torch.Tensor],
    svd: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    *,
    seed: int = 0,
    element_std: Sequence[torch.Tensor] | None = None,
) -> float | None:
    """Returns the top of the noise bulk that rounding adds to the spectrum of the stacked,
    unit-scaled ``gradients`` (whose thin SVD ``svd`` is given), or None when none of them was
    rounded coarser than float32.

    ``element_std``, where the caller knows each value's error (a float32 client's weights
    rounding a multi-step delta, :mod:`gradleak.attacks.weight_rounding`), replaces the grid
    read off the values; the gradients are then stacked as they are, scaled by one common norm
    (:func:`gradleak.attacks.span.stacked_svd` with ``unit=False``).

    One draw of the rounding error (uniform over each value's step, values independent) stands
    for the error. Its own norm overshoots the observed bulk up to 2 times on SmolLM2: the
    largest values carry the largest errors, and they lie mostly within the signal's own
    directions. So the floor is the norm of the draw outside the directions above that first
    estimate, on both sides (closed-form bounds overshoot 2 to 5 times and would cut true
    directions off).
    """
    errors = (
        _error_draw(gradients, seed)
        if element_std is None
        else _known_error_draw(gradients, element_std, seed)
    )
    if errors is None:
        return None
    u, s, vh = svd
    rank = int((s > torch.linalg.matrix_norm(errors, ord=2)).sum())
    outside = errors - u[:, :rank] @ (u[:, :rank].T @ errors)
    outside = outside - (outside @ vh[:rank].T) @ vh[:rank]
    return float(torch.linalg.matrix_norm(outside, ord=2))


def _error_draw(gradients: Sequence[torch.Tensor], seed: int) -> torch.Tensor | None:
    readings = [read_rounding(g) for g in gradients]
    if not any(readings):
        return None
    generator = torch.Generator().manual_seed(seed)
    errors = []
    for gradient, rounding in zip(gradients, readings, strict=True):
        norm = gradient.detach().double().norm().clamp_min(1e-300)
        if rounding is None:
            errors.append(torch.zeros(gradient.shape, dtype=torch.float64))
            continue
        std = (rounding.element_std(gradient) / norm).cpu()
        uniform = torch.rand(gradient.shape, generator=generator, dtype=torch.float64)
        errors.append((uniform - 0.5) * math.sqrt(12) * std)
    return torch.cat(errors)


def _known_error_draw(
    gradients: Sequence[torch.Tensor], element_std: Sequence[torch.Tensor], seed: int
) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    norm = torch.cat([g.detach().double().cpu() for g in gradients]).norm().clamp_min(1e-300)
    std = torch.cat([s.double().cpu() for s in element_std]) / norm
    uniform = torch.rand(std.shape, generator=generator, dtype=torch.float64)
    return (uniform - 0.5) * math.sqrt(12) * std


def describe_rounding(gradients: Sequence[torch.Tensor]) -> str | None:
    """Returns the coarsest grid among ``gradients`` in words, or None if none is lossy."""
    readings = [r for r in map(read_rounding, gradients) if r is not None]
    return readings[0].describe() if readings else None
