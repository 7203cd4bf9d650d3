"""ROUGE values on hand-checked examples."""

from __future__ import annotations

import pytest

from gradleak.errors import UnknownSpecError
from gradleak.scoring import RougeScores, rouge_matrix, rouge_scores


def test_identical_texts_score_100_and_disjoint_texts_0():
    assert rouge_scores("The cat sat.", "the cat sat") == RougeScores(100.0, 100.0, 100.0)
    assert rouge_scores("the cat sat", "dogs bark loudly") == RougeScores(0.0, 0.0, 0.0)


def test_partial_overlap_by_hand():
    # Unigrams: 5 of 6 shared (the x2, cat, on, mat) -> P = R = F = 5/6.
    # Bigrams: "the cat", "on the", "the mat" shared of 5 each -> 3/5.
    # LCS: "the cat on the mat" = 5 tokens of 6 -> 5/6.
    scores = rouge_scores("the cat sat on the mat", "the cat lay on the mat")
    assert scores.rouge1 == pytest.approx(500 / 6)
    assert scores.rouge2 == pytest.approx(60.0)
    assert scores.rougeL == pytest.approx(500 / 6)


def test_unequal_lengths_by_hand():
    # Reference 4 tokens, guess 2 tokens, both shared: P = 1, R = 1/2, F = 2/3.
    scores = rouge_scores("a quick brown fox", "quick fox")
    assert scores.rouge1 == pytest.approx(200 / 3)
    assert scores.rouge2 == 0.0  # "quick fox" is not a bigram of the reference


def test_single_word_rouge2_artifact_and_stemming_option():
    assert rouge_scores("great", "great") == RougeScores(100.0, 0.0, 100.0)
    assert rouge_scores("cats running", "cat run").rouge1 == 0.0
    assert rouge_scores("cats running", "cat run", use_stemmer=True).rouge1 == 100.0


def test_rouge_matrix_shape_and_type_check():
    matrix = rouge_matrix(["a b", "c d", "e"], ["a b", "c"])
    assert matrix.shape == (3, 2)
    assert matrix[0, 0] == 100.0 and matrix[1, 1] == pytest.approx(200 / 3) and matrix[2].sum() == 0
    with pytest.raises(UnknownSpecError, match="rouge_type"):
        rouge_matrix(["a"], ["a"], rouge_type="rougeLsum")
