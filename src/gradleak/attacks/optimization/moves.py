"""LAMP's discrete moves: reorderings of one sequence's free tokens, scored in one batch.

Candidate 0 is the current order; candidate k applies move ``k % 4``: swap two tokens (0),
move one token (1), move a span (2), put a prefix at the end (3), with LAMP's sampling of the
positions (``attack.py``, ``swap_tokens``), here on free positions only. Each candidate is
scored by its gradient distance plus ``coeff`` times the prior's NLL of its decoded text, and
the best one replaces the sequence.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch

from gradleak.attacks.optimization.decoding import NearestTokens
from gradleak.attacks.optimization.objective import GradientObjective
from gradleak.attacks.optimization.prior import LanguageModelPrior

MOVES: tuple[str, ...] = ("swap", "move_token", "move_span", "prefix_to_end")


def propose(n: int, kind: int, rng: random.Random) -> list[int]:
    """Returns one reordering of ``range(n)`` by move ``kind`` (an index into :data:`MOVES`)."""
    perm = list(range(n))
    if n < 2:
        return perm
    if kind == 0:
        i, j = rng.randrange(n), rng.randrange(n)
        perm[i], perm[j] = perm[j], perm[i]
    elif kind == 1:
        i, j = rng.randrange(n), rng.randrange(n + 1)
        if i < j:
            perm = perm[:i] + perm[i + 1 : j] + perm[i : i + 1] + perm[j:]
        else:
            perm = perm[:j] + perm[i : i + 1] + perm[j:i] + perm[i + 1 :]
    elif kind == 2:
        b, e = sorted((rng.randrange(n + 1), rng.randrange(n + 1)))
        p = rng.randrange(n + 1 - (e - b))
        if p >= b:
            p += e - b
        if p < b:
            perm = perm[:p] + perm[b:e] + perm[p:b] + perm[e:]
        else:
            perm = perm[:b] + perm[e:p] + perm[b:e] + perm[p:]
    else:
        i = rng.randrange(n)
        perm = perm[i:] + perm[:i]
    return perm


def candidate_orders(n: int, count: int, rng: random.Random) -> list[list[int]]:
    """Returns ``count`` reorderings: the identity, then LAMP's four moves in turn."""
    return [list(range(n))] + [propose(n, k % len(MOVES), rng) for k in range(1, count)]


def reorder_step(
    objective: GradientObjective,
    free: torch.Tensor,
    classes: torch.Tensor,
    *,
    decoder: NearestTokens,
    decode_text: Callable[[Sequence[int]], str],
    prior: LanguageModelPrior | None,
    coeff: float,
    count: int,
    rng: random.Random,
) -> list[str]:
    """Reorders each sequence of ``free`` (B, F, d) in place by the best of ``count`` candidates.

    Returns the move that won for each sequence ("none" when the current order stayed).
    """
    lengths = objective.inputs.layout.free_lengths
    scorer = prior if coeff > 0 else None  # the prior, where it scores
    ids = decoder(free)
    prior_terms = [0.0] * len(lengths)
    if scorer is not None:
        prior_terms = scorer.nll(
            [decode_text(ids[s, :n].tolist()) for s, n in enumerate(lengths)]
        ).tolist()
    winners = []
    for s, n in enumerate(lengths):
        orders = candidate_orders(n, count, rng)
        index = torch.tensor(orders, device=free.device)
        candidates = free.detach().expand(len(orders), *free.shape).clone()
        candidates[:, s, :n] = free.detach()[s, index]
        scores = objective.batch(candidates, classes).double()
        if scorer is not None:
            texts = [decode_text(ids[s, :n][order].tolist()) for order in index]
            others = sum(prior_terms) - prior_terms[s]
            scores = scores + coeff * (scorer.nll(texts).to(scores.device) + others) / len(lengths)
        best = int(torch.argmin(scores))
        with torch.no_grad():
            free[s, :n] = candidates[best, s, :n]
        if scorer is not None:
            prior_terms[s] = float(scorer.nll([decode_text(ids[s, :n][index[best]].tolist())])[0])
        ids[s, :n] = ids[s, :n][index[best]]
        winners.append("none" if best == 0 else MOVES[best % len(MOVES)])
    return winners
