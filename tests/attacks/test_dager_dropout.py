"""DAGER against clients that trained with dropout on: where the mask sits, the mask fit, the
search end to end (tiny random models), and the plan that leaves train-mode-off updates alone."""

from __future__ import annotations

import pytest
import torch
from helpers import TINY

from gradleak.attacks.dager import Dager
from gradleak.attacks.dager.masks import fit_masks
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
