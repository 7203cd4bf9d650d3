"""Scores of one batch: where the ground truth meets the reconstructions.

Per batch, each ROUGE value is the **mean over the references** of the sentence-level F-measure
of the reconstruction matched to it (0 for a reference left unmatched). The papers' code reports
``load_metric('rouge')`` on the batch, i.e. the ``BootstrapAggregator`` *mid*: the median of 1000
bootstrap means of the same sentence-level F-measures, which is random unless numpy is seeded and
approximately this mean. We report the plain mean, which is deterministic.

Special tokens (``<s>``, ``[CLS]``, ``<|endoftext|>``, ...) are stripped from both sides before
matching and scoring, because tokens that always match inflate scores. The papers kept them
(``keep_special_tokens=True`` reproduces that).
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from importlib import resources

from gradleak.errors import GradleakError
from gradleak.scoring._tokens import Tokens, drop_ids, token_lists
from gradleak.scoring.matching import assign
from gradleak.scoring.rouge import rouge_scores

__all__ = [
    "METRIC_NAMES",
    "BatchScore",
    "PairScore",
    "default_special_tokens",
    "score_batch",
    "strip_special_tokens",
    "token_accuracy",
]

METRIC_NAMES = ("rouge1", "rouge2", "rougeL", "exact_rate", "token_accuracy")


@dataclass(frozen=True)
class PairScore:
    """The scores of one reference against the reconstruction matched to it.

    Attributes:
        reference_index: Position of the reference in the batch.
        reconstruction_index: Position of the matched reconstruction, or None when unmatched.
        reference: The reference as scored (special tokens stripped unless kept).
        reconstruction: The matched reconstruction as scored; empty when unmatched.
        rouge1: ROUGE-1 F, percent.
        rouge2: ROUGE-2 F, percent.
        rougeL: ROUGE-L F, percent.
        exact: Whether both are equal after whitespace normalisation.
        token_accuracy: Fraction of reference token positions holding the same token.
    """

    reference_index: int
    reconstruction_index: int | None
    reference: str
    reconstruction: str
    rouge1: float
    rouge2: float
    rougeL: float  # noqa: N815
    exact: bool
    token_accuracy: float


@dataclass(frozen=True)
class BatchScore:
    """The scores of one batch: means over its references, plus every matched pair.

    Attributes:
        rouge1: Mean ROUGE-1 F over the references, percent.
        rouge2: Mean ROUGE-2 F, percent.
        rougeL: Mean ROUGE-L F, percent.
        exact_rate: Fraction of references reconstructed exactly (0 to 1).
        token_accuracy: Mean per-reference token accuracy (0 to 1).
        matching: The matching used (``hungarian`` or ``dager``).
        n_references: Number of references.
        n_reconstructions: Number of reconstructions offered.
        pairs: One PairScore per reference, in reference order.
    """

    rouge1: float
    rouge2: float
    rougeL: float  # noqa: N815
    exact_rate: float
    token_accuracy: float
    matching: str
    n_references: int
    n_reconstructions: int
    pairs: tuple[PairScore, ...]

    def metrics(self) -> dict[str, float]:
        """Returns the batch-level metrics by name (the keys of :data:`METRIC_NAMES`)."""
        return {name: getattr(self, name) for name in METRIC_NAMES}


@functools.lru_cache(maxsize=1)
def default_special_tokens() -> tuple[str, ...]:
    """Returns the special-token strings stripped when the caller names none."""
    text = (resources.files("gradleak.scoring") / "special_tokens.txt").read_text("utf-8")
    return tuple(line.strip() for line in text.split("\n") if line.strip())


def strip_special_tokens(text: str, special_tokens: Collection[str]) -> str:
    """Returns ``text`` with every occurrence of the special tokens removed (longest first)."""
    for token in sorted((t for t in special_tokens if t), key=len, reverse=True):
        text = text.replace(token, "")
    return text


def score_batch(
    references: Sequence[str],
    reconstructions: Sequence[str],
    *,
    matching: str = "hungarian",
    use_stemmer: bool = False,
    special_tokens: Collection[str] | None = None,
    special_token_ids: Collection[int] = (),
    keep_special_tokens: bool = False,
    reference_tokens: Tokens | None = None,
    reconstruction_tokens: Tokens | None = None,
) -> BatchScore:
    """Returns the scores of one batch's reconstructions against its reference texts.

    Args:
        references: The batch's true texts.
        reconstructions: The attack's guesses, in any order and number.
        matching: ``hungarian`` (one-to-one on ROUGE-1) or ``dager`` (the paper's decoder matching).
        use_stemmer: Stem before ROUGE (the papers did not).
        special_tokens: Strings stripped from both sides; None uses
            :func:`default_special_tokens`. Pass the tokenizer's ``all_special_tokens``.
        special_token_ids: Ids removed from the token lists below.
        keep_special_tokens: Strip nothing, as the papers' code did.
        reference_tokens: Token ids per reference, for token accuracy and ``dager`` matching;
            whitespace tokens of the texts when None.
        reconstruction_tokens: Token ids per reconstruction, likewise.

    Raises:
        GradleakError: There are no references, or token lists do not match the texts.
        UnknownSpecError: ``matching`` is unknown.
    """
    if not references:
        raise GradleakError("score_batch needs at least one reference text.")
    refs, recs = list(references), list(reconstructions)
    ref_tokens, rec_tokens = reference_tokens, reconstruction_tokens
    if not keep_special_tokens:
        strings = default_special_tokens() if special_tokens is None else special_tokens
        refs = [strip_special_tokens(t, strings) for t in refs]
        recs = [strip_special_tokens(t, strings) for t in recs]
        ref_tokens = drop_ids(ref_tokens, special_token_ids)
        rec_tokens = drop_ids(rec_tokens, special_token_ids)
    assignment = assign(
        refs,
        recs,
        matching=matching,
        use_stemmer=use_stemmer,
        reference_tokens=ref_tokens,
        reconstruction_tokens=rec_tokens,
    )
    ref_split = token_lists(refs, ref_tokens)
    rec_split = token_lists(recs, rec_tokens)
    pairs = []
    for i, j in enumerate(assignment):
        pairs.append(_pair(i, j, refs, recs, ref_split, rec_split, use_stemmer=use_stemmer))
    n = len(pairs)
    return BatchScore(
        rouge1=sum(p.rouge1 for p in pairs) / n,
        rouge2=sum(p.rouge2 for p in pairs) / n,
        rougeL=sum(p.rougeL for p in pairs) / n,
        exact_rate=sum(p.exact for p in pairs) / n,
        token_accuracy=sum(p.token_accuracy for p in pairs) / n,
        matching=matching,
        n_references=n,
        n_reconstructions=len(recs),
        pairs=tuple(pairs),
    )


def _pair(
    i: int,
    j: int | None,
    refs: list[str],
    recs: list[str],
    ref_split: list[list],
    rec_split: list[list],
    *,
    use_stemmer: bool,
) -> PairScore:
    """Returns the PairScore of reference ``i`` against reconstruction ``j`` (None: unmatched)."""
    if j is None:
        return PairScore(i, None, refs[i], "", 0.0, 0.0, 0.0, False, 0.0)
    rouge = rouge_scores(refs[i], recs[j], use_stemmer=use_stemmer)
    exact = " ".join(refs[i].split()) == " ".join(recs[j].split())
    accuracy = token_accuracy(ref_split[i], rec_split[j])
    return PairScore(
        i, j, refs[i], recs[j], rouge.rouge1, rouge.rouge2, rouge.rougeL, exact, accuracy
    )


def token_accuracy(reference: Sequence[int | str], reconstruction: Sequence[int | str]) -> float:
    """Returns the fraction of reference positions where the reconstruction has the same token.

    An empty reference scores 1.0 against an empty reconstruction and 0.0 otherwise.
    """
    if not reference:
        return 0.0 if reconstruction else 1.0
    return sum(a == b for a, b in zip(reference, reconstruction, strict=False)) / len(reference)
