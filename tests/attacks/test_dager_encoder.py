"""The encoder search: embedding gradients place tokens, joint moves escape mixtures, rows end the
search, peeling clears the way."""

from __future__ import annotations

import pytest
import torch
from helpers import TINY

from gradleak.attacks import CauseKind
from gradleak.attacks.budget import Deadline
from gradleak.attacks.dager import Dager, encoder
from gradleak.attacks.dager.oracle import build_oracle
from gradleak.attacks.dager.placement import TokenPlacement, place_tokens
from gradleak.client import Exposure, compute_update
from gradleak.data import Batch, load_texts, sample_batches
from gradleak.models import load_model

# Same length, no token repeated except [CLS], "." and [SEP], each at one position in both.
SAME_LENGTH = ("Call Maria at noon.", "Send Tom the rent.")


@pytest.fixture(scope="module")
def minilm():
    return load_model("minilm")


def update_for(public, texts, **client):
    return compute_update(
        public, Batch(texts=tuple(texts), labels=tuple(i % 2 for i in range(len(texts)))), **client
    )


def truth_sets(public, texts, positions):
    ids = [public.tokenizer(t)["input_ids"] for t in texts]
    return ids, [{sentence[p] for sentence in ids if p < len(sentence)} for p in range(positions)]


def test_placement_places_each_token_where_it_stands(minilm):
    ids, _ = truth_sets(minilm, SAME_LENGTH, 0)
    length = len(ids[0])
    assert all(len(i) == length for i in ids)
    placement = place_tokens(minilm.family, update_for(minilm, SAME_LENGTH).gradients(), length)
    expected = torch.zeros(len(placement.bag), length, dtype=torch.bool)
    for sentence in ids:
        for position, token in enumerate(sentence):
            expected[int(torch.nonzero(placement.bag == token)[0, 0]), position] = True
    assert torch.equal(placement.placed, expected)
    assert not placement.open_tokens.any() and not placement.open_positions.any()
    assert placement.lengths(minilm.tokenizer.sep_token_id) == (length,)


def test_placement_leaves_tokens_in_cycles_open_and_never_misplaces(minilm):
    """ "the" and "a" stand at two positions each, in sentences of different lengths."""
    texts = ("the cat saw a dog", "a dog saw the cat today", "one bird sang")
    ids, truth = truth_sets(minilm, texts, 8)
    placement = place_tokens(minilm.family, update_for(minilm, texts).gradients(), 8)
    for token, position in torch.nonzero(placement.placed).tolist():
        assert int(placement.bag[token]) in truth[position]
    assert placement.open_tokens.any()  # the sums alone cannot place a cycle
    candidates = placement.candidates(tuple(placement.bag for _ in range(8)))
    for position, tokens in enumerate(truth):
        assert tokens <= set(candidates[position].tolist())
    lengths = placement.lengths(minilm.tokenizer.sep_token_id)
    assert {len(i) for i in ids} <= set(lengths)
    assert len(lengths) < 8


def test_placement_needs_a_normalised_embedding_sum_and_both_gradients(minilm):
    blocks_only = update_for(minilm, SAME_LENGTH, exposure=Exposure.parse("blocks=0,1"))
    assert place_tokens(minilm.family, blocks_only.gradients(), 7) is None
    gpt2 = load_model(
        TINY["gpt2"]
    )  # its embedding sum enters block 0 unnormalised, beside a residual
    assert place_tokens(gpt2.family, update_for(gpt2, SAME_LENGTH).gradients(), 7) is None


def test_candidates_put_placed_tokens_first_and_open_tokens_only_at_open_positions():
    placement = TokenPlacement(
        bag=torch.tensor([10, 11, 12]),
        placed=torch.tensor([[True, False, False], [False, True, False], [False, False, False]]),
        open_tokens=torch.tensor([False, False, True]),
        open_positions=torch.tensor([False, True, True]),
        weights=torch.zeros(3, 3, dtype=torch.float64),
    )
    sets = tuple(torch.tensor([12, 11, 10]) for _ in range(3))
    assert [c.tolist() for c in placement.candidates(sets)] == [[10], [11, 12], [12]]
    assert sorted(placement.lengths(12)) == [2, 3]
    assert placement.lengths(11) == (2,)
    assert placement.lengths(99) == ()


def test_joint_change_applies_the_changes_that_cancel_the_off_span_part():
    generator = torch.Generator().manual_seed(0)
    current = torch.tensor([1, 5, 6, 7, 2])
    variants, positions = encoder._single_changes(
        current, [torch.tensor([5, 8]), torch.tensor([6, 9]), torch.tensor([7, 4])]
    )
    assert positions.tolist() == [1, 2, 3]
    effects_alone = torch.randn(len(variants), 5, 12, generator=generator)
    off = -(effects_alone[0] + effects_alone[2])  # the truth changes positions 1 and 3
    weights = encoder._joint_weights(off, off + effects_alone)
    joint = encoder._joint_change(current, weights, variants, positions)
    assert joint.tolist() == [1, 8, 6, 4, 2]


def test_a_stalled_round_tries_the_heaviest_changes_in_pairs():
    current = torch.tensor([1, 5, 6, 7, 2])
    variants, positions = encoder._single_changes(
        current, [torch.tensor([5, 8]), torch.tensor([6, 9]), torch.tensor([7, 4])]
    )
    weights = torch.tensor([0.45, 0.1, 0.4], dtype=torch.float64)  # no single weight above one half
    assert encoder._joint_change(current, weights, variants, positions).tolist() == current.tolist()
    pairs = encoder._pair_changes(current, weights, variants, positions)
    assert [1, 8, 6, 4, 2] in pairs.tolist() and len(pairs) == 3


@pytest.mark.slow
@pytest.mark.shared
@pytest.mark.parametrize(("n_batches", "index"), [(5, 0), (5, 1), (10, 3), (10, 4)])
def test_rotten_tomatoes_batches_of_four_are_recovered_exactly(
    shared_dir, minilm, n_batches, index
):
    """DAGER's Rotten Tomatoes batches of 4 (the paper's BERT scores 66.8). Batches 3 and 4 of 10
    (lengths 16 to 52) have about as many rows as distinct tokens plus positions, so block 0 places
    tokens poorly; before each sentence found was peeled off, they did not finish in 20 minutes."""
    batch = sample_batches(
        load_texts("rotten_tomatoes", split="train"),
        protocol="dager",
        batch_size=4,
        n_batches=n_batches,
    )[index]
    result = Dager().reconstruct(minilm, compute_update(minilm, batch))
    truth = sorted(tuple(minilm.tokenizer(t)["input_ids"]) for t in batch.texts)
    assert sorted(s.token_ids for s in result.sequences) == truth
    assert result.certified and result.reason is None


@pytest.mark.slow
@pytest.mark.shared
def test_a_rotten_tomatoes_batch_of_eight_is_recovered_exactly(shared_dir, minilm):
    """DAGER's first Rotten Tomatoes batch of 8 (lengths 9 to 50; the paper's BERT scores 37.1 at
    B = 8): 244 rows against 136 distinct tokens plus 50 positions, so block 0 passes 130 tokens at
    every position and only the embedding LayerNorm's placement steers the search."""
    batch = sample_batches(
        load_texts("rotten_tomatoes", split="train"), protocol="dager", batch_size=8, n_batches=10
    )[0]
    result = Dager().reconstruct(minilm, compute_update(minilm, batch))
    truth = sorted(tuple(minilm.tokenizer(t)["input_ids"]) for t in batch.texts)
    assert sorted(s.token_ids for s in result.sequences) == truth
    assert result.certified and result.reason is None


def test_the_gradient_ranks_the_fix_of_a_wrong_token_among_its_picks(minilm):
    """A ranked round evaluates only the single changes the score's gradient favours; with one
    token wrong, restoring it must be among them (out of several times as many changes)."""
    texts = ("the film is a charming and often funny ride .", "a dull , tired and hollow plot .")
    gradients = update_for(minilm, texts).gradients()
    oracle = build_oracle(minilm.family, gradients, 1)
    truth = torch.tensor(minilm.tokenizer(texts[0])["input_ids"])
    bag = torch.unique(torch.cat([torch.tensor(minilm.tokenizer(t)["input_ids"]) for t in texts]))
    options = [bag[(bag != truth[0]) & (bag != truth[-1])] for _ in range(len(truth) - 2)]
    for position in (2, 5):
        current = truth.clone()
        current[position] = int(options[0][options[0] != truth[position]][0])
        variants, positions = encoder._single_changes(current, options)
        assert len(variants) > 2 * encoder._RANKED[0]
        picks = encoder._likeliest_changes(oracle, current, variants, positions)[
            : encoder._RANKED[0]
        ]
        assert any(torch.equal(variants[i], truth) for i in picks.tolist())


def _nearest_and_own(public, texts, sentence):
    gradients = update_for(public, texts).gradients()
    oracle = build_oracle(public.family, gradients, 1)
    ids = tuple(public.tokenizer(sentence)["input_ids"])
    bag = torch.unique(
        torch.tensor([t for text in texts for t in public.tokenizer(text)["input_ids"]])
    )
    sets = tuple(bag for _ in ids)
    nearest = encoder.nearest_neighbour(
        oracle, ids, sets, tokenizer=public.tokenizer, chunk_size=4096
    )
    own = float(encoder._off_span(oracle, torch.tensor([ids]), 4096)[0].norm(dim=-1).max())
    return nearest, own


def test_a_true_sentence_stands_decades_below_its_neighbours_on_minilm(minilm):
    nearest, own = _nearest_and_own(minilm, SAME_LENGTH, SAME_LENGTH[0])
    assert nearest > 1e3 * own


def test_a_sentence_its_neighbours_fit_almost_as_well_is_not_certified():
    """A 32-wide random BERT: block 1's weakest directions sit near float noise, so sentences one
    token away fit its span within a decade of the true one; the test proves nothing there."""
    public = load_model(TINY["bert"])
    texts = ("Call Maria at 555-0147 before noon.", "The rent is due on Friday, not Monday.")
    nearest, own = _nearest_and_own(public, texts, texts[0])
    assert nearest < 10 * own
    result = Dager().reconstruct(public, update_for(public, texts))
    assert result.sequences and not any(s.certified for s in result.sequences)
    causes = {c.kind for s in result.sequences for c in s.assurance.causes}
    assert CauseKind.NO_SPECTRAL_GAP in causes


def test_a_descent_stops_when_the_deadline_has_passed(minilm):
    """One descent on a long sentence can take minutes: it checks the deadline every round."""
    gradients = update_for(minilm, SAME_LENGTH).gradients()
    oracle = build_oracle(minilm.family, gradients, 1)
    truth = minilm.tokenizer(SAME_LENGTH[0])["input_ids"]
    bag = torch.unique(torch.tensor(truth))
    start = [int(bag[0])] * (len(truth) - 2)
    options = [bag for _ in start]
    args = (oracle, truth[0], truth[-1], options, start, 4096)
    assert encoder._descend(*args, deadline=Deadline(1e-9))[0][1:-1] == tuple(start)
    assert encoder._descend(*args)[0] == tuple(truth)


def test_a_token_that_found_sentences_hold_at_a_position_may_stand_there_again(minilm):
    """Descents are steered off the tokens found sentences hold, but '.' and 'the' stand at one
    position in several sentences: with two sentences known (not peeled), the three left, two of
    them needing 'the' where a found one has it, are all found (ELECTRA-small, B = 16: two
    missed)."""
    texts = (
        "The code for the gate is 0921.",
        "Call the bank about my card.",
        "Meet me by the old bridge.",
        "Ask Sam about the new lease.",
        "The meeting moved to room four.",
    )
    gradients = update_for(minilm, texts).gradients()
    oracle = build_oracle(minilm.family, gradients, 1)
    ids = [tuple(minilm.tokenizer(text)["input_ids"]) for text in texts]
    sets = tuple(
        torch.tensor(sorted({s[p] for s in ids if p < len(s)})) for p in range(len(ids[0]))
    )
    known = [(s, encoder._residuals(oracle, s, 4096)) for s in ids[:2]]
    for seed in range(3):
        found, missing = encoder.search_sentences(
            oracle,
            sets,
            tokenizer=minilm.tokenizer,
            threshold=1e-4,  # true rows sit near 3e-7, one token off near 1e-3 (see above)
            restarts=2,
            seed=seed,
            chunk_size=4096,
            rows=sum(map(len, ids)),
            lengths=(len(ids[2]),),
            known=known,
        )
        assert sorted(f[0] for f in found) == sorted(ids) and not missing
