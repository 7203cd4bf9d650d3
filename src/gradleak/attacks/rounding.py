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
        exponent = torch.floor(torch.log2(values.abs().clamp_min(1e-300)))
        ulp = torch.exp2(exponent - self.bits)
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


def rounding_floor(gradients: Sequence[torch.Tensor]) -> float | None:
    """Returns the spectral norm that rounding adds to the stacked, unit-scaled ``gradients``, or
    None when none of them was rounded coarser than float32.

    For independent errors of standard deviations s_ij the spectral norm is about the largest row
    norm plus the largest column norm of (s_ij) (Bandeira and van Handel); on the updates measured
    this bounds the observed noise bulk from above by a factor of 1 to 2.
    """
    readings = [read_rounding(g) for g in gradients]
    if not any(readings):
        return None
    stds = []
    for gradient, rounding in zip(gradients, readings, strict=True):
        norm = gradient.detach().double().norm().clamp_min(1e-300)
        if rounding is None:
            stds.append(torch.zeros_like(gradient, dtype=torch.float64))
        else:
            stds.append(rounding.element_std(gradient) / norm)
    variance = torch.cat(stds).square()
    return float(variance.sum(dim=1).max().sqrt() + variance.sum(dim=0).max().sqrt())


def describe_rounding(gradients: Sequence[torch.Tensor]) -> str | None:
    """Returns the coarsest grid among ``gradients`` in words, or None if none is lossy."""
    readings = [r for r in map(read_rounding, gradients) if r is not None]
    return readings[0].describe() if readings else None
