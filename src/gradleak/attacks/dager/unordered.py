"""Where block 0's rows carry no position: every position may hold any token of the bag.

Encoders with relative positions only (DeBERTa-v2/v3, T5's encoder) feed block 0 rows that are
functions of the token alone, so block 0's scan yields the batch's bag of tokens and nothing of
their order. The encoder search (:func:`gradleak.attacks.dager.encoder.search_sentences`) then
fills every position from the whole bag and block 1's span orders the tokens: its rows depend
on the whole sentence and on the offsets between its tokens, so a sentence passes only in its
true order, and every one of its rows must pass for it to be kept.

Lengths come from the count of rows: block 1's rank is the batch's total length, so the last
sentence left has exactly the rows left, and with several sentences left the lengths near
their average are tried first.
"""

from __future__ import annotations

import torch

#: The shortest sentence: [CLS] (or the first token), one token, [SEP].
_SHORTEST = 3


def bag_sets(bag: torch.Tensor, rows_left: int, max_length: int) -> tuple[torch.Tensor, ...]:
    """Returns per-position candidate sets for sentences of up to ``rows_left`` tokens: the bag
    at every position."""
    return (bag,) * max(0, min(max_length, rows_left))


def likely_lengths(rows_left: int, sentences_left: int | None, max_length: int) -> tuple[int, ...]:
    """Returns the lengths a next sentence can have, the likeliest first.

    One sentence left holds every row left. With ``sentences_left`` known, each of the others
    needs at least :data:`_SHORTEST` rows, and lengths near the average come first; unknown, every
    length up to the rows left is possible, shortest first.
    """
    if sentences_left == 1:
        return (rows_left,) if _SHORTEST <= rows_left <= max_length else ()
    others = _SHORTEST * (sentences_left - 1) if sentences_left else 0
    longest = min(max_length, rows_left - others)
    lengths = range(_SHORTEST, longest + 1)
    if not sentences_left:
        return tuple(lengths)
    mean = rows_left / sentences_left
    return tuple(sorted(lengths, key=lambda n: (abs(n - mean), n)))
