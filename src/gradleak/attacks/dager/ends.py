"""Where a causal classifier's sequences end: the last block's query adapter sees only their ends.

A causal classifier pools each sequence's last row after the last block, so that block's query
projection gets gradient at those B rows only, and its LoRA A factor's gradient ``s B^T G^T X``
spans exactly the batch's final rows while B is below the adapter's trained rank (the same rows
:func:`~gradleak.attacks.dager.adapters.batch_size_from_adapters` counts). A sequence found by the
prefix search is whole only if its final row lies in that span: near the rank limit a repeated
token can pass the sequence block's test one position too far (SmolLM2, r = 256, B = 16: "...
veneer . . ." certified with a fourth "."), which this test rejects, and the longest prefix whose
final row passes is the sequence.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from gradleak.attacks.dager.adapters import adapter_for, read_adapters
from gradleak.attacks.span import estimate_rank, span_basis
from gradleak.attacks.weight_rounding import WeightRounding, whiten
from gradleak.models.families import LinearLayer
from gradleak.models.loading import PublicModel
from gradleak.models.probe import LinearInputProbe

#: Relative residual below which a final row lies in the span: true ends measured 1e-7 to 1e-6
#: (float32 rounding), a sentence with one token changed 0.04 or more.
END_TOLERANCE = 1e-4


@dataclass(frozen=True)
class EndTest:
    """The span of the batch's final rows at the last block's query adapter.

    Attributes:
        layer: the last block's query layer.
        basis: (B, d) orthonormal rows spanning the final rows.
    """

    layer: LinearLayer
    basis: torch.Tensor

    def residuals(self, public: PublicModel, ids: tuple[int, ...]) -> torch.Tensor:
        """Returns the relative residual of each prefix's final row (one per position)."""
        rows = LinearInputProbe(public.family, [self.layer])(torch.tensor([ids]))[self.layer][0]
        rows = rows.double().cpu()
        left = rows - (rows @ self.basis.T) @ self.basis
        return left.norm(dim=1) / rows.norm(dim=1).clamp_min(1e-300)

    def whole(self, public: PublicModel, ids: tuple[int, ...]) -> int | None:
        """Returns the length of the longest prefix of ``ids`` (itself included) whose final row
        passes, or None where none does."""
        passed = (self.residuals(public, ids) < END_TOLERANCE).nonzero()
        return int(passed[-1]) + 1 if len(passed) else None


def end_test(public: PublicModel, gradients: Mapping[str, torch.Tensor]) -> EndTest | None:
    """Returns the end test where the update shows it: a causal classifier whose last query
    projection, not fused with keys and values, carries a trained LoRA adapter, with fewer final
    rows than that adapter's rank."""
    family = public.family
    if public.task != "seq_class" or not family.causal:
        return None
    query = family.linear_layer(family.num_blocks - 1, "q")
    if query.out_slice is not None:  # a fused qkv's A factor sees keys and values at every row
        return None
    adapter = adapter_for(query, read_adapters(public, gradients))
    if adapter is None or adapter.a_gradient is None:
        return None
    gradient = adapter.a_gradient.double().cpu()
    _, s, vh = torch.linalg.svd(gradient / gradient.norm(), full_matrices=False)
    rank, gap = estimate_rank(s)
    if rank == 0 or gap == 0.0 or rank >= adapter.trained_rank:
        return None
    return EndTest(layer=query, basis=vh[:rank])


def weight_end_test(
    public: PublicModel,
    gradients: Mapping[str, torch.Tensor],
    rounding: WeightRounding,
    *,
    min_rank: int = 1,
) -> EndTest | None:
    """Returns the end test of a causal classifier's rounded weight delta: its last block's query
    weight gets gradient at the pooled final rows only, so its span (read above the weights' known
    rounding, at least ``min_rank`` directions: the batch holds at least that many sentences)
    holds the sentences' final rows. Rounding blurs it, so it ranks positions instead of proving
    them: on SmolLM2 (float32 FedAvg, B = 16, E = 2, lr 1e-4) each true sentence's final row lies
    nearer it than any of the sentence's other rows (16 of 16), although only one to three of its
    directions stand above the rounding. None where the query weight is not shared."""
    family = public.family
    if public.task != "seq_class" or not family.causal:
        return None
    query = family.linear_layer(family.num_blocks - 1, "q")
    if query.weight_name not in gradients:
        return None
    gradient, std = whiten(
        query.weight_gradient(gradients),
        query.weight_gradient({query.weight_name: rounding.error_std(query.weight_name)}),
    )
    read = span_basis([gradient], element_std=[std])
    rank = min(max(read.rank, min_rank), query.in_features - 1)
    _, _, vh = torch.linalg.svd(gradient, full_matrices=False)
    return EndTest(layer=query, basis=vh[:rank])
