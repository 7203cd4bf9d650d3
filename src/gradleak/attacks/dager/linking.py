"""Linking tokens proved under dropout masks into sentences, by block 0's attention-output span.

Block 1's inputs pass through attention-probability and residual dropouts whose masks are not
known, so the sequence block's span test no longer applies. Block 0's attention output (the o
projection's input) is nearer: its rows mix the values of one sentence's masked rows (known once
block 0's masks are fitted) with attention weights of which about p were dropped. A true
sentence's rows therefore stay close to the o projection's span (relative residual ~0.2 at
p = 0.1), a wrong one's move further off; the links are chosen by that residual, a ranking that
proves nothing.

- Decoders grow prefixes: at each position every proved token is given to the prefix that fits it
  best, and a prefix no token fits as well as the others ends (or waits for a repeated token).
- Encoders fill sentences whose lengths the end token's positions give, then swap tokens between
  sentences, position by position, while the summed residual falls.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from gradleak.attacks.dager.masks import MaskedScan, MaskModel
from gradleak.attacks.dager.oracle import SpanOracle

#: A prefix with no token of its own continues with its best one only within this factor of the
#: worst residual that a token's own prefix showed at that position.
_CONTINUE_SLACK = 1.25
#: Encoder sweeps over the positions (each lowers the summed residual or stops the search).
_SWEEPS = 3
#: Most assignments of one position's tokens to sentences compared exhaustively.
_MAX_ASSIGNMENTS = 4096


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
    """Block 0's attention-output residuals of candidate sentences, under the fitted masks."""

    def __init__(self, model: MaskModel, scan: MaskedScan, output: SpanOracle) -> None:
        self.model, self.scan, self.output = model, scan, output

    def keep(self, position: int, token: int) -> torch.Tensor:
        tokens = self.scan.sets[position]
        index = int(torch.nonzero(tokens == token)[0, 0])
        return self.scan.keep[position][index]

    def residuals(self, sentences: Sequence[Sequence[int]]) -> torch.Tensor:
        """Returns (S, L) residuals of right-padded ``sentences``; NaN past each one's end."""
        length = max(len(s) for s in sentences)
        d = self.scan.keep[0].shape[1]
        ids = torch.zeros(len(sentences), length, dtype=torch.long)
        keep = torch.ones(len(sentences), length, d, dtype=torch.bool)
        mask = torch.zeros(len(sentences), length, dtype=torch.long)
        for row, sentence in enumerate(sentences):
            ids[row, : len(sentence)] = torch.tensor(list(sentence))
            mask[row, : len(sentence)] = 1
            for position, token in enumerate(sentence):
                keep[row, position] = self.keep(position, token)
        rows = self.model.attention_outputs(ids, keep, mask)
        out = self.output.basis.residuals(rows).cpu()
        return out.masked_fill(mask == 0, float("nan"))


def link_prefixes(
    model: MaskModel,
    scan: MaskedScan,
    output: SpanOracle,
    *,
    batch_size: int | None,
    rows_total: int | None = None,
) -> Linked:
    """Returns the prefixes grown from the proved tokens of a decoder, one per sentence, with
    heads traded where whole sentences fit better that way and, where ``rows_total`` (block 0's
    rank: every masked row is distinct, so it counts the batch's tokens) is exceeded, the worst
    continuations that reuse another prefix's token cut."""
    rows = _Rows(model, scan, output)
    first = [int(t) for t in scan.sets[0]]
    wanted = max(batch_size or len(first), len(first))
    prefixes: list[list[int]] = [[t] for t in first]
    prefixes += [list(prefixes[i % len(first)]) for i in range(wanted - len(first))]
    alive = list(range(len(prefixes)))
    for position in range(1, len(scan.sets)):
        tokens = [int(t) for t in scan.sets[position]]
        pairs = [prefixes[i] + [t] for i in alive for t in tokens]
        fit = rows.residuals(pairs)[:, position].reshape(len(alive), len(tokens))
        chosen = _assign(fit)
        for slot, index in enumerate(alive):
            pick = chosen[slot]
            if pick is not None:
                prefixes[index].append(tokens[pick])
        alive = [index for slot, index in enumerate(alive) if chosen[slot] is not None]
    for _ in range(_SWEEPS):
        if not _swap_suffixes(rows, prefixes):
            break
    if rows_total is not None:
        _cut_reused_ends(rows, prefixes, rows_total)
    return _linked(rows, prefixes)


def _cut_reused_ends(rows: _Rows, sentences: list[list[int]], rows_total: int) -> None:
    """Cuts, while the sentences hold more tokens than the batch has rows, the last token that
    another sentence also holds at that position and whose row fits worst."""
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
    return Linked(tuple(tuple(s) for s in sentences), residuals)


def _assign(fit: torch.Tensor) -> list[int | None]:
    """Returns, per prefix (row), the token (column) it takes or None where it ends: every token
    first goes to its best free prefix, then a prefix left over takes its best token if that fits
    about as well as the tokens' own prefixes did."""
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
    """Returns the sentences of an encoder's batch, filled from the proved tokens per position."""
    rows = _Rows(model, scan, output)
    lengths = _lengths(scan, batch_size, end_token)
    sentences = [[0] * length for length in lengths]
    for position, tokens in enumerate(scan.sets):
        members = [s for s, length in enumerate(lengths) if length > position]
        for slot, member in enumerate(members):
            sentences[member][position] = int(tokens[slot % len(tokens)])
    for _ in range(_SWEEPS):
        moved = False
        for position, tokens in enumerate(scan.sets):
            lengths = [len(sentence) for sentence in sentences]
            moved |= _best_assignment(rows, sentences, lengths, position, tokens)
        moved |= _swap_suffixes(rows, sentences)
        if not moved:
            break
    return _linked(rows, sentences)


def _lengths(scan: MaskedScan, batch_size: int | None, end_token: int | None) -> list[int]:
    """Returns one length per sentence: a position after each proved end token, the batch's
    sentences that no end token accounts for running to the last proved position."""
    ends = [
        position + 1
        for position, tokens in enumerate(scan.sets)
        if end_token is not None and bool((tokens == end_token).any())
    ]
    count = max(batch_size or 0, len(ends), max(len(t) for t in scan.sets))
    lengths = sorted(ends, reverse=True)[:count]
    lengths += [len(scan.sets)] * (count - len(lengths))
    return sorted(lengths, reverse=True)


def _best_assignment(
    rows: _Rows,
    sentences: list[list[int]],
    lengths: list[int],
    position: int,
    tokens: torch.Tensor,
) -> bool:
    """Gives ``position``'s tokens to its sentences in the way whose rows fit best (every token
    used at least once); returns whether the assignment changed."""
    members = [s for s, length in enumerate(lengths) if length > position]
    if len(members) <= 1 and len(tokens) <= 1:
        return False
    trials = []
    for member in members:
        for token in tokens.tolist():
            trial = list(sentences[member])
            trial[position] = int(token)
            trials.append(trial)
    # Sentences are independent: a choice's total is the sum of its members' own fits.
    fit = torch.nan_to_num(rows.residuals(trials), nan=0.0).sum(1)
    fit = fit.reshape(len(members), len(tokens))
    best = _cheapest_cover(fit)
    changed = False
    for member, pick in zip(members, best, strict=True):
        token = int(tokens[pick])
        changed |= sentences[member][position] != token
        sentences[member][position] = token
    return changed


def _swap_suffixes(rows: _Rows, sentences: list[list[int]]) -> bool:
    """Swaps the tails of two sentences from a position on wherever that lowers their summed
    residual (two sentences that traded tails fit worse token by token in either order, so the
    position-wise moves alone cannot untangle them); returns whether any swap was made."""
    swapped = False
    for first, second in itertools.combinations(range(len(sentences)), 2):
        a, b = sentences[first], sentences[second]
        cuts = range(1, min(len(a), len(b)))
        trials = [a, b]
        for cut in cuts:
            trials += [a[:cut] + b[cut:], b[:cut] + a[cut:]]
        totals = torch.nan_to_num(rows.residuals(trials), nan=0.0).sum(1)
        pair_totals = totals.reshape(-1, 2).sum(1)
        best = int(torch.argmin(pair_totals))
        if best > 0 and float(pair_totals[best]) < float(pair_totals[0]):
            sentences[first], sentences[second] = trials[2 * best], trials[2 * best + 1]
            swapped = True
    return swapped


def _cheapest_cover(fit: torch.Tensor) -> list[int]:
    """Returns, per sentence (row), the token (column) it takes, every token taken at least once,
    at the least summed cost: exhaustively when few choices exist, else greedily."""
    n_rows, n_tokens = fit.shape
    if n_tokens**n_rows <= _MAX_ASSIGNMENTS:
        options = [
            choice
            for choice in itertools.product(range(n_tokens), repeat=n_rows)
            if len(set(choice)) == min(n_tokens, n_rows)
        ]
        totals = [sum(float(fit[r, c]) for r, c in enumerate(choice)) for choice in options]
        return list(options[min(range(len(options)), key=totals.__getitem__)])
    chosen = _assign(fit)
    return [c if c is not None else int(torch.argmin(fit[r])) for r, c in enumerate(chosen)]
