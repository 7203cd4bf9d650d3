"""Accounting for the batch: how many sequences it holds, and what ran out of time.

Nothing a search misses is dropped silently. The batch size is the client's when disclosed, else
read from the gradient where it shows (a classifier's last MLP sees one row per sequence,
:func:`gradleak.attacks.optimization.shape.estimate_batch_size`; so does its last query adapter,
:func:`gradleak.attacks.dager.adapters.batch_size_from_adapters`); fewer sequences recovered is a
cause on the batch, with the count. More sequences than the batch holds (a ranking search cut off
by its budget, wrong branches of a rounded update's search) are cut to the batch size, the
best-supported kept (:func:`best_supported`), and that too is a cause on the batch.
A search stopped by the time budget makes every sequence it returned best-effort.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace

import torch

from gradleak.attacks.base import Reconstruction, RecoveredSequence
from gradleak.attacks.budget import Deadline
from gradleak.attacks.dager.adapters import adapters_only, batch_size_from_adapters, read_adapters
from gradleak.attacks.dager.plan import read_arithmetic
from gradleak.attacks.optimization.shape import (
    Estimate,
    estimate_batch_size,
    estimate_batch_size_above_floor,
)
from gradleak.attacks.verdict import Cause, CauseKind
from gradleak.models.loading import PublicModel
from gradleak.update import ClientUpdate


def batch_size(
    public: PublicModel, update: ClientUpdate, gradients: Mapping[str, torch.Tensor]
) -> Estimate | None:
    """Returns how many sequences the batch holds, and how that is known, or None.

    Only a one-step update is counted from its rank: a weight delta over several steps or a
    noised gradient has no rank that counts rows, and a wrong count would cut true sequences as
    surplus. A rounded one (a 16-bit client, a quantised update) is counted where its rows stand
    clear of the rounding's noise floor
    (:func:`~gradleak.attacks.optimization.shape.estimate_batch_size_above_floor`).
    """
    if update.metadata.batch_size is not None:
        return Estimate(update.metadata.batch_size, "disclosed by the client")
    reading = read_arithmetic(update, causal=public.family.causal)
    if reading.drifts or reading.noise_defence:
        return None
    if reading.rounding:
        if adapters_only(public.family, gradients):
            return None
        return estimate_batch_size_above_floor(public.family, gradients, task=public.task)
    if adapters_only(public.family, gradients):
        read = batch_size_from_adapters(public, read_adapters(public, gradients))
        return read[0] if read is not None and read[1] else None
    return estimate_batch_size(public.family, gradients, task=public.task)


def account_for_batch(
    public: PublicModel,
    update: ClientUpdate,
    gradients: Mapping[str, torch.Tensor],
    result: Reconstruction,
) -> Reconstruction:
    """Returns ``result`` with the batch size it was checked against, and a cause for the
    sequences it lacks."""
    size = batch_size(public, update, gradients)
    if size is None:
        return _at_most_the_lower_bound(public, gradients, result)
    diagnostics = {**result.diagnostics, "batch_size": {"value": size.value, "source": size.source}}
    result = keep_at_most(result, size)
    found = len({s.token_ids for s in result.sequences})
    causes = result.causes
    if found < size.value:
        detail = (
            f"the batch holds {size.value} sequences ({size.source}) and {found} were recovered"
        )
        causes = (
            *causes,
            Cause(CauseKind.MISSING_SEQUENCES, count=size.value - found, detail=detail),
        )
    return replace(result, causes=causes, diagnostics=diagnostics)


def _at_most_the_lower_bound(
    public: PublicModel, gradients: Mapping[str, torch.Tensor], result: Reconstruction
) -> Reconstruction:
    """Returns ``result`` cut to the fewest sequences an adapter update shows the batch to hold
    (never more than it holds), where that is all that can be read."""
    if not adapters_only(public.family, gradients):
        return result
    read = batch_size_from_adapters(public, read_adapters(public, gradients))
    return result if read is None else keep_at_most(result, read[0])


def keep_at_most(result: Reconstruction, size: Estimate) -> Reconstruction:
    """Returns ``result`` cut to the ``size.value`` best-supported sequences
    (:func:`best_supported`), with a cause naming how many were discarded."""
    distinct = list({s.token_ids: s for s in result.sequences}.values())
    if len(distinct) <= size.value:
        return result
    kept = best_supported(distinct, size.value)
    surplus = len(distinct) - len(kept)
    detail = (
        f"the batch holds {size.value} sequences ({size.source}); the best-supported were kept "
        "and the rest discarded"
    )
    cut = Cause(CauseKind.SURPLUS, count=surplus, detail=detail)
    return replace(result, sequences=tuple(kept), causes=(*result.causes, cut))


def best_supported(sequences: Sequence[RecoveredSequence], count: int) -> list[RecoveredSequence]:
    """Returns at most ``count`` of ``sequences``: the certified first (in their order), then, one
    at a time, the best-supported of the rest.

    A sequence whose end an end test proved (:mod:`gradleak.attacks.dager.ends`) goes before one
    whose end it could not. Its support is its last row's residual and its weakest own row's:
    its own rows are those past the longest prefix it shares with a sequence already kept
    (shared rows were counted with that one). A true sentence ends on a row that carries its own
    loss (a classifier pools it), among the best supported of all: on SmolLM2's bfloat16 spans
    true sentences ended at 9 to 12 floors where their middle rows reached 70, and wrong branches
    or unfinished prefixes ended at 20 to 100, so the last row decides first (also where the end
    is unproved: on ten saved bfloat16 batches ranking those by their weakest own row instead
    lost 2 ROUGE-1 points). A sequence that is a prefix of a kept one adds no row and is dropped.
    Where some sequence carries no residual per token the searches' own order (surest first)
    decides.
    """
    certified = [s for s in sequences if s.certified][:count]
    rest = [s for s in sequences if not s.certified]
    if not all(0 < len(s.residuals) == len(s.token_ids) for s in rest):
        return [*certified, *rest][:count]
    kept: list[RecoveredSequence] = list(certified)
    shared = [max((_common(s, k) for k in kept), default=0) for s in rest]
    weakest = [_suffix_maxima(s.residuals) for s in rest]
    unproved = [CauseKind.END_UNPROVED in {c.kind for c in s.assurance.causes} for s in rest]
    live = set(range(len(rest)))

    def support(i: int) -> tuple[bool, float, float, int]:
        return unproved[i], rest[i].residuals[-1], weakest[i][shared[i]], -len(rest[i].token_ids)

    while live and len(kept) < count:
        live -= {i for i in live if shared[i] >= len(rest[i].token_ids)}  # a kept one's prefix
        if not live:
            break
        best = min(live, key=support)
        chosen = rest[best]
        kept.append(chosen)
        live.discard(best)
        for i in live:
            shared[i] = max(shared[i], _common(rest[i], chosen))
    return kept


def _common(a: RecoveredSequence, b: RecoveredSequence) -> int:
    """Returns the length of the longest prefix ``a`` and ``b`` share."""
    length = 0
    for x, y in zip(a.token_ids, b.token_ids, strict=False):
        if x != y:
            break
        length += 1
    return length


def _suffix_maxima(residuals: Sequence[float]) -> list[float]:
    """Returns, for each position, the largest residual from there on (one more entry, -inf,
    past the end)."""
    maxima = [-math.inf]
    for value in reversed(residuals):
        maxima.append(max(value, maxima[-1]))
    return maxima[::-1]


def out_of_time(
    result: Reconstruction, deadline: Deadline, *, whole: bool = False
) -> Reconstruction:
    """Returns ``result`` with its sequences marked as cut off by the time budget.

    ``whole`` says the search proves only whole sequences (an encoder's sentences: every row
    depends on the whole sentence, so one that passes is complete); its certified ones were
    proved before the budget ran out and keep their certificate, and the batch carries the cause.
    Elsewhere a sequence may have been cut mid-way (a prefix still growing), so every one loses
    its certificate.
    """
    budget = Cause(CauseKind.TIME_BUDGET, count=round(deadline.seconds or 0))
    sequences = tuple(
        s if whole and s.certified else replace(s, assurance=s.assurance.with_causes([budget]))
        for s in result.sequences
    )
    return replace(result, sequences=sequences, causes=(*result.causes, budget))
