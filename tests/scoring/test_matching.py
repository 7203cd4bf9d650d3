"""Matching: Hungarian beats greedy, DAGER's decoder matching is not a bijection."""

from __future__ import annotations

import pytest

from gradleak.errors import GradleakError, UnknownSpecError
from gradleak.scoring import assign, dager_assignment, hungarian_assignment, rouge_matrix

REFERENCES = ["a b c d", "a b"]
RECONSTRUCTIONS = ["a b c", "a b c d e f g h"]


def greedy_assignment(references, reconstructions):
    """Repeatedly takes the best remaining (reference, reconstruction) pair by ROUGE-1."""
    scores = rouge_matrix(references, reconstructions)
    out, used_rows, used_cols = {}, set(), set()
    pairs = sorted(
        ((scores[i, j], i, j) for i in range(len(references)) for j in range(len(reconstructions))),
        key=lambda t: -t[0],
    )
    for _, i, j in pairs:
        if i not in used_rows and j not in used_cols:
            out[i] = j
            used_rows.add(i)
            used_cols.add(j)
    return tuple(out.get(i) for i in range(len(references)))


def total(references, reconstructions, assignment):
    scores = rouge_matrix(references, reconstructions)
    return sum(scores[i, j] for i, j in enumerate(assignment) if j is not None)


def test_hungarian_beats_greedy_where_greedy_fails():
    # F("a b c d", "a b c") = 6/7 is the single best pair, so greedy takes it and leaves
    # "a b" with the long guess (F = 0.4): 1.257 in all. Crossing them gives 0.8 + 0.667 = 1.467.
    greedy = greedy_assignment(REFERENCES, RECONSTRUCTIONS)
    hungarian = hungarian_assignment(REFERENCES, RECONSTRUCTIONS)
    assert greedy == (0, 1)
    assert hungarian == (1, 0)
    best = total(REFERENCES, RECONSTRUCTIONS, hungarian)
    assert best == pytest.approx(80 + 200 / 3)
    assert best > total(REFERENCES, RECONSTRUCTIONS, greedy) + 20


def test_hungarian_handles_unequal_counts():
    assert hungarian_assignment(["x y", "a b", "c d"], ["c d", "a b"]) == (None, 1, 0)
    assert hungarian_assignment(["a b"], ["z", "a b", "a"]) == (1,)
    assert hungarian_assignment(["a b"], []) == (None,)


def test_dager_matching_is_not_a_bijection():
    references = ["the cat sat on", "the cat sat"]
    reconstructions = ["the cat sat on", "dogs"]
    assert dager_assignment(references, reconstructions) == (0, 0)
    assert hungarian_assignment(references, reconstructions) == (0, 1)


def test_dager_matching_counts_padding_and_breaks_ties_first():
    # Everything is padded to 3 tokens: "a b _" shares no token with "x y z" but one
    # pad-vs-pad position with "q _ _", so the reference code's padding picks "q".
    assert dager_assignment(["a b", "k l m"], ["x y z", "q"]) == (1, 0)
    # "x y _" and "q _ _" both share one pad position with "a b _": the tie goes to the first.
    assert dager_assignment(["a b", "k"], ["x y", "q"]) == (0, 1)


def test_dager_matching_only_considers_the_first_batch_size_reconstructions():
    assert dager_assignment(["a b", "c d"], ["x", "y", "a b"]) == (0, 0)
    assert hungarian_assignment(["a b", "c d"], ["x", "y", "a b"])[0] == 2


def test_dager_matching_uses_token_ids_when_given():
    assignment = dager_assignment(
        ["one", "two"],
        ["uno", "dos"],
        reference_tokens=[[5, 6, 7], [8, 9]],
        reconstruction_tokens=[[8, 9], [5, 6, 7]],
    )
    assert assignment == (1, 0)
    with pytest.raises(GradleakError, match="token lists"):
        dager_assignment(["one"], ["uno"], reference_tokens=[[1], [2]])


def test_assign_dispatches_and_lists_choices():
    assert assign(REFERENCES, RECONSTRUCTIONS, matching="dager") == dager_assignment(
        REFERENCES, RECONSTRUCTIONS
    )
    with pytest.raises(UnknownSpecError, match="dager.*hungarian"):
        assign(REFERENCES, RECONSTRUCTIONS, matching="greedy")
