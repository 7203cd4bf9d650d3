"""The layer-span search in the public model's next-token order: exactly the full scan's answer,
certified only where every row is explained, whatever the order is worth."""

from __future__ import annotations

import pytest
import torch

from gradleak.attacks import create_attack
from gradleak.attacks.layer_span import LayerSpanConfig
from gradleak.attacks.layer_span import attack as layer_span_attack
from gradleak.attacks.verdict import CauseKind
from gradleak.client import Exposure, compute_update
from gradleak.data import Batch
from gradleak.models import load_model

# A 4-block LLaMA with SmolLM2's tokenizer cut to its first 1,500 tokens, so that the full scan
# this is compared with stays quick; every token of the texts below is among them.
LLAMA = (
    "random:llama?num_hidden_layers=4&hidden_size=64&intermediate_size=128"
    "&num_attention_heads=4&num_key_value_heads=2&vocab_size=1500"
)
ONE = ("the man is on the way to work.",)
TWO = ("I will be there for you.", "I will see you at the end.")  # they share "I will"
EXPOSE = "blocks=1 roles=mlp_out"


@pytest.fixture(scope="module")
def llama():
    return load_model(LLAMA)


def _update(public, texts):
    batch = Batch(texts=texts, labels=tuple(1 for _ in texts))
    return compute_update(public, batch, exposure=Exposure.parse(EXPOSE))


def _truth(public, texts):
    return {tuple(public.tokenizer(t)["input_ids"]) for t in texts}


def _answer(result):
    return [(s.token_ids, s.certified) for s in result.sequences]


class _Ranking:
    """A stand-in for the public model's ranking that knows the batch: ``good`` puts each true
    next token first, otherwise last; ``good_until`` positions are ranked well, later ones badly."""

    def __init__(self, truth, vocab: int, *, good_until: int) -> None:
        self.truth, self.vocab, self.good_until = truth, vocab, good_until
        self.ends = torch.zeros(0, dtype=torch.long)

    def start(self, prefixes):
        orders = torch.stack([self._order(tuple(p)) for p in prefixes])
        return orders, _State(list(map(tuple, prefixes)))

    def extend(self, state, tokens):
        return self.start([p + (int(t),) for p, t in zip(state.prefixes, tokens, strict=True)])

    def _order(self, prefix):
        n = len(prefix)
        true = {seq[n] for seq in self.truth if len(seq) > n and seq[:n] == prefix}
        rest = [t for t in range(self.vocab) if t not in true]
        head = sorted(true)
        return torch.tensor(head + rest if n < self.good_until else rest + head)


class _State:
    def __init__(self, prefixes) -> None:
        self.prefixes = prefixes

    def select(self, index):
        return _State([self.prefixes[int(i)] for i in index])


def _with_ranking(monkeypatch, public, texts, *, good_until: int) -> None:
    truth, vocab = _truth(public, texts), public.family.embedding().num_embeddings
    monkeypatch.setattr(
        layer_span_attack,
        "NextTokenRanking",
        lambda *_: _Ranking(truth, vocab, good_until=good_until),
    )


@pytest.mark.parametrize("texts", [ONE, TWO])
def test_the_models_own_order_returns_exactly_what_the_full_scan_returns(llama, texts):
    # A random-init model's ranking is useless: every token is found by widening.
    update = _update(llama, texts)
    ordered = create_attack("layer-span").reconstruct(llama, update)
    scanned = create_attack("layer-span", order="none").reconstruct(llama, update)
    assert ordered.diagnostics["order"] == "lm"
    assert _answer(ordered) == _answer(scanned)
    assert {ids for ids, _ in _answer(ordered)} == _truth(llama, texts)
    assert ordered.certified and ordered.diagnostics["tau"] == scanned.diagnostics["tau"]


@pytest.mark.parametrize("texts", [ONE, TWO])
def test_a_good_order_stops_at_the_head_and_a_bad_one_still_finds_everything(
    llama, texts, monkeypatch
):
    update = _update(llama, texts)
    _with_ranking(monkeypatch, llama, texts, good_until=99)
    good = create_attack("layer-span").reconstruct(llama, update)
    _with_ranking(monkeypatch, llama, texts, good_until=0)
    bad = create_attack("layer-span").reconstruct(llama, update)
    assert {ids for ids, _ in _answer(good)} == _truth(llama, texts)
    assert _answer(good) == _answer(bad) and good.certified and bad.certified
    # A good order never widens a prefix: the rows are explained where the batch ends.
    assert good.diagnostics["widened"] == 0
    assert bad.diagnostics["tested"] > 5 * good.diagnostics["tested"]


def test_rows_left_unexplained_are_never_certified(llama, monkeypatch):
    # Good at the first position only, and no full scan: the search proves the first token and
    # cannot show the rest, so nothing is certified and the causes say why.
    update = _update(llama, ONE)
    _with_ranking(monkeypatch, llama, ONE, good_until=1)
    result = create_attack("layer-span", tiers=(8, 64), full_scan=False).reconstruct(llama, update)
    assert [len(s.token_ids) for s in result.sequences] == [1]
    assert not result.certified
    assert [c.kind for c in result.sequences[0].assurance.causes] == [CauseKind.MAY_CONTINUE]
    assert any(c.kind is CauseKind.MISSING_SEQUENCES for c in result.causes)


def test_the_settings_are_checked():
    assert LayerSpanConfig(tiers=[16, 128]).tiers == (16, 128)  # a YAML list
    assert LayerSpanConfig(tiers=64).tiers == (64,)
    for bad in ({"tiers": (128, 16)}, {"tiers": ()}, {"order": "random"}, {"reference": 0}):
        with pytest.raises(ValueError, match="LayerSpanConfig"):
            LayerSpanConfig(**bad)


def test_the_whole_vocabulary_scan_counts_rows_within_the_threshold_of_the_last_as_repeats(
    llama, monkeypatch
):
    """Deep in a model a run of one token repeats its row only to ~5e-6; the full scan
    (order=none) must treat rows closer than its threshold as no new evidence, as the ordered
    search does, or it certifies such runs."""
    seen = []
    search = layer_span_attack.search_prefixes

    def spy(gates, **kwargs):
        seen.extend(gates)
        return search(gates, **kwargs)

    monkeypatch.setattr(layer_span_attack, "search_prefixes", spy)
    result = create_attack("layer-span", order="none").reconstruct(llama, _update(llama, ONE))
    assert seen and seen[-1].same_row == max(layer_span_attack.SAME_ROW, seen[-1].threshold)
    assert seen[-1].same_row > layer_span_attack.SAME_ROW
    assert [ids for ids, certified in _answer(result) if certified] == sorted(_truth(llama, ONE))
