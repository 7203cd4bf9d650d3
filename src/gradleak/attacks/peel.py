"""Peeling: taking a recovered sentence's own share out of a client's gradient.

A batch gradient is a weighted sum of per-sentence gradients (each sentence's loss gradient,
times 1/B for a mean loss). The server knows the model and the training loss, so once a
sentence is recovered exactly it can compute that sentence's own gradient; the update minus it,
rightly scaled, is the gradient of the rest of the batch. Every span shrinks by the sentence's
rows, so an attack that was crowded (a block-0 span holding false token pairings, a span at
the hidden-size limit) can test the rest cleanly again.

The weight is read, not assumed: a token that no other sentence uses has a token-embedding
gradient row made of this sentence's occurrences alone, so there the observed row is the
sentence's own row times the weight, exactly. Rows that are parallel to float precision give the
weight; a sentence with no such row, or one that is not exactly right (a wrong token changes the
sentence's gradient at every row), is not peeled. The label is found the same way: each label
gives an own gradient, and only the true one (or, with two classes, its mirror image, which
differs only by a negative factor) makes the rows parallel.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

from gradleak.models.gemm import onednn_matmuls
from gradleak.models.grad_scope import only_grad_for
from gradleak.models.loading import PublicModel
from gradleak.models.task_loss import example_losses, loss_gradient, token_inputs

_log = logging.getLogger(__name__)

#: Relative misfit below which an observed token row counts as parallel to the sentence's own row;
#: recomputing a sentence's gradient in float32 stays well below it.
PARALLEL_TOLERANCE = 1e-4
#: Candidates per forward pass of :func:`might_fit`.
_SCREEN_CHUNK = 32


@dataclass(frozen=True)
class Share:
    """One sentence's part of an update.

    Attributes:
        token_ids: the sentence.
        label: the label whose gradient fits (None for next-token prediction).
        weight: the factor on the sentence's own loss gradient (1/B for a mean loss over B
            sentences with the true label).
        parallel_rows: how many token-embedding rows fixed the weight.
    """

    token_ids: tuple[int, ...]
    label: int | None
    weight: float
    parallel_rows: int


def own_gradient(
    public: PublicModel, token_ids: Sequence[int], label: int | None, names: list[str]
) -> dict[str, torch.Tensor]:
    """Returns the gradient of one sentence's training loss alone, for the named parameters.

    The loss is the client's (:func:`gradleak.models.task_loss.task_loss`): the class for a
    classifier, the sentence itself for next-token prediction.
    """
    return loss_gradient(public, [token_ids], label, names)


def fit_share(
    public: PublicModel, gradients: Mapping[str, torch.Tensor], token_ids: Sequence[int]
) -> tuple[Share, dict[str, torch.Tensor]] | None:
    """Returns the sentence's share of ``gradients`` and its own gradient, or None if none fits
    exactly."""
    table = _table_name(public)
    if table not in gradients:
        return None
    tokens = sorted(set(token_ids))
    observed = gradients[table][tokens].double()
    best = None
    # The fit reads the table's rows only; the whole gradient is computed once, for the label that
    # fits.
    for label in _labels(public):
        own = own_gradient(public, token_ids, label, [table])[table][tokens].double()
        fit = _parallel_weight(observed, own)
        if fit is None:
            continue
        weight, rows = fit
        key = (rows, weight > 0)  # a mean loss weighs the true label positively
        if best is None or key > best[0]:
            best = (key, Share(tuple(token_ids), label, weight, rows))
    if best is None:
        return None
    share = best[1]
    return share, own_gradient(public, token_ids, share.label, list(gradients))


def peel(
    public: PublicModel, gradients: Mapping[str, torch.Tensor], sentences: Iterable[Sequence[int]]
) -> tuple[dict[str, torch.Tensor], list[Share]] | None:
    """Returns ``gradients`` minus every sentence's share, and the shares; None if one does not fit.

    Each sentence is fitted against what is left after the ones before it, so a token shared
    only with an earlier sentence becomes a parallel row for the later one.
    """
    rest = _copy(gradients)
    shares = []
    for ids in sentences:
        fitted = fit_share(public, rest, ids)
        if fitted is None:
            return None
        _subtract(public, rest, *fitted)
        shares.append(fitted[0])
    return rest, shares


def peel_fitting(
    public: PublicModel,
    gradients: Mapping[str, torch.Tensor],
    candidates: Iterable[Sequence[int]],
    *,
    passes: int = 3,
) -> tuple[dict[str, torch.Tensor], list[Share]]:
    """Returns ``gradients`` minus the share of every candidate that fits exactly, and those shares.

    For candidates of unknown worth (a best-effort search's output): one that does not fit is
    skipped, and tried again once a sentence sharing one of its tokens has been peeled, since that
    can leave the token's row to it alone; ``passes`` bounds how often the candidates are gone
    over. Each pass fits every candidate tried against what the pass started from and takes the
    fitted ones out together (:func:`fit_shares`, :func:`subtract_shares`): a few batched forward
    and backward passes instead of several per candidate.
    """
    rest = _copy(gradients)
    shares: list[Share] = []
    pending = list(dict.fromkeys(map(tuple, candidates)))
    freed: set[int] | None = (
        None  # tokens whose rows the last pass's peels changed; None: first pass
    )
    for _ in range(passes):
        tried = [ids for ids in pending if freed is None or not freed.isdisjoint(ids)]
        fitted = fit_shares(public, rest, tried)
        subtract_shares(public, rest, fitted)
        shares += fitted
        done = {share.token_ids for share in fitted}
        left = _still_possible(public, rest, [ids for ids in pending if ids not in done])
        _log.info("peel: %d of %d candidates fitted", len(fitted), len(pending))
        if not fitted or not left:
            break
        pending, freed = left, {token for share in fitted for token in share.token_ids}
    return rest, shares


def _still_possible(
    public: PublicModel, rest: Mapping[str, torch.Tensor], candidates: list[tuple[int, ...]]
) -> list[tuple[int, ...]]:
    """Returns the candidates none of whose token rows is zero in ``rest``: a sentence with a
    token whose row the peels emptied (or the batch never used) can never fit."""
    table = rest.get(_table_name(public))
    if table is None or not candidates:
        return candidates
    tokens = sorted({token for ids in candidates for token in ids})
    used = table[tokens].abs().amax(dim=1) > 0
    empty = {token for token, kept in zip(tokens, used.tolist(), strict=True) if not kept}
    return [ids for ids in candidates if empty.isdisjoint(ids)]


def fit_shares(
    public: PublicModel, gradients: Mapping[str, torch.Tensor], candidates: Sequence[Sequence[int]]
) -> list[Share]:
    """Returns the share of every candidate that fits ``gradients`` exactly, in their order.

    :func:`fit_share`'s test, batched: a forward and backward pass per chunk (of candidates
    of similar lengths, so little padding) and label gives every candidate's own token rows (a
    sum of per-sentence losses, so no factor), and a candidate fits where some label makes rows
    of ``gradients`` parallel to them. With two classes one pass serves both labels: the
    other label's rows are these times ``-p0 / p1``.
    """
    table = _table_name(public)
    if table not in gradients:
        return []
    found: dict[int, Share] = {}
    for chunk in _similar_lengths(candidates):
        sentences = [tuple(candidates[i]) for i in chunk]
        best: list[tuple[tuple[int, bool], Share] | None] = [None] * len(chunk)
        for label in _fitted_labels(public):
            rows, losses = _own_token_rows(public, sentences, label)
            for i, (ids, own, loss) in enumerate(zip(sentences, rows, losses, strict=True)):
                fit = _parallel_weight(gradients[table][sorted(set(ids))].double(), own)
                if fit is None:
                    continue
                share = _labelled(public, Share(ids, label, *fit), loss)
                # A mean loss weighs the true label positively.
                key = (share.parallel_rows, share.weight > 0)
                current = best[i]
                if current is None or key > current[0]:
                    best[i] = (key, share)
        found.update({index: b[1] for index, b in zip(chunk, best, strict=True) if b is not None})
    return [found[index] for index in sorted(found)]


def _labelled(public: PublicModel, share: Share, loss: float) -> Share:
    """Returns a two-class share fitted with label 0's rows as the share of the label whose
    weight is positive: label 1's rows are label 0's times ``-p0 / p1`` and label 0's loss is
    ``log(1 + p1 / p0)``."""
    if len(_labels(public)) != 2 or share.weight > 0:
        return share
    ratio = math.expm1(loss)  # p1 / p0
    return Share(share.token_ids, 1, -share.weight * ratio, share.parallel_rows)


def _similar_lengths(candidates: Sequence[Sequence[int]]) -> list[list[int]]:
    """Returns the candidates' indices in chunks of similar lengths."""
    order = sorted(range(len(candidates)), key=lambda i: len(candidates[i]))
    return [order[start : start + _SCREEN_CHUNK] for start in range(0, len(order), _SCREEN_CHUNK)]


def subtract_shares(
    public: PublicModel, rest: dict[str, torch.Tensor], shares: Sequence[Share]
) -> None:
    """Takes every share out of ``rest``, in place: one backward pass per chunk of sentences,
    of their losses weighted by their shares, gives the sum of their weighted own gradients.

    Token rows that the sentences alone accounted for are set to zero, as in :func:`peel`.
    """
    if not shares:
        return
    table = _table_name(public)
    tokens = sorted({token for share in shares for token in share.token_ids})
    before = rest[table][tokens].norm(dim=1)
    params = dict(public.model.named_parameters())
    names = list(rest)
    for indices in _similar_lengths([share.token_ids for share in shares]):
        chunk = [shares[i] for i in indices]
        inputs = token_inputs(public, [share.token_ids for share in chunk])
        labels = [share.label for share in chunk if share.label is not None] or None
        with only_grad_for(public.model, set(names)), torch.enable_grad(), onednn_matmuls():
            losses = example_losses(public, inputs, labels)
            weights = torch.tensor([share.weight for share in chunk], device=losses.device)
            grads = torch.autograd.grad(
                (weights.to(losses.dtype) * losses).sum(),
                [params[name] for name in names],
                allow_unused=True,
            )
        for name, grad in zip(names, grads, strict=True):
            if grad is not None:
                rest[name] -= grad.detach().to(rest[name].device, rest[name].dtype)
    emptied = rest[table][tokens].norm(dim=1) <= PARALLEL_TOLERANCE * before
    rest[table][torch.tensor(tokens, device=emptied.device)[emptied]] = 0


def _own_token_rows(
    public: PublicModel, batch: list[tuple[int, ...]], label: int | None
) -> tuple[list[torch.Tensor], list[float]]:
    """Returns each sentence's own token-table gradient rows (its distinct tokens, sorted).

    Sentences in a padded batch do not see each other, so the gradient of the sum of their
    losses at each sentence's embedded positions is its own; it is read off the embedding's
    output, summed per token. Where the table is also the output head (a tied language model),
    each sentence's head-side rows are added: its logits' gradient times the head's input, at
    its own positions. Each sentence's loss comes with them.
    """
    inputs = token_inputs(public, batch)
    labels = None if label is None else [label] * len(batch)
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        public.family.embedding().register_forward_hook(
            lambda m, a, out: seen.setdefault("embedded", out)
        )
    ]
    head = _tied_head(public)
    if head is not None:
        hooks.append(
            head.register_forward_hook(
                lambda m, a, out: seen.update(head_input=a[0].detach(), logits=out)
            )
        )
    try:
        with (
            only_grad_for(public.model, {_table_name(public)}),
            torch.enable_grad(),
            onednn_matmuls(),
        ):
            losses = example_losses(public, inputs, labels)
            wanted = [seen["embedded"], *([seen["logits"]] if head is not None else [])]
            grads = torch.autograd.grad(losses.sum(), wanted)
    finally:
        for hook in hooks:
            hook.remove()
    positions = grads[0].detach().double().cpu()
    rows = []
    for i, ids in enumerate(batch):
        tokens, where = torch.unique(torch.tensor(ids), return_inverse=True)
        own = torch.zeros(len(tokens), positions.shape[-1], dtype=torch.float64)
        own.index_add_(0, where, positions[i, : len(ids)])
        if head is not None:
            logits = grads[1][i, : len(ids)][:, tokens.to(grads[1].device)].double().cpu()
            own += logits.T @ seen["head_input"][i, : len(ids)].double().cpu()
        rows.append(own)
    return rows, losses.detach().double().tolist()


def _tied_head(public: PublicModel) -> torch.nn.Module | None:
    """Returns the output head that shares the token table's weight, or None."""
    output = getattr(public.model, "get_output_embeddings", lambda: None)()
    if output is None or output.weight is not public.family.embedding().weight:
        return None
    return output


def _table_name(public: PublicModel) -> str:
    """Returns the update's key for the token table's gradient, where every fit is read."""
    return public.family.weight_name(public.family.embedding())


def _copy(gradients: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in gradients.items()}


def _subtract(
    public: PublicModel,
    rest: dict[str, torch.Tensor],
    share: Share,
    own: Mapping[str, torch.Tensor],
) -> None:
    """Takes ``share`` out of ``rest``, in place.

    Token rows that the sentence alone accounted for are set to zero rather than left at
    rounding level, so that the rest's bag of tokens (its non-zero rows) no longer holds them.
    """
    table = _table_name(public)
    tokens = sorted(set(share.token_ids))
    before = rest[table][tokens].norm(dim=1)
    for name, value in rest.items():
        value -= share.weight * own[name].to(value.device, value.dtype)
    emptied = rest[table][tokens].norm(dim=1) <= PARALLEL_TOLERANCE * before
    rest[table][torch.tensor(tokens, device=emptied.device)[emptied]] = 0


def _labels(public: PublicModel) -> list[int | None]:
    if public.task == "seq2seq":
        return []  # a source's own gradient needs its target, which the encoder search lacks
    return [None] if public.task == "next_token" else list(range(public.num_labels))


def _fitted_labels(public: PublicModel) -> list[int | None]:
    """Returns the labels whose own gradients differ by more than a factor: one of two classes
    serves both (see :func:`_labelled`).

    With two classes the loss gradient under one label is a negative multiple of the other's.
    """
    labels = _labels(public)
    return labels[:1] if len(labels) == 2 else labels


def _parallel_weight(observed: torch.Tensor, own: torch.Tensor) -> tuple[float, int] | None:
    """Returns (median weight, count) over the rows where ``observed`` is ``own`` times a weight.

    None if some row is not observed at all: the batch never used that token.
    """
    observed_norms = observed.norm(dim=1)
    if not bool((observed_norms > 0).all()):
        return None
    norms = own.square().sum(dim=1)
    weights = (observed * own).sum(dim=1) / norms.clamp_min(1e-300)
    misfit = (observed - weights[:, None] * own).norm(dim=1) / observed_norms
    parallel = (norms > 0) & (misfit < PARALLEL_TOLERANCE)
    if not bool(parallel.any()):
        return None
    return statistics.median(weights[parallel].tolist()), int(parallel.sum())
