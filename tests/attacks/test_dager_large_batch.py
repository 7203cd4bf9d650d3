"""Past the hidden-size limit DAGER's ranked search recovers most sentences, and certifies none of
them."""

from __future__ import annotations

import pytest
import torch

from gradleak.attacks.dager import Dager, DagerConfig, ranked
from gradleak.attacks.dager.ranked import robust_z
from gradleak.attacks.dager.tokens import embedding_bag
from gradleak.client import Exposure, compute_update
from gradleak.data import Batch, load_texts, sample_batches
from gradleak.models import load_model
from gradleak.scoring import score_batch

SENTENCES = (
    "Call Maria at 555-0147 before noon.",
    "The rent is due on Friday, not Monday.",
    "Send the invoice for account 88-203 to Tom at the Elm Street office.",
    "My new password is blue-harbor-42.",
    "Please do not share the test results with anyone yet.",
    "Her flight lands in Oslo at seven in the evening.",
)


def update_for(public, texts, **client):
    return compute_update(
        public, Batch(texts=tuple(texts), labels=tuple(i % 2 for i in range(len(texts)))), **client
    )


def test_embedding_gradient_gives_the_bag_of_tokens(tiny_models):
    public = tiny_models("gpt2")
    update = update_for(public, SENTENCES)
    expected = sorted({t for s in SENTENCES for t in public.tokenizer(s)["input_ids"]})
    assert embedding_bag(public.family, update.gradients()).tolist() == expected


def test_no_bag_without_the_embedding_gradient(tiny_models):
    public = tiny_models("gpt2")
    update = update_for(public, SENTENCES, exposure=Exposure(blocks=(0, 1)))
    assert embedding_bag(public.family, update.gradients()) is None


def test_robust_z_ignores_outliers():
    values = torch.tensor([0.0, 1.0, -1.0, 0.5, -0.5, -100.0])
    z = robust_z(values)
    assert z[-1] < -50 and z[:-1].abs().max() < 3


def test_weak_last_tokens_and_prefixes_of_kept_sequences_are_dropped():
    sequences = [
        ((1, 2, 3), (-20.0, -18.0, -60.0)),  # a finished sentence, its pooled last token strongest
        ((1, 2, 3, 9), (-20.0, -18.0, -60.0, -6.5)),  # a false token after its end
        ((1, 2), (-20.0, -18.0)),  # a prefix of the sentence
        ((4, 5), (-12.0, -11.0)),
    ]
    assert [ids for ids, _ in ranked._tidy(sequences)] == [(1, 2, 3), (4, 5)]


def test_a_full_frontier_keeps_the_best_mean_scores():
    scores = [(-20.0, -20.0), (-20.0, -7.0)]  # the second prefix took a weak token
    parent, column, z = torch.tensor([1, 0]), torch.tensor([5, 6]), torch.tensor([-12.0, -10.0])
    kept = ranked._surest(parent, column, z, scores, 1)
    assert kept[0].tolist() == [0] and kept[1].tolist() == [6]


@pytest.mark.parametrize("options", [{}, {"saturated": "cap"}], ids=["rank", "cap"])
def test_saturated_decoder_is_never_certified(tiny_models, options):
    public = tiny_models("gpt2")  # d = 32: six sentences are far more rows than that
    result = Dager(DagerConfig(**options)).reconstruct(public, update_for(public, SENTENCES))
    assert "saturated" in result.reason and not any(s.certified for s in result.sequences)
    assert (result.diagnostics.get("search") == "rank") == (options == {})
    if not options:
        assert (
            "ranked search" in result.reason
            and result.diagnostics["tokens"] == "embedding gradient"
        )


def test_ranked_sentences_that_fit_are_peeled_and_the_rest_goes_through_the_span_tests(
    tiny_models, monkeypatch
):
    public = tiny_models("gpt2")  # d = 32; the six sentences have 69 rows
    truth = [tuple(public.tokenizer(s)["input_ids"]) for s in SENTENCES]
    update = update_for(public, SENTENCES)
    # The first round stands in for a ranked search that got four sentences exact and cut or
    # garbled the other two; what follows (the fit, the peel, DAGER on the rest) is the real thing.
    cut, wrong = truth[0][:-3], (*truth[3][:4], truth[2][5], *truth[3][5:])
    exact = [truth[i] for i in (1, 2, 4, 5)]
    first = ranked.DecoderSearch(
        sequences=[(ids, (-9.0,) * len(ids)) for ids in (cut, *exact, wrong)]
    )
    calls = []

    def first_round_only(*args, **kwargs):
        calls.append(1)
        return first if len(calls) == 1 else ranked.DecoderSearch()

    monkeypatch.setattr("gradleak.attacks.dager.searches.search_ranked", first_round_only)
    result = Dager().reconstruct(public, update)
    assert len(calls) == 1  # 21 rows are left: the rest is no longer saturated
    assert [s.token_ids for s in result.sequences[:4]] == exact
    assert sorted(s.token_ids for s in result.sequences[4:]) == sorted([truth[0], truth[3]])
    assert (
        result.diagnostics["peeled"][0]["sentences"] == 4
        and result.diagnostics["rest"]["search"] == "prefix"
    )
    assert result.diagnostics["seconds"]["peeling"] > 0
    assert not any(s.certified for s in result.sequences) and "peeled" in result.reason


def test_without_peeling_the_ranked_search_is_the_answer(tiny_models, monkeypatch):
    public = tiny_models("gpt2")
    truth = [tuple(public.tokenizer(s)["input_ids"]) for s in SENTENCES]
    found = ranked.DecoderSearch(sequences=[(truth[1], (-9.0,) * len(truth[1]))])
    monkeypatch.setattr("gradleak.attacks.dager.searches.search_ranked", lambda *a, **k: found)
    result = Dager(DagerConfig(peel=False)).reconstruct(public, update_for(public, SENTENCES))
    assert [s.token_ids for s in result.sequences] == [
        truth[1]
    ] and "peeled" not in result.diagnostics


def test_ranked_search_needs_a_down_projection(tiny_models):
    public = tiny_models("gpt2")
    update = update_for(public, SENTENCES, exposure=Exposure(roles=("q", "k", "v")))
    result = Dager().reconstruct(public, update)
    assert result.diagnostics["search"] == "prefix" and not result.certified


def test_saturated_option_is_checked():
    with pytest.raises(ValueError, match="saturated must be one of rank, cap"):
        DagerConfig(saturated="beam")


@pytest.mark.slow
@pytest.mark.shared
def test_cola_128_sentences_past_the_hidden_size(shared_dir):
    """DAGER's first CoLA batch of 128 (1,175 tokens, 532 distinct) on a 768-wide GPT-2."""
    public = load_model("random:gpt2?n_layer=2")
    batch = sample_batches(
        load_texts("cola", split="train"), protocol="dager", batch_size=128, n_batches=3
    )[0]
    result = Dager().reconstruct(public, update_for(public, batch.texts))
    score = score_batch(batch.texts, result.texts)
    assert not any(s.certified for s in result.sequences)
    assert score.rouge1 >= 85, score.rouge1  # the paper's capped span: 30.3 on average
