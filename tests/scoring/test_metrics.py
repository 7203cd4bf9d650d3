"""score_batch: means over references, unmatched ones, exact rate, token accuracy, specials."""

from __future__ import annotations

import pytest

import gradleak.scoring
from gradleak.errors import GradleakError
from gradleak.scoring import default_special_tokens, score_batch, strip_special_tokens


def test_perfect_reconstruction_in_any_order():
    refs = ["the cat sat on the mat", "hello there world"]
    score = score_batch(refs, list(reversed(refs)))
    assert (score.rouge1, score.rouge2, score.rougeL) == (100.0, 100.0, 100.0)
    assert score.exact_rate == 1.0 and score.token_accuracy == 1.0
    assert [p.reconstruction_index for p in score.pairs] == [1, 0]


def test_batch_value_is_the_mean_over_references_with_unmatched_zero():
    refs = ["the cat sat on the mat", "a b c", "never guessed"]
    score = score_batch(refs, ["a b c", "the cat lay on the mat"])
    assert score.rouge1 == pytest.approx((500 / 6 + 100 + 0) / 3)
    assert score.rouge2 == pytest.approx((60 + 100 + 0) / 3)
    assert score.exact_rate == pytest.approx(1 / 3)
    assert score.token_accuracy == pytest.approx((5 / 6 + 1 + 0) / 3)
    assert score.pairs[2].reconstruction_index is None and score.pairs[2].reconstruction == ""
    assert (score.n_references, score.n_reconstructions) == (3, 2)
    assert set(score.metrics()) == set(gradleak.scoring.METRIC_NAMES)


def test_exact_rate_normalises_whitespace_only():
    score = score_batch(["Hello  world "], [" Hello world"])
    assert score.exact_rate == 1.0
    assert score_batch(["Hello world"], ["hello world"]).exact_rate == 0.0


def test_token_accuracy_by_position_with_and_without_ids():
    score = score_batch(["a b c d"], ["a x c"])
    assert score.token_accuracy == pytest.approx(2 / 4)
    score = score_batch(
        ["ignored"], ["ignored"], reference_tokens=[[1, 2, 3]], reconstruction_tokens=[[1, 9, 3, 4]]
    )
    assert score.token_accuracy == pytest.approx(2 / 3)


def test_special_tokens_stripped_by_default_and_kept_on_request():
    refs, recs = ["[CLS] good movie [SEP]"], ["[CLS] bad film [SEP]"]
    stripped = score_batch(refs, recs)
    assert stripped.rouge1 == 0.0 and stripped.pairs[0].reference == " good movie "
    kept = score_batch(refs, recs, keep_special_tokens=True)
    assert kept.rouge1 == pytest.approx(50.0)  # "cls" and "sep" always match: 2 of 4 tokens
    custom = score_batch(["<bos>yes"], ["<bos>no"], special_tokens=["<bos>"])
    assert custom.rouge1 == 0.0
    ids = score_batch(
        ["x"],
        ["y"],
        special_token_ids=[0],
        reference_tokens=[[0, 5, 6]],
        reconstruction_tokens=[[0, 5, 7]],
    )
    assert ids.token_accuracy == pytest.approx(1 / 2)


def test_special_token_helpers():
    assert "<|endoftext|>" in default_special_tokens() and "[CLS]" in default_special_tokens()
    assert strip_special_tokens("<s><s>a</s>", ["<s>", "</s>"]) == "a"


def test_dager_matching_option_can_reuse_a_reconstruction():
    refs, recs = ["the cat sat on", "the cat sat"], ["the cat sat on", "dogs"]
    score = score_batch(refs, recs, matching="dager")
    assert [p.reconstruction_index for p in score.pairs] == [0, 0]
    assert score.matching == "dager" and score.rouge1 > 80


def test_score_batch_is_deterministic_and_needs_references():
    args = (["a b c", "c b a", "b"], ["b", "a b c", "c b a"])
    assert score_batch(*args) == score_batch(*args)
    with pytest.raises(GradleakError, match="at least one reference"):
        score_batch([], ["a"])


def test_every_public_name_imports():
    names = gradleak.scoring.__all__
    assert len(names) == len(set(names))
    for name in names:
        assert getattr(gradleak.scoring, name) is not None
