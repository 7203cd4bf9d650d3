"""Past the rank limit: the few candidate rows whose combinations make up an adapter's gradient.

With at least r distinct input rows, an adapter's A gradient ``s B^T G^T X`` spans only an r-dim
slice of the rows' span, so no candidate can be tested by membership. Each of its r rows is still
a combination of the batch's input rows alone, and those are few (tens to hundreds) beside the
width d: the gradient is a jointly sparse combination of candidate rows, and a greedy pursuit
(simultaneous orthogonal matching pursuit) finds them. Each step adds the candidate that
explains most of what is left; once the true rows are all in, what is left drops to float32
rounding, by several decades at once, and a least-squares fit gives the false picks (near) zero
weight, which prunes them.

For a causal model the candidates of the sequence block grow as a tree: a prefix joins the
candidates when its parent prefix has been picked, so the pursuit reads whole sequences.

Nothing here is a span test: the rows found explain the gradient, but other rows might too. Every
result is best-effort (:data:`~gradleak.attacks.verdict.CauseKind.PURSUIT`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from gradleak.attacks.budget import NO_DEADLINE, Deadline
from gradleak.attacks.span import FLOAT32_BULK_CEILING
from gradleak.attacks.thresholds import largest_gap_split
from gradleak.models.families import LinearLayer
from gradleak.models.probe import LinearInputProbe

#: What is left of the gradient (relative) once every true row is in: float32 rounding.
EXPLAINED = FLOAT32_BULK_CEILING
#: Candidates added per step while much is left (one at a time near the end).
_EARLY_PICKS = 4
_EARLY_LEVEL = 1e-2
#: Without an explaining set of rows, picks made after this much of the target was explained are
#: dropped (measured on random GPT-2 at r = 8: mostly false ones).
UNEXPLAINED_KEEP = 0.1
#: Smallest new part (squared, relative) of a candidate worth scoring by what it adds.
_NEW_FLOOR = 1e-6


@dataclass
class Residual:
    """What the picked rows leave of the target: the target minus its projection onto them.

    Attributes:
        target: (k, d) rows to explain (float64).
        basis: (d, m) orthonormal columns spanning the picked rows.
        left: (k, d) what is left.
    """

    target: torch.Tensor
    basis: torch.Tensor = field(init=False)
    left: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.target = self.target / self.target.norm().clamp_min(1e-300)
        self.basis = torch.zeros(self.target.shape[1], 0, dtype=torch.float64)
        self.left = self.target.clone()

    @property
    def fraction(self) -> float:
        """Returns the norm of what is left, relative to the target's."""
        return float(self.left.norm())

    def scores(self, candidates: torch.Tensor) -> torch.Tensor:
        """Returns how much of what is left each unit candidate row explains."""
        return (candidates @ self.left.T.to(candidates.dtype)).norm(dim=1).double()

    def gains(self, candidates: torch.Tensor) -> torch.Tensor:
        """Returns how much of what is left each unit candidate would explain once the part the
        picked rows already span is taken out of it (orthogonal least squares): a candidate
        nearly parallel to a picked row scores by what it adds, not by what they share."""
        new = 1 - (candidates.double() @ self.basis).square().sum(dim=1)
        return self.scores(candidates) / new.clamp_min(_NEW_FLOOR).sqrt()

    def add(self, row: torch.Tensor) -> None:
        """Takes ``row``'s direction out of what is left."""
        row = row.double()
        row = row - self.basis @ (self.basis.T @ row)
        norm = row.norm()
        if float(norm) <= 1e-12:
            return
        row = row / norm
        self.basis = torch.cat([self.basis, row[:, None]], dim=1)
        self.left = self.left - (self.left @ row)[:, None] * row[None, :]


def weights(target: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Returns each row's share in the least-squares fit of ``target`` (k, d) by ``rows`` (m, d):
    the norm of its coefficients over the k target rows, for unit rows."""
    unit = rows.double() / rows.double().norm(dim=1, keepdim=True).clamp_min(1e-300)
    goal = target.double() / target.double().norm().clamp_min(1e-300)
    coefficients = torch.linalg.lstsq(unit.T, goal.T).solution
    return coefficients.norm(dim=1)


def kept_by_weight(shares: torch.Tensor) -> torch.Tensor:
    """Returns which rows carry weight: those above the largest log-gap of the shares, when that
    gap is a clear drop (the pursuit explained the target), else all."""
    split = largest_gap_split(shares.float().clamp_min(1e-30))
    if split is None:
        return torch.ones(len(shares), dtype=torch.bool)
    return shares > split.threshold()


@dataclass(frozen=True)
class BagResult:
    """The tokens a pursuit over single-token rows found.

    Attributes:
        tokens: token ids, strongest share first.
        shares: each one's share of the gradient.
        explained: whether what was left fell to rounding (the rows explain the gradient).
    """

    tokens: torch.Tensor
    shares: torch.Tensor
    explained: bool


def token_bag(
    target: torch.Tensor,
    dictionary: torch.Tensor,
    ids: torch.Tensor,
    *,
    max_rows: int,
    deadline: Deadline = NO_DEADLINE,
) -> BagResult:
    """Returns the tokens whose rows (``dictionary``, one per id) make up ``target``.

    The target is whitened first (its row space, every direction weighted alike): the support is
    the same, and a gradient dominated by one direction would otherwise hide the rows that make
    up the others. Where the picks never explain the target, only those made while more than
    :data:`UNEXPLAINED_KEEP` of it was left are kept: the later ones fit what is left of a target
    whose true rows are not all among the candidates, mostly with false rows.

    Args:
        target: (k, d) gradient rows, each a combination of the batch's token rows.
        dictionary: (V, d) every candidate token's row.
        ids: (V,) the candidates' token ids.
        max_rows: most rows picked.
        deadline: when it expires, the rows picked so far are returned.
    """
    unit = dictionary.float() / dictionary.float().norm(dim=1, keepdim=True).clamp_min(1e-30)
    residual = Residual(row_space(target))
    picked: list[int] = []
    left_before: list[float] = []
    while len(picked) < max_rows and residual.fraction > EXPLAINED and not deadline.expired():
        scores = residual.scores(unit)
        scores[picked] = -1.0
        count = _EARLY_PICKS if residual.fraction > _EARLY_LEVEL else 1
        for index in torch.topk(scores, min(count, max_rows - len(picked))).indices.tolist():
            left_before.append(residual.fraction)
            picked.append(index)
            residual.add(unit[index])
    explained = residual.fraction <= EXPLAINED
    if not explained:
        picked = [i for i, left in zip(picked, left_before, strict=True) if left > UNEXPLAINED_KEEP]
    if not picked:
        return BagResult(ids[:0], torch.zeros(0), explained)
    shares = weights(residual.target, unit[picked])
    keep = kept_by_weight(shares) if explained else torch.ones(len(picked), dtype=torch.bool)
    order = torch.argsort(shares, descending=True)
    order = order[keep[order]]
    chosen = torch.tensor(picked)[order]
    return BagResult(ids[chosen], shares[order], explained)


def row_space(target: torch.Tensor) -> torch.Tensor:
    """Returns an orthonormal basis (rows) of ``target``'s row space, above float32 rounding."""
    _, s, vh = torch.linalg.svd(target.double().cpu(), full_matrices=False)
    return vh[: max(1, int((s > EXPLAINED * s[0]).sum()))]


@dataclass
class TreeResult:
    """The sequences a tree pursuit found.

    Attributes:
        sequences: token ids of every sequence (maximal kept prefix), strongest first, with the
            weakest share among its rows.
        picked: rows picked in all.
        explained: whether what was left fell to rounding.
    """

    sequences: list[tuple[tuple[int, ...], float]]
    picked: int
    explained: bool


def prefix_tree(
    targets: Sequence[torch.Tensor],
    probe: LinearInputProbe,
    layers: Sequence[LinearLayer],
    *,
    tokens_at: Callable[[int], torch.Tensor | None],
    max_rows: int,
    max_length: int,
    deadline: Deadline = NO_DEADLINE,
) -> TreeResult:
    """Returns the sequences whose rows at ``layers`` make up ``targets`` (one per layer), grown
    as a tree of prefixes: a prefix is a candidate once its parent is picked.

    Every layer sees the same positions, so one prefix is picked for all of them at once, by the
    sum of what it explains in each; deeper layers mix more of the prefix into a row, which tells
    two prefixes ending in one token apart.

    Args:
        targets: (k, d) gradient rows of each layer's adapters.
        probe: computes every layer's input rows for prefixes.
        layers: the layers whose inputs ``targets`` combine, in the same order.
        tokens_at: candidate tokens for a position, or None past the last one.
        max_rows: most rows picked.
        max_length: longest sequence.
        deadline: when it expires, the sequences picked so far are returned.
    """
    residuals = [Residual(t.double().cpu()) for t in targets]
    first = tokens_at(0)
    if first is None or first.numel() == 0:
        return TreeResult([], 0, False)
    rows, _ = probe.start(first[:, None])
    pool = _Pool(len(layers))
    pool.add([(int(t),) for t in first], [rows[layer][:, 0] for layer in layers])
    picked: list[tuple[int, ...]] = []
    picked_rows: list[list[torch.Tensor]] = [[] for _ in layers]

    def left() -> float:
        return max(r.fraction for r in residuals)

    while len(picked) < max_rows and left() > EXPLAINED and pool.size and not deadline.expired():
        count = _EARLY_PICKS if left() > _EARLY_LEVEL else 1
        for prefix, unit_rows in pool.take(residuals, count):
            picked.append(prefix)
            for residual, row, kept in zip(residuals, unit_rows, picked_rows, strict=True):
                residual.add(row)
                kept.append(row)
            _grow(pool, probe, layers, prefix, tokens_at, max_length)
    explained = left() <= EXPLAINED
    if not picked:
        return TreeResult([], 0, explained)
    shares = torch.stack(
        [weights(r.target, torch.stack(k)) for r, k in zip(residuals, picked_rows, strict=True)]
    ).amax(dim=0)
    keep = kept_by_weight(shares) if explained else torch.ones(len(picked), dtype=torch.bool)
    share_of = {p: float(s) for p, s, k in zip(picked, shares, keep, strict=True) if bool(k)}
    return TreeResult(_maximal(share_of), len(picked), explained)


class _Pool:
    """Candidate prefixes not yet picked, with their unit rows at each layer."""

    def __init__(self, layers: int) -> None:
        self.prefixes: list[tuple[int, ...]] = []
        self.rows: list[torch.Tensor] = [torch.zeros(0, 0) for _ in range(layers)]

    @property
    def size(self) -> int:
        return len(self.prefixes)

    def add(self, prefixes: Sequence[tuple[int, ...]], rows: Sequence[torch.Tensor]) -> None:
        self.prefixes.extend(prefixes)
        for i, layer_rows in enumerate(rows):
            layer_rows = layer_rows.float().cpu()
            unit = layer_rows / layer_rows.norm(dim=1, keepdim=True).clamp_min(1e-30)
            self.rows[i] = unit if self.rows[i].numel() == 0 else torch.cat([self.rows[i], unit])

    def take(self, residuals: Sequence[Residual], count: int):
        scores = sum(r.scores(rows).square() for r, rows in zip(residuals, self.rows, strict=True))
        chosen = torch.topk(scores, min(count, self.size)).indices.tolist()
        taken = [(self.prefixes[i], [rows[i] for rows in self.rows]) for i in chosen]
        keep = torch.ones(self.size, dtype=torch.bool)
        keep[chosen] = False
        self.prefixes = [p for p, k in zip(self.prefixes, keep.tolist(), strict=True) if k]
        self.rows = [rows[keep] for rows in self.rows]
        return taken


def _grow(pool, probe, layers, prefix, tokens_at, max_length) -> None:
    if len(prefix) >= max_length:
        return
    tokens = tokens_at(len(prefix))
    if tokens is None or tokens.numel() == 0:
        return
    _, state = probe.start(torch.tensor([prefix]))
    rows = probe.branch(state, tokens)
    pool.add([(*prefix, int(t)) for t in tokens], [rows[layer][0] for layer in layers])


def _maximal(share_of: dict[tuple[int, ...], float]) -> list[tuple[tuple[int, ...], float]]:
    """Returns the kept prefixes whose every ancestor is kept and that no kept prefix extends,
    each with the weakest share along it, strongest first."""
    whole = {p for p in share_of if all(p[:n] in share_of for n in range(1, len(p)))}
    extended = {p[:-1] for p in whole}
    found = [(p, min(share_of[p[:n]] for n in range(1, len(p) + 1))) for p in whole]
    found = [(p, s) for p, s in found if p not in extended]
    found.sort(key=lambda item: (-item[1], item[0]))
    return [(p, s) for p, s in found if math.isfinite(s)]
