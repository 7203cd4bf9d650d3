"""The encoder search: embedding gradients place tokens, joint moves escape mixtures, rows end the search,
peeling clears the way."""

from __future__ import annotations

import pytest
import torch

from gradleak.attacks.dager import Dager, encoder
from gradleak.attacks.dager.tokens import likely_sets, position_weights
from gradleak.client import Exposure, compute_update
from gradleak.data import Batch, load_texts, sample_batches
from gradleak.models import load_model

# Same length, no token repeated except [CLS], "." and [SEP], each at one position in both.
SAME_LENGTH = ("Call Maria at noon.", "Send Tom the rent.")


@pytest.fixture(scope="module")
def minilm():
    return load_model("minilm")


def update_for(public, texts, **client):
    return compute_update(public, Batch(texts=tuple(texts), labels=tuple(i % 2 for i in range(len(texts)))),
                          **client)


def test_position_weights_place_each_token_where_it_stands(minilm):
    ids = [minilm.tokenizer(t)["input_ids"] for t in SAME_LENGTH]
    length = len(ids[0])
    assert all(len(i) == length for i in ids)
    bag, weights = position_weights(minilm.family, update_for(minilm, SAME_LENGTH).gradients(), length)
    expected = torch.zeros(len(bag), length, dtype=torch.float64)
    for sentence in ids:
        for position, token in enumerate(sentence):
            expected[int(torch.nonzero(bag == token)[0, 0]), position] = 1.0
    torch.testing.assert_close(weights, expected, atol=1e-3, rtol=0)


def test_position_weights_need_both_embedding_gradients(minilm):
    blocks_only = update_for(minilm, SAME_LENGTH, exposure=Exposure.parse("blocks=0,1"))
    assert position_weights(minilm.family, blocks_only.gradients(), 7) is None


def test_likely_sets_keep_placed_and_repeated_tokens():
    sets = (torch.tensor([10, 11, 12]), torch.tensor([10, 11, 12]))
    bag = torch.tensor([10, 11, 12])
    weights = torch.tensor([[1.0, 0.0], [0.0, 0.99], [0.3, 0.4]], dtype=torch.float64)  # 12 peaks at 0.4: repeated
    first, second = likely_sets(sets, bag, weights)
    assert first.tolist() == [10, 12] and second.tolist() == [11, 12]


def test_joint_change_applies_the_changes_that_cancel_the_off_span_part():
    generator = torch.Generator().manual_seed(0)
    current = torch.tensor([1, 5, 6, 7, 2])
    variants, positions = encoder._single_changes(current, [torch.tensor([5, 8]), torch.tensor([6, 9]),
                                                            torch.tensor([7, 4])])
    assert positions.tolist() == [1, 2, 3]
    effects_alone = torch.randn(len(variants), 5, 12, generator=generator)
    off = -(effects_alone[0] + effects_alone[2])  # the truth changes positions 1 and 3
    joint = encoder._joint_change(current, off, off + effects_alone, variants, positions)
    assert joint.tolist() == [1, 8, 6, 4, 2]


@pytest.mark.slow
@pytest.mark.shared
@pytest.mark.parametrize(("n_batches", "index"), [(5, 0), (5, 1), (10, 3), (10, 4)])
def test_rotten_tomatoes_batches_of_four_are_recovered_exactly(shared_dir, minilm, n_batches, index):
    """DAGER's Rotten Tomatoes batches of 4 (the paper's BERT scores 66.8). Batches 3 and 4 of 10
    (lengths 16 to 52) have about as many rows as distinct tokens plus positions, so block 0 places
    tokens poorly; before each sentence found was peeled off, they did not finish in 20 minutes."""
    batch = sample_batches(load_texts("rotten_tomatoes", split="train"), protocol="dager", batch_size=4,
                           n_batches=n_batches)[index]
    result = Dager().reconstruct(minilm, compute_update(minilm, batch))
    truth = sorted(tuple(minilm.tokenizer(t)["input_ids"]) for t in batch.texts)
    assert sorted(s.token_ids for s in result.sequences) == truth
    assert result.certified and result.reason is None
