"""The sparse pursuit: a jointly sparse combination of dictionary rows is read back exactly."""

from __future__ import annotations

import torch

from gradleak.attacks.dager.adapters import numerical_rank
from gradleak.attacks.dager.pursuit import token_bag


def test_token_bag_recovers_the_rows_that_make_up_the_target_and_nothing_else():
    generator = torch.Generator().manual_seed(0)
    dictionary = torch.randn(2000, 96, generator=generator)
    support = torch.randperm(2000, generator=generator)[:30]
    coefficients = torch.randn(6, 30, generator=generator, dtype=torch.float64)
    target = coefficients @ dictionary[support].double()
    found = token_bag(target.float(), dictionary, torch.arange(2000), max_rows=95)
    assert found.explained
    assert sorted(found.tokens.tolist()) == sorted(support.tolist())


def test_token_bag_says_when_the_target_is_not_explained():
    generator = torch.Generator().manual_seed(1)
    dictionary = torch.randn(300, 32, generator=generator)
    target = torch.randn(4, 32, generator=generator)  # no sparse combination
    found = token_bag(target, dictionary, torch.arange(300), max_rows=8)
    assert not found.explained and len(found.tokens) == 8


def test_a_b_factor_warmed_up_on_few_rows_caps_the_span_below_its_rank():
    generator = torch.Generator().manual_seed(2)
    b_factor = torch.randn(64, 3, generator=generator) @ torch.randn(3, 16, generator=generator)
    assert numerical_rank(b_factor) == 3  # rank 16 adapter, rank 3 B: 3 rows show at most
    assert numerical_rank(torch.zeros(64, 16)) == 0  # the first round


def test_an_adapter_span_near_its_limit_ends_at_the_largest_drop_in_its_tail():
    from gradleak.attacks.dager.oracle import tail_rank

    generator = torch.Generator().manual_seed(3)
    signal = torch.logspace(0, -7.7, 426, dtype=torch.float64)  # the weakest rows near rounding
    bulk = 7e-9 * (1 - 0.02 * torch.rand(150, generator=generator, dtype=torch.float64)).cumprod(0)
    spectrum = torch.cat([signal, bulk])  # the true rank is 426, below the limit of 448
    assert tail_rank(spectrum, 419, 448) == 426  # the bulk's margin stopped 7 short
    assert tail_rank(spectrum, 426, 448) == 426
    assert tail_rank(bulk, 3, 100) == 3  # rounding alone has no drop to read
