"""A span oracle: one block's attention-input span, and the probe that computes candidate rows."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from weakref import WeakKeyDictionary

import torch

from gradleak.attacks.dager.adapters import Adapter, adapter_for
from gradleak.attacks.dager.projected import projected_basis
from gradleak.attacks.span import FLOAT32_BULK_CEILING, MIN_GAP_DECADES, SpanBasis, span_basis
from gradleak.attacks.weight_rounding import WeightRounding, whiten
from gradleak.errors import GradientNotExposedError
from gradleak.models.families import ArchitectureFamily, LinearLayer
from gradleak.models.probe import LinearInputProbe

#: Projections that read the block's attention input; stacking them beats any single one.
ATTENTION_INPUT_ROLES = ("q", "k", "v")
#: The MLP layers that read the block's normalised input (one input, several weights).
MLP_INPUT_ROLES = ("mlp_gate", "mlp_in")
#: The MLP layers a sequence gate reads at block 0 (a shallow classifier's, a shared block's):
#: every row there depends on the whole sentence, and no row on one token.
MLP_GATE_ROLES = (*MLP_INPUT_ROLES, "mlp_out")
_ROUNDING = 1e-5
#: Smallest drop (decades) read as the end of an adapter span's signal in its tail (rounding's
#: own drops there stay below 0.15).
TAIL_DROP_DECADES = 0.3
#: Row room per model and layer: a fact of the public model, measured once.
_row_rooms: WeakKeyDictionary[ArchitectureFamily, dict[tuple[str, int], int]] = WeakKeyDictionary()


@dataclass
class SpanOracle:
    """Membership oracle for the attention input of one block.

    Attributes:
        block: the block index.
        layers: the exposed projections whose gradients form the basis.
        basis: their stacked span.
        probe: computes candidate rows for ``layers[0]`` (all share one input).
        projected: the smallest adapter rank where the span was read through the adapters' A
            factors (the first LoRA round, :mod:`gradleak.attacks.dager.projected`), else None.
    """

    block: int
    layers: tuple[LinearLayer, ...]
    basis: SpanBasis
    probe: LinearInputProbe
    projected: int | None = None

    @property
    def layer(self) -> LinearLayer:
        """Returns the projection whose input the probe computes."""
        return self.layers[0]

    def residuals(
        self, rows: dict[LinearLayer, torch.Tensor], *, chunk_size: int = 8192
    ) -> torch.Tensor:
        """Returns the residuals of probed rows against this oracle's span."""
        return self.basis.residuals(rows[self.layer], chunk_size=chunk_size)


def build_oracle(
    family: ArchitectureFamily,
    gradients: Mapping[str, torch.Tensor],
    block: int,
    *,
    roles: tuple[str, ...] = ATTENTION_INPUT_ROLES,
    rank: int | None = None,
    rank_tol: float | None = None,
    min_gap: float = MIN_GAP_DECADES,
    capacity: int | None = None,
    adapters: tuple[Adapter, ...] = (),
    rounding: WeightRounding | None = None,
) -> SpanOracle:
    """Returns the oracle of ``block`` from whichever of its ``roles`` gradients the update shares.

    ``roles`` must share one input (q, k and v do; so do mlp_gate and mlp_in). Where none shares
    an input-side gradient but ``adapters`` in their first round do, the span is read through
    their A factors. With ``rounding`` (a float32 multi-step delta), each gradient row is weighted
    by its known rounding noise and the rank read above that noise's floor.

    Raises:
        GradientNotExposedError: none of those gradients is shared.
    """
    if block >= family.num_blocks:
        raise GradientNotExposedError(
            f"the model has only {family.num_blocks} blocks; block {block} does not exist."
        )
    # A projection that also reads a position table widens the span past the input rows.
    clean = tuple(role for role in roles if role not in family.table_reading_roles())
    candidates = [family.linear_layer(block, role) for role in clean or roles]
    token_layer = family.token_layer() if block == 0 and roles == ATTENTION_INPUT_ROLES else None
    if token_layer is not None and token_layer.weight_name in gradients:
        candidates = [token_layer]
    layers = tuple(
        layer for layer in candidates if input_side_gradient(layer, gradients) is not None
    )
    first_round = _first_round(candidates, adapters)
    if not layers and first_round:
        layers = tuple(c for c in candidates if adapter_for(c, first_round) is not None)
        return SpanOracle(
            block=block,
            layers=layers,
            basis=projected_basis(first_round, min_gap=min_gap, rank=rank),
            probe=LinearInputProbe(family, [layers[0]]),
            projected=min(a.rank for a in first_round),
        )
    if not layers:
        needed = sorted({layer.weight_name for layer in candidates})
        raise GradientNotExposedError(
            f"DAGER needs the {'/'.join(roles)} projection(s) of block {block}, but the update "
            f"shares none of {', '.join(needed)}; expose them on the client (e.g. --expose "
            "'blocks=0,1')."
        )
    stacked = (input_side_gradient(layer, gradients) for layer in layers)
    unique = {id(g): g for g in stacked if g is not None}
    stds = None
    if rounding is not None and all(layer.weight_name in gradients for layer in layers):
        pairs = [
            whiten(
                layer.weight_gradient(gradients),
                layer.weight_gradient({layer.weight_name: rounding.error_std(layer.weight_name)}),
            )
            for layer in _distinct_weights(layers)
        ]
        unique = {i: g for i, (g, _) in enumerate(pairs)}
        stds = [std for _, std in pairs]
    basis = span_basis(
        list(unique.values()),
        rank=rank,
        rank_tol=rank_tol,
        min_gap=min_gap,
        capacity=capacity,
        element_std=stds,
    )
    limit = _adapter_limit(layers, gradients, adapters)
    if rank is None and rank_tol is None and limit and _reaches(basis, limit):
        basis = replace(span_basis(list(unique.values()), rank=limit), saturated=True)
    elif rank is None and rank_tol is None and limit and basis.gap_decades < min_gap:
        tail = tail_rank(basis.singular_values, basis.rank, limit)
        if tail != basis.rank:
            basis = span_basis(list(unique.values()), rank=tail)
    return SpanOracle(
        block=block, layers=layers, basis=basis, probe=LinearInputProbe(family, [layers[0]])
    )


def _distinct_weights(layers: tuple[LinearLayer, ...]) -> list[LinearLayer]:
    """Returns ``layers`` less those slicing the same weight rows as an earlier one (an
    interleaved fused projection serves every role whole)."""
    seen: set[tuple[str, object]] = set()
    distinct = []
    for layer in layers:
        key = (layer.weight_name, layer.out_slice)
        if key not in seen:
            seen.add(key)
            distinct.append(layer)
    return distinct


def input_side_gradient(
    layer: LinearLayer, gradients: Mapping[str, torch.Tensor]
) -> torch.Tensor | None:
    """Returns a gradient of ``layer`` whose rows lie in the span of its inputs, or None if none is
    shared.

    That is the weight gradient laid out (out, in), or, for a LoRA-adapted layer whose update
    carries only adapters, the gradient of the A factor (rank x in), which multiplies the input
    (DAGER App. B.4; it is zero until the B factor has trained away from its zero start).
    """
    if layer.weight_name in gradients:
        return layer.weight_gradient(gradients)
    prefix = f"{layer.module_name}.lora_A."
    factors = [name for name in gradients if name.startswith(prefix) and name.endswith(".weight")]
    if not factors or not bool(gradients[factors[0]].detach().abs().amax() > 0):
        return None  # the first round's A gradient is zero: it spans nothing
    return gradients[factors[0]]


def _adapter_limit(
    layers: tuple[LinearLayer, ...],
    gradients: Mapping[str, torch.Tensor],
    adapters: tuple[Adapter, ...],
) -> int:
    """Returns how many input rows the A gradients of ``layers``' adapters can span at most (the
    sum of their trained B factors' ranks), or 0 where a layer shares its own weight gradient.

    ``dL/dA = s B^T G^T X`` has rank at most rank(B): a B factor warmed up on a few batches has
    rank below r, and a span that reaches it says nothing about how many rows the batch has.
    """
    if any(layer.weight_name in gradients for layer in layers):
        return 0
    found = (adapter_for(layer, adapters) for layer in layers)
    distinct = {a.layer.module_name: a for a in found if a is not None}
    return sum(a.trained_rank for a in distinct.values())


def tail_rank(singular_values: torch.Tensor, rank: int, limit: int) -> int:
    """Returns the rank of an adapter span read below its limit without a clear gap: the largest
    drop between the rank read above the bulk and the limit, where it reaches
    :data:`TAIL_DROP_DECADES`; else ``rank``.

    Near the limit the weakest rows' directions sink to float32 rounding (SmolLM2, r = 256 at
    B = 16, 426 rows against 448: the last ones at 2e-8 of the largest), so the bulk's margin
    takes them for rounding and the spectrum's largest drop, at the true rank, stays below a
    decade (0.47 to 0.81 in three batches). Past the true rank the values are rounding, whose
    drops stay below 0.15 decades; the largest drop in that tail is where the signal ends.
    """
    logs = torch.log10(singular_values.double().clamp_min(1e-300))
    end = min(limit - 1, len(logs) - 1)
    if rank >= end:
        return rank
    drops = logs[rank:end] - logs[rank + 1 : end + 1]
    index = int(torch.argmax(drops))
    return rank + index + 1 if float(drops[index]) >= TAIL_DROP_DECADES else rank


def _reaches(basis: SpanBasis, limit: int) -> bool:
    """Returns whether a span read from adapters reaches their limit: by its rank, or by the
    directions standing above float32 rounding (past the limit the spectrum can drop steeply
    inside the signal, which the largest gap would take for the rank)."""
    s = basis.singular_values
    above = int((s > FLOAT32_BULK_CEILING * s[0]).sum()) if len(s) else 0
    return max(basis.rank, above) >= limit


def _first_round(layers: list[LinearLayer], adapters: tuple[Adapter, ...]) -> tuple[Adapter, ...]:
    """Returns the distinct first-round adapters on ``layers``' modules."""
    found = (adapter_for(layer, adapters) for layer in layers)
    distinct = {a.layer.module_name: a for a in found if a is not None and a.first_round}
    return tuple(distinct.values())


def row_space_rank(oracle: SpanOracle, *, seed: int = 0) -> int:
    """Returns the dimension that this block's input rows can span at all.

    Usually the input dimension d, but a LayerNorm without bias maps every row into a
    hyperplane (d - 1). A gradient span that reaches this dimension is saturated: every row
    passes, so membership certifies nothing. A fact of the public model, measured once per layer
    from tokens drawn from the whole token table.
    """
    rooms = _row_rooms.setdefault(oracle.probe.family, {})
    key = (oracle.layer.key, seed)
    if key not in rooms:
        rooms[key] = _measure_row_room(oracle, seed=seed)
    return rooms[key]


def _measure_row_room(oracle: SpanOracle, *, seed: int) -> int:
    d = oracle.basis.in_features
    generator = torch.Generator().manual_seed(seed)
    table = oracle.probe.family.embedding().num_embeddings
    sample = torch.randperm(table, generator=generator)[: 2 * d + 64]
    rows = oracle.probe(sample[:, None])[oracle.layer][:, 0]
    singular_values = torch.linalg.svdvals(rows.double().cpu())
    # Rows are float32: directions below ~1e-5 of the largest are rounding, not room.
    return int((singular_values > _ROUNDING * singular_values[0]).sum())
