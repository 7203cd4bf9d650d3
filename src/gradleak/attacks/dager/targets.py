"""The last token of a next-token update, read from the language-model head's gradient.

A client trained on next-token prediction feeds every token but uses the last one only as a
target: nothing depends on the last position's output, so the last token's input row has zero
gradient in every layer and no span test can see it. It does reach the head: with a mean loss
over N targets, the head's weight gradient is

    G = (1/N) sum over positions (softmax - onehot(target)) h^T,

where h is the head's input. Once every other token is known the server computes all of it but
the one-hot terms of the last targets, so the remainder ``R = G - known`` is
``-(1/N) sum_b e_{y_b} h_b^T``: the row of each last target holds minus its sequence's final
hidden state. Each sequence's target is the row best aligned with its own ``-h_b``.

The targets are proved only when the completed batch's own gradient reproduces the head's
gradient row by row to float precision; that needs the whole batch recovered and the loss to be
the mean over the batch's targets. Otherwise each target is kept as inferred, and a
sequence without the head's gradient keeps its proved tokens and says that its last is missing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import torch

from gradleak.attacks.base import Reconstruction, RecoveredSequence
from gradleak.attacks.verdict import Cause, CauseKind
from gradleak.models.grad_scope import only_grad_for
from gradleak.models.loading import PublicModel
from gradleak.models.task_loss import loss_gradient, seq2seq_inputs

#: Relative misfit (of the remainder against the targets' rows) below which the targets are proved.
FIT_TOLERANCE = 1e-3
#: How far from one a sequence's weight in a row may be for that row to be its target's.
_WEIGHT_TOLERANCE = 0.25
#: Rounds of moving wrongly read targets, and the worst-fitting rows each round looks at.
_ROUNDS = 4
_CLAIM_ROWS = 64

_INFERRED = Cause(
    CauseKind.TOKEN_INFERRED,
    count=1,
    detail="from the language-model head's gradient without an exact fit of the whole batch",
)
_UNREAD = Cause(
    CauseKind.TOKEN_UNREAD,
    count=1,
    detail="a next-token target reaches only the language-model head, whose gradient the update "
    "does not share",
)


def complete_next_token(
    public: PublicModel,
    gradients: Mapping[str, torch.Tensor],
    result: Reconstruction,
    *,
    sources: Sequence[tuple[int, ...]] | None = None,
) -> Reconstruction:
    """Returns ``result`` with each sequence's last token (a next-token target) appended.

    The sequences stay certified only where every last target was proved by an exact fit of the
    head's gradient; see the module's docstring. For sequence-to-sequence updates the sequences
    are decoder inputs (the start token, then the target but its last token) and ``sources``
    their encoder inputs, pair by pair.
    """
    sequences = [s for s in result.sequences if s.token_ids]
    if not sequences:
        return result
    name = _head_weight_name(public)
    if name is None or name not in gradients:
        marked = tuple(_with(public, s, (), _UNREAD) for s in result.sequences)
        return replace(result, sequences=marked)
    prefixes = [s.token_ids for s in sequences]
    remainder, hidden = _remainder(public, gradients[name], prefixes, sources)
    targets, proved = _settle(
        public, gradients[name], name, prefixes, hidden, remainder, sources=sources
    )
    cause = None if proved else _INFERRED
    completed = {
        s.token_ids: _with(public, s, (int(t),), cause)
        for s, t in zip(sequences, targets, strict=True)
    }
    diagnostics = {**result.diagnostics, "last_targets": "proved" if proved else "inferred"}
    return replace(
        result,
        sequences=tuple(completed.get(s.token_ids, s) for s in result.sequences),
        diagnostics=diagnostics,
    )


def _with(
    public: PublicModel, sequence: RecoveredSequence, extra: tuple[int, ...], cause: Cause | None
) -> RecoveredSequence:
    """Returns ``sequence`` with ``extra`` tokens appended and ``cause`` added to its verdict."""
    ids = (*sequence.token_ids, *extra)
    assurance = sequence.assurance.with_causes([cause] if cause else [])
    text = public.tokenizer.decode(list(ids)) if extra else sequence.text
    return RecoveredSequence(ids, text, assurance, sequence.residuals)


def _head_weight_name(public: PublicModel) -> str | None:
    """Returns the update's key for the head's weight (the token table's, when tied)."""
    head = public.model.get_output_embeddings()
    if head is None:
        return None
    return next((n for n, p in public.model.named_parameters() if p is head.weight), None)


def _remainder(
    public: PublicModel,
    observed: torch.Tensor,
    prefixes: Sequence[tuple[int, ...]],
    sources: Sequence[tuple[int, ...]] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (the head gradient less everything but the last targets' one-hot terms, the final
    hidden state of each prefix), both in float64."""
    model, head = public.model, public.model.get_output_embeddings()
    device = head.weight.device
    longest = max(map(len, prefixes))
    ids = torch.zeros(len(prefixes), longest, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for row, prefix in enumerate(prefixes):
        ids[row, : len(prefix)] = torch.tensor(prefix, device=device)
        mask[row, : len(prefix)] = 1
    captured: dict[str, torch.Tensor] = {}
    hook = head.register_forward_hook(lambda m, args, out: captured.update(h=args[0]))
    name = _head_weight_name(public) or ""
    try:
        with only_grad_for(model, {name}), torch.enable_grad():
            if sources is None:
                logits = model(input_ids=ids, attention_mask=mask).logits.float()
            else:
                encoded = seq2seq_inputs(public, sources, prefixes)
                encoded.pop("labels")
                logits = model(
                    **encoded, decoder_input_ids=ids, decoder_attention_mask=mask
                ).logits.float()
            lengths = mask.sum(1)
            known = torch.nn.functional.cross_entropy(
                logits[:, :-1].transpose(1, 2),
                ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100),
                reduction="sum",
            )
            last = logits[torch.arange(len(prefixes), device=device), lengths - 1]
            # The last targets' softmax terms are known; their one-hot terms are what is read.
            loss = (known + torch.logsumexp(last, dim=-1).sum()) / lengths.sum()
            (predicted,) = torch.autograd.grad(loss, [head.weight])
    finally:
        hook.remove()
    hidden = captured["h"][torch.arange(len(prefixes), device=device), lengths - 1]
    remainder = observed.double() - predicted.double().to(observed.device)
    scale = float(lengths.sum())
    return remainder, hidden.detach().double().to(observed.device) / scale


def _aligned_rows(remainder: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """Returns, per sequence, the row of ``remainder`` that holds minus its hidden state.

    A target row is a sum of minus the hidden states of the sequences that share that target, so
    each row is solved, by least squares, as a combination of minus the batch's hidden states:
    a target row fits with its sequences' weights near one. Other rows fit poorly (with a tied
    head, input tokens' rows also carry the targets' share reaching the inputs, in other
    directions). Each sequence takes the best-fitting row that gives it a weight near one, and
    falls back to the best-aligned row where none does.
    """
    coefficients = -torch.linalg.lstsq(hidden.T, remainder.T).solution.T  # (rows, sequences)
    fitted = -(coefficients @ hidden)
    misfit = (remainder - fitted).norm(dim=1) / remainder.norm(dim=1).clamp_min(1e-300)
    near_one = (coefficients - 1).abs() < _WEIGHT_TOLERANCE
    score = torch.where(near_one, misfit[:, None], torch.full_like(coefficients, float("inf")))
    best = score.argmin(dim=0)
    row_norms = remainder.norm(dim=1).clamp_min(1e-300)
    cosines = -(remainder @ hidden.T) / (row_norms[:, None] * hidden.norm(dim=1)[None])
    found = torch.isfinite(score.min(dim=0).values)
    return torch.where(found, best, cosines.argmax(dim=0))


def _settle(
    public: PublicModel,
    observed: torch.Tensor,
    name: str,
    prefixes: list[tuple[int, ...]],
    hidden: torch.Tensor,
    remainder: torch.Tensor,
    *,
    sources: Sequence[tuple[int, ...]] | None = None,
) -> tuple[torch.Tensor, bool]:
    """Returns the targets and whether they are proved, correcting a first reading of them.

    What the completed batch's gradient fails to explain is, on a wrongly read target's rows,
    plus the sequence's hidden state on the row it was given and minus it on its true row (the
    share reaching the inputs is now computed, so these rows are clean): each round moves such
    sequences to the row that claims them, until the whole gradient is explained or nothing moves.
    """
    targets = _aligned_rows(remainder, hidden)
    for _ in range(_ROUNDS):
        misfit = _misfit(public, observed, name, prefixes, targets, sources)
        if _explained(observed, misfit):
            return targets, True
        moved = _claimed_rows(misfit, hidden, targets)
        if torch.equal(moved, targets):
            return targets, False
        targets = moved
    return targets, _explained(
        observed, _misfit(public, observed, name, prefixes, targets, sources)
    )


def _misfit(
    public: PublicModel,
    observed: torch.Tensor,
    name: str,
    prefixes: list[tuple[int, ...]],
    targets: torch.Tensor,
    sources: Sequence[tuple[int, ...]] | None,
) -> torch.Tensor:
    """Returns the head gradient less the completed batch's own gradient, in float64.

    The one-hot terms of the targets reach the inputs too, through each sequence's last hidden
    state, so only the whole gradient can confirm them.
    """
    batch = [(*p, int(t)) for p, t in zip(prefixes, targets, strict=True)]
    if sources is not None:  # a decoder input's targets are all of it but its start token
        batch = [ids[1:] for ids in batch]
    predicted = loss_gradient(public, batch, None, [name], sources=sources)[name]
    predicted = predicted.double().to(observed.device)
    return observed.double() - predicted


def _explained(observed: torch.Tensor, misfit: torch.Tensor) -> bool:
    """Returns whether ``misfit`` is at float precision, row by row."""
    return bool(misfit.norm(dim=1).max() <= FIT_TOLERANCE * observed.double().norm(dim=1).max())


def _claimed_rows(
    misfit: torch.Tensor, hidden: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Returns the targets, each sequence moved to a row whose misfit claims its hidden state."""
    rows = torch.topk(misfit.norm(dim=1), min(_CLAIM_ROWS, len(misfit))).indices
    coefficients = -torch.linalg.lstsq(hidden.T, misfit[rows].T).solution.T  # (rows, sequences)
    claim = coefficients.max(dim=0)
    return torch.where((claim.values - 1).abs() < _WEIGHT_TOLERANCE, rows[claim.indices], targets)
