"""The span of a linear layer's weight gradient, and how far candidate rows lie from it.

For a linear layer ``Y = X W^T`` the weight gradient ``dL/dW = (dL/dY)^T X`` has every row in the
span of the input rows X. An orthonormal basis of that span, taken from the gradient's right
singular vectors, is therefore a membership oracle: a candidate input row that the client really
fed the layer has a (numerically) zero residual against it, a wrong one almost surely does not.

Nothing here is specific to a role or a depth: any exposed linear layer (attention projections,
MLP projections, LoRA factors) gives a basis. Several gradients with the same input (q, k and v)
are stacked, which matters where one of them is blind to some rows (a causal model's first
query attends to one key only, so its query gradient is exactly zero).

The rank is read from the spectrum: singular values of a true gradient drop by several decades
exactly at the number of distinct input rows, so the largest log-gap finds it without a
hand-tuned tolerance. An update rounded coarser than float32 (a bfloat16 or float16 client, an
int8-quantised update) has a noise bulk instead of that drop, at a level its grid predicts
(:mod:`gradleak.attacks.rounding`): the rank is then the number of singular values above it.

A float32 gradient can lack the drop too: where some rows reach the layer with tiny gradients
(the last block of a shallow model sees most positions only through the last token's attention),
the signal fades smoothly into float32's own noise bulk. That bulk is a flat tail near float32's
resolution; the rank is where the spectrum rises clear of the tail's trend
(:func:`rank_above_bulk`), so a batch with fewer rows than the width is never read as saturated.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from gradleak.attacks.rounding import rounding_floor
from gradleak.models.gemm import linear

_Decomposition = tuple[torch.Tensor, torch.Tensor, torch.Tensor]

#: A spectrum whose largest drop is smaller than this (in decades) has no usable gap.
MIN_GAP_DECADES = 1.0
_TINY = 1e-300
#: How far (a factor either way) a rounding floor's estimate may be from the bulk's true top.
FLOOR_UNCERTAINTY = 3.0
#: Relative level (to the largest singular value) below which a float32 gradient's spectrum may be
#: its rounding bulk: ~80 float32 epsilons, well above the bulk's measured top (~0.3 epsilon).
FLOAT32_BULK_CEILING = 1e-5
#: How far (decades) a singular value must stand above the bulk's trend to count as signal.
BULK_MARGIN_DECADES = 0.5
#: Fewest values a tail needs to be read as a bulk (its trend is fitted on the lower half).
MIN_BULK = 16
#: Complement directions a bounded residual reads first: a wrong candidate's row is spread over
#: the whole complement, so these alone put it far above any test's threshold.
SKETCH_DIRECTIONS = 32
#: Relative margin kept between a sketch's lower bound and the level it rejects at, far above the
#: float32 rounding by which the two products' sums of the same squares can differ.
SKETCH_SLACK = 1e-3


@dataclass(frozen=True)
class SpanBasis:
    """An orthonormal basis of the input-side span of one or more weight gradients.

    Attributes:
        basis: (rank, in_features) orthonormal rows, float32 for fast scans.
        rank: the estimated number of distinct input rows.
        in_features: dimension of the input rows.
        singular_values: the stacked gradient's singular values, descending (float64).
        gap_decades: log10 drop of the singular values at ``rank``; 0 when there is no gap.
        saturated: the span fills (almost) the whole input space, so membership certifies nothing.
        complement: (in_features - rank, in_features) orthonormal rows spanning the orthogonal
            complement; residuals are then one product with it when that is cheaper.
        rounding_floor: the spectral norm, relative to ``singular_values[0]``, that the values'
            rounding adds (None for float32 or finer values): true rows sit about this far off.
    """

    basis: torch.Tensor
    rank: int
    in_features: int
    singular_values: torch.Tensor
    gap_decades: float
    saturated: bool
    complement: torch.Tensor | None = None
    rounding_floor: float | None = None

    @property
    def noise_floor(self) -> float:
        """Returns ``s[rank] / s[rank-1]``: how far float noise can tilt a true row off the span."""
        if self.rank >= len(self.singular_values):
            return 0.0
        s = self.singular_values
        return float(s[self.rank] / max(float(s[self.rank - 1]), _TINY))

    def truncated(self, rank: int) -> SpanBasis:
        """Returns this basis cut to its ``rank`` strongest directions (the rest join the
        complement)."""
        rank = max(0, min(rank, self.rank))
        complement = (
            None if self.complement is None else torch.cat([self.basis[rank:], self.complement])
        )
        return SpanBasis(
            basis=self.basis[:rank].contiguous(),
            rank=rank,
            in_features=self.in_features,
            singular_values=self.singular_values,
            gap_decades=_gap_at(self.singular_values, rank),
            saturated=self.saturated,
            complement=complement,
            rounding_floor=self.rounding_floor,
        )

    def residuals(
        self, rows: torch.Tensor, *, chunk_size: int = 8192, below: float | None = None
    ) -> torch.Tensor:
        """Returns each row's relative distance to the span, ``|v - P v| / |v|``, in [0, 1].

        The residual is never formed as ``1 - |P v|^2``, whose cancellation would hide residuals
        below ~3e-4 in float32: it is either the projection onto the complement (one product
        with ``in - rank`` rows) or ``v - P v`` (two products with ``rank`` rows), whichever is
        cheaper, so a scan costs at most twice a bare product with the basis.

        ``below``, where given, is the level a caller tests against: a row that a few complement
        directions already put above it gets that lower bound of its residual instead (still at
        least ``below``), so that screening many candidates costs a fraction of a full product.
        """
        shape = rows.shape[:-1]
        flat = rows.reshape(-1, rows.shape[-1])
        out = torch.empty(flat.shape[0], dtype=torch.float32, device=flat.device)
        for start in range(0, flat.shape[0], chunk_size):
            chunk = flat[start : start + chunk_size]
            out[start : start + chunk_size] = (
                self.off_span(chunk).norm(dim=-1)
                if below is None
                else self._bounded_residuals(chunk, below)
            )
        return out.reshape(shape)

    def _bounded_residuals(self, rows: torch.Tensor, below: float) -> torch.Tensor:
        """Returns :meth:`residuals` of ``rows``, or a lower bound of at least ``below`` where
        the first :data:`SKETCH_DIRECTIONS` complement directions alone exceed it."""
        complement = self.complement
        if complement is None or complement.shape[0] < 2 * SKETCH_DIRECTIONS:
            return self.off_span(rows).norm(dim=-1)
        rows = rows.to(torch.float32)
        sketch = complement[:SKETCH_DIRECTIONS].to(device=rows.device)
        norms = rows.norm(dim=-1).clamp_min(1e-30)
        out = linear(rows, sketch).norm(dim=-1) / norms
        # A partial sum of the same squares never exceeds the whole but for float rounding.
        open_rows = torch.nonzero(out < below * (1 + SKETCH_SLACK)).flatten()
        if open_rows.numel():
            out[open_rows] = self.off_span(rows[open_rows]).norm(dim=-1)
        return out

    def off_span(self, rows: torch.Tensor) -> torch.Tensor:
        """Returns the part of each unit-scaled row outside the span (float32).

        Its norm is the row's residual. It is expressed in the complement's coordinates where that
        is the cheaper product, else in the input's own; either way distances between such vectors
        are those of the input space, so they can be compared and combined within one call.
        """
        complement = self.complement
        use_complement = complement is not None and complement.shape[0] < 2 * self.rank
        basis = (complement if use_complement and complement is not None else self.basis).to(
            device=rows.device
        )
        rows = rows.to(torch.float32)
        norms = rows.norm(dim=-1, keepdim=True).clamp_min(1e-30)
        if use_complement:  # scaled after the product: fewer values to divide
            return linear(rows, basis) / norms
        rows = rows / norms
        return rows - linear(linear(rows, basis), basis.T)


def estimate_rank(
    singular_values: torch.Tensor, *, min_gap: float = MIN_GAP_DECADES
) -> tuple[int, float]:
    """Returns (rank, gap in decades) at the largest drop of a descending spectrum.

    Returns the full length and a gap of 0 when no drop reaches ``min_gap`` decades.
    """
    s = singular_values.double().clamp_min(_TINY)
    if len(s) < 2 or float(s[0]) <= _TINY:
        return (0 if float(s[0]) <= _TINY else len(s)), 0.0
    logs = torch.log10(s)
    drops = logs[:-1] - logs[1:]
    index = int(torch.argmax(drops))
    gap = float(drops[index])
    if gap < min_gap:
        return len(s), 0.0
    return index + 1, gap


def drops_at(singular_values: torch.Tensor, rank: int, min_gap: float = MIN_GAP_DECADES) -> bool:
    """Returns whether a descending spectrum drops by at least ``min_gap`` decades right after its
    first ``rank`` values (a reading of that rank, though not necessarily the largest drop)."""
    s = singular_values.double().clamp_min(_TINY)
    if not 0 < rank < len(s):
        return False
    return float(torch.log10(s[rank - 1] / s[rank])) >= min_gap


#: Stacked gradients whose decomposition is kept: a span is read again with another capacity or
#: rank (a LayerNorm without bias, a saturated block) and by peeling, from the same tensors.
_SVD_CACHE_SIZE = 8
_svd_cache: OrderedDict[tuple, tuple[tuple[torch.Tensor, ...], _Decomposition]] = OrderedDict()


def stacked_svd(gradients: Sequence[torch.Tensor], *, unit: bool = True) -> _Decomposition:
    """Returns (U, S, Vh) of the gradients stacked, each scaled to unit norm (``unit``; else all
    by one common norm, keeping their relative weights), in float64.

    The last few are cached by the tensors' memory and version: views sliced again from one
    fused weight hit the cache, and an in-place change to a tensor misses it.
    """
    key = (
        *(
            (g.data_ptr(), g.storage_offset(), tuple(g.shape), g.stride(), g._version, g.device)
            for g in gradients
        ),
        unit,
    )
    hit = _svd_cache.get(key)
    if hit is not None:
        _svd_cache.move_to_end(key)
        return hit[1]
    if unit:
        stacked = torch.cat(
            [g.detach().double() / g.detach().double().norm().clamp_min(_TINY) for g in gradients]
        )
    else:
        stacked = torch.cat([g.detach().double() for g in gradients])
        stacked = stacked / stacked.norm().clamp_min(_TINY)
    u, s, vh = torch.linalg.svd(stacked.cpu(), full_matrices=False)
    # The tensors are kept alive with their entry, so no other tensor can reuse their memory.
    _svd_cache[key] = (tuple(gradients), (u, s, vh))
    while len(_svd_cache) > _SVD_CACHE_SIZE:
        _svd_cache.popitem(last=False)
    return u, s, vh


def span_basis(
    gradients: Sequence[torch.Tensor],
    *,
    rank: int | None = None,
    rank_tol: float | None = None,
    max_rank: int | None = None,
    min_gap: float = MIN_GAP_DECADES,
    capacity: int | None = None,
    element_std: Sequence[torch.Tensor] | None = None,
) -> SpanBasis:
    """Returns the basis of the input-side span of weight gradients laid out (out, in).

    Args:
        gradients: gradients that share one input (e.g. q, k and v of a block); each is scaled
            to unit norm before stacking so a large one cannot drown a small one.
        rank: force this rank (expert override).
        rank_tol: keep singular values above ``rank_tol * s_max`` (expert override; relative,
            unlike the absolute tolerance of the DAGER reference code).
        max_rank: cap the rank (DAGER's ``d - 20``) so the basis never fills the space.
        min_gap: smallest drop, in decades, that counts as the end of the signal.
        capacity: the dimension the input rows can span at all (d - 1 after a LayerNorm without
            bias); drops past it are structure, not signal, and a rank reaching it is saturated.
        element_std: the standard deviation of each value's error, where the caller knows it
            (one tensor per gradient, same shape); the gradients are then stacked with their
            relative weights kept (whitened rows, :mod:`gradleak.attacks.weight_rounding`).

    Where the gradients were rounded coarser than float32, or ``element_std`` is given, the rank
    is read above the rounding's noise floor instead of at the largest log-gap's position.
    """
    if not gradients:
        raise ValueError("span_basis needs at least one gradient")
    in_features = gradients[0].shape[-1]
    u, s, vh = stacked_svd(gradients, unit=element_std is None)
    floor = rounding_floor(gradients, (u, s, vh), element_std=element_std)
    relative_floor = None if floor is None else floor / max(float(s[0]), _TINY)
    if rank is not None:
        chosen, gap = rank, _gap_at(s, rank)
    elif rank_tol is not None:
        chosen = int((s > rank_tol * s[0]).sum())
        gap = _gap_at(s, chosen)
    elif floor is not None and element_std is not None:
        # Known per-entry noise: the weakest true directions sit inside it with no drop to read,
        # and nothing is certified anyway, so every direction that may be signal is kept.
        signal = s[:capacity] if capacity is not None else s
        chosen = int((signal > floor / FLOOR_UNCERTAINTY).sum())
        gap = _gap_at(s, chosen)
    elif floor is not None:
        chosen = rank_above_floor(s[:capacity] if capacity is not None else s, floor)
        gap = _gap_at(s, chosen)
    else:
        signal = s[:capacity] if capacity is not None else s
        chosen, gap = estimate_rank(signal, min_gap=min_gap)
        bulk = rank_above_bulk(signal) if gap == 0.0 else None
        if bulk is not None:
            chosen, gap = bulk, _gap_at(s, bulk)
    limit = min(in_features, u.shape[0], capacity if capacity is not None else in_features)
    saturated = chosen > 0 and (chosen >= limit or (gap == 0.0 and floor is None))
    if max_rank is not None:
        chosen = min(chosen, max_rank)
    complement = vh[chosen:] if vh.shape[0] == in_features else None
    return SpanBasis(
        basis=vh[:chosen].to(torch.float32).contiguous(),
        rank=chosen,
        in_features=in_features,
        singular_values=s,
        gap_decades=gap,
        saturated=saturated,
        complement=complement.to(torch.float32).contiguous() if complement is not None else None,
        rounding_floor=relative_floor,
    )


def rank_above_floor(singular_values: torch.Tensor, floor: float) -> int:
    """Returns the rank of a rounded gradient: its spectrum's largest log-drop between the last
    value surely above ``floor`` and the first surely below it.

    The floor is an estimate (within about 2 times on the updates measured), so values near it
    may be either; the drop where the bulk begins decides.
    """
    s = singular_values.double().clamp_min(_TINY)
    above = int((s > floor * FLOOR_UNCERTAINTY).sum())
    below = int((s > floor / FLOOR_UNCERTAINTY).sum())
    if below >= len(s):
        return len(s)
    start = max(above - 1, 0)
    drops = torch.log10(s[start:below]) - torch.log10(s[start + 1 : below + 1])
    if drops.numel() == 0:
        return above
    return start + 1 + int(torch.argmax(drops))


def rank_above_bulk(singular_values: torch.Tensor) -> int | None:
    """Returns the rank of a float32 gradient whose signal fades into its noise bulk, or None
    where the spectrum has no such bulk (its tail stays far above float32's resolution, as a
    saturated span's does).

    The bulk is the tail below :data:`FLOAT32_BULK_CEILING`; a line fitted (in log10) to its lower
    half is its trend, and the rank is one past the last value standing
    :data:`BULK_MARGIN_DECADES` above that line.
    """
    s = singular_values.double().clamp_min(_TINY)
    logs = torch.log10(s / s[0])
    start = int((logs >= math.log10(FLOAT32_BULK_CEILING)).sum())
    if len(s) - start < MIN_BULK:
        return None
    tail = torch.arange(start + (len(s) - start) // 2, len(s), dtype=torch.float64)
    design = torch.stack([tail, torch.ones_like(tail)], dim=1)
    fit = torch.linalg.lstsq(design, logs[tail.long()][:, None]).solution[:, 0]
    trend = fit[0] * torch.arange(len(s), dtype=torch.float64) + fit[1]
    above = torch.nonzero(logs > trend + BULK_MARGIN_DECADES).flatten()
    if above.numel() == 0:
        return None
    return int(above[-1]) + 1


def _gap_at(s: torch.Tensor, rank: int) -> float:
    if rank <= 0 or rank >= len(s):
        return 0.0
    return math.log10(max(float(s[rank - 1]), _TINY) / max(float(s[rank]), _TINY))
