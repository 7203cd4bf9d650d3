"""Linking tokens proved under dropout masks into sentences, by block 0's attention-output span.

Block 1's inputs pass through attention-probability and residual dropouts whose masks are not
known, so the sequence block's span test no longer applies. Block 0's attention output (the o
projection's input) is nearer: its rows mix the values of one sentence's masked rows (known once
block 0's masks are fitted) with attention weights of which about p were dropped. A true
sentence's rows therefore stay close to the o projection's span (relative residual ~0.2 at
p = 0.1), a wrong one's move further off; the links are chosen by that residual, a ranking that
proves nothing.

A sentence is a list of row indices, one per position (a proved row: a token and its mask), so
two sentences with one token at one position keep their own masks.

- Decoders grow prefixes: at each position every proved row is given to the prefix that fits it
  best. Where the scan accounted for every row of the batch (:attr:`MaskedScan.complete`), each
  row goes to exactly one prefix and the prefixes left over end; otherwise a prefix no row fits
  as well as the others ends (or waits for a repeated token).
- Encoders fill sentences whose lengths the row counts give (where every row is accounted for)
  or the end token's positions, then reassign each position's rows to sentences, least summed
  residual first, and swap tails between sentences while the summed residual falls.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment

from gradleak.attacks.dager.mask_scan import MaskedScan
from gradleak.attacks.dager.masks import MaskModel
from gradleak.attacks.dager.oracle import SpanOracle

#: A prefix with no token of its own continues with its best one only within this factor of the
#: worst residual that a token's own prefix showed at that position.
_CONTINUE_SLACK = 1.25
#: What an end token out of place adds to a sentence's summed residual (true rows sit near
#: 0.2 each): an encoder's sentence ends with its end token and holds it nowhere else.
_MISPLACED_END = 1e3
#: Encoder sweeps over the positions (each lowers the summed residual or stops the search).
_SWEEPS = 10


@dataclass(frozen=True)
class Linked:
    """Sentences linked from proved tokens.

    Attributes:
        sentences: token ids per sentence.
        residuals: per sentence, its rows' residuals against block 0's attention-output span.
    """

    sentences: tuple[tuple[int, ...], ...]
    residuals: tuple[tuple[float, ...], ...]


class _Rows:
    """Block 0's attention-output residuals of candidate sentences (row indices per position),
    under the fitted masks."""

    def __init__(
        self,
        model: MaskModel,
        scan: MaskedScan,
        output: SpanOracle,
        end_token: int | None = None,
    ) -> None:
        self.model, self.scan, self.output = model, scan, output
        self.end_token = end_token

    def totals(self, sentences: Sequence[Sequence[int]]) -> torch.Tensor:
        """Returns each sentence's summed residual, plus :data:`_MISPLACED_END` for every
        position where the end token stands other than last (or the last token is not it)."""
        totals = torch.nan_to_num(self.residuals(sentences), nan=0.0).sum(1)
        if self.end_token is None:
            return totals
        misplaced = [
            sum(
                (token == self.end_token) != (p == len(s) - 1)
                for p, token in enumerate(self.tokens(s))
            )
            for s in sentences
        ]
        return totals + _MISPLACED_END * torch.tensor(misplaced, dtype=totals.dtype)

    def tokens(self, sentence: Sequence[int]) -> tuple[int, ...]:
        """Returns the token ids of a sentence given as row indices."""
        return tuple(int(self.scan.sets[p][r]) for p, r in enumerate(sentence))

    def residuals(self, sentences: Sequence[Sequence[int]]) -> torch.Tensor:
        """Returns (S, L) residuals of right-padded ``sentences``; NaN past each one's end."""
        length = max(len(s) for s in sentences)
        d = self.scan.keep[0].shape[1]
        ids = torch.zeros(len(sentences), length, dtype=torch.long)
        keep = torch.ones(len(sentences), length, d, dtype=torch.bool)
        mask = torch.zeros(len(sentences), length, dtype=torch.long)
        for row, sentence in enumerate(sentences):
            mask[row, : len(sentence)] = 1
            for position, index in enumerate(sentence):
                ids[row, position] = self.scan.sets[position][index]
                keep[row, position] = self.scan.keep[position][index]
        rows = self.model.attention_outputs(ids, keep, mask)
        out = self.output.basis.residuals(rows).cpu()
        return out.masked_fill(mask == 0, float("nan"))


def link_prefixes(
    model: MaskModel,
    scan: MaskedScan,
    output: SpanOracle,
    *,
    batch_size: int | None,
) -> Linked:
    """Returns the prefixes grown from the proved rows of a decoder, one per sentence, with tails
    traded where whole sentences fit better that way and, where the scan did not account for
    every row (:attr:`MaskedScan.complete`) and so rows were shared, the worst continuations
    that reuse another prefix's row cut while the prefixes hold more rows than the batch."""
    rows = _Rows(model, scan, output)
    prefixes = _grow(rows, batch_size)
    for _ in range(_SWEEPS):
        if not _swap_suffixes(rows, prefixes):
            break
    if not scan.complete and scan.rows_total is not None:
        _cut_reused_ends(rows, prefixes, scan.rows_total)
    return _linked(rows, prefixes)


def _grow(rows: _Rows, batch_size: int | None) -> list[list[int]]:
    """Returns prefixes grown position by position, each position's rows given to the prefixes
    whose rows at that position then fit best (one prefix per row at position 0, or the batch
    size where the scan did not account for every row)."""
    scan = rows.scan
    first = len(scan.sets[0])
    wanted = first if scan.complete else max(batch_size or first, first)
    prefixes: list[list[int]] = [[i % first] for i in range(wanted)]
    alive = list(range(len(prefixes)))
    for position in range(1, len(scan.sets)):
        count = len(scan.sets[position])
        pairs = [prefixes[i] + [r] for i in alive for r in range(count)]
        fit = rows.residuals(pairs)[:, position].reshape(len(alive), count)
        chosen = _one_each(fit) if scan.complete and count <= len(alive) else _assign(fit)
        for slot, index in enumerate(alive):
            pick = chosen[slot]
            if pick is not None:
                prefixes[index].append(pick)
        alive = [index for slot, index in enumerate(alive) if chosen[slot] is not None]
    return prefixes


def _one_each(fit: torch.Tensor) -> list[int | None]:
    """Returns, per prefix (row of ``fit``), the row of the position (column) it takes, each
    column taken once at the least summed residual; prefixes left without one end."""
    chosen: list[int | None] = [None] * fit.shape[0]
    for prefix, column in zip(*linear_sum_assignment(fit.double().numpy()), strict=True):
        chosen[int(prefix)] = int(column)
    return chosen


def _cut_reused_ends(rows: _Rows, sentences: list[list[int]], rows_total: int) -> None:
    """Cuts, while the sentences hold more rows than the batch has, the last row that another
    sentence also holds at that position and whose fit is worst."""
    while sum(map(len, sentences)) > rows_total:
        fit = rows.residuals(sentences)
        ends = [
            (float(fit[s, len(sentence) - 1]), s)
            for s, sentence in enumerate(sentences)
            if len(sentence) > 1
            and any(
                len(other) >= len(sentence) and other[len(sentence) - 1] == sentence[-1]
                for o, other in enumerate(sentences)
                if o != s
            )
        ]
        if not ends:
            return
        sentences[max(ends)[1]].pop()


def _linked(rows: _Rows, sentences: list[list[int]]) -> Linked:
    fit = rows.residuals(sentences)
    residuals = tuple(
        tuple(float(r) for r in fit[s, : len(sentence)]) for s, sentence in enumerate(sentences)
    )
    return Linked(tuple(rows.tokens(s) for s in sentences), residuals)


def _assign(fit: torch.Tensor) -> list[int | None]:
    """Returns, per prefix (row), the position's row (column) it takes or None where it ends:
    every column first goes to its best free prefix, then a prefix left over takes its best
    column if that fits about as well as the columns' own prefixes did."""
    n_prefixes, n_tokens = fit.shape
    chosen: list[int | None] = [None] * n_prefixes
    claimed: set[int] = set()
    for flat in torch.argsort(fit.flatten()).tolist():
        prefix, token = divmod(flat, n_tokens)
        if chosen[prefix] is None and token not in claimed:
            chosen[prefix] = token
            claimed.add(token)
    taken = [float(fit[p, t]) for p, t in enumerate(chosen) if t is not None]
    bar = max(taken, default=0.0) * _CONTINUE_SLACK
    for prefix in range(n_prefixes):
        if chosen[prefix] is None:
            best = int(torch.argmin(fit[prefix]))
            if float(fit[prefix, best]) <= bar:
                chosen[prefix] = best
    return chosen


def link_sentences(
    model: MaskModel,
    scan: MaskedScan,
    output: SpanOracle,
    *,
    batch_size: int | None,
    end_token: int | None,
) -> Linked:
    """Returns the sentences of an encoder's batch, filled from the proved rows per position."""
    rows = _Rows(model, scan, output, end_token)
    if scan.complete and _counts_fall(scan):
        # Every row is accounted for: grown like a decoder's prefixes (each prefix attending to
        # itself only), which also gives each sentence its length.
        sentences = _grow(rows, batch_size)
    else:
        lengths = _lengths(scan, batch_size, end_token)
        sentences = [[0] * length for length in lengths]
        for position, tokens in enumerate(scan.sets):
            members = [s for s, length in enumerate(lengths) if length > position]
            for slot, member in enumerate(members):
                sentences[member][position] = slot % len(tokens)
    for _ in range(_SWEEPS):
        moved = False
        for position in range(len(scan.sets)):
            moved |= _best_assignment(rows, sentences, position)
        moved |= _swap_suffixes(rows, sentences)
        if not moved:
            break
    return _linked(rows, sentences)


def _counts_fall(scan: MaskedScan) -> bool:
    """Returns whether no position holds more rows than the one before (sentences only end)."""
    counts = [len(s) for s in scan.sets]
    return all(after <= before for before, after in itertools.pairwise(counts))


def _lengths(scan: MaskedScan, batch_size: int | None, end_token: int | None) -> list[int]:
    """Returns one length per sentence: a position after each proved end-token row, the batch's
    sentences that no end token accounts for running to the last proved position."""
    ends = [
        position + 1
        for position, tokens in enumerate(scan.sets)
        for _ in range(int((tokens == end_token).sum()) if end_token is not None else 0)
    ]
    count = max(batch_size or 0, len(ends), max(len(t) for t in scan.sets))
    lengths = sorted(ends, reverse=True)[:count]
    lengths += [len(scan.sets)] * (count - len(lengths))
    return sorted(lengths, reverse=True)


def _best_assignment(rows: _Rows, sentences: list[list[int]], position: int) -> bool:
    """Gives ``position``'s rows to its sentences in the way whose sentences fit best (every row
    used at least once); returns whether the assignment changed."""
    members = [s for s, sentence in enumerate(sentences) if len(sentence) > position]
    count = len(rows.scan.sets[position])
    if len(members) <= 1 and count <= 1:
        return False
    trials = []
    for member in members:
        for index in range(count):
            trial = list(sentences[member])
            trial[position] = index
            trials.append(trial)
    # Sentences are independent: a choice's total is the sum of its members' own fits.
    fit = rows.totals(trials)
    best = _cover(fit.reshape(len(members), count))
    changed = False
    for member, pick in zip(members, best, strict=True):
        changed |= sentences[member][position] != pick
        sentences[member][position] = pick
    return changed


def _swap_suffixes(rows: _Rows, sentences: list[list[int]]) -> bool:
    """Swaps the tails of two sentences from a position on wherever that lowers their summed
    residual (two sentences that traded tails fit worse row by row in either order, so the
    position-wise moves alone cannot untangle them); returns whether any swap was made."""
    swapped = False
    for first, second in itertools.combinations(range(len(sentences)), 2):
        a, b = sentences[first], sentences[second]
        cuts = range(1, min(len(a), len(b)))
        trials = [a, b]
        for cut in cuts:
            trials += [a[:cut] + b[cut:], b[:cut] + a[cut:]]
        totals = rows.totals(trials)
        pair_totals = totals.reshape(-1, 2).sum(1)
        best = int(torch.argmin(pair_totals))
        if best > 0 and float(pair_totals[best]) < float(pair_totals[0]):
            sentences[first], sentences[second] = trials[2 * best], trials[2 * best + 1]
            swapped = True
    return swapped


def _cover(fit: torch.Tensor) -> list[int]:
    """Returns, per sentence (row), the column it takes at the least summed cost, every column
    taken at least once where the columns are no more than the rows (else each row takes its
    own column): an assignment problem, the rows beyond the columns taking their best column."""
    n_rows, n_columns = fit.shape
    cost = fit.double()
    if n_columns < n_rows:
        cost = torch.cat(
            [cost, cost.min(1, keepdim=True).values.expand(n_rows, n_rows - n_columns)], 1
        )
    picked = [0] * n_rows
    for row, column in zip(*linear_sum_assignment(cost.numpy()), strict=True):
        picked[int(row)] = int(column) if column < n_columns else int(torch.argmin(fit[row]))
    return picked
