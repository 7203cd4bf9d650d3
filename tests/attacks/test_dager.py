"""DAGER recovers every sequence exactly on each family, and says so honestly when it cannot."""

from __future__ import annotations

import pytest
import torch

from gradleak.attacks import CauseKind, create_attack
from gradleak.attacks.dager import Dager, DagerConfig
from gradleak.client import Exposure, compute_update
from gradleak.data import Batch
from gradleak.errors import GradientNotExposedError
from gradleak.models import load_model

SENTENCES = (
    "Call Maria at 555-0147 before noon.",
    "The rent is due on Friday, not Monday.",
    "ok",
    "Send the invoice for account 88-203 to Tom at the Elm Street office.",
)
GPT2_SMALL = "random:gpt2?n_layer=3&n_embd=128&n_head=4&n_positions=64"


def attack(public, texts, **client):
    update = compute_update(
        public, Batch(texts=tuple(texts), labels=tuple(i % 2 for i in range(len(texts)))), **client
    )
    return Dager().reconstruct(public, update)


def token_ids(public, texts):
    return sorted(tuple(public.tokenizer(t)["input_ids"]) for t in texts)


def assert_exact(public, texts, result):
    assert sorted(s.token_ids for s in result.sequences) == token_ids(public, texts), result.texts
    assert result.certified and result.reason is None


@pytest.fixture(scope="module")
def gpt2():
    return load_model(GPT2_SMALL)


@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2-135m")


@pytest.fixture(scope="module")
def minilm():
    return load_model("minilm")


def test_gpt2_mixed_lengths(gpt2):
    assert_exact(gpt2, SENTENCES[:3], attack(gpt2, SENTENCES[:3]))


@pytest.mark.parametrize("texts", [SENTENCES[:1], SENTENCES])
def test_smollm2(smollm2, texts):
    result = attack(smollm2, texts)
    assert_exact(smollm2, texts, result)
    assert set(result.diagnostics["seconds"]) == {"svd", "token_scan", "search"}


def test_smollm2_shared_prefix_and_repeated_tokens(smollm2):
    texts = ("no no no, not today", "no way", "Meet me at noon")
    assert_exact(smollm2, texts, attack(smollm2, texts))


@pytest.mark.parametrize("texts", [SENTENCES[:1], SENTENCES[:2]])
def test_minilm(minilm, texts):
    assert_exact(minilm, texts, attack(minilm, texts))


def test_encoder_search_stops_once_every_block1_row_is_accounted_for(minilm, monkeypatch):
    """Each encoder row depends on its whole sentence, so block 1's rank is the batch's total
    length."""
    from gradleak.attacks.dager import encoder
    from gradleak.attacks.dager import searches as dager_attack

    texts = SENTENCES[:2]
    update = compute_update(minilm, Batch(texts=texts, labels=(0, 1)))
    assert update.metadata.batch_size is None
    calls, seen_rows = [], []
    descend, search = encoder._descend, dager_attack.search_sentences
    monkeypatch.setattr(encoder, "_descend", lambda *a, **k: calls.append(1) or descend(*a, **k))

    def spy(*args, **kwargs):
        seen_rows.append(kwargs["rows"])
        return search(*args, **kwargs)

    monkeypatch.setattr(dager_attack, "search_sentences", spy)
    unpeeled = Dager(DagerConfig(peel=False))
    assert_exact(minilm, texts, unpeeled.reconstruct(minilm, update))
    assert seen_rows == [sum(len(ids) for ids in token_ids(minilm, texts))]
    counted = len(calls)
    monkeypatch.setattr(
        dager_attack, "search_sentences", lambda *a, **k: search(*a, **{**k, "rows": None})
    )
    assert_exact(minilm, texts, unpeeled.reconstruct(minilm, update))
    assert counted < len(calls) - counted


def test_peel_option_must_be_a_boolean():
    with pytest.raises(ValueError, match="peel must be true or false"):
        DagerConfig(peel="maybe")


def test_encoder_search_peels_each_sentence_it_finds(minilm, monkeypatch):
    """After a find, the search goes on against the gradient of the rest: block 1's rank drops by
    its length."""
    from gradleak.attacks.dager import searches as dager_attack

    texts = SENTENCES[:2]
    lengths = [len(ids) for ids in token_ids(minilm, texts)]
    seen_rows = []
    search = dager_attack.search_sentences

    def spy(*args, **kwargs):
        seen_rows.append(kwargs["rows"])
        return search(*args, **kwargs)

    monkeypatch.setattr(dager_attack, "search_sentences", spy)
    result = Dager().reconstruct(minilm, compute_update(minilm, Batch(texts=texts, labels=(0, 1))))
    assert_exact(minilm, texts, result)
    assert result.certified and result.reason is None
    assert seen_rows[0] == sum(lengths) and seen_rows[1] in lengths
    assert [round_["rank_left"] for round_ in result.diagnostics["peeled"]] == seen_rows[1:]


def test_disclosed_batch_size_ends_the_encoder_search(minilm, monkeypatch):
    from gradleak.attacks.dager import encoder
    from gradleak.attacks.dager import searches as dager_attack

    texts = SENTENCES[:2]
    update = compute_update(minilm, Batch(texts=texts, labels=(0, 1)), disclose_batch_size=True)
    calls = []
    descend, search = encoder._descend, dager_attack.search_sentences
    monkeypatch.setattr(encoder, "_descend", lambda *a, **k: calls.append(1) or descend(*a, **k))
    monkeypatch.setattr(
        dager_attack, "search_sentences", lambda *a, **k: search(*a, **{**k, "rows": None})
    )
    assert_exact(minilm, texts, Dager().reconstruct(minilm, update))
    disclosed = len(calls)
    assert_exact(
        minilm,
        texts,
        Dager().reconstruct(minilm, update.with_tensors(update.tensors, batch_size=None)),
    )
    assert disclosed < len(calls) - disclosed


def test_next_token_task_reads_each_last_token_from_the_head(gpt2):
    """The last token is only a target: no span sees it, the head's gradient proves it."""
    public = load_model(GPT2_SMALL, task="next_token")
    texts = SENTENCES[:2]
    result = attack(public, texts)
    assert_exact(public, texts, result)
    assert result.diagnostics["last_targets"] == "proved"


def test_next_token_without_the_head_is_never_certified(gpt2):
    public = load_model(GPT2_SMALL, task="next_token")
    batch = Batch(texts=SENTENCES[:2], labels=(0, 1))
    update = compute_update(public, batch, exposure=Exposure(blocks=(0, 1)))
    result = Dager().reconstruct(public, update)
    expected = sorted(ids[:-1] for ids in token_ids(public, SENTENCES[:2]))
    assert sorted(s.token_ids for s in result.sequences) == expected
    assert not any(s.certified for s in result.sequences)
    kinds = {c.kind for s in result.sequences for c in s.assurance.causes}
    assert kinds == {CauseKind.TOKEN_UNREAD}


def test_more_rows_than_hidden_size_is_best_effort(tiny_models):
    public = tiny_models("gpt2")  # d = 32
    result = attack(public, SENTENCES)
    assert not result.certified and "saturated" in result.reason
    assert not any(s.certified for s in result.sequences)


def test_missing_blocks_name_the_parameters(gpt2):
    batch = Batch(texts=SENTENCES[:1], labels=(1,))
    update = compute_update(gpt2, batch, exposure=Exposure(blocks=(0,)))
    with pytest.raises(GradientNotExposedError, match=r"transformer\.h\.1\.attn\.c_attn\.weight"):
        Dager().reconstruct(gpt2, update)


def test_empty_search_returns_an_empty_reconstruction(gpt2):
    update = compute_update(gpt2, Batch(texts=SENTENCES[:1], labels=(1,)))
    zeros = update.with_tensors({k: torch.zeros_like(v) for k, v in update.tensors.items()})
    result = Dager().reconstruct(gpt2, zeros)
    assert result.sequences == () and "no token passed" in result.reason


def test_registry_builds_dager_with_options():
    assert create_attack("dager", tau2=1e-3).config.tau2 == 1e-3


def test_the_embedding_bag_narrows_the_scan_past_the_threshold_positions(tiny_models):
    from gradleak.attacks.dager.spans import read_spans, vocabulary
    from gradleak.attacks.dager.tokens import embedding_bag, scan_tokens

    public = tiny_models("gpt2")
    update = compute_update(public, Batch(texts=("the cat sat on the mat",), labels=(1,)))
    gradients = update.gradients()
    spans = read_spans(public, gradients, vocabulary(public), DagerConfig(), min_gap=1.0)
    bag = embedding_bag(public.family, gradients)
    assert bag is not None
    options = dict(per_position=True, max_length=16, tau=None, chunk_size=4096)
    whole = scan_tokens(spans.token, vocabulary(public), **options)
    narrowed = scan_tokens(spans.token, vocabulary(public), later=bag, **options)
    assert narrowed.threshold == whole.threshold
    assert [s.tolist() for s in narrowed.sets] == [s.tolist() for s in whole.sets]
