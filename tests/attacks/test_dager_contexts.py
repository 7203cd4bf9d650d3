"""The encoder search's steer: block 0's attention output from each (token, position)'s q, k, v."""

from __future__ import annotations

import pytest
import torch
from helpers import TINY

from gradleak.attacks.dager import encoder
from gradleak.attacks.dager.contexts import PairRows, SentenceContexts
from gradleak.attacks.dager.oracle import build_oracle
from gradleak.client import compute_update
from gradleak.data import Batch
from gradleak.models import load_model

TEXTS = ("the film is a charming and often funny ride .", "a dull , tired and hollow plot .")
OTHER = ("Call Maria at noon.", "Send Tom the rent.")


@pytest.fixture(scope="module")
def minilm():
    return load_model("minilm")


def gradients_of(public, texts):
    batch = Batch(texts=tuple(texts), labels=tuple(i % 2 for i in range(len(texts))))
    return compute_update(public, batch).gradients()


def contexts_of(public, gradients, heads=None):
    oracle = build_oracle(public.family, gradients, 0, roles=("o",))
    heads = heads or public.family.model.config.num_attention_heads
    return oracle, SentenceContexts(oracle, PairRows(public.family, heads))


def ids_of(public, text):
    return torch.tensor(public.tokenizer(text)["input_ids"])


def test_rows_and_single_changes_match_the_probe(minilm):
    oracle, contexts = contexts_of(minilm, gradients_of(minilm, TEXTS))
    truth = ids_of(minilm, TEXTS[0])
    assert contexts.agrees(truth[None])
    bag = torch.unique(torch.cat([ids_of(minilm, t) for t in TEXTS]))
    current = truth.clone()
    current[3] = int(bag[0])  # one token wrong: its fix is among the changes
    options = [bag for _ in range(len(truth) - 2)]
    variants, positions = encoder._single_changes(current, options)
    probed = encoder._off_span(oracle, variants, 4096)
    whole = contexts.off_span(variants)
    changed = contexts.changes(current, positions, variants[torch.arange(len(variants)), positions])
    above_noise = encoder._score(probed) > -4  # the fix's rows sit at float noise
    for ours in (whole, changed):
        assert (ours.norm(dim=-1) - probed.norm(dim=-1)).abs().max() < 1e-5
        gap = encoder._score(ours) - encoder._score(probed)
        assert gap[above_noise].abs().max() < 1e-4 and above_noise.sum() == len(variants) - 1
    fix = int(torch.nonzero((variants == truth).all(dim=1))[0, 0])
    assert int(torch.argmin(encoder._score(changed))) == fix
    assert float(changed[fix].norm(dim=-1).max()) < 1e-4


def test_a_wrong_reading_of_the_attention_disagrees_with_the_probe(minilm):
    _, contexts = contexts_of(minilm, gradients_of(minilm, TEXTS), heads=6)  # MiniLM has 12
    assert not contexts.agrees(ids_of(minilm, TEXTS[0])[None])


def test_attention_with_relative_positions_is_refused():
    public = load_model("random:t5?num_layers=2&d_model=32&d_ff=64&num_heads=2&d_kv=16")
    with pytest.raises(ValueError, match="learned positions"):
        PairRows(public.family, 2)


def test_the_steer_only_decides_where_to_look(minilm):
    """Steered by another batch's attention output, the descents find that batch's sentence; the
    sequence span of this batch tests it and keeps nothing."""
    _, steer = contexts_of(minilm, gradients_of(minilm, OTHER))
    sequence = build_oracle(minilm.family, gradients_of(minilm, TEXTS), 1)
    other = ids_of(minilm, OTHER[0])
    sets = tuple(torch.unique(torch.tensor([int(t)])) for t in other)
    args = dict(tokenizer=minilm.tokenizer, threshold=1e-4, restarts=2, seed=0, chunk_size=4096)
    found, _ = encoder.search_sentences(sequence, sets, **args)
    assert found == []
    found, _ = encoder.search_sentences(sequence, sets, steer=steer, **args)
    assert found == []
    own = build_oracle(minilm.family, gradients_of(minilm, OTHER), 1)
    found, _ = encoder.search_sentences(own, sets, steer=steer, **args)
    assert [ids for ids, _ in found] == [tuple(other.tolist())]


def test_tiny_bert_contexts_agree():
    public = load_model(TINY["bert"])
    _, contexts = contexts_of(public, gradients_of(public, OTHER))
    sentences = torch.stack([ids_of(public, text)[:6] for text in OTHER])
    assert contexts.agrees(sentences)
