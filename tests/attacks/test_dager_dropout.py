"""DAGER against clients that trained with dropout on: where the mask sits, the mask fit, the
search end to end (tiny random models), and the plan that leaves train-mode-off updates alone."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from helpers import TINY

from gradleak.attacks.dager import Dager
from gradleak.attacks.dager.mask_scan import most_drops
from gradleak.attacks.dager.masks import MaskSpace, fit_masks, fit_robustly
from gradleak.attacks.dager.plan import SearchKind, plan_search, read_arithmetic
from gradleak.attacks.verdict import CauseKind
from gradleak.client import compute_update
from gradleak.data import Batch
from gradleak.models import load_model
from gradleak.models.dropout_site import input_dropout

GPT2 = "random:gpt2?n_layer=2&n_embd=64&n_head=2&n_positions=64"
BERT = "random:bert?num_hidden_layers=2&hidden_size=64&intermediate_size=128&num_attention_heads=2"
TEXTS = ("the cat sat on the mat today", "a dog ran far away from home")


@pytest.fixture(scope="module")
def gpt2():
    return load_model(GPT2)


@pytest.fixture(scope="module")
def bert():
    return load_model(BERT)


def dropout_update(public, texts=TEXTS, *, seed=0):
    torch.manual_seed(seed)
    batch = Batch(texts=tuple(texts), labels=tuple(i % 2 for i in range(len(texts))))
    return compute_update(public, batch, train_mode=True)


def test_the_dropout_site_is_read_from_the_forward_order(gpt2, bert):
    gpt2_site, bert_site = input_dropout(gpt2.family), input_dropout(bert.family)
    assert gpt2_site is not None and bert_site is not None
    assert gpt2_site.module_name == "transformer.drop"
    assert gpt2_site.norm_name == "transformer.h.0.ln_1"  # GPT-2 normalises the masked row
    assert bert_site.module_name == "bert.embeddings.dropout"
    assert bert_site.norm_name is None  # BERT drops after its embedding norm
    assert gpt2_site.rate == pytest.approx(0.1) and bert_site.scale == pytest.approx(1 / 0.9)
    assert input_dropout(load_model(TINY["llama"]).family) is None  # no dropout before block 0


def test_fit_masks_finds_the_dropped_coordinates_and_fits_no_false_row():
    generator = torch.Generator().manual_seed(0)
    d, rows = 96, 24
    clean = torch.randn(rows, d, generator=generator, dtype=torch.float64)
    keep = torch.rand(rows, d, generator=generator) > 0.1
    basis = torch.linalg.qr((clean * keep).T)[0]
    projector = torch.eye(d, dtype=torch.float64) - basis @ basis.T
    fit = fit_masks(clean, projector, max_toggles=40)
    assert fit.residuals.max() < 1e-6
    assert torch.equal(fit.keep, keep)
    false = torch.randn(8, d, generator=generator, dtype=torch.float64)
    assert fit_masks(false, projector, max_toggles=40).residuals.min() > 0.1


@pytest.mark.parametrize("name", ["gpt2", "bert"])
def test_dropout_search_recovers_both_sentences_best_effort(name, request):
    public = request.getfixturevalue(name)
    update = dropout_update(public)
    result = Dager().reconstruct(public, update)
    assert result.diagnostics["search"] == SearchKind.DROPOUT.value
    expected = {tuple(public.tokenizer(t)["input_ids"]) for t in TEXTS}
    assert {s.token_ids for s in result.sequences} == expected
    for sequence in result.sequences:
        assert not sequence.certified
        assert CauseKind.DROPOUT in {c.kind for c in sequence.assurance.causes}


def test_train_mode_off_plans_as_before(gpt2):
    torch.manual_seed(0)
    update = compute_update(gpt2, Batch(texts=TEXTS, labels=(0, 1)))
    assert read_arithmetic(update, causal=True, dropout=0.1).dropout is None
    trained = dropout_update(gpt2)
    reading = read_arithmetic(trained, causal=True, dropout=0.1)
    assert reading.dropout == pytest.approx(0.1)
    assert read_arithmetic(trained, causal=True, dropout=None).dropout is None
    result = Dager().reconstruct(gpt2, update)
    assert result.diagnostics["search"] == SearchKind.PREFIX.value
    causes = {c.kind for s in result.sequences for c in s.assurance.causes}
    assert CauseKind.DROPOUT not in causes and result.sequences


def test_a_dropout_plan_carries_the_cause_before_any_search():
    from gradleak.attacks.dager.config import DagerConfig
    from gradleak.attacks.dager.plan import Spectra, UpdateReading

    reading = UpdateReading(causal=False, dropout=0.1, spectra=Spectra())
    plan = plan_search(reading, DagerConfig())
    assert plan.search is SearchKind.DROPOUT
    assert not plan.exact
    assert [c.kind for c in plan.causes] == [CauseKind.DROPOUT]


def _span_of(rows, d):
    basis = torch.linalg.qr(rows.T)[0]
    return MaskSpace(basis.T.contiguous(), torch.eye(d, dtype=torch.float64) - basis @ basis.T)


def test_the_robust_fit_is_not_misled_by_the_same_token_at_another_position():
    generator = torch.Generator().manual_seed(1)
    d, found = 128, 0
    for _ in range(6):
        clean = torch.randn(d, generator=generator, dtype=torch.float64)
        # The same token at another position: a row close to the target's (greedy toggles and
        # the pursuit fit 3 of these 6 targets).
        nearby = clean + 0.1 * torch.randn(d, generator=generator, dtype=torch.float64)
        keep = torch.rand(2, d, generator=generator) > 0.1
        others = torch.randn(30, d, generator=generator, dtype=torch.float64)
        space = _span_of(torch.cat([clean[None] * keep[0], nearby[None] * keep[1], others]), d)
        fit = fit_robustly(clean[None], space, max_toggles=40)
        found += int(torch.equal(fit.keep[0], keep[0]) and fit.residuals[0] < 1e-6)
        false = torch.randn(4, d, generator=generator, dtype=torch.float64)
        assert fit_robustly(false, space, max_toggles=40).residuals.min() > 0.1
    assert found == 6


def test_known_masks_steer_the_robust_fit_to_the_other_rows_of_a_token():
    generator = torch.Generator().manual_seed(2)
    d = 160
    clean = torch.randn(d, generator=generator, dtype=torch.float64)
    keep = torch.rand(3, d, generator=generator) > 0.1
    others = torch.randn(40, d, generator=generator, dtype=torch.float64)
    space = _span_of(torch.cat([clean[None] * keep, others]), d)
    known = [keep[0]]
    for _ in range(2):
        fit = fit_robustly(
            clean[None], space, max_toggles=48, known=torch.stack(known).all(0)[None]
        )
        assert fit.residuals[0] < 1e-6
        assert any(torch.equal(fit.keep[0], k) for k in keep[1:])
        assert not any(torch.equal(fit.keep[0], k) for k in known)
        known.append(fit.keep[0])


def test_a_mask_may_drop_only_what_dropout_plausibly_drops():
    assert most_drops(384, 0.1) < 384 - 150  # MiniLM at B = 4 leaves about 240 directions free
    assert 38 < most_drops(384, 0.1) < 80


def _scan_of(public, texts, monkeypatch):
    """Returns the dropout search's scan of ``texts`` and the reconstruction."""
    from gradleak.attacks.dager import dropout

    seen = {}
    scan = dropout.scan_masked_tokens

    def spy(*args, **kwargs):
        seen["scan"] = scan(*args, **kwargs)
        return seen["scan"]

    monkeypatch.setattr(dropout, "scan_masked_tokens", spy)
    result = Dager().reconstruct(public, dropout_update(public, texts))
    return seen["scan"], result


def _rows_per_position(public, texts):
    ids = [public.tokenizer(t)["input_ids"] for t in texts]
    return [Counter(s[p] for s in ids if len(s) > p) for p in range(max(map(len, ids)))]


def test_the_scan_finds_a_second_row_where_two_sentences_start_alike(gpt2, monkeypatch):
    texts = (*TEXTS, "the cat ran on the mat at home")  # two first rows of "the"
    scan, _ = _scan_of(gpt2, texts, monkeypatch)
    truth = _rows_per_position(gpt2, texts)
    assert Counter(scan.sets[0].tolist()) == truth[0]
    for position, tokens in enumerate(scan.sets):  # every proved row is a true one
        assert not Counter(tokens.tolist()) - truth[position]
    assert scan.rows_total == sum(sum(c.values()) for c in truth)


def test_rows_accounted_for_give_sentences_of_equal_length_each_their_end(bert, monkeypatch):
    scan, result = _scan_of(bert, TEXTS, monkeypatch)  # both sentences are 9 tokens long
    truth = _rows_per_position(bert, TEXTS)
    assert [Counter(t.tolist()) for t in scan.sets] == truth
    assert scan.complete
    assert {s.token_ids for s in result.sequences} == {
        tuple(bert.tokenizer(t)["input_ids"]) for t in TEXTS
    }


def test_each_row_is_used_and_the_cheapest_sentences_take_the_rest():
    from gradleak.attacks.dager.linking import _cover, _one_each

    fit = torch.tensor([[0.1, 0.9], [0.2, 0.8], [0.3, 0.95]])
    assert _cover(fit) == [0, 1, 0]  # column 1 goes where it costs least extra
    assert _one_each(fit) == [0, 1, None]  # one row each: the prefix left over ends


def test_an_encoder_sentence_holds_its_end_token_last_and_only_last():
    from gradleak.attacks.dager.linking import _MISPLACED_END, _Rows
    from gradleak.attacks.dager.mask_scan import MaskedScan

    keep = torch.ones(2, 4, dtype=torch.bool)
    sets = (torch.tensor([101]), torch.tensor([7, 102]), torch.tensor([102]))
    scan = MaskedScan(sets, (torch.zeros(2),) * 3, (keep[:1], keep, keep[:1]), 0.0)
    rows = _Rows(None, scan, None, end_token=102)
    rows.residuals = lambda s: torch.zeros(len(s), max(map(len, s)))
    totals = rows.totals([[0, 0, 0], [0, 1], [0, 1, 0], [0, 0]])
    assert totals.tolist() == [0, 0, _MISPLACED_END, _MISPLACED_END]
