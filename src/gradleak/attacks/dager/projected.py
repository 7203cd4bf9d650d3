"""The first LoRA round: a span test through the known A factor.

With B still zero, ``dL/dA`` vanishes and ``dL/dB = s G^T (X A^T)`` is all the update shows of a
layer's inputs: its rows span ``{A x : x in X}`` inside the rank-r space, as long as the batch has
fewer distinct rows than r. The server sent A, so a candidate row x is tested by whether ``A x``
lies in that span, i.e. whether ``x`` satisfies the constraints ``W A x = 0``, where W spans the
complement of the B gradient's row space. Several adapters on one input (q and v) add their
constraints: a row must pass every one.

That proves less than DAGER's test in the full input space whenever r is smaller than the input
width: only the r-dim image of each row was shown to lie in the span. Results keep that as a
cause (:data:`~gradleak.attacks.verdict.CauseKind.PROJECTED`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gradleak.attacks.dager.adapters import Adapter
from gradleak.attacks.span import MIN_GAP_DECADES, SpanBasis, estimate_rank

#: Constraint directions weaker than this (relative) are rounding, not constraints.
_CONSTRAINT_TOL = 1e-8


def projected_basis(
    adapters: Sequence[Adapter], *, min_gap: float = MIN_GAP_DECADES, rank: int | None = None
) -> SpanBasis:
    """Returns the subspace of inputs whose image through every adapter's A lies in the span of
    its B gradient's rows: the span test of the first round, as a :class:`SpanBasis`.

    ``rank`` (the basis dimension) is an expert override, as in
    :func:`~gradleak.attacks.span.span_basis`; the basis is saturated where no constraint is left
    (the batch has at least r distinct rows).
    """
    read = [_read(a, min_gap) for a in adapters if a.b_gradient is not None]
    if not read:
        raise ValueError("projected_basis needs an adapter with a B-factor gradient")
    # Constraints of different adapters add up (a row must pass each), so only the adapters that
    # see the most rows count: a causal model's first query sees one key, and its query
    # adapter is blind to rows the others see.
    most = max(rows for rows, *_ in read)
    kept = [item for item in read if item[0] == most]
    constraints = [c for _, c, _, _ in kept]
    spectra = [s for _, _, s, _ in kept]
    gaps = [g for _, _, _, g in kept]
    in_features = int(adapters[0].a_weight.shape[1])
    stacked = torch.cat(constraints)
    if stacked.shape[0] == 0:
        return _saturated(in_features, spectra[0])
    _, s, vh = torch.linalg.svd(stacked, full_matrices=True)
    count = int((s > _CONSTRAINT_TOL * s[0]).sum())
    if rank is not None:  # an override can only drop constraints, never invent them
        count = min(count, max(0, in_features - rank))
    if count == 0:
        return _saturated(in_features, spectra[0])
    return SpanBasis(
        basis=vh[count:].to(torch.float32).contiguous(),
        rank=in_features - count,
        in_features=in_features,
        singular_values=spectra[0],
        gap_decades=min(gaps),
        saturated=False,
        complement=vh[:count].to(torch.float32).contiguous(),
    )


def _read(adapter: Adapter, min_gap: float):
    """Returns (rows read, constraint rows W A, B gradient's spectrum, its gap)."""
    if adapter.b_gradient is None:
        raise ValueError("a first-round adapter has a B-factor gradient")
    gradient = adapter.b_gradient.detach().double().cpu()
    gradient = gradient / gradient.norm().clamp_min(1e-300)
    _, s, vh = torch.linalg.svd(gradient, full_matrices=True)
    rows, gap = estimate_rank(s, min_gap=min_gap)
    return rows, vh[rows:] @ adapter.a_weight.double().cpu(), s, gap


def _saturated(in_features: int, spectrum: torch.Tensor) -> SpanBasis:
    return SpanBasis(
        basis=torch.eye(in_features),
        rank=in_features,
        in_features=in_features,
        singular_values=spectrum,
        gap_decades=0.0,
        saturated=True,
        complement=torch.zeros(0, in_features),
    )
