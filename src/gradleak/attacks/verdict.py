"""Verdicts: whether a recovered sequence is certified, and if not, why.

A verdict is a value, not a sentence. An :class:`Assurance` holds the causes that keep a
sequence from being certified; it is certified exactly when it holds none. The sentences a user
reads are rendered from the causes in one place (:func:`describe`), so no string decides a
certificate and no certificate can outlive the cause that should have denied it.

Some causes describe the batch rather than a sequence (sequences may be missing, nothing passed
a test): they are listed on the :class:`~gradleak.attacks.base.Reconstruction`, never on a
sequence, and they deny nothing a sequence proved.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class CauseKind(str, Enum):
    """What can keep a result from being certified."""

    SATURATED = "saturated"
    """A gradient span fills the room its rows can occupy (more distinct rows than its width)."""
    DRIFT = "drift"
    """A weight delta over several local steps: later blocks' inputs moved between steps."""
    PRECISION = "precision"
    """The update's arithmetic (dtype, rounding of the weights) hides the per-step signal."""
    ROUNDING = "rounding"
    """The client's weights round its delta (a Flower client's one step, or a float32 FedAvg
    client's several) at a level that blurs the gradient's span."""
    LOSSY_UPDATE = "lossy_update"
    """The update's values were rounded coarser than float32 (a 16-bit client, quantisation)."""
    NOISE = "noise"
    """A recorded defence added noise: no residual is zero, candidates are only ranked."""
    NO_SPECTRAL_GAP = "no_spectral_gap"
    """A block's residuals show no gap between true and false candidates."""
    FRONTIER_CUT = "frontier_cut"
    """The search kept only its best candidates at some step."""
    TIME_BUDGET = "time_budget"
    """The attack's time budget ran out; the best current sequences were returned."""
    TOKEN_INFERRED = "token_inferred"
    """A token was read another way than a span test (e.g. a next-token target)."""
    TOKEN_UNREAD = "token_unread"
    """A token no shared tensor shows is missing (a next-token target with no head gradient)."""
    MAY_CONTINUE = "may_continue"
    """The span holds rows no recovered sequence explains, and this one is not shown whole."""
    END_UNPROVED = "end_unproved"
    """The last block's query adapter spans the batch's final rows, and no prefix of this
    sequence ends on one of them: it is not whole as found."""
    ABOVE_THRESHOLD = "above_threshold"
    """Some position's residual did not pass the certifying span test."""
    RANKED = "ranked"
    """Grown by a ranking search, which orders candidates but proves none."""
    PROJECTED = "projected"
    """First LoRA round: only each row's image through the adapter's A factor (r < d) was tested."""
    PURSUIT = "pursuit"
    """Past an adapter's rank limit: rows found by a sparse pursuit, which explains the gradient
    but proves no row, and cannot order a bag of tokens without positions."""
    PEELED_REST = "peeled_rest"
    """Found on what best-effort peels left, whose spans hold only if every peel was exact."""
    DROPOUT = "dropout"
    """The client trained with dropout on: tokens were proved under fitted masks, but linked into
    sentences by a ranking."""
    OPTIMIZATION = "optimization"
    """Decoded from an optimisation attack, which has no span test."""
    SUBSPACE = "subspace"
    """Grown by the continuous subspace search, ranking tokens by their distance to the spans."""
    MISSING_SEQUENCES = "missing_sequences"
    """Batch: the search ended before its sentences accounted for every row; some may be missing."""
    SURPLUS = "surplus"
    """Batch: the search returned more sequences than the batch holds; the least sure were cut."""
    NO_TOKENS = "no_tokens"
    """Batch: no token passed the token-level span test."""
    NO_SEQUENCES = "no_sequences"
    """Batch: tokens passed, but no sequence passed the sequence-level span test."""
    UNSUPPORTED = "unsupported"
    """Batch: this search does not apply to the model or update."""

    @property
    def batch_only(self) -> bool:
        """Returns whether the cause describes the batch and never a single sequence."""
        return self in _BATCH_ONLY


_BATCH_ONLY = frozenset(
    {
        CauseKind.MISSING_SEQUENCES,
        CauseKind.SURPLUS,
        CauseKind.NO_TOKENS,
        CauseKind.NO_SEQUENCES,
        CauseKind.UNSUPPORTED,
    }
)


@dataclass(frozen=True)
class Cause:
    """One reason a result is best-effort, with the facts its sentence names.

    Attributes:
        kind: what went wrong.
        block: the block concerned, where one is.
        count: a count the sentence names (local steps, a span's width, tokens, sentences).
        detail: a short free fact (a defence's name, a dtype, roles, the blocks of a ranking).
    """

    kind: CauseKind
    block: int | None = None
    count: int | None = None
    detail: str | None = None

    def message(self) -> str:
        """Returns the cause as the sentence a user reads."""
        return describe(self)

    def to_dict(self) -> dict[str, Any]:
        """Returns the cause as JSON values, its sentence included."""
        out: dict[str, Any] = {"cause": self.kind.value}
        for name in ("block", "count", "detail"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        out["message"] = self.message()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Cause:
        """Returns the cause :meth:`to_dict` wrote (its sentence is rendered anew)."""
        return cls(
            CauseKind(data["cause"]),
            block=data.get("block"),
            count=data.get("count"),
            detail=data.get("detail"),
        )


@dataclass(frozen=True)
class Assurance:
    """The verdict on one recovered sequence: certified, or best-effort with its causes."""

    causes: tuple[Cause, ...] = field(default=())

    def __post_init__(self) -> None:
        batch = [c.kind.value for c in self.causes if c.kind.batch_only]
        if batch:
            raise ValueError(f"causes {batch} describe a batch, not a sequence")
        object.__setattr__(self, "causes", tuple(dict.fromkeys(self.causes)))

    @property
    def certified(self) -> bool:
        """Returns whether every token was proved: true exactly when no cause stands against it."""
        return not self.causes

    def with_causes(self, causes: Iterable[Cause]) -> Assurance:
        """Returns this verdict with ``causes`` added."""
        return Assurance((*self.causes, *causes))

    def message(self) -> str | None:
        """Returns the causes as sentences, or None when certified."""
        return render(self.causes)

    def to_dict(self) -> dict[str, Any]:
        """Returns the verdict as JSON values."""
        return {"certified": self.certified, "causes": [c.to_dict() for c in self.causes]}


#: The verdict of a sequence whose every token passed its span test.
CERTIFIED = Assurance()


def best_effort(*causes: Cause) -> Assurance:
    """Returns the verdict of a sequence kept from a certificate by ``causes`` (at least one)."""
    if not causes:
        raise ValueError("a best-effort verdict needs at least one cause")
    return Assurance(causes)


def render(causes: Iterable[Cause]) -> str | None:
    """Returns the sentences of ``causes`` (each once, in order), or None when there are none."""
    sentences = list(dict.fromkeys(c.message() for c in causes))
    return " ".join(sentences) if sentences else None


def describe(cause: Cause) -> str:
    """Returns the one sentence a user reads for ``cause``."""
    return _SENTENCES[cause.kind](cause)


def _block(cause: Cause) -> str:
    return f"block {cause.block}'s" if cause.block is not None else "a"


def _ranking(detail: str | None) -> str:
    """Returns what ranked a search's candidates: ``detail`` names it, or (a bare block list, as
    older records hold) the MLP down-projections of those blocks."""
    if detail and not detail.replace(",", "").replace(" ", "").isdigit():
        return detail
    return f"the MLP down-projection span of block(s) {detail or '0'}"


def _steps(cause: Cause) -> str:
    return f"{cause.count} local steps" if cause.count else "an unknown number of local steps"


_SENTENCES = {
    CauseKind.SATURATED: lambda c: (
        f"{_block(c)}{f' {c.detail}' if c.detail else ''} gradient span is saturated (no gap in "
        f"its spectrum below dimension {c.count or 'its width'}): the batch has more distinct rows "
        "than the layer's input size, so no span test can certify; results are best-effort."
    ),
    CauseKind.DRIFT: lambda c: (
        f"the update is a weight delta over {_steps(c)}: the inputs of every block but the "
        "first drift as the weights change between steps, so the span tests are approximate "
        "and results are best-effort (DAGER's FedAvg argument assumes a small learning rate)."
    ),
    CauseKind.PRECISION: lambda c: (
        "the weight delta's spectrum shows no gap: over several local steps in "
        f"{c.detail or 'float32'} the small per-step changes are lost to rounding of the "
        "weights; let the client train in float64 (as the DAGER paper does) or attack a "
        "one-step update. Results are best-effort."
    ),
    CauseKind.ROUNDING: lambda c: (
        f"the client's weights round its delta at {c.detail or 'a level'}, which blurs the "
        "gradient's span at this learning rate: true rows sit near it, not in it, so results "
        "are best-effort; the same batch may leak exactly from a larger learning rate or from "
        "float64 clients."
    ),
    CauseKind.LOSSY_UPDATE: lambda c: (
        f"the update was rounded ({c.detail or 'coarser than float32'}), so true rows sit at the "
        "rounding level off the span instead of at zero: the span test is approximate and "
        "results are best-effort."
    ),
    CauseKind.NOISE: lambda c: (
        f"the update carries Gaussian noise ({c.detail or 'the noise search was asked for'}), so "
        "no span test can certify: every sequence is a best-effort ranking of candidates."
    ),
    CauseKind.NO_SPECTRAL_GAP: lambda c: (
        f"{_block(c)} residuals show no gap between true and false candidates (a span too full, "
        "or a noised update), so nothing can be certified; results are best-effort rankings."
    ),
    CauseKind.FRONTIER_CUT: lambda c: (
        "the search kept only its best candidates (max_frontier reached); results are best-effort."
    ),
    CauseKind.TIME_BUDGET: lambda c: (
        f"the attack reached its time budget{f' of {c.count} s' if c.count else ''}; the best "
        "current sequences are returned best-effort."
    ),
    CauseKind.TOKEN_INFERRED: lambda c: (
        f"{c.count or 'some'} token(s) were read {c.detail or 'another way'}, not proved by a span "
        "test; the sequence is best-effort."
    ),
    CauseKind.TOKEN_UNREAD: lambda c: (
        f"the sequence lacks its last {c.count or 1} token(s): "
        f"{c.detail or 'no shared tensor shows them'}; the rest was proved, but the sequence "
        "is incomplete."
    ),
    CauseKind.MAY_CONTINUE: lambda c: (
        f"the sequence block's span holds {c.count or 'some'} row(s) that no recovered sequence "
        "explains, and this sequence's own gradient does not fit the update exactly: it may "
        "continue past where it was found."
    ),
    CauseKind.END_UNPROVED: lambda _: (
        "the last block's query adapter spans the batch's final rows, and neither this sequence "
        "nor any of its prefixes ends on one of them: it is not whole as found; best-effort."
    ),
    CauseKind.ABOVE_THRESHOLD: lambda c: (
        f"a position's residual did not pass {_block(c)} span test; the sequence is best-effort."
    ),
    CauseKind.RANKED: lambda c: (
        "the sequence was grown by gradleak's ranked search: each step keeps the candidates that "
        f"{_ranking(c.detail)} ranks far above the rest, which proves none of them."
    ),
    CauseKind.PROJECTED: lambda c: (
        "first LoRA round (the B factor was still zero): rows were tested through the known A "
        f"factor, so only their {c.count or 'r'}-dimensional image was shown to lie in the span, "
        "not the rows themselves; the sequence is best-effort."
    ),
    CauseKind.PURSUIT: lambda c: (
        "the batch has at least as many distinct rows as the LoRA adapters' rank, so no span test "
        "applies: a sparse pursuit found rows that explain the adapters' gradient, which proves "
        f"none of them{f' ({c.detail})' if c.detail else ''}."
    ),
    CauseKind.PEELED_REST: lambda c: (
        "the sequence was found on what was left after peeling best-effort sentences off the update"
        f"{f' ({c.count} peeled)' if c.count else ''}; its span tests hold only as far as every "
        "peel was exact."
    ),
    CauseKind.OPTIMIZATION: lambda c: (
        "optimisation attacks decode continuous embeddings to their nearest tokens and have no "
        "span test, so their results are never certified."
    ),
    CauseKind.SUBSPACE: lambda c: (
        "the sequence was grown by the continuous subspace search: each token is the candidate "
        "closest to the spans of blocks 0.."
        f"{c.block if c.block is not None else 'L'} beside a null sample of wrong tokens, which "
        "ranks tokens but proves none (its confidence says how far they stood out)."
    ),
    CauseKind.MISSING_SEQUENCES: lambda c: (
        f"{f'{c.count} sequence(s)' if c.count else 'sequences'} may be missing: "
        f"{c.detail or 'the search ended before its sentences explained every row of the span'}."
    ),
    CauseKind.SURPLUS: lambda c: (
        f"the search returned {c.count} more sequence(s) than the batch holds"
        f"{f' ({c.detail})' if c.detail else ''}; the least sure were dropped."
    ),
    CauseKind.NO_TOKENS: lambda c: (
        f"no token passed {_block(c)} span test, so nothing can be recovered (the update may be "
        "noised or not a gradient of this model)."
    ),
    CauseKind.NO_SEQUENCES: lambda c: (
        f"tokens passed block 0 but no sequence passed {_block(c)} span test."
    ),
    CauseKind.DROPOUT: lambda c: (
        f"the client computed its update with dropout on ({c.detail or 'rate unknown'}): each "
        "token was proved at its position by a dropout mask that fits its row into block 0's "
        "span, but the tokens were linked into sentences by ranking block 0's attention-output "
        "residuals (its attention weights were dropped too), which proves no link; the sequence "
        "is best-effort."
    ),
    CauseKind.UNSUPPORTED: lambda c: f"{c.detail or 'this search does not apply here'}.",
}
