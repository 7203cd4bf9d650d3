"""LAMP's discrete moves and the language-model prior."""

from __future__ import annotations

import random

import pytest
import torch

from gradleak.attacks.optimization import LanguageModelPrior
from gradleak.attacks.optimization.moves import MOVES, candidate_orders, propose


@pytest.mark.parametrize("n", [1, 2, 5, 9])
def test_every_candidate_is_a_permutation_and_the_first_is_the_identity(n):
    orders = candidate_orders(n, 200, random.Random(0))
    assert orders[0] == list(range(n))
    assert all(sorted(order) == list(range(n)) for order in orders)
    if n > 2:
        assert len({tuple(o) for o in orders}) > 10


class FixedDraws(random.Random):
    """A Random whose randrange returns the given values in turn."""

    def __init__(self, *values: int) -> None:
        super().__init__(0)
        self.values = list(values)

    def randrange(self, *args, **kwargs):  # noqa: D102
        return self.values.pop(0)


@pytest.mark.parametrize(
    ("kind", "draws", "expected"),
    [
        (0, (1, 3), [0, 3, 2, 1, 4]),  # swap tokens 1 and 3
        (1, (1, 4), [0, 2, 3, 1, 4]),  # move token 1 before position 4
        (1, (3, 0), [3, 0, 1, 2, 4]),  # move token 3 to the front
        (2, (1, 3, 2), [0, 3, 1, 2, 4]),  # move the span [1, 3) behind token 3
        (3, (2,), [2, 3, 4, 0, 1]),  # put the prefix [0, 2) at the end
    ],
)
def test_moves_follow_lamp(kind, draws, expected):
    assert MOVES[kind]
    assert propose(5, kind, FixedDraws(*draws)) == expected


def test_prior_prefers_natural_order_and_caches(tiny_models):
    public = tiny_models("llama", "next_token")
    prior = LanguageModelPrior(public, chunk_size=2)
    texts = ["the cat sat on the mat", "mat the on sat cat the", "hello"]
    first = prior.nll(texts)
    assert first.shape == (3,) and torch.isfinite(first).all() and float(first[2]) == 0.0
    assert set(prior.cache) == set(texts)
    torch.testing.assert_close(prior.nll(texts[::-1]), first.flip(0))


def test_prior_needs_a_causal_lm(tiny_models):
    with pytest.raises(ValueError, match="next_token"):
        LanguageModelPrior(tiny_models("llama"))
