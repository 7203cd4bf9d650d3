"""DAGER on LoRA updates: the A factor's gradient spans the layer inputs (needs tokens < rank)."""

from __future__ import annotations

import time

import pytest

from gradleak.attacks.dager import Dager
from gradleak.attacks.dager.adapters import adapters_only, read_adapters
from gradleak.attacks.verdict import CauseKind
from gradleak.client import ClientSettings, prepare_model, simulate_update
from gradleak.data import Batch
from gradleak.models import load_model

pytest.importorskip("peft")

GPT2 = "random:gpt2?n_layer=3&n_embd=128&n_head=4&n_positions=64"
TEXTS = ("Call Maria at noon.", "The rent is due.")


def test_trained_adapter_update_is_inverted_exactly():
    settings = ClientSettings(lora_rank=32, lora_warmup_steps=3)
    start = prepare_model(load_model(GPT2), settings)
    update = simulate_update(start, Batch(texts=TEXTS, labels=(0, 1)), settings=settings)
    assert all(".lora_" in name for name in update.tensors)
    result = Dager().reconstruct(start, update)
    truth = sorted(tuple(start.tokenizer(t)["input_ids"]) for t in TEXTS)
    assert sorted(s.token_ids for s in result.sequences) == truth and result.certified


LLAMA = (
    "random:llama?num_hidden_layers=3&hidden_size=64&intermediate_size=128"
    "&num_attention_heads=4&num_key_value_heads=2"
)
SHORT = ("Call Maria at noon.", "The rent is due.")


def _attack(spec: str, texts, *, rank: int, warmup: int):
    settings = ClientSettings(lora_rank=rank, lora_warmup_steps=warmup)
    start = prepare_model(load_model(spec), settings)
    labels = tuple(i % 2 for i in range(len(texts)))
    update = simulate_update(start, Batch(texts=texts, labels=labels), settings=settings)
    truth = sorted(tuple(start.tokenizer(t)["input_ids"]) for t in texts)
    return start, update, Dager().reconstruct(start, update), truth


def test_adapters_are_read_off_the_update_with_their_round():
    settings = ClientSettings(lora_rank=4)
    start = prepare_model(load_model(LLAMA), settings)
    update = simulate_update(start, Batch(texts=SHORT, labels=(0, 1)), settings=settings)
    adapters = read_adapters(start, update.gradients())
    assert {a.layer.role for a in adapters} == {"q", "v"}
    assert len(adapters) == 2 * start.family.num_blocks
    assert all(a.rank == 4 and a.first_round for a in adapters)
    assert adapters_only(start.family, update.gradients())


def test_trained_llama_adapter_below_the_limit_is_exact_and_batch_size_read():
    start, update, result, truth = _attack(LLAMA, SHORT, rank=24, warmup=3)
    assert sorted(s.token_ids for s in result.sequences) == truth and result.certified
    assert "adapter" in result.diagnostics["batch_size"]["source"]


def test_first_round_is_read_through_the_known_a_factor_and_not_certified():
    start, update, result, truth = _attack(LLAMA, SHORT[:1], rank=24, warmup=0)
    assert [s.token_ids for s in result.sequences] == truth
    assert not result.certified
    kinds = {c.kind for s in result.sequences for c in s.assurance.causes}
    assert CauseKind.PROJECTED in kinds


@pytest.mark.parametrize("spec", [LLAMA, GPT2])
def test_past_the_rank_limit_answers_fast_with_at_most_the_batch(spec):
    started = time.perf_counter()
    start, update, result, truth = _attack(spec, SHORT, rank=2, warmup=3)
    assert time.perf_counter() - started < 60
    assert result.diagnostics["search"] == "pursuit"
    assert 0 < len(result.sequences) <= len(SHORT)
    assert not any(s.certified for s in result.sequences)
    assert all(CauseKind.PURSUIT in {c.kind for c in s.assurance.causes} for s in result.sequences)


def test_rotary_pursuit_reads_the_batch_bag_of_tokens_and_orders_it_by_the_prior():
    start, update, result, truth = _attack(LLAMA, SHORT, rank=2, warmup=3)
    bag = {t for ids in truth for t in ids}
    found = [t for s in result.sequences for t in s.token_ids]
    assert sorted(found) == sorted(bag)  # every token once, shared out between the sentences
    assert len(result.sequences) == len(SHORT)  # the batch size the last query adapter shows


def test_first_round_past_the_limit_says_why_nothing_is_read():
    start, update, result, truth = _attack(LLAMA, SHORT, rank=2, warmup=0)
    assert result.sequences == ()
    assert CauseKind.UNSUPPORTED in {c.kind for c in result.causes}
    assert any("first LoRA round" in c.message() for c in result.causes)


WIDER = (
    "random:llama?num_hidden_layers=3&hidden_size=128&intermediate_size=256"
    "&num_attention_heads=4&num_key_value_heads=2"
)
LONGER = ("Call Maria at noon tomorrow please.", "The rent is due on friday evening.")


def test_span_fit_past_block_0_starts_the_bag_sentences_with_the_batch_first_tokens():
    from gradleak.attacks.dager.bag_order import order_bag
    from gradleak.attacks.dager.span_fit import span_fits
    from gradleak.scoring.metrics import score_batch

    settings = ClientSettings(lora_rank=4, lora_warmup_steps=3)
    start = prepare_model(load_model(WIDER), settings)
    update = simulate_update(start, Batch(texts=LONGER, labels=(0, 1)), settings=settings)
    truth = [start.tokenizer(t)["input_ids"] for t in LONGER]
    bag = tuple(sorted({t for ids in truth for t in ids}))
    fits = span_fits(start, update.gradients())
    assert [f.layer.block for f in fits] == [1]
    fitted = order_bag(start, bag, 2, fits=fits, prior=False)
    blind = order_bag(start, bag, 2, prior=False)  # no evidence: the bag's own order
    # A first token's block-1 row depends on that token alone: the fit picks the true ones.
    assert {s[0] for s in fitted} == {ids[0] for ids in truth}
    assert sorted(t for s in fitted for t in s) == sorted(bag)

    def rouge1(groups):
        return score_batch(list(LONGER), [start.tokenizer.decode(g) for g in groups]).rouge1

    assert rouge1(fitted) > rouge1(blind)


def test_span_fit_reads_blocks_from_1_through_half_the_depth():
    from gradleak.attacks.dager.span_fit import fit_blocks

    assert fit_blocks(30) == tuple(range(1, 16))
    assert fit_blocks(3) == (1,)
    assert fit_blocks(1) == (1,)  # no block 1: span_fits then finds no adapter there


def test_the_last_query_adapter_shows_where_each_sequence_ends():
    from gradleak.attacks.dager.ends import end_test

    settings = ClientSettings(lora_rank=8, lora_warmup_steps=3)
    start = prepare_model(load_model(LLAMA), settings)
    update = simulate_update(start, Batch(texts=SHORT, labels=(0, 1)), settings=settings)
    test = end_test(start, update.gradients())
    assert test is not None and test.basis.shape[0] == len(SHORT)
    for text in SHORT:
        ids = tuple(start.tokenizer(text)["input_ids"])
        assert test.whole(start, ids) == len(ids)
        assert test.whole(start, (*ids, ids[-1])) == len(ids)  # one repeat too far: cut back
        assert test.whole(start, ids[:-1]) is None  # cut short: no prefix ends a sentence


def test_end_descent_restores_sentences_a_few_edits_from_the_truth():
    from gradleak.attacks.dager.end_descent import FinalRows, descend
    from gradleak.attacks.dager.ends import end_test

    settings = ClientSettings(lora_rank=4, lora_warmup_steps=3)
    start = prepare_model(load_model(WIDER), settings)
    update = simulate_update(start, Batch(texts=LONGER, labels=(0, 1)), settings=settings)
    test = end_test(start, update.gradients())
    assert test is not None and test.basis.shape[0] == len(LONGER)
    truth = [tuple(start.tokenizer(t)["input_ids"]) for t in LONGER]
    first, second = list(truth[0]), list(truth[1])
    first[1], first[4] = first[4], first[1]  # two tokens swapped
    second.insert(2, second.pop(6))  # one token moved
    seeds = [tuple(first), tuple(second)]
    bag = sorted({t for ids in truth for t in ids})
    rows = FinalRows(start, test)
    assert min(rows.scores(seeds)) > -2  # both far off the span: the truth's are below -4
    found, scores = descend(start, test, seeds, bag, seconds=60.0)
    assert found == truth and max(scores) < -4
