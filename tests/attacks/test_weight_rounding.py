"""A float32 FedAvg client's weights round every local step: the noise that leaves in the delta is
predicted from the server's copy of the weights, and DAGER ranks candidates above it."""

from __future__ import annotations

import pytest
import torch

from gradleak.attacks import CauseKind
from gradleak.attacks.dager import Dager
from gradleak.attacks.dager.ends import weight_end_test
from gradleak.attacks.dager.grown import UNCLEAR_PATIENCE, _Ends, _frontier, _repeats
from gradleak.attacks.rounding import rounding_floor
from gradleak.attacks.span import stacked_svd
from gradleak.attacks.weight_rounding import weight_rounding, whiten
from gradleak.client import ClientSettings, simulate_update
from gradleak.data import Batch
from gradleak.models import load_model

GPT2 = "random:gpt2?n_layer=3&n_embd=128&n_head=4&n_positions=64"
TEXTS = ("Call Maria at 555-0147 before noon.", "The rent is due on Friday.")
SETTINGS = ClientSettings(algo="fedavg", local_epochs=2, mini_batch=1, lr=1e-4)


@pytest.fixture(scope="module")
def models():
    return load_model(GPT2), load_model(GPT2, dtype=torch.float64)


@pytest.fixture(scope="module")
def updates(models):
    batch = Batch(texts=TEXTS, labels=(0, 1))
    return tuple(simulate_update(m, batch, settings=SETTINGS) for m in models)


def _rounding(public, update):
    return weight_rounding(dict(public.model.named_parameters()), update.metadata)


def test_the_rounding_is_modelled_only_for_float32_multi_step_deltas(models, updates):
    public, public64 = models
    assert _rounding(public, updates[0]).steps == 4
    assert _rounding(public64, updates[1]) is None  # float64: nothing to model
    one_step = simulate_update(public, Batch(texts=TEXTS, labels=(0, 1)))
    assert _rounding(public, one_step) is None


def test_the_predicted_noise_matches_the_float32_clients_error(models, updates):
    """Against the same client in float64: per entry, and as the whitened stack's spectral top."""
    public = models[0]
    rounding = _rounding(public, updates[0])
    g32, g64 = updates[0].gradients(), updates[1].gradients()
    layers = [public.family.linear_layer(block, "q") for block in (0, 1)]
    for layer in layers:
        std = layer.weight_gradient({layer.weight_name: rounding.error_std(layer.weight_name)})
        error = layer.weight_gradient(g32).double() - layer.weight_gradient(g64).double()
        ratio = float(error.pow(2).mean().sqrt() / std.pow(2).mean().sqrt())
        assert 0.5 < ratio < 2.0, (layer.key, ratio)
        white, white_std = whiten(layer.weight_gradient(g32), std)
        white_error = whiten(error, std)[0]
        u, s, vh = stacked_svd([white], unit=False)
        floor = rounding_floor([white], (u, s, vh), element_std=[white_std]) * float(white.norm())
        actual = float(torch.linalg.matrix_norm(white_error, ord=2))
        assert actual / 3 < floor < actual * 3, (layer.key, floor, actual)


def test_a_float32_fedavg_delta_is_ranked_above_the_rounding_and_never_certified(models, updates):
    public = models[0]
    result = Dager().reconstruct(public, updates[0])
    truth = {tuple(public.tokenizer(t)["input_ids"]) for t in TEXTS}
    assert result.diagnostics["search"] == "rank"
    assert result.diagnostics["rank"]["ranking_layers"] == ["0.o", "1.o"]
    assert {s.token_ids for s in result.sequences} == truth
    for sequence in result.sequences:
        kinds = {c.kind for c in sequence.assurance.causes}
        assert {CauseKind.DRIFT, CauseKind.ROUNDING, CauseKind.RANKED} <= kinds
        assert not sequence.certified


def test_the_last_query_span_puts_each_sentence_end_at_its_final_row(models, updates):
    """A causal classifier pools final rows only: of each true sentence's rows, its final one
    lies nearest the last block's query span, although that span is read through the rounding."""
    public = models[0]
    gradients = updates[0].gradients()
    test = weight_end_test(public, gradients, _rounding(public, updates[0]), min_rank=2)
    assert test is not None and test.layer.block == public.family.num_blocks - 1
    for text in TEXTS:
        ids = tuple(public.tokenizer(text)["input_ids"])
        residuals = test.residuals(public, ids)
        assert int(residuals[1:].argmin()) + 1 == len(ids) - 1, (text, residuals)


def test_a_clear_end_cuts_a_grown_sentence_and_an_unclear_one_trims_weak_steps():
    ends = _Ends(test=None, probe=None)  # type: ignore[arg-type]
    ends.seen = [-0.5 + 0.01 * i for i in range(-10, 11)] * 5
    level = ends.level()
    ends.scores = [[-0.1, -0.6, -0.5, -1.4, -0.6, -0.5], [-0.1, -0.7, -0.6, -0.65, -0.5, -0.6]]
    steps = (-9.0, -8.0, -7.5, -8.5, -1.0, -0.5)
    assert ends.cut(0, level, steps) == 4  # the clear end, whatever the steps say
    assert ends.cut(1, level, steps) == 4  # no clear end: the weak trailing steps go
    assert ends.best(1) == 2
    ends.scores[1] += [-0.6] * (UNCLEAR_PATIENCE - 5)  # 1 short of the patience
    assert not ends.ended(1, level, (-3.0,) * len(ends.scores[1]), 4.0)
    ends.scores[1].append(-0.6)
    assert ends.ended(1, level, (-3.0,) * len(ends.scores[1]), 4.0)
    assert not ends.ended(1, level, (-9.0,) * len(ends.scores[1]), 4.0)  # strong steps go on


def test_no_prefix_is_crowded_out_by_anothers_branches_nor_grown_by_a_recent_token():
    # Prefix 0's two strong branches would take both places by mean score; prefix 1 keeps its best.
    parent = torch.tensor([0, 0, 1])
    z = torch.tensor([-9.0, -8.0, -2.0])
    best = torch.tensor([True, False, True])
    kept = _frontier(parent, z, best, [(-9.0,), (-2.0,)], keep=2)
    assert parent[kept].tolist() == [0, 1]
    recent, earlier = _repeats([(5, 6, 7, 8)], torch.tensor([5, 7, 8, 9]))
    assert recent.tolist() == [[False, True, True, False]]
    assert earlier.tolist() == [[True, False, False, False]]
