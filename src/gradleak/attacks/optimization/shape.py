"""How many sequences, and how long: read from the update, or given, or disclosed.

The papers assume both known (LAMP's ``know_padding``). gradleak takes the batch size from the
update's metadata when the client disclosed it, else from the attack's options, else from the
gradients, and the lengths from the options or else from the gradients:

- a linear layer's weight gradient has one input row per token that influences the loss, so
  its rank is the number of tokens in the batch (while below the layer's width). In every block
  but the last, every real token counts; padding never does.
- in the last block of a *classifier* only the positions the head reads (one per sequence)
  reach the loss through the MLP, so the rank of its MLP weight gradient is the batch size. Its
  key and value gradients are no help for lengths: with one query per sequence they have rank
  one per head and sequence. An update that shares only the last block of a classifier does not
  show the lengths; pass them.

In next-token prediction a sequence's last token predicts nothing and shows in no gradient,
so the rank misses one token per sequence (the attack adds them back).

Lengths so estimated are totals: with B > 1 they are split evenly over the sequences, a guess
to replace with the true lengths (``lengths=``) when they are known.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from gradleak.attacks.rounding import read_rounding
from gradleak.attacks.span import FLOOR_UNCERTAINTY, SpanBasis, estimate_rank, span_basis
from gradleak.errors import GradleakError
from gradleak.models.families import ArchitectureFamily, LinearLayer

#: Roles tried for the token count, most reliable first (a causal model's first query gradient
#: is zero).
_TOKEN_ROLES = ("mlp_in", "mlp_gate", "v", "k", "o", "mlp_out", "q")
#: A drop this deep (decades) between singular values separates rows from the rounding bulk.
_ROW_DROP_DECADES = 2.0
#: Relative singular values below this are exact zeros of a float32 gradient, not rows.
_EXACT_ZERO = 1e-12


@dataclass(frozen=True)
class Estimate:
    """A number read from the update, with how it was obtained."""

    value: int
    source: str


def gradient_rank(layer: LinearLayer, gradients: Mapping[str, torch.Tensor]) -> tuple[int, float]:
    """Returns (rank, gap in decades) of a linear layer's weight gradient."""
    singular = _singular_values(layer, gradients)
    return (0, 0.0) if singular is None else estimate_rank(singular)


def _singular_values(
    layer: LinearLayer, gradients: Mapping[str, torch.Tensor]
) -> torch.Tensor | None:
    grad = layer.weight_gradient(gradients).double()
    if float(grad.abs().max()) == 0.0:
        return None
    return torch.linalg.svdvals(grad / grad.norm())


def estimate_batch_size(
    family: ArchitectureFamily, gradients: Mapping[str, torch.Tensor], *, task: str
) -> Estimate | None:
    """Returns the batch size read from the last block's MLP gradient of a classifier, or None."""
    if task != "seq_class" or not family.last_block_pooled:
        return None
    for layer in family.pooled_mlp():
        if layer.weight_name not in gradients:
            continue
        singular = _singular_values(layer, gradients)
        if singular is None:
            continue
        # A ReLU MLP's dead units leave exact zeros below float32's bulk; a drop into them
        # counts no rows.
        singular = singular.clamp_min(_EXACT_ZERO)
        rank, gap = estimate_rank(singular)
        # Rows of similar sequences (a shallow random model's pooled states) give a first drop
        # as deep as the one into the rounding bulk; the rows end at the last deep drop.
        drops = torch.log10(singular[:-1].clamp_min(1e-300) / singular[1:].clamp_min(1e-300))
        deep = torch.nonzero(drops >= _ROW_DROP_DECADES).flatten()
        if deep.numel():
            rank = max(rank, int(deep[-1]) + 1)
        if rank > 0 and gap > 0:
            return Estimate(rank, f"rank of {layer.key}")
    return None


def estimate_batch_size_above_floor(
    family: ArchitectureFamily, gradients: Mapping[str, torch.Tensor], *, task: str
) -> Estimate | None:
    """Returns the batch size read from a rounded classifier's last MLP, or None
    (:func:`pooled_span_above_floor`)."""
    read = pooled_span_above_floor(family, gradients, task=task)
    if read is None:
        return None
    layer, basis = read
    return Estimate(basis.rank, f"rank of {layer.key} above its rounding floor")


def pooled_span_above_floor(
    family: ArchitectureFamily, gradients: Mapping[str, torch.Tensor], *, task: str
) -> tuple[LinearLayer, SpanBasis] | None:
    """Returns the layer and span of a rounded classifier's pooled rows (one per sequence), or
    None where they do not stand clear of the rounding.

    Rounding (a 16-bit client, a quantised update) gives the spectrum a noise bulk, and the rank
    is read where it drops into it (:func:`~gradleak.attacks.span.rank_above_floor`). Each of the
    pooled MLP's inputs is read alone (on SmolLM2 a dominant row makes their stacked spectrum's
    drop unreadable at times), and the reading whose drop is deepest counts, only where that
    drop spans more than the floor estimate's own uncertainty: a row count must stand clear of
    the bulk, or a buried row would be cut as surplus. Only a float format's grid counts: its
    steps scale with each value, where a uniform step (int8) buries every row below it whole
    (SmolLM2, B = 16: one row stands clear).
    """
    if task != "seq_class" or not family.last_block_pooled:
        return None
    readings = []
    for layer in family.pooled_mlp():
        if layer.weight_name not in gradients:
            continue
        gradient = layer.weight_gradient(gradients)
        rounding = read_rounding(gradient)
        if rounding is None or rounding.kind != "float":
            continue
        basis = span_basis([gradient])
        width = min(layer.in_features, layer.out_features)
        if basis.rounding_floor is not None and 0 < basis.rank < width:
            readings.append((basis.gap_decades, layer, basis))
    if not readings:
        return None
    gap, layer, basis = max(readings, key=lambda reading: reading[0])
    return (layer, basis) if gap >= math.log10(FLOOR_UNCERTAINTY) else None


def estimate_total_tokens(
    family: ArchitectureFamily, gradients: Mapping[str, torch.Tensor], *, task: str = "seq_class"
) -> Estimate:
    """Returns the number of (non-padding) tokens in the batch, from an exposed linear gradient.

    Raises:
        GradleakError: no exposed linear gradient shows a clear rank.
    """
    tried = []
    for layer in _token_layers(family, gradients, task=task):
        rank, gap = gradient_rank(layer, gradients)
        tried.append(layer.key)
        if rank > 0 and gap > 0 and rank < min(layer.in_features, layer.out_features):
            return Estimate(rank, f"rank of {layer.key}")
    raise GradleakError(
        "cannot tell the sequence lengths from the update (no exposed linear gradient shows a "
        f"clear rank{'; tried ' + ', '.join(tried) if tried else ''}); pass lengths=N (tokens per "
        "sequence, special tokens included)."
    )


def _token_layers(
    family: ArchitectureFamily, gradients: Mapping[str, torch.Tensor], *, task: str
) -> list[LinearLayer]:
    last = family.num_blocks - 1 if task == "seq_class" else family.num_blocks
    rotary = family.positions == "rotary"
    layers = [
        layer
        for layer in family.linear_layers()
        if layer.weight_name in gradients and layer.block < last and layer.shared_by == 1
    ]

    def preference(layer: LinearLayer) -> tuple:
        # With rotary positions block 0 sees a bag of tokens: repeated tokens share a row.
        return (
            rotary and layer.block == 0,
            _TOKEN_ROLES.index(layer.role),
            -min(layer.in_features, layer.out_features),
        )

    return sorted(layers, key=preference)[:4]


def _layer(family: ArchitectureFamily, block: int, role: str) -> LinearLayer | None:
    try:
        return family.linear_layer(block, role)
    except KeyError:
        return None
