"""Accounting for the batch: how many sequences it holds, and what ran out of time.

Nothing a search misses is dropped silently. The batch size is the client's when disclosed, else
read from the gradient where it shows (a classifier's last MLP sees one row per sequence,
:func:`gradleak.attacks.optimization.shape.estimate_batch_size`; so does its last query adapter,
:func:`gradleak.attacks.dager.adapters.batch_size_from_adapters`); fewer sequences recovered is a
cause on the batch, with the count. More sequences than the batch holds (a ranking search cut off
by its budget) are cut to the batch size, the surest kept, and that too is a cause on the batch.
A search stopped by the time budget makes every sequence it returned best-effort.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import torch

from gradleak.attacks.base import Reconstruction
from gradleak.attacks.budget import Deadline
from gradleak.attacks.dager.adapters import adapters_only, batch_size_from_adapters, read_adapters
from gradleak.attacks.dager.plan import read_arithmetic
from gradleak.attacks.optimization.shape import Estimate, estimate_batch_size
from gradleak.attacks.verdict import Cause, CauseKind
from gradleak.models.loading import PublicModel
from gradleak.update import ClientUpdate


def batch_size(
    public: PublicModel, update: ClientUpdate, gradients: Mapping[str, torch.Tensor]
) -> Estimate | None:
    """Returns how many sequences the batch holds, and how that is known, or None.

    Only a one-step update in full precision is counted from its rank: a weight delta over
    several steps, a noised or a rounded gradient has no rank that counts rows, and a wrong count
    would cut true sequences as surplus.
    """
    if update.metadata.batch_size is not None:
        return Estimate(update.metadata.batch_size, "disclosed by the client")
    reading = read_arithmetic(update, causal=public.family.causal)
    if reading.drifts or reading.noise_defence or reading.rounding:
        return None
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
    """Returns ``result`` cut to ``size.value`` sequences, the surest first, with a cause naming
    how many were dropped."""
    distinct = list({s.token_ids: s for s in result.sequences}.values())
    surplus = len(distinct) - size.value
    if surplus <= 0:
        return result
    # Searches list their sequences surest first; certified ones go before any best-effort one.
    kept = sorted(distinct, key=lambda s: not s.certified)[: size.value]
    cut = Cause(CauseKind.SURPLUS, count=surplus, detail=f"{size.value} by {size.source}")
    return replace(result, sequences=tuple(kept), causes=(*result.causes, cut))


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
