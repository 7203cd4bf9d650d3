"""Swapping a module's forward for the length of a context, and putting back what it had."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from torch import nn


@contextlib.contextmanager
def replaced_forwards(
    modules: Sequence[nn.Module], replace: Callable[[Callable[..., Any]], Callable[..., Any]]
) -> Iterator[None]:
    """Gives each of ``modules`` the forward ``replace(its forward)`` while the context is open."""
    modules = list(dict.fromkeys(modules))
    # An instance may carry its own forward already (accelerate's hooks): it is put back as found.
    own = [module.__dict__.get("forward") for module in modules]
    for module in modules:
        module.forward = replace(module.forward)
    try:
        yield
    finally:
        for module, forward in zip(modules, own, strict=True):
            if forward is None:
                del module.forward
            else:
                module.forward = forward
