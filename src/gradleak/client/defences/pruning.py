"""Magnitude pruning (top-k sparsification) of the shared tensors.

The entries of largest magnitude are kept and the rest set to zero, per tensor or across all
shared tensors. This is the ``--defense_pct_mask`` defence of LAMP and DAGER's code, and the
top-k sparsification of communication-efficient federated learning.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from gradleak.client.defences.base import UpdateDefence

if TYPE_CHECKING:
    from gradleak.client.settings import ClientSettings


def kept_count(numel: int, ratio: float) -> int:
    """Returns how many of ``numel`` entries survive pruning a fraction ``ratio``:
    round(numel*(1-ratio))."""
    return min(numel, max(1 if numel else 0, round(numel * (1.0 - ratio))))


def top_k_mask(values: torch.Tensor, keep: int) -> torch.Tensor:
    """Returns a boolean mask of ``values``' shape that is True at exactly ``keep`` largest
    magnitudes."""
    flat = values.detach().reshape(-1).abs()
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if keep > 0:
        mask[torch.topk(flat, keep, sorted=False).indices] = True
    return mask.view(values.shape)


def prune_tensors(
    tensors: Mapping[str, torch.Tensor], *, ratio: float, scope: str = "tensor"
) -> dict[str, torch.Tensor]:
    """Returns the tensors with all but the largest-magnitude entries set to zero.

    Args:
        tensors: the shared tensors.
        ratio: fraction of entries set to zero, in [0, 1).
        scope: ``tensor`` keeps :func:`kept_count` entries of each tensor; ``global`` ranks all
            entries of all tensors together and keeps :func:`kept_count` of their total.
    """
    if scope == "tensor":
        return {n: t * top_k_mask(t, kept_count(t.numel(), ratio)) for n, t in tensors.items()}
    if scope != "global":
        raise ValueError(f"prune scope {scope!r} is not one of tensor, global")
    flat = torch.cat([t.detach().reshape(-1).abs().float().cpu() for t in tensors.values()])
    mask = top_k_mask(flat, kept_count(flat.numel(), ratio))
    pruned, start = {}, 0
    for name, tensor in tensors.items():
        part = mask[start : start + tensor.numel()].view(tensor.shape).to(tensor.device)
        pruned[name], start = tensor * part, start + tensor.numel()
    return pruned


@dataclass(frozen=True)
class TopKPruning(UpdateDefence):
    """Keeps the largest-magnitude entries, zeroing a fraction ``ratio`` of them.

    Attributes:
        ratio: fraction of entries set to zero (LAMP's ``defense_pct_mask``).
        scope: ``tensor`` (each tensor keeps its own top fraction) or ``global``.
    """

    name: ClassVar[str] = "prune"

    ratio: float = 0.9
    scope: str = "tensor"

    @classmethod
    def from_settings(cls, settings: ClientSettings) -> TopKPruning:
        return cls(ratio=settings.prune_ratio, scope=settings.prune_scope)

    def transform(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return prune_tensors(tensors, ratio=self.ratio, scope=self.scope)
