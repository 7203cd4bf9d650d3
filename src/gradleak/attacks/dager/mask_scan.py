"""Block 0's token scan under dropout masks, and the accounting of its rows.

Each position's candidates are shortlisted by their clean residual (a masked true row keeps most
of its clean row, so it ranks near the top), their masks are fitted
(:func:`~gradleak.attacks.dager.masks.fit_masks`) and each fitted row is tested with the model's
own norm against the span itself. A token passes where its masked row falls to float rounding.

Every masked row is distinct (two rows of one token at one position carry two masks), so block
0's rank counts the batch's rows exactly where the span is not saturated. The scan uses that
count: where fewer rows passed than the rank holds, it looks for the rest, first at positions
that hold fewer rows than a later position does (sentences only end, so such a position lost a
row to a fit the greedy steps could not make), with the robust fit
(:func:`~gradleak.attacks.dager.masks.fit_robustly`), then for second rows of tokens already
proved (two sentences with one token at one position: one token, two masks). Every row added
passes the same test as the others; the count only says where to look.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gradleak.attacks.budget import NO_DEADLINE, Deadline
from gradleak.attacks.dager.masks import (
    PURSUED,
    MaskFit,
    MaskModel,
    MaskSpace,
    fit_masks,
    fit_robustly,
    mask_space,
)
from gradleak.attacks.dager.oracle import SpanOracle
from gradleak.attacks.thresholds import largest_gap_split

#: Consecutive positions where no token passes before the scan ends (a true token whose mask
#: fit stalled leaves a hole, not the end of the batch).
MAX_HOLES = 2
#: Candidates of a short position refitted robustly, nearest the span unmasked first (a missed
#: true row ranked within the first 25 of the whole vocabulary on MiniLM, B = 4; fewer in the
#: embedding bag).
REPAIRED = 24
#: Two rows of one token at one position are told apart when the second stands this far off
#: the first (relative): two independent masks at p = 0.1 differ by about 0.45.
DISTINCT = 0.1


def most_drops(width: int, rate: float) -> int:
    """Returns the most coordinates a mask may drop: six standard deviations above the mean of
    the binomial count (a true row exceeds it with probability under 1e-9)."""
    return int(rate * width + 6 * math.sqrt(width * rate * (1 - rate))) + 1


@dataclass(frozen=True)
class MaskedScan:
    """Rows proved at each position under the mask model.

    Attributes:
        sets: per position, the token of each proved row, surest first (a token held by two
            rows, with two masks, appears twice).
        residuals: their residuals (the masked rows' distances to block 0's span).
        keep: their fitted masks (n_p, d).
        threshold: the residual that accepted them (from the largest gap at position 0).
        holes: positions where no token passed but a later one did; each holds its best guess.
        rows_total: the batch's row count (block 0's rank), None where the span is saturated.
    """

    sets: tuple[torch.Tensor, ...]
    residuals: tuple[torch.Tensor, ...]
    keep: tuple[torch.Tensor, ...]
    threshold: float
    holes: tuple[int, ...] = ()
    rows_total: int | None = None

    @property
    def complete(self) -> bool:
        """Returns whether the proved rows are every row the span holds (no hole, none
        missing)."""
        found = sum(len(s) for s in self.sets)
        return not self.holes and self.rows_total is not None and found == self.rows_total


@dataclass
class _Position:
    """One position's candidates, nearest the span unmasked first, and the rows proved there."""

    ranked: torch.Tensor
    tokens: list[int]
    residuals: list[float]
    keep: list[torch.Tensor]
    guessed: bool = False


class _Tester:
    """Fits masks to candidate tokens at a position and tests the masked rows against the span."""

    def __init__(self, oracle: SpanOracle, model: MaskModel) -> None:
        self.oracle, self.model = oracle, model
        self.space: MaskSpace = mask_space(oracle, model.free_directions())
        width = self.space.projector.shape[0]
        self.max_toggles = int(model.site.rate * width * 2) + 16
        self.max_drops = most_drops(width, model.site.rate)

    def greedy(self, tokens: torch.Tensor, position: int) -> tuple[MaskFit, torch.Tensor]:
        unmasked = self.model.unmasked(tokens, position)
        fit = fit_masks(
            self.model.targets(unmasked).cpu(),
            self.space.projector,
            max_toggles=self.max_toggles,
            pursued=PURSUED,
        )
        return fit, self.test(unmasked, fit.keep)

    def robust(
        self, tokens: torch.Tensor, position: int, known: torch.Tensor | None = None
    ) -> tuple[MaskFit, torch.Tensor]:
        unmasked = self.model.unmasked(tokens, position)
        targets = self.model.targets(unmasked).cpu()
        fit = fit_robustly(targets, self.space, max_toggles=self.max_toggles, known=known)
        return fit, self.test(unmasked, fit.keep)

    def test(self, unmasked: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Returns the masked rows' residuals; 1 (the most) for a mask that drops more than
        dropout at rate p plausibly does: enough drops fit any row into the span."""
        rows = self.model.rows(unmasked, keep.to(unmasked.device))
        residuals = self.oracle.basis.residuals(rows).cpu()
        return residuals.masked_fill((~keep.cpu()).sum(1) > self.max_drops, 1.0)

    def rows(self, tokens: list[int], position: int, keep: list[torch.Tensor]) -> torch.Tensor:
        unmasked = self.model.unmasked(torch.tensor(tokens), position)
        return self.model.rows(unmasked, torch.stack(keep).to(unmasked.device)).double().cpu()


def scan_masked_tokens(
    oracle: SpanOracle,
    model: MaskModel,
    vocab: torch.Tensor,
    *,
    max_length: int,
    shortlist: int,
    chunk_size: int,
    deadline: Deadline = NO_DEADLINE,
    bag: torch.Tensor | None = None,
    end_token: int | None = None,
) -> MaskedScan:
    """Returns the rows some mask fits into block 0's span, per position, until
    ``MAX_HOLES + 1`` positions in a row where none does (a lone empty position keeps its best
    guess, listed in ``holes``), completed by the row accounting where the rank counts rows.

    ``bag`` (the embedding gradient's non-zero rows, where the update shows them: every token the
    batch holds) replaces the vocabulary past position 0; position 0 scans the whole vocabulary,
    where the threshold is derived from the largest gap between true and false rows. Second
    rows of a token are sought at position 0 and where ``end_token`` was proved: there they say
    how many sentences start with a token or end at a position (elsewhere, a search over
    every position costs more than the links it decides).
    """
    tester = _Tester(oracle, model)
    widened = tester.space.basis.float()
    positions: list[_Position] = []
    holes: list[int] = []
    threshold = None
    for position in range(max_length):
        if deadline.expired():
            break
        pool = vocab if bag is None or position == 0 else bag
        clean = _clean_residuals(model, widened, pool, position, chunk_size)
        ranked = pool[torch.argsort(clean)[:shortlist]]
        fit, tested = tester.greedy(ranked, position)
        if threshold is None:
            split = largest_gap_split(tested)
            if split is None:
                break
            threshold = split.threshold()
        accepted = torch.nonzero(tested < threshold).flatten()
        guessed = accepted.numel() == 0
        if guessed:
            if holes[-MAX_HOLES:] == list(range(position - MAX_HOLES, position)):
                break
            holes.append(position)
            accepted = torch.argmin(tested).reshape(1)  # the best guess, in case more follow
        order = accepted[torch.argsort(tested[accepted])]
        positions.append(
            _Position(
                ranked,
                ranked[order].tolist(),
                tested[order].tolist(),
                list(fit.keep[order]),
                guessed,
            )
        )
    while holes and holes[-1] == len(positions) - 1:  # guesses past the last proved position
        holes.pop()
        positions.pop()
    rows_total = None if oracle.basis.saturated else oracle.basis.rank
    if threshold is not None and rows_total is not None:
        shaping = [0] + [
            i for i, p in enumerate(positions) if i > 0 and end_token in p.tokens and not p.guessed
        ]
        _account(tester, positions, threshold, rows_total, deadline, shaping)
    return MaskedScan(
        tuple(torch.tensor(p.tokens, dtype=vocab.dtype) for p in positions),
        tuple(torch.tensor(p.residuals) for p in positions),
        tuple(
            torch.stack(p.keep) if p.keep else torch.ones(0, 0, dtype=torch.bool) for p in positions
        ),
        threshold or 0.0,
        tuple(i for i, p in enumerate(positions) if p.guessed),
        rows_total,
    )


def _account(
    tester: _Tester,
    positions: list[_Position],
    threshold: float,
    rows_total: int,
    deadline: Deadline,
    shaping: list[int],
) -> None:
    """Adds the rows the first pass missed, while the proved rows are fewer than ``rows_total``:
    first new tokens at the positions where a row can hide (those holding fewer rows than a
    later position, then those holding fewer than the one before), and second rows of proved
    tokens where a position still holds fewer rows than a later one, then second rows at the
    ``shaping`` positions (where they decide how many sentences start or end)."""

    def proved() -> int:
        return sum(0 if p.guessed else len(p.tokens) for p in positions)

    counts = [0 if p.guessed else len(p.tokens) for p in positions]
    later = [max(counts[i + 1 :], default=0) for i in range(len(counts))]
    short = [i for i, count in enumerate(counts) if count < later[i]]
    drops = [i for i in range(1, len(counts)) if counts[i] < counts[i - 1] and i not in short]
    for index in [*short, *drops]:
        if proved() >= rows_total or deadline.expired():
            return
        _refit(tester, positions[index], index, threshold)
        # A short position that no new token fills holds a token twice.
        while index in short and len(positions[index].tokens) < later[index]:
            if deadline.expired() or not _second_rows(tester, positions[index], index, threshold):
                break
    for index in shaping:
        while proved() < rows_total and not deadline.expired():
            if not _second_rows(tester, positions[index], index, threshold):
                break


def _refit(tester: _Tester, position: _Position, index: int, threshold: float) -> None:
    """Refits the best non-proved candidates of a position robustly; adds those that pass."""
    held = set(position.tokens) if not position.guessed else set()
    chosen = [i for i, t in enumerate(position.ranked.tolist()) if t not in held][:REPAIRED]
    if not chosen:
        return
    tokens = position.ranked[chosen]
    fit, tested = tester.robust(tokens, index)
    passed = torch.nonzero(tested < threshold).flatten()
    if passed.numel() == 0:
        return
    if position.guessed:
        position.tokens, position.residuals, position.keep = [], [], []
        position.guessed = False
    for i in passed[torch.argsort(tested[passed])].tolist():
        position.tokens.append(int(tokens[i]))
        position.residuals.append(float(tested[i]))
        position.keep.append(fit.keep[i])


def _second_rows(tester: _Tester, position: _Position, index: int, threshold: float) -> bool:
    """Looks for one more row of each token proved at a position, with a mask unlike the masks
    its known rows carry; adds those that pass and stand apart. Returns whether any was added."""
    if position.guessed or not position.tokens:
        return False
    tokens = sorted(set(position.tokens))
    known = torch.stack([_kept_by_all(position, token) for token in tokens])
    fit, tested = tester.robust(torch.tensor(tokens), index, known=known)
    added = False
    for i, token in enumerate(tokens):
        if float(tested[i]) >= threshold:
            continue
        masks = [k for t, k in zip(position.tokens, position.keep, strict=True) if t == token]
        rows = tester.rows([token] * (len(masks) + 1), index, [*masks, fit.keep[i]])
        if _apart(rows[-1], rows[:-1]) > DISTINCT:
            position.tokens.append(token)
            position.residuals.append(float(tested[i]))
            position.keep.append(fit.keep[i])
            added = True
    return added


def _kept_by_all(position: _Position, token: int) -> torch.Tensor:
    """Returns the mask that keeps a coordinate only where every known row of ``token`` kept
    it (the fit is steered away from the others' drops)."""
    known = [k for t, k in zip(position.tokens, position.keep, strict=True) if t == token]
    return torch.stack(known).all(0)


def _apart(row: torch.Tensor, others: torch.Tensor) -> float:
    """Returns ``row``'s relative distance to the span of ``others``."""
    q, _ = torch.linalg.qr(others.T)
    outside = row - q @ (q.T @ row)
    return float(outside.norm() / row.norm().clamp_min(1e-300))


def _clean_residuals(
    model: MaskModel, widened: torch.Tensor, vocab: torch.Tensor, position: int, chunk_size: int
) -> torch.Tensor:
    """Returns each token's unmasked target's distance to the widened span (float32: a
    shortlist's ranking, not a test)."""
    out = torch.empty(len(vocab))
    for start in range(0, len(vocab), chunk_size):
        targets = model.unmasked(vocab[start : start + chunk_size], position)
        weight = model.weight()
        if weight is not None:
            targets = targets * weight.to(targets.device, targets.dtype)
        targets = targets / targets.norm(dim=1, keepdim=True).clamp_min(1e-30)
        inside = (targets @ widened.to(targets.device).T).norm(dim=1)
        out[start : start + chunk_size] = (1 - inside.square()).clamp_min(0).sqrt().cpu()
    return out
