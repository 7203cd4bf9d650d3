"""Past the rank limit: the few candidate rows whose combinations make up an adapter's gradient.

With at least r distinct input rows, an adapter's A gradient ``s B^T G^T X`` spans only an r-dim
slice of the rows' span, so no candidate can be tested by membership. Each of its r rows is still
a combination of the batch's input rows alone, and those are few (tens to hundreds) beside the
width d: the gradient is a jointly sparse combination of candidate rows, and a greedy pursuit
(simultaneous orthogonal matching pursuit) finds them. Each step adds the candidate that
explains most of what is left; once the true rows are all in, what is left drops to float32
rounding, by several decades at once, and a least-squares fit gives the false picks (near) zero
weight, which prunes them.

Block 0 is where this works: its rows are single tokens (with their positions, where those are
learned), each an atom of a fixed dictionary. The same pursuit over the sequence block's rows, with
prefixes joining the candidates as their parents are picked, was tried on SmolLM2 (r = 8, B = 4)
and fails: rows of one token after different prefixes are too alike for greedy picks, even summed
over eight blocks, so it is not used.

Nothing here is a span test: the rows found explain the gradient, but other rows might too. Every
result is best-effort (:data:`~gradleak.attacks.verdict.CauseKind.PURSUIT`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from gradleak.attacks.budget import NO_DEADLINE, Deadline
from gradleak.attacks.span import FLOAT32_BULK_CEILING
from gradleak.attacks.thresholds import largest_gap_split

#: What is left of the gradient (relative) once every true row is in: float32 rounding.
EXPLAINED = FLOAT32_BULK_CEILING
#: Candidates added per step while much is left (one at a time near the end).
_EARLY_PICKS = 4
_EARLY_LEVEL = 1e-2
#: Without an explaining set of rows, picks made after this much of the target was explained are
#: dropped (measured on random GPT-2 at r = 8: mostly false ones).
UNEXPLAINED_KEEP = 0.1


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
