"""What an update of LoRA adapters shows: which layers carry adapters, their ranks, and the round.

A LoRA layer computes ``y = W x + s B A x`` with the base weight W frozen; the update carries only
the factors' gradients:

- ``dL/dA = s B^T G^T X`` (r x in): its rows lie in the span of the layer's input rows X, and fill
  it while the batch has fewer distinct rows than the rank (DAGER App. B.4);
- ``dL/dB = s G^T (X A^T)`` (out x r): its rows lie in the span of the inputs seen through the A
  factor the server sent.

PEFT starts B at zero, so in the first round ``dL/dA`` is exactly zero and only ``dL/dB`` carries
the inputs (through the known A). :func:`read_adapters` reads all of this off the update's tensor
names and the server's copy of the adapters, so no search has to guess it from a spectrum.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from gradleak.attacks.optimization.shape import Estimate
from gradleak.attacks.span import FLOAT32_BULK_CEILING, estimate_rank
from gradleak.models.families import ArchitectureFamily, LinearLayer
from gradleak.models.loading import PublicModel

Gradients = Mapping[str, torch.Tensor]
_A, _B = ".lora_A.", ".lora_B."


@dataclass(frozen=True)
class Adapter:
    """The LoRA factors on one linear module, as the update and the server's model show them.

    Attributes:
        layer: the family's layer on the adapted module (its first role, e.g. q of a fused qkv).
        rank: the adapter rank r.
        a_weight: the A factor the server sent (r, in).
        trained_rank: the numerical rank of the B factor the server sent (0 in the first round):
            at most this many input rows show in the A factor's gradient.
        a_gradient: the A factor's gradient (r, in), None where the update holds none or it is
            exactly zero (the first round).
        b_gradient: the B factor's gradient (out, r), None where the update holds none.
    """

    layer: LinearLayer
    rank: int
    a_weight: torch.Tensor
    trained_rank: int
    a_gradient: torch.Tensor | None
    b_gradient: torch.Tensor | None

    @property
    def block(self) -> int:
        """Returns the block the adapted module belongs to."""
        return self.layer.block

    @property
    def first_round(self) -> bool:
        """Returns whether only the B factor's gradient carries the inputs (B was still zero)."""
        return self.a_gradient is None and self.b_gradient is not None


def read_adapters(public: PublicModel, gradients: Gradients) -> tuple[Adapter, ...]:
    """Returns every adapter the update carries a factor gradient of, in model order."""
    weights = dict(public.model.named_parameters())
    adapters: dict[str, Adapter] = {}
    for layer in public.family.linear_layers():
        if layer.module_name in adapters:
            continue
        a_name = _factor_name(gradients, layer.module_name, _A) or _factor_name(
            weights, layer.module_name, _A
        )
        if a_name is None or a_name not in weights:
            continue
        b_name = a_name.replace(_A, _B)
        if a_name not in gradients and b_name not in gradients:
            continue
        a_gradient = gradients.get(a_name)
        if a_gradient is not None and not bool(a_gradient.detach().abs().amax() > 0):
            a_gradient = None
        adapters[layer.module_name] = Adapter(
            layer=layer,
            rank=int(weights[a_name].shape[0]),
            a_weight=weights[a_name].detach(),
            trained_rank=numerical_rank(weights[b_name].detach()) if b_name in weights else 0,
            a_gradient=None if a_gradient is None else a_gradient.detach(),
            b_gradient=None if b_name not in gradients else gradients[b_name].detach(),
        )
    return tuple(adapters.values())


def adapter_for(layer: LinearLayer, adapters: tuple[Adapter, ...]) -> Adapter | None:
    """Returns the adapter on ``layer``'s module, or None."""
    return next((a for a in adapters if a.layer.module_name == layer.module_name), None)


def adapters_only(family: ArchitectureFamily, gradients: Gradients) -> bool:
    """Returns whether the update carries adapter factors and no base linear weight."""
    has_factor = any(_A in name or _B in name for name in gradients)
    return has_factor and not any(
        layer.weight_name in gradients for layer in family.linear_layers()
    )


def rank_limit(adapters: tuple[Adapter, ...]) -> int:
    """Returns how many distinct input rows these adapters' A gradients can span together."""
    return sum(a.rank for a in adapters)


def batch_size_from_adapters(
    public: PublicModel, adapters: tuple[Adapter, ...]
) -> tuple[Estimate, bool] | None:
    """Returns the batch size read from the last block's query adapter of a causal classifier,
    and whether it is exact (else it is a lower bound); None where nothing can be read.

    The classifier pools one row per sequence after the last block, so that block's query
    projection receives gradient at those rows only: the query rows of its B factor's gradient
    (a slice of a fused qkv module) have rank B while B < r. A full rank r says only that the
    batch holds at least r sequences.
    """
    family = public.family
    if public.task != "seq_class" or not family.causal:
        return None
    query = family.linear_layer(family.num_blocks - 1, "q")
    adapter = adapter_for(query, adapters)
    if adapter is None or adapter.b_gradient is None:
        return None
    gradient = adapter.b_gradient
    if query.out_slice is not None:
        gradient = gradient[query.out_slice[0] : query.out_slice[1]]
    if not bool(gradient.abs().amax() > 0):
        return None
    singular = torch.linalg.svdvals(gradient.double() / gradient.double().norm())
    rank, gap = estimate_rank(singular)
    source = f"rank of the {query.key} adapter's B gradient"
    if rank > 0 and gap > 0 and rank < adapter.rank:
        return Estimate(rank, source), True
    return Estimate(adapter.rank, f"at least the adapter rank: full {source}"), False


def numerical_rank(matrix: torch.Tensor) -> int:
    """Returns the number of singular values above float32 rounding of the largest (0 for zero)."""
    singular = torch.linalg.svdvals(matrix.double().cpu())
    if len(singular) == 0 or float(singular[0]) == 0.0:
        return 0
    return int((singular > FLOAT32_BULK_CEILING * singular[0]).sum())


def _factor_name(names: Mapping[str, object], module: str, factor: str) -> str | None:
    prefix = f"{module}{factor}"
    return next((n for n in names if n.startswith(prefix) and n.endswith(".weight")), None)
