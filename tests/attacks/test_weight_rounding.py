"""A float32 FedAvg client's weights round every local step: the noise that leaves in the delta is
predicted from the server's copy of the weights, and DAGER ranks candidates above it."""

from __future__ import annotations

import pytest
import torch

from gradleak.attacks import CauseKind
from gradleak.attacks.dager import Dager
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
