"""Position-free encoders: lengths from the row count, and swaps in the bag search."""

from __future__ import annotations

import torch

from gradleak.attacks.dager.encoder import _swapped
from gradleak.attacks.dager.unordered import bag_sets, likely_lengths


def test_the_last_sentence_holds_every_row_left():
    assert likely_lengths(9, 1, max_length=64) == (9,)
    assert likely_lengths(9, 1, max_length=8) == ()


def test_lengths_near_the_average_come_first_and_leave_room_for_the_others():
    lengths = likely_lengths(20, 3, max_length=64)
    assert lengths[0] in (6, 7) and max(lengths) == 14 and min(lengths) == 3
    assert likely_lengths(10, None, max_length=64) == tuple(range(3, 11))


def test_every_position_holds_the_bag():
    bag = torch.tensor([5, 7, 9])
    assert [s.tolist() for s in bag_sets(bag, rows_left=4, max_length=3)] == [[5, 7, 9]] * 3


def test_swaps_exchange_inner_tokens_only_and_skip_equal_ones():
    sentence = torch.tensor([101, 4, 5, 4, 102])
    swapped = {tuple(row.tolist()) for row in _swapped(sentence)}
    assert swapped == {(101, 5, 4, 4, 102), (101, 4, 4, 5, 102)}
