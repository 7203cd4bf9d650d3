"""A bag of tokens shared out between the batch's sentences and put in order.

Where the adapters' spans give the batch's tokens but not their order (rotary positions past the
rank limit), two things still judge an order. The public model knows which orders are likely: a
classifier fine-tuned from a language model with tied embeddings keeps its language-model head in
its embedding table, so the next-token scores over the bag are the final hidden state times the
bag's embeddings. And the adapters past block 0 span a slice of their block's input rows, which
depend on each token's prefix: rows after the right prefixes explain more of it
(:mod:`gradleak.attacks.dager.span_fit`).

The batch's sentences grow in lockstep, one token each per round, every token of the bag used
once and the bag shared out evenly (their lengths are unknown): each round the best
(sentence, token) pairs are taken first, scored by the prior's log-probability plus
:data:`FIT_WEIGHT` times the mean, over the fitted blocks, of the log of the share of each span a
token's row would explain. Nothing here is a test: what it returns is a guess, best-effort.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from gradleak.attacks.budget import NO_DEADLINE, Deadline
from gradleak.attacks.dager.span_fit import SpanFit
from gradleak.models.loading import PublicModel
from gradleak.models.probe import LinearInputProbe, compute_family

#: Weight of the spans' mean log fit beside the prior's log-probability (SmolLM2, r = 8, B = 1,
#: blocks 1 to 15, four sentences past the limit: ROUGE-2 38 at 15, 43 at 30).
FIT_WEIGHT = 30.0
_FLOOR = 1e-12


def has_language_prior(public: PublicModel) -> bool:
    """Returns whether the public model carries a language-model head: a causal model whose
    output embeddings are tied to its input embeddings."""
    config = public.model.config
    return bool(public.family.causal and getattr(config, "tie_word_embeddings", False))


@torch.no_grad()
def order_bag(
    public: PublicModel,
    bag: tuple[int, ...],
    sentences: int,
    *,
    fits: Sequence[SpanFit] = (),
    prior: bool = True,
    deadline: Deadline = NO_DEADLINE,
) -> list[tuple[int, ...]]:
    """Returns ``bag`` shared out between ``sentences`` sequences grown in lockstep.

    Each token is used once. Sentences follow the tokenizer's start (or end) token where it has
    one (the prior's context). ``fits`` (consumed: each accepts the rows chosen) add the spans'
    evidence; ``prior`` uses the language prior (needs :func:`has_language_prior`). When
    ``deadline`` expires, the tokens left are dealt out in the bag's own order.
    """
    if not bag or sentences < 1:
        return []
    family = compute_family(public.family)
    count = min(sentences, len(bag))
    lengths = [len(bag) // count + (i < len(bag) % count) for i in range(count)]
    grown: list[list[int]] = [[] for _ in range(count)]
    left = list(bag)
    candidates = torch.tensor(left)
    probe = LinearInputProbe(public.family, [f.layer for f in fits]) if fits else None
    while left and not deadline.expired():
        active = [s for s in range(count) if len(grown[s]) < lengths[s]]
        scores = torch.zeros(len(active), len(candidates), dtype=torch.float64)
        if prior:
            scores += _prior(public, family, [grown[s] for s in active], candidates)
        if probe is not None:
            rows = _rows(probe, [grown[s] for s in active], candidates)
            for fit in fits:
                gains = fit.gains(rows[fit.layer].reshape(-1, rows[fit.layer].shape[-1]))
                fitted = gains.clamp_min(_FLOOR).log().reshape(scores.shape)
                scores += FIT_WEIGHT / len(fits) * fitted
        scores[:, [t not in left for t in candidates.tolist()]] = -math.inf
        for _ in range(min(len(active), len(left))):
            flat = int(torch.argmax(scores))
            i, j = divmod(flat, scores.shape[1])
            token = int(candidates[j])
            grown[active[i]].append(token)
            left.remove(token)
            if probe is not None:
                for fit in fits:
                    fit.accept(rows[fit.layer][i, j][None])
            scores[i, :] = -math.inf
            scores[:, j] = -math.inf
    for index, token in enumerate(left):  # past the deadline
        short = [s for s in range(count) if len(grown[s]) < lengths[s]]
        grown[short[index % len(short)]].append(token)
    return [tuple(s) for s in grown if s]


def _start(public: PublicModel) -> int | None:
    tokenizer = public.tokenizer
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def _prior(public: PublicModel, family, prefixes: list[list[int]], candidates: torch.Tensor):
    """Returns the prior's log-probabilities (P, C) of each candidate after each prefix (all one
    length), normalised over the candidates."""
    start = _start(public)
    context = [([start] if start is not None else []) + p for p in prefixes]
    table = family.embedding().weight
    if not context[0]:  # no start token and empty prefixes: no preference
        return torch.zeros(len(prefixes), len(candidates), dtype=torch.float64)
    ids = torch.tensor(context, device=table.device)
    hidden = family.base(input_ids=ids).last_hidden_state[:, -1]
    logits = hidden @ table[candidates.to(table.device)].T
    return torch.log_softmax(logits.double().cpu(), dim=1)


def _rows(probe: LinearInputProbe, prefixes: list[list[int]], candidates: torch.Tensor):
    """Returns each probed layer's input rows (P, C, d) at the position after each prefix (all
    one length) for every candidate."""
    if not prefixes[0]:
        rows = probe(candidates[:, None])
        return {layer: r[:, 0][None].expand(len(prefixes), -1, -1) for layer, r in rows.items()}
    _, state = probe.start(torch.tensor(prefixes))
    return probe.branch(state, candidates)
