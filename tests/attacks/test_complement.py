"""Completing an exact prefix search that left rows unexplained with the ranked search."""

from __future__ import annotations

import pytest

from gradleak.attacks.base import Reconstruction, RecoveredSequence
from gradleak.attacks.dager.complement import complement, left_missing
from gradleak.attacks.verdict import CERTIFIED, Cause, CauseKind, best_effort

MISSING = Cause(CauseKind.MISSING_SEQUENCES, detail="rows unexplained")
RANKED = best_effort(Cause(CauseKind.RANKED, detail="0"))


def sequence(ids, assurance=CERTIFIED):
    return RecoveredSequence(tuple(ids), " ".join(map(str, ids)), assurance, (0.0,) * len(ids))


def exact_result(*sequences, causes=(MISSING,)):
    return Reconstruction("dager", sequences, causes=causes, diagnostics={"search": "prefix"})


def test_ranked_sentences_join_the_exact_ones_best_effort():
    exact = exact_result(sequence([1, 2, 3]))
    ranked = Reconstruction("dager", (sequence([1, 2, 3], RANKED), sequence([4, 5], RANKED)))
    merged = complement(exact, lambda: ranked)
    assert [s.token_ids for s in merged.sequences] == [(1, 2, 3), (4, 5)]
    assert merged.sequences[0].certified  # the exact search's verdict is kept
    assert not merged.sequences[1].certified
    assert not left_missing(merged)  # recounted against the batch size afterwards
    assert merged.diagnostics["complement"]["added"] == 1


@pytest.mark.parametrize("ranked", [None, Reconstruction("dager", ())])
def test_nothing_new_keeps_the_exact_result_and_its_missing_rows(ranked):
    exact = exact_result(sequence([1, 2, 3]))
    merged = complement(exact, lambda: ranked)
    assert merged.sequences == exact.sequences
    assert left_missing(merged)


def test_only_an_exact_search_that_states_missing_rows_is_completed():
    assert left_missing(exact_result(sequence([1])))
    assert not left_missing(exact_result(sequence([1]), causes=()))


SHALLOW_LLAMA = (
    "random:llama?num_hidden_layers=2&hidden_size=256&num_attention_heads=4"
    "&num_key_value_heads=2&intermediate_size=512"
)


@pytest.mark.slow
@pytest.mark.shared
def test_a_shallow_model_with_fewer_rows_than_its_width_is_searched_exactly(
    shared_dir, monkeypatch
):
    """The last block of a 2-block model sees most rows faintly: no spectral drop, yet the batch
    (~100 rows, width 256) is far from saturated. It must be searched exactly, completed by the
    ranked search, and answered with at most B sequences, every certified one exact."""
    from gradleak.attacks import create_attack
    from gradleak.client import simulate_update
    from gradleak.data.samplers import sample_batches
    from gradleak.data.sources import load_texts
    from gradleak.models import load_model

    monkeypatch.setenv("GRADLEAK_SHARED_DIR", str(shared_dir))
    public = load_model(SHALLOW_LLAMA, task="seq_class")
    source = load_texts("rotten_tomatoes")
    batch = sample_batches(source, protocol="dager", batch_size=4, n_batches=2, seed=101)[0]
    result = create_attack("dager").reconstruct(public, simulate_update(public, batch))
    truth = {tuple(public.tokenizer(text)["input_ids"]) for text in batch.texts}
    assert result.diagnostics["search"] == "prefix"
    assert not any(c.kind is CauseKind.SATURATED for c in result.all_causes)
    assert len(result.sequences) <= 4
    assert all(s.token_ids in truth for s in result.sequences if s.certified)
    assert any(s.certified for s in result.sequences)
