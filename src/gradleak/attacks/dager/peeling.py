"""Peeling past the hidden-size limit, as a wrapper around any attack of a gradient.

The ranked search's sentences cannot be certified, but the fit of a sentence's own gradient to
the update's token rows (:func:`gradleak.attacks.peel.fit_share`) tells an exact one from a cut
or wrong one. Each round peels the exact ones off and attacks the rest again, with whatever
search the rest's spans call for: ranked while they stay saturated, DAGER's span tests once the
rest holds fewer rows than the hidden size. Nothing is certified, since every span test on the
rest holds only as far as the peels before it were exact.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import replace

import torch

from gradleak.attacks.base import Reconstruction
from gradleak.attacks.budget import NO_DEADLINE, Deadline
from gradleak.attacks.dager.plan import SearchKind
from gradleak.attacks.peel import peel_fitting
from gradleak.attacks.verdict import Cause, CauseKind
from gradleak.models.loading import PublicModel

Gradients = Mapping[str, torch.Tensor]


def peel_ranked(
    public: PublicModel,
    gradients: Gradients,
    ranked: Reconstruction,
    attack: Callable[[Gradients], Reconstruction],
    *,
    deadline: Deadline = NO_DEADLINE,
) -> Reconstruction:
    """Returns ``ranked``'s sentences that fit the update exactly, and what ``attack`` finds in
    the rest.

    Args:
        public: the public model.
        gradients: the gradients ``ranked`` was found in.
        ranked: a ranked search's result.
        attack: attacks what is left of the gradients after a peel.
        deadline: no new round starts once it has expired.
    """
    began = time.perf_counter()
    result, kept, rounds = ranked, [], []
    while result.diagnostics.get("search") == SearchKind.RANKED.value and not deadline.expired():
        started = time.perf_counter()
        by_ids = {s.token_ids: s for s in result.sequences}
        gradients, shares = peel_fitting(public, gradients, list(by_ids))
        if not shares:
            break
        kept += [by_ids[share.token_ids] for share in shares]
        rounds.append(
            {
                "sentences": len(shares),
                "seconds": round(time.perf_counter() - started, 3),
                "search_seconds": result.diagnostics["seconds"].get("search", 0.0),
            }
        )
        result = attack(gradients)
    if not rounds:
        return ranked
    peeled = Cause(CauseKind.PEELED_REST, count=sum(r["sentences"] for r in rounds))
    rest = tuple(replace(s, assurance=s.assurance.with_causes([peeled])) for s in result.sequences)
    diagnostics = {**ranked.diagnostics, "peeled": rounds, "rest": result.diagnostics}
    diagnostics["seconds"] = {
        **ranked.diagnostics["seconds"],
        "peeling": time.perf_counter() - began,
    }
    causes = (*ranked.causes, *result.causes, peeled)
    return Reconstruction(ranked.attack, (*kept, *rest), causes=causes, diagnostics=diagnostics)
