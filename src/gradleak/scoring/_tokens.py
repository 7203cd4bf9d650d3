"""Token lists for position-wise comparisons: given token ids, or whitespace tokens of the text."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from gradleak.errors import GradleakError

Tokens = Sequence[Sequence[int | str]]


def token_lists(texts: Sequence[str], tokens: Tokens | None) -> list[list[int | str]]:
    """Returns the given token lists, or the whitespace tokens of ``texts`` when None.

    Raises:
        GradleakError: ``tokens`` does not hold one list per text.
    """
    if tokens is None:
        return [list(text.split()) for text in texts]
    if len(tokens) != len(texts):
        raise GradleakError(f"Got {len(tokens)} token lists for {len(texts)} texts; give one each.")
    return [list(t) for t in tokens]


def drop_ids(tokens: Tokens | None, ids: Collection[int]) -> Tokens | None:
    """Returns the token lists without the given ids (unchanged when either is empty)."""
    if tokens is None or not ids:
        return tokens
    drop = set(ids)
    return [[t for t in seq if t not in drop] for seq in tokens]
