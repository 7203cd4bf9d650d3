"""Quantisation of the shared tensors: int8 per-tensor symmetric, or fp16.

The update carries the dequantised values (in the tensors' own dtype) and the scheme in its
metadata, so every attack reads it like any other update. What the server receives is exactly
what these values allow: int8 codes times one scale per tensor, or half-precision numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from gradleak.client.defences.base import UpdateDefence

if TYPE_CHECKING:
    from gradleak.client.settings import ClientSettings

INT8_MAX = 127


def int8_symmetric(tensor: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Returns the int8 codes and the scale max|x|/127 of one tensor (symmetric, per tensor).

    Every value is within scale/2 of ``codes * scale``. An all-zero tensor gets scale 1.
    """
    values = tensor.detach().double()
    amax = float(values.abs().max()) if values.numel() else 0.0
    scale = amax / INT8_MAX if amax > 0 else 1.0
    codes = torch.round(values / scale).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return codes, scale


def dequantize_int8(codes: torch.Tensor, scale: float, *, like: torch.Tensor) -> torch.Tensor:
    """Returns ``codes * scale`` in the dtype and on the device of ``like``."""
    return (codes.double() * scale).to(device=like.device, dtype=like.dtype)


def quantize_tensors(
    tensors: Mapping[str, torch.Tensor], *, scheme: str
) -> dict[str, torch.Tensor]:
    """Returns the tensors after a round trip through ``scheme`` (``int8`` or ``fp16``)."""
    if scheme == "int8":
        return {n: dequantize_int8(*int8_symmetric(t), like=t) for n, t in tensors.items()}
    if scheme == "fp16":
        return {n: t.to(torch.float16).to(t.dtype) for n, t in tensors.items()}
    raise ValueError(f"quantisation scheme {scheme!r} is not one of int8, fp16")


@dataclass(frozen=True)
class Quantization(UpdateDefence):
    """Rounds the shared values to int8 (per-tensor symmetric scale) or to fp16.

    Attributes:
        scheme: ``int8`` or ``fp16``.
    """

    name: ClassVar[str] = "quantize"

    scheme: str = "int8"

    @classmethod
    def from_settings(cls, settings: ClientSettings) -> Quantization:
        return cls(scheme=settings.quant)

    def describe(self) -> dict[str, Any]:
        granularity = "per-tensor symmetric" if self.scheme == "int8" else "elementwise"
        return {**super().describe(), "granularity": granularity}

    def transform(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return quantize_tensors(tensors, scheme=self.scheme)
