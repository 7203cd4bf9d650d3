"""Where a causal classifier's sequences end: the last block sees only their ends.

A causal classifier pools each sequence's last row after the last block, so that block's query
projection gets gradient at those B rows only, and its LoRA A factor's gradient ``s B^T G^T X``
spans exactly the batch's final rows while B is below the adapter's trained rank (the same rows
:func:`~gradleak.attacks.dager.adapters.batch_size_from_adapters` counts). A sequence found by the
prefix search is whole only if its final row lies in that span: near the rank limit a repeated
token can pass the sequence block's test one position too far (SmolLM2, r = 256, B = 16: "...
veneer . . ." certified with a fourth "."), which this test rejects, and the longest prefix whose
final row passes is the sequence.

A full update of a classifier shows the same rows in its last block's MLP (the pooled rows, one
per sequence); where the update was rounded they stand above the rounding floor
(:func:`~gradleak.attacks.optimization.shape.pooled_span_above_floor`), and the prefix search's
wrong branches, wrong extensions and unfinished prefixes end off that span (SmolLM2, a bfloat16
client, B = 16: true ends 0.008 to 0.013, a sentence with one wrong token 0.035 to 0.05, every
other final row 0.16 or more). The tolerance is read from the candidates themselves: the largest
clear gap (a factor 2) above the lowest distinct final rows, else the largest, no more of them
passing than the span's rank.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch

from gradleak.attacks.dager.adapters import adapter_for, read_adapters
from gradleak.attacks.optimization.shape import pooled_span_above_floor
from gradleak.attacks.span import estimate_rank, span_basis
from gradleak.attacks.thresholds import largest_gap_split
from gradleak.attacks.weight_rounding import WeightRounding, whiten
from gradleak.models.families import LinearLayer
from gradleak.models.loading import PublicModel
from gradleak.models.probe import LinearInputProbe

#: Most sequences a rounded update's end test reads, per sequence the batch holds: each costs a
#: pass through the whole model.
ROUNDED_END_CANDIDATES = 4
#: A gap this wide (decades) above the lowest final rows ends a rounded update's true ends: they
#: cluster (SmolLM2 bfloat16, B = 16: 0.008 to 0.013), and a sentence with one wrong token
#: before a true end sits about 3 times above them.
END_GAP_DECADES = 0.3
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
    tolerance: float = END_TOLERANCE
    _read: dict[tuple[int, ...], torch.Tensor] = field(
        default_factory=dict, repr=False, compare=False
    )

    def residuals(self, public: PublicModel, ids: tuple[int, ...]) -> torch.Tensor:
        """Returns the relative residual of each prefix's final row (one per position)."""
        if ids not in self._read:  # one pass through the whole model per sequence
            probe = LinearInputProbe(public.family, [self.layer])
            rows = probe(torch.tensor([ids]))[self.layer][0].double().cpu()
            left = rows - (rows @ self.basis.T) @ self.basis
            self._read[ids] = left.norm(dim=1) / rows.norm(dim=1).clamp_min(1e-300)
        return self._read[ids]

    def whole(self, public: PublicModel, ids: tuple[int, ...]) -> int | None:
        """Returns the length of the longest prefix of ``ids`` (itself included) whose final row
        passes, or None where none does."""
        passed = (self.residuals(public, ids) < self.tolerance).nonzero()
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


def rounded_end_test(
    public: PublicModel,
    gradients: Mapping[str, torch.Tensor],
    sequences: Sequence[tuple[int, ...]],
) -> EndTest | None:
    """Returns the end test of a rounded classifier's update, its tolerance read off the final
    rows of ``sequences`` (the surest first; at most :data:`ROUNDED_END_CANDIDATES` per row of
    the pooled span are read), or None where the update shows no pooled span above its floor."""
    family = public.family
    if not family.causal or not sequences:
        return None
    read = pooled_span_above_floor(family, gradients, task=public.task)
    if read is None:
        return None
    layer, span = read
    test = EndTest(layer=layer, basis=span.basis.double().cpu(), tolerance=0.0)
    finals: dict[tuple[int, ...], float] = {}
    for ids in sequences[: ROUNDED_END_CANDIDATES * span.rank]:
        for length, value in enumerate(test.residuals(public, ids).tolist(), start=1):
            finals[ids[:length]] = value
    lowest = sorted(finals.values())[: span.rank + 1]
    for low, high in itertools.pairwise(lowest):  # true ends cluster: the first clear gap
        if math.log10(max(high, 1e-30) / max(low, 1e-30)) >= END_GAP_DECADES:
            return replace(test, tolerance=math.sqrt(low * high))
    split = largest_gap_split(torch.tensor(lowest), min_decades=0.0)
    return None if split is None else replace(test, tolerance=split.threshold())
