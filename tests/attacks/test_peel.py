"""Peeling a recovered sentence's share off an update leaves the gradient of the rest of the
batch."""

from __future__ import annotations

import pytest
import torch

from gradleak.attacks.peel import (
    PARALLEL_TOLERANCE,
    fit_share,
    fit_shares,
    peel,
    peel_fitting,
    subtract_shares,
)
from gradleak.client import Exposure, compute_update
from gradleak.data import Batch
from gradleak.models import load_model

TEXTS = ("Call Maria at noon.", "The rent is due on Friday.", "A quiet film about loss.")
LABELS = (1, 0, 1)


@pytest.fixture(scope="module")
def minilm():
    return load_model("minilm")


def flat(gradients):
    return torch.cat([gradients[name].flatten() for name in sorted(gradients)])


def ids_of(public, text):
    return tuple(public.tokenizer(text)["input_ids"])


def test_the_rest_is_the_gradient_of_the_other_sentences(minilm):
    whole = compute_update(minilm, Batch(texts=TEXTS, labels=LABELS)).gradients()
    rest_alone = compute_update(minilm, Batch(texts=TEXTS[1:], labels=LABELS[1:])).gradients()
    peeled = peel(minilm, whole, [ids_of(minilm, TEXTS[0])])
    assert peeled is not None
    rest, (share,) = peeled
    # A mean loss over three sentences weighs each by 1/3; the other two make 2/3 of their own
    # batch's mean.
    assert share.weight == pytest.approx(1 / 3, rel=1e-4)
    assert share.label == LABELS[0] and share.parallel_rows > 0
    got, expected = flat(rest), flat(rest_alone) * 2 / 3
    assert float((got - expected).norm()) <= 1e-5 * float(expected.norm())


def test_every_sentence_peeled_leaves_nothing(minilm):
    whole = compute_update(minilm, Batch(texts=TEXTS, labels=LABELS)).gradients()
    rest, shares = peel(minilm, whole, [ids_of(minilm, t) for t in TEXTS])
    assert [s.label for s in shares] == list(LABELS)
    assert float(flat(rest).norm()) <= 1e-5 * float(flat(whole).norm())


def test_a_sentence_one_token_off_does_not_peel(minilm):
    whole = compute_update(minilm, Batch(texts=TEXTS, labels=LABELS)).gradients()
    wrong = list(ids_of(minilm, TEXTS[0]))
    wrong[2] = ids_of(minilm, TEXTS[1])[2]  # a token the batch uses, elsewhere
    assert peel(minilm, whole, [wrong]) is None


def test_no_peel_without_the_token_embedding_gradient(minilm):
    blocks_only = compute_update(
        minilm, Batch(texts=TEXTS, labels=LABELS), exposure=Exposure.parse("blocks=0,1")
    )
    assert peel(minilm, blocks_only.gradients(), [ids_of(minilm, TEXTS[0])]) is None


def test_a_token_the_batch_never_used_does_not_peel(minilm):
    whole = compute_update(minilm, Batch(texts=TEXTS, labels=LABELS)).gradients()
    wrong = list(ids_of(minilm, TEXTS[0]))
    wrong[2] = ids_of(minilm, "Anna")[1]
    assert peel(minilm, whole, [wrong]) is None


def test_peel_fitting_takes_out_the_exact_candidates_and_skips_the_rest(minilm):
    whole = compute_update(minilm, Batch(texts=TEXTS, labels=LABELS)).gradients()
    truncated = ids_of(minilm, TEXTS[0])[:-2] + ids_of(minilm, TEXTS[0])[-1:]
    wrong = list(ids_of(minilm, TEXTS[2]))
    wrong[3] = ids_of(minilm, TEXTS[1])[3]
    rest, shares = peel_fitting(
        minilm, whole, [truncated, tuple(wrong), ids_of(minilm, TEXTS[2]), ids_of(minilm, TEXTS[0])]
    )
    assert [s.token_ids for s in shares] == [ids_of(minilm, TEXTS[2]), ids_of(minilm, TEXTS[0])]
    rest_alone = compute_update(minilm, Batch(texts=TEXTS[1:2], labels=LABELS[1:2])).gradients()
    got, expected = flat(rest), flat(rest_alone) / 3
    assert float((got - expected).norm()) <= 1e-5 * float(expected.norm())
    # The peeled sentences' own tokens leave the bag: their rows are zero, not rounding noise.
    table = rest[minilm.family.weight_name(minilm.family.embedding())]
    assert set(torch.nonzero(table.abs().amax(dim=1)).flatten().tolist()) == set(
        ids_of(minilm, TEXTS[1])
    )


def test_peel_fitting_retries_a_sentence_once_its_tokens_are_its_own(minilm):
    # Every token of the short sentence is also in the long one, so it only fits after the long one
    # is out.
    texts, labels = ("the film", "the film was good"), (0, 1)
    whole = compute_update(minilm, Batch(texts=texts, labels=labels)).gradients()
    rest, shares = peel_fitting(minilm, whole, [ids_of(minilm, t) for t in texts])
    assert [s.token_ids for s in shares] == [ids_of(minilm, texts[1]), ids_of(minilm, texts[0])]
    assert float(flat(rest).norm()) <= 1e-5 * float(flat(whole).norm())


def test_the_batched_fit_takes_the_exact_sentences_only(minilm):
    whole = compute_update(minilm, Batch(texts=TEXTS, labels=LABELS)).gradients()
    cut = ids_of(minilm, TEXTS[1])[:-2] + ids_of(minilm, TEXTS[1])[-1:]
    candidates = [
        ids_of(minilm, TEXTS[0]),
        cut,
        ids_of(minilm, TEXTS[2]),
        ids_of(minilm, "A quiet film about love."),
    ]
    fitted = [share.token_ids for share in fit_shares(minilm, whole, candidates)]
    assert fitted == [candidates[0], candidates[2]]


def test_the_batched_fit_gives_each_sentence_its_own_fits_share(minilm):
    whole = compute_update(minilm, Batch(texts=TEXTS, labels=LABELS)).gradients()
    cut = ids_of(minilm, TEXTS[1])[:-2] + ids_of(minilm, TEXTS[1])[-1:]
    candidates = [ids_of(minilm, TEXTS[0]), cut, ids_of(minilm, TEXTS[2])]
    batched = fit_shares(minilm, whole, candidates)
    single = [fitted[0] for ids in candidates if (fitted := fit_share(minilm, whole, ids))]
    assert [(s.token_ids, s.label, s.parallel_rows) for s in batched] == [
        (s.token_ids, s.label, s.parallel_rows) for s in single
    ]
    assert [s.weight for s in batched] == pytest.approx([s.weight for s in single], rel=1e-5)
    assert [s.weight for s in batched] == pytest.approx([1 / 3, 1 / 3], rel=1e-4)


@pytest.mark.parametrize("task", ["seq_class", "next_token"])
def test_shares_taken_out_together_match_peeling_one_by_one(tiny_models, task):
    # GPT-2's next-token head is its token table: each sentence's head-side rows count too.
    public = tiny_models("gpt2", task)
    texts = ("Call Maria at noon.", "The rent is due on Friday.", "A quiet film about loss.")
    whole = compute_update(public, Batch(texts=texts, labels=LABELS)).gradients()
    candidates = [ids_of(public, t) for t in texts[::2]]
    shares = fit_shares(public, whole, candidates)
    assert [s.token_ids for s in shares] == candidates
    together = {name: value.clone() for name, value in whole.items()}
    subtract_shares(public, together, shares)
    one_by_one = peel(public, whole, candidates)
    assert one_by_one is not None
    got, expected = flat(together), flat(one_by_one[0])
    # Each weight is a median over rows parallel to PARALLEL_TOLERANCE; one by one, the second
    # sentence is fitted on more rows (those the first left to it), so the weights may differ
    # within it (a tied head's softmax puts every sentence faintly on every row).
    assert float((got - expected).norm()) <= PARALLEL_TOLERANCE * float(expected.norm())
    if task == "seq_class":
        alone = compute_update(public, Batch(texts=texts[1:2], labels=LABELS[1:2])).gradients()
        assert float((got - flat(alone) / 3).norm()) <= 1e-5 * float(flat(alone).norm() / 3)


def test_a_candidate_holding_a_token_the_peels_emptied_is_not_tried_again(minilm, monkeypatch):
    texts, labels = ("the film", "the film was good"), (0, 1)
    whole = compute_update(minilm, Batch(texts=texts, labels=labels)).gradients()
    short, long = (ids_of(minilm, t) for t in texts)
    cut = long[:-2] + long[-1:]  # keeps "was", which only the long sentence uses
    tried = []

    def recording(public, gradients, candidates):
        tried.append(list(candidates))
        return fit_shares(public, gradients, candidates)

    monkeypatch.setattr("gradleak.attacks.peel.fit_shares", recording)
    _, shares = peel_fitting(minilm, whole, [short, cut, long])
    assert [s.token_ids for s in shares] == [long, short]
    assert tried == [[short, cut, long], [short]]
