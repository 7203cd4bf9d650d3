"""Which parameters autograd differentiates, for the length of a block."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from contextlib import contextmanager

import torch

__all__ = ["only_grad_for"]


@contextmanager
def only_grad_for(model: torch.nn.Module, names: Collection[str]) -> Iterator[None]:
    """Lets only the parameters named ``names`` require gradients; restores every flag after.

    Autograd then skips what only the other parameters need (e.g. the embedding gradient).
    """
    saved = {n: p.requires_grad for n, p in model.named_parameters()}
    chosen = set(names)
    try:
        for n, p in model.named_parameters():
            p.requires_grad_(n in chosen)
        yield
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(saved[n])
