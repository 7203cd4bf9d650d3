"""A bag of tokens put in order by the public model's own language-model prior.

Where the adapters' spans give the batch's tokens but not their order (rotary positions past the
rank limit), the public model still knows which orders are likely. A classifier fine-tuned from
a language model with tied embeddings keeps its language-model head in its embedding table, so
the next-token scores over the bag are the final hidden state times the bag's embeddings. The
batch's sentences are grown one after another, each taking the bag's likeliest unused token next,
with the bag shared out evenly between them (their lengths are unknown). Nothing here is a test:
what it returns is a guess, best-effort.
"""

from __future__ import annotations

import math

import torch

from gradleak.attacks.budget import NO_DEADLINE, Deadline
from gradleak.models.loading import PublicModel
from gradleak.models.probe import compute_family


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
    deadline: Deadline = NO_DEADLINE,
) -> list[tuple[int, ...]]:
    """Returns ``bag`` shared out between ``sentences`` sequences, each grown by the prior.

    Each token is used once. A sentence starts after the tokenizer's start (or end) token where
    it has one, else after nothing but the choice of its likeliest first token by the same
    scores. When ``deadline`` expires, the tokens left are appended in the bag's own order.
    """
    family = compute_family(public.family)
    tokenizer = public.tokenizer
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    device = family.embedding().weight.device
    left = list(bag)
    out: list[tuple[int, ...]] = []
    for index in range(sentences):
        if not left:
            break
        length = math.ceil(len(left) / (sentences - index))
        sequence: list[int] = []
        while left and len(sequence) < length:
            if deadline.expired():
                rest = length - len(sequence)
                sequence.extend(left[:rest])
                del left[:rest]
                break
            context = ([start] if start is not None else []) + sequence
            choice = _likeliest(family, context, left, device) if context else left[0]
            sequence.append(choice)
            left.remove(choice)
        out.append(tuple(sequence))
    return out


def _likeliest(family, context: list[int], candidates: list[int], device) -> int:
    hidden = family.base(input_ids=torch.tensor([context], device=device)).last_hidden_state
    table = family.embedding().weight[torch.tensor(candidates, device=device)]
    scores = table @ hidden[0, -1]
    return candidates[int(torch.argmax(scores))]
