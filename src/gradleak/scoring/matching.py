"""Matching reconstructions to references: which guess is scored against which true text.

- ``hungarian`` (default): a one-to-one assignment maximising the total ROUGE-1 F
  (``scipy.optimize.linear_sum_assignment``), as DAGER does for BERT. With fewer reconstructions
  than references the unmatched references score 0; extra reconstructions are ignored.
- ``dager``: DAGER's decoder matching, faithful to its ``attack.py``. Each reference takes the
  reconstruction with the most position-wise equal tokens. It is **not a bijection**: one
  reconstruction can serve several references, which can only raise the score. As in the
  reference code, all sequences are right-padded to a common length and padding equal to padding
  counts as a match, ties go to the first reconstruction (``argmax``), and only the first
  ``len(references)`` reconstructions are candidates (the code truncates the list first).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from scipy.optimize import linear_sum_assignment

from gradleak.errors import UnknownSpecError
from gradleak.scoring._tokens import Tokens, token_lists
from gradleak.scoring.rouge import rouge_matrix

__all__ = [
    "MATCHINGS",
    "Assignment",
    "Tokens",
    "assign",
    "dager_assignment",
    "hungarian_assignment",
]

# For each reference, the index of its reconstruction, or None when it has none.
Assignment = tuple[int | None, ...]


def hungarian_assignment(
    references: Sequence[str],
    reconstructions: Sequence[str],
    *,
    use_stemmer: bool = False,
    reference_tokens: Tokens | None = None,
    reconstruction_tokens: Tokens | None = None,
) -> Assignment:
    """Returns the one-to-one assignment that maximises the summed ROUGE-1 F.

    Args:
        references: The true texts.
        reconstructions: The guesses, in any order and number.
        use_stemmer: Stem before computing ROUGE-1.
        reference_tokens: Unused; accepted so every matching takes the same arguments.
        reconstruction_tokens: Unused, as ``reference_tokens``.
    """
    if not references or not reconstructions:
        return (None,) * len(references)
    scores = rouge_matrix(references, reconstructions, rouge_type="rouge1", use_stemmer=use_stemmer)
    rows, cols = linear_sum_assignment(scores, maximize=True)
    out: list[int | None] = [None] * len(references)
    for row, col in zip(rows, cols, strict=True):
        out[int(row)] = int(col)
    return tuple(out)


def dager_assignment(
    references: Sequence[str],
    reconstructions: Sequence[str],
    *,
    use_stemmer: bool = False,
    reference_tokens: Tokens | None = None,
    reconstruction_tokens: Tokens | None = None,
) -> Assignment:
    """Returns DAGER's decoder matching: each reference's reconstruction with most equal positions.

    Args:
        references: The true texts.
        reconstructions: The guesses.
        use_stemmer: Unused; accepted so every matching takes the same arguments.
        reference_tokens: Token ids of each reference (the paper compares tokenizer ids);
            whitespace tokens of the texts when None.
        reconstruction_tokens: Token ids of each reconstruction, likewise.
    """
    refs = token_lists(references, reference_tokens)
    # The reference code keeps only the first len(references) reconstructions (ranked best first).
    recs = token_lists(reconstructions, reconstruction_tokens)[: len(refs)]
    if not recs:
        return (None,) * len(refs)
    out: list[int | None] = []
    for ref in refs:
        width = max(len(ref), *(len(rec) for rec in recs))
        padded_ref = _pad(ref, width)
        counts = [
            sum(a == b for a, b in zip(padded_ref, _pad(rec, width), strict=True)) for rec in recs
        ]
        out.append(counts.index(max(counts)))  # first maximum, like torch.argmax
    return tuple(out)


def _pad(tokens: Sequence[int | str], width: int) -> list[int | str | None]:
    """Returns ``tokens`` right-padded with None to ``width``."""
    return [*tokens, *([None] * (width - len(tokens)))]


MATCHINGS: dict[str, Callable[..., Assignment]] = {
    "dager": dager_assignment,
    "hungarian": hungarian_assignment,
}


def assign(
    references: Sequence[str],
    reconstructions: Sequence[str],
    *,
    matching: str = "hungarian",
    use_stemmer: bool = False,
    reference_tokens: Tokens | None = None,
    reconstruction_tokens: Tokens | None = None,
) -> Assignment:
    """Returns the reconstruction index matched to each reference, by the named ``matching``.

    Raises:
        UnknownSpecError: ``matching`` is not registered; the message lists the choices.
    """
    function = MATCHINGS.get(matching)
    if function is None:
        raise UnknownSpecError(f"Unknown matching {matching!r}; choose one of {sorted(MATCHINGS)}.")
    return function(
        references,
        reconstructions,
        use_stemmer=use_stemmer,
        reference_tokens=reference_tokens,
        reconstruction_tokens=reconstruction_tokens,
    )
