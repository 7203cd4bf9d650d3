"""Where dropout meets the rows of block 0's attention input, read from the model's forward order.

A client in training mode drops each coordinate of the embedding rows with probability p and scales
the rest by 1 / (1 - p) before block 0 reads them. Where that happens differs by family: BERT
drops after its embedding LayerNorm, so block 0's q/k/v read the masked rows themselves; GPT-2
drops the summed embeddings, and block 0's ``ln_1`` then normalises the masked row. Both facts
come from the modules the forward pass runs, in order, before block 0's query input: the last
dropout among them, and any norm between it and the query.

Modules here compute rows with the model's own modules (hooks), never a copy of its internals.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from gradleak.models.families.base import ArchitectureFamily


class _Stop(Exception):
    """Raised inside a forward pass once what was wanted has been seen."""


@dataclass(frozen=True)
class DropoutSite:
    """The dropout that masks block 0's input rows.

    Attributes:
        module_name: the dropout module (a name in the full model).
        rate: its drop probability p.
        norm_name: the norm between it and block 0's attention input, or None (rows reach the
            projections masked as they are).
    """

    module_name: str
    rate: float
    norm_name: str | None

    @property
    def scale(self) -> float:
        """Returns the factor 1 / (1 - p) that kept coordinates are multiplied by."""
        return 1.0 / (1.0 - self.rate)


def input_dropout(family: ArchitectureFamily) -> DropoutSite | None:
    """Returns the dropout that masks block 0's attention input, or None where none does (no
    dropout before block 0, or a rate of 0)."""
    order = _forward_order(family)
    dropouts = [i for i, name in enumerate(order) if isinstance(_module(family, name), nn.Dropout)]
    if not dropouts:
        return None
    at = dropouts[-1]
    rate = float(getattr(_module(family, order[at]), "p", 0.0))
    if rate <= 0.0:
        return None
    norms = [name for name in order[at + 1 :] if _is_norm(_module(family, name))]
    return DropoutSite(order[at], rate, norms[0] if norms else None)


def _forward_order(family: ArchitectureFamily) -> list[str]:
    """Returns the leaf modules one token's forward pass runs before block 0's query input."""
    query = family.linear_layer(0, "q").module_name
    order: list[str] = []
    handles = []

    def make_hook(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            if name == query:
                raise _Stop
            order.append(name)

        return hook

    for name, module in family.model.named_modules():
        if name and (name == query or not list(module.children())):
            handles.append(module.register_forward_pre_hook(make_hook(name)))
    try:
        with torch.no_grad():
            family.base(**single_token_inputs(family, torch.zeros(1, dtype=torch.long), 0))
    except _Stop:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return order


def single_token_inputs(
    family: ArchitectureFamily, tokens: torch.Tensor, position: int
) -> dict[str, torch.Tensor]:
    """Returns the bare model's inputs for each token alone at ``position``."""
    device = family.embedding().weight.device
    ids = tokens.reshape(-1, 1).to(device)
    inputs = {
        "input_ids": ids,
        "position_ids": torch.full_like(ids, position + family.position_offset()),
    }
    if family.token_types:
        inputs["token_type_ids"] = torch.zeros_like(ids)
    return inputs


def _module(family: ArchitectureFamily, name: str) -> nn.Module:
    return family.model.get_submodule(name)


def _is_norm(module: nn.Module) -> bool:
    return "norm" in type(module).__name__.lower()
