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

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

from gradleak.models.grad_scope import only_grad_for
from gradleak.models.loading import PublicModel

#: Relative misfit below which an observed token row counts as parallel to the sentence's own row;
#: recomputing a sentence's gradient in float32 stays well below it.
PARALLEL_TOLERANCE = 1e-4


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


def own_gradient(public: PublicModel, token_ids: Sequence[int], label: int | None,
                 names: list[str]) -> dict[str, torch.Tensor]:
    """Returns the gradient of one sentence's training loss alone, for the named parameters.

    The loss is the model's own (``labels=`` of the transformers head): the class for a
    classifier, the sentence itself for next-token prediction.
    """
    device = public.family.embedding().weight.device
    ids = torch.tensor([list(token_ids)], device=device)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if "token_type_ids" in public.tokenizer.model_input_names:
        inputs["token_type_ids"] = torch.zeros_like(ids)
    targets = ids if label is None else torch.tensor([label], device=device)
    params = dict(public.model.named_parameters())
    with only_grad_for(public.model, set(names)), torch.enable_grad():
        loss = public.model(**inputs, labels=targets).loss
        grads = torch.autograd.grad(loss, [params[name] for name in names], allow_unused=True)
    return {name: torch.zeros_like(params[name]) if g is None else g.detach()
            for name, g in zip(names, grads)}


def fit_share(public: PublicModel, gradients: Mapping[str, torch.Tensor],
              token_ids: Sequence[int]) -> tuple[Share, dict[str, torch.Tensor]] | None:
    """Returns the sentence's share of ``gradients`` and its own gradient, or None if none fits exactly."""
    table = public.family.weight_name(public.family.embedding())
    if table not in gradients:
        return None
    tokens = sorted(set(token_ids))
    observed = gradients[table][tokens].double()
    best = None
    # The fit reads the table's rows only; the whole gradient is computed once, for the label that fits.
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


def peel(public: PublicModel, gradients: Mapping[str, torch.Tensor],
         sentences: Iterable[Sequence[int]]) -> tuple[dict[str, torch.Tensor], list[Share]] | None:
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


def peel_fitting(public: PublicModel, gradients: Mapping[str, torch.Tensor],
                 candidates: Iterable[Sequence[int]]) -> tuple[dict[str, torch.Tensor], list[Share]]:
    """Returns ``gradients`` minus the share of every candidate that fits exactly, and those shares.

    For candidates of unknown worth (a best-effort search's output): one that does not fit is
    skipped, and tried again once a sentence sharing one of its tokens has been peeled, since that
    can leave the token's row to it alone.
    """
    rest = _copy(gradients)
    shares: list[Share] = []
    pending = [tuple(ids) for ids in dict.fromkeys(map(tuple, candidates))]
    freed: set[int] | None = None  # tokens whose rows the last pass's peels changed; None: first pass
    while pending:
        left, peeled_tokens = [], set()
        for ids in pending:
            if freed is not None and freed.isdisjoint(ids):
                left.append(ids)
                continue
            fitted = fit_share(public, rest, ids)
            if fitted is None:
                left.append(ids)
                continue
            _subtract(public, rest, *fitted)
            shares.append(fitted[0])
            peeled_tokens.update(ids)
        if not peeled_tokens:
            break
        pending, freed = left, peeled_tokens
    return rest, shares


def _copy(gradients: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in gradients.items()}


def _subtract(public: PublicModel, rest: dict[str, torch.Tensor], share: Share,
              own: Mapping[str, torch.Tensor]) -> None:
    """Takes ``share`` out of ``rest``, in place.

    Token rows that the sentence alone accounted for are set to zero rather than left at
    rounding level, so that the rest's bag of tokens (its non-zero rows) no longer holds them.
    """
    table = public.family.weight_name(public.family.embedding())
    tokens = sorted(set(share.token_ids))
    before = rest[table][tokens].norm(dim=1)
    for name, value in rest.items():
        value -= share.weight * own[name].to(value.device, value.dtype)
    emptied = rest[table][tokens].norm(dim=1) <= PARALLEL_TOLERANCE * before
    rest[table][torch.tensor(tokens, device=emptied.device)[emptied]] = 0


def _labels(public: PublicModel) -> list[int | None]:
    return [None] if public.task == "next_token" else list(range(public.num_labels))


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
